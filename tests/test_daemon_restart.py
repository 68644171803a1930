"""What the daemon takes from the runs table at start and on reload, and what a reload takes away.

* the first run of a dataset after a restart, also when the runs table holds a run stamped by a
  clock that was ahead;
* the last-run / last-success gauges, which the documented stale-data alert needs after a restart;
* a reload reads the runs table without stopping the scheduler thread (its heartbeat), and goes on
  when it cannot read it;
* a dataset taken out of service by a reload no longer counts for ``/healthz``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.daemon import service
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.service import Daemon
from syncd.gateway import Gateway
from tests.daemon_proc import daemon_config
from tests.dbserver import free_port
from tests.e2e import SECRET, SECRET_ENV, sync_once
from tests.test_metrics import promtool_check, value

HOURLY = "schedule: {type: interval, every: 1h}\n"
FAST_RETRY = "{attempts: 1, backoff_initial: 10ms, backoff_max: 10ms, deadline: 1s}"


def _daemon(config: Path) -> Daemon:
    return Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))


def _unschedule(tmp_path: Path) -> tuple[Path, str]:
    """Take the schedule out of residents.yaml; return the file and its scheduled text."""
    ds = tmp_path / "datasets" / "residents.yaml"
    scheduled = ds.read_text(encoding="utf-8")
    ds.write_text(scheduled.replace(HOURLY, ""), encoding="utf-8")
    return ds, scheduled


def test_a_run_stamped_by_a_fast_clock_does_not_starve_a_dataset_after_a_restart(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock was 8 h fast when the last run started (a hardware clock in Beijing time read as
    UTC, before NTP stepped it back): after a restart the 15-minute dataset waited 8 h 15 min."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=50, seed=2, app_secret=SECRET) as gw:
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="15m")
        fast = datetime.now(UTC) + timedelta(hours=8)
        assert sync_once(config, now=fast, trigger="schedule").status == "success"
        daemon = _daemon(config)
        try:
            with capture_logs() as logs:
                assert daemon._start()
            first = daemon.scheduler.next_run_times()["residents"]
            (stored,) = daemon.store.last_runs("residents")
        finally:
            daemon._shutdown(0, "signal")
    now = datetime.now(UTC)
    assert first is not None and first <= now + timedelta(seconds=35)  # at once, within the spread
    (warned,) = [e for e in logs if e["event"] == "schedule.last_run_in_future"]
    assert warned["dataset"] == "residents"
    assert datetime.fromisoformat(warned["last_started"]) == stored["started_at"] > now + timedelta(hours=7)


def test_the_last_success_survives_a_restart(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/systemd.md §7 alerts on ``time() - syncd_last_success_timestamp_seconds``: after a
    restart a dataset that had not succeeded since had no such series, and the alert went silent."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=50, seed=2, app_secret=SECRET) as gw:
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="1h", retry=FAST_RETRY)
        assert sync_once(config, now=datetime.now(UTC) - timedelta(hours=7)).status == "success"
    daemon = _daemon(config)  # the gateway is gone: a run now would fail
    try:
        assert daemon._start()
        (success,) = daemon.store.last_runs("residents")
        last_success = value(daemon.metrics, "syncd_last_success_timestamp_seconds", dataset="residents")
        last_run = value(daemon.metrics, "syncd_last_run_timestamp_seconds", dataset="residents")
        body = daemon.metrics.render()
    finally:
        daemon._shutdown(0, "signal")
    assert last_success == last_run == success["finished_at"].timestamp()
    checked = promtool_check(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_reload_waiting_on_the_database_does_not_stop_the_scheduler(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that adds a dataset read its last run under the scheduler's lock: while the runs
    table was locked (a DBA's maintenance statement, here 8 s; the heartbeat timeout is 5 s) the
    scheduler thread waited on the same lock, the heartbeat stopped and the daemon exited 1
    (``daemon.scheduler_dead``)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=50, seed=2, app_secret=SECRET) as gw:
        config = daemon_config(tmp_path, db_url=pg_url, gateway_url=gw.url, every="1h")
        ds, scheduled = _unschedule(tmp_path)
        daemon = _daemon(config)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(daemon.serve()))
        dba = sa.create_engine(pg_url)
        with capture_logs() as logs:
            thread.start()
            try:
                while not any(e["event"] == "daemon.started" for e in logs) and thread.is_alive():
                    time.sleep(0.1)
                ds.write_text(scheduled, encoding="utf-8")  # the operator schedules the dataset
                ages: list[float] = []  # the heartbeat's age, as the supervision sees it
                with dba.connect() as conn:
                    conn.execute(sa.text("LOCK TABLE syncd_runs IN ACCESS EXCLUSIVE MODE"))
                    daemon.request_reload()
                    for _ in range(40):  # 8 s: longer than heartbeat_timeout, shorter than the read's limit
                        time.sleep(0.2)
                        ages.append(daemon.scheduler.heartbeat_age())
                    conn.rollback()
                while not any(e["event"] == "config.reloaded" for e in logs) and thread.is_alive():
                    time.sleep(0.1)
                time.sleep(3)  # a few supervision checks after the reload
                alive = thread.is_alive()
            finally:
                daemon.request_stop()
                thread.join(60)
                dba.dispose()
    dead = [e for e in logs if e["event"] == "daemon.scheduler_dead"]
    assert alive and not dead and result == [0], (result, dead)
    assert max(ages) < daemon.app.daemon.heartbeat_timeout.total_seconds()  # it never looked dead
    (reloaded,) = [e for e in logs if e["event"] == "config.reloaded"]
    assert reloaded["added"] == ["residents"]
    assert not [e for e in logs if e["event"] == "schedule.last_run_unknown"]  # it waited, and read


def test_a_reload_that_cannot_read_the_runs_goes_on_without_them(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs table stays locked past the read's timeout: the reload is applied all the same, the
    new dataset planned from its schedule alone, and the log says so."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(service, "RUN_TIMES_TIMEOUT", timedelta(seconds=1))
    config = daemon_config(tmp_path, db_url=pg_url, gateway_url=f"http://127.0.0.1:{free_port()}", every="1h")
    ds, scheduled = _unschedule(tmp_path)
    daemon = _daemon(config)
    dba = sa.create_engine(pg_url)
    try:
        assert daemon._start()
        ds.write_text(scheduled, encoding="utf-8")
        with dba.connect() as conn, capture_logs() as logs:
            conn.execute(sa.text("LOCK TABLE syncd_runs IN ACCESS EXCLUSIVE MODE"))
            assert daemon.reload()
            conn.rollback()
        first = daemon.scheduler.next_run_times()["residents"]
    finally:
        daemon._shutdown(0, "signal")
        dba.dispose()
    (unknown,) = [e for e in logs if e["event"] == "schedule.last_run_unknown"]
    assert unknown["datasets"] == ["residents"] and "syncd_runs" in unknown["error"]
    assert "one `every` from now" in unknown["hint"]
    # never ran: with the runs read it would run at once; unread, its trigger plans it an hour on
    assert first is not None and first > datetime.now(UTC) + timedelta(minutes=50)


@pytest.mark.parametrize("how", ["disabled", "unscheduled"])
def test_a_dataset_taken_out_of_service_no_longer_makes_the_daemon_unhealthy(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A broken dataset taken out of service by a reload kept /healthz at 503 ("last 3 runs failed")
    until a restart, and its last-run gauge kept a stale-data alert firing."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    dead_gateway = f"http://127.0.0.1:{free_port()}"
    config = daemon_config(
        tmp_path, db_url=sqlite_url, gateway_url=dead_gateway, every="1h", retry=FAST_RETRY
    )
    daemon = _daemon(config)
    try:
        daemon.store.ensure_schema()
        daemon._adopt(daemon.app)
        for _ in range(3):
            daemon.run_job("residents")
        ok, details = daemon.health()
        assert not ok and "dataset residents: last 3 runs failed" in details["reasons"]
        assert 'syncd_last_run_timestamp_seconds{dataset="residents"}' in daemon.metrics.render().decode()
        ds = tmp_path / "datasets" / "residents.yaml"
        text = ds.read_text(encoding="utf-8")
        text = text + "enabled: false\n" if how == "disabled" else text.replace(HOURLY, "")
        ds.write_text(text, encoding="utf-8")
        assert daemon.reload()
        assert daemon.scheduler.datasets == []  # nothing will run it again
        ok, details = daemon.health()
        gone = value(daemon.metrics, "syncd_last_run_timestamp_seconds", dataset="residents")
        failed = value(daemon.metrics, "syncd_runs_total", dataset="residents", outcome="failed")
        ds.write_text(text.replace("enabled: false\n", "") if how == "disabled" else text + HOURLY)
        assert daemon.reload()  # scheduled again: a clean record, the gauge from the runs table
        again = daemon.book.snapshot()["residents"]
        back = value(daemon.metrics, "syncd_last_run_timestamp_seconds", dataset="residents")
        (latest, *_) = daemon.store.last_runs("residents")
    finally:
        daemon.scheduler.shutdown()
        daemon.engine.dispose()
        daemon.locker.close()
    assert ok, details
    assert gone is None and failed == 3  # the counters stay
    assert again.failures_in_a_row == 0
    assert back == latest["finished_at"].timestamp()
