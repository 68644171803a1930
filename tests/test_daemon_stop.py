"""A stop (SIGTERM) while a run waits on a stalled upstream: the run ends ``interrupted`` at once,
not after the source's whole retry budget, and the daemon exits 0 within ``daemon.stop_timeout``
(docs/daemon.md section 2). In the run's own process and with the read worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.service import Daemon
from syncd.gateway import FaultPlan, Gateway
from syncd.targets import StateStore
from syncd.targets.engine import create_target_engine
from tests.daemon_proc import daemon_config
from tests.e2e import SECRET, SECRET_ENV, target_rows

# a budget no stop may wait out: without the stop reaching the retries, the run would go on for
# minutes and the daemon would give up on it after stop_timeout (exit 1, the unit "failed")
RETRY = "{attempts: 50, backoff_initial: 2s, backoff_max: 30s, deadline: 5m}"


Event = dict[str, Any]


def _wait_for(logs: list[Event], found: Callable[[Event], bool], what: str) -> Event:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hit = next((e for e in list(logs) if found(e)), None)
        if hit is not None:
            return hit
        time.sleep(0.05)
    raise AssertionError(f"no {what} in the log: {[e['event'] for e in logs]}")


@pytest.mark.parametrize("read_worker", ["never", "always"])
def test_stop_during_retries_of_a_stalled_gateway_interrupts_the_run(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, read_worker: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    faults = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=3.0)  # every data request stalls
    with Gateway(records=50, seed=2, app_secret=SECRET, faults=faults) as gw:
        config = daemon_config(
            tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="2s", read_timeout="1s", retry=RETRY
        )
        text = config.read_text(encoding="utf-8")
        text = text.replace("stop_timeout: 20s", "stop_timeout: 10s")
        text = text.replace("defaults:\n", f"defaults:\n  read_worker: {read_worker}\n")
        config.write_text(text, encoding="utf-8")
        daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(daemon.serve()))
        with capture_logs() as logs:
            thread.start()
            # the first page request timed out and waits for its retry (the backoff: 2 s and more)
            _wait_for(logs, lambda e: e["event"] == "http.retry", "http.retry")
            daemon.request_stop()
            thread.join(60)
            assert not thread.is_alive()
            finish = _wait_for(logs, lambda e: e["event"] == "sync.finish", "sync.finish")
    events = [e["event"] for e in logs]
    assert "daemon.stop_timeout" not in events
    assert result == [0]
    assert finish["status"] == "interrupted"
    assert "sync.interrupted" in events and "sync.failed" not in events
    if read_worker == "always":
        assert "worker.stopped" in events  # ended by the stop, not by the end of its retries
    # nothing half-done: no batch, the watermark where it was (none: the first run)
    assert target_rows(sqlite_url) == {}
    engine = create_target_engine(sqlite_url)
    try:
        assert StateStore(engine).get_watermark("residents") is None
    finally:
        engine.dispose()
