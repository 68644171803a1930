"""`syncd run` as a real process: systemd notifications, reload (SIGHUP), stop (SIGTERM), JSON logs."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.gateway import FaultPlan, Gateway
from tests.daemon_proc import DaemonProcess, NotifySocket, daemon_config
from tests.dbserver import free_port
from tests.e2e import SECRET, SECRET_ENV


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    gw = Gateway(records=300, seed=3, app_secret=SECRET)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


def test_daemon_reload_and_stop(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, notify: NotifySocket
) -> None:
    config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
    residents = tmp_path / "datasets" / "residents.yaml"
    good = residents.read_text(encoding="utf-8")
    daemon = DaemonProcess(config, notify=notify)
    try:
        assert "datasets scheduled" in notify.wait_for("READY=1")
        daemon.wait_event("sync.finish", status="success")

        # a broken file: the old configuration keeps running, the error is reported with its position
        residents.write_text(good + "no_such_key: 1\n", encoding="utf-8")
        notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_event("config.reload_failed")
        assert failed["errors"] >= 1
        assert any("residents.yaml:" in issue for issue in failed["issues"])
        assert "reload failed" in notify.wait_for("READY=1")
        notify.wait_for("RELOADING=1")
        finishes = len([e for e in daemon.events() if e["event"] == "sync.finish"])
        daemon.wait_event("sync.finish", count=finishes + 1)  # still running on the old configuration

        # a valid change: a second dataset gets a job; removing it again removes the job
        residents.write_text(good, encoding="utf-8")
        second = good.replace("name: residents", "name: residents2").replace(
            "table: resident_info", "table: resident_info2"
        )
        (tmp_path / "datasets" / "residents2.yaml").write_text(second, encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_event("config.reloaded")["added"] == ["residents2"]
        daemon.wait_event("sync.finish", dataset="residents2")
        (tmp_path / "datasets" / "residents2.yaml").unlink()
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_event("config.reloaded", count=2)["removed"] == ["residents2"]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr_text()
    notify.wait_for("STOPPING=1")
    events = daemon.events()  # every line is JSON (json.loads raised otherwise)
    text = "".join(daemon.lines)
    assert SECRET not in text
    assert events[-1]["event"] == "daemon.stopped"
    for e in events:
        assert {"@timestamp", "log.level", "log.logger", "event"} <= set(e)
        assert e["@timestamp"].endswith("Z")


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_target_database_down_at_start_is_waited_for(
    tmp_path: Path, gateway: Gateway, notify: NotifySocket
) -> None:
    """The daemon exited 1 within seconds when the target database could not be reached at start:
    with the unit's RestartSec=30s and StartLimitBurst=5, a few minutes of database outage at boot
    left the service failed for good. It waits, retrying with backoff, and then runs normally.
    (An SQLite database in a directory that does not exist yet: the same failure, and a fast one.)"""
    db_dir = tmp_path / "db"
    port = free_port()
    config = daemon_config(
        tmp_path, db_url=f"sqlite:///{db_dir / 'target.db'}", gateway_url=gateway.url, metrics_port=port
    )
    daemon = DaemonProcess(config, notify=notify)
    try:
        first = daemon.wait_event("daemon.target_unreachable")
        assert (first["attempt"], first["retry_in_s"], first["log.level"]) == (1, 2.0, "warning")
        # the first statement at start fails (whichever it is): the error names the database and why
        assert "target.db" in first["error"] and "unable to open database file" in first["error"]
        assert "waiting for the target database (attempt 1, next in 2s)" in notify.wait_for("READY=1")
        status, body = _healthz(port)
        assert status == 503 and body["reasons"][0].startswith("waiting for the target database: "), body
        assert daemon.wait_event("daemon.target_unreachable", count=2)["retry_in_s"] == 4.0
        db_dir.mkdir()  # the database "comes up"
        assert daemon.wait_event("daemon.target_reachable", timeout=15)["attempts"] == 3
        daemon.wait_event("daemon.started")
        daemon.wait_event("sync.finish", status="success")
        assert _healthz(port)[0] == 200
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr_text()


def test_sigterm_while_waiting_for_the_target_database_stops_at_once(
    tmp_path: Path, gateway: Gateway
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/syncd"  # nothing listens there
    daemon = DaemonProcess(daemon_config(tmp_path, db_url=url, gateway_url=gateway.url))
    try:
        error = daemon.wait_event("daemon.target_unreachable")["error"]
        assert "127.0.0.1" in error and "Connection refused" in error
        time.sleep(0.5)  # inside the wait before the second attempt
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.proc.wait(10)
        took = time.monotonic() - started
    finally:
        daemon.stop()
    assert code == 0 and took < 2, (code, took, daemon.stderr_text())
    events = [e["event"] for e in daemon.events()]
    assert "daemon.started" not in events and "daemon.start_failed" not in events
    assert events[-2:] == ["daemon.stopping", "daemon.stopped"]


def test_sigterm_during_slow_upstream_keeps_batches_whole(tmp_path: Path, sqlite_url: str) -> None:
    faults = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.25)
    with Gateway(records=600, seed=5, app_secret=SECRET, faults=faults) as gw:
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, batch_size=250)
        daemon = DaemonProcess(config)
        try:
            daemon.wait_event("sync.start")
            time.sleep(1.0)  # inside the run: some pages read, a batch maybe written
            daemon.signal(signal.SIGTERM)
            code = daemon.proc.wait(30)
        finally:
            daemon.stop()
    assert code == 0, daemon.stderr_text()
    finish = daemon.wait_event("sync.finish")
    assert finish["status"] == "interrupted"
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM resident_info")).scalar()
        changes = conn.execute(sa.text("SELECT count(*) FROM syncd_changes")).scalar()
        run = conn.execute(sa.text("SELECT status, inserted, watermark_after FROM syncd_runs")).one()
    engine.dispose()
    assert run.status == "interrupted"
    assert rows == changes == run.inserted  # what committed is whole: rows with their change entries
    assert rows % 300 == 0 and rows < 600  # whole batches of 3 pages, and the run did not finish
    assert run.watermark_after is None  # the watermark did not move
    assert json.dumps(finish)  # the finish line is plain JSON


def test_a_burst_of_signals_never_hangs_the_daemon(tmp_path: Path, sqlite_url: str, gateway: Gateway) -> None:
    """Signals arrive at any bytecode of the main thread, also inside the handler of the signal
    before. The handlers once called Event.set and deadlocked on the event's lock (seen in the
    reliability run: SIGTERM, then the second SIGTERM of the stop, and the daemon hung). A burst
    of SIGHUPs (each a reload) and then of SIGTERMs, until the process is gone, must end in a clean
    exit every time: also a SIGTERM in the last steps of the stop, when the handlers used to be
    reset to the default (exit status -15)."""
    config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
    for _ in range(3):
        daemon = DaemonProcess(config)
        try:
            daemon.wait_event("daemon.started")
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                daemon.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while daemon.proc.poll() is None:  # SIGTERM after SIGTERM, until the process is gone
                assert time.monotonic() < deadline, "SIGTERM was not handled"
                daemon.signal(signal.SIGTERM)
            code = daemon.proc.wait(30)
        finally:
            daemon.stop()
        assert code == 0, daemon.stderr_text()
