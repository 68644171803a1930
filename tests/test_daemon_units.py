"""Scheduler and supervision in-process: crontab weekdays, time zones, misfire grace, log context,
a dead scheduler, metrics and health."""

from __future__ import annotations

import http.client
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.config.model import CronSchedule, IntervalSchedule
from syncd.daemon.cron import crontab_weekdays
from syncd.daemon.locks import DatasetLocker
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.scheduler import PRUNE_JOB, DatasetScheduler, build_trigger
from syncd.daemon.service import Daemon
from syncd.daemon.state import RunBook
from syncd.gateway import FaultPlan, Gateway
from syncd.targets.engine import CONNECTIONS_PER_RUN, pool_overflow
from tests.daemon_proc import (
    NotifySocket,
    as_service_user,
    daemon_config,
    give_to_service_user,
    service_dir,
)
from tests.e2e import SECRET, SECRET_ENV
from tests.test_metrics import promtool_check

SHANGHAI = ZoneInfo("Asia/Shanghai")


def every(seconds: float) -> IntervalSchedule:
    return IntervalSchedule(type="interval", every=timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("6,7", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("MON-wed", "mon,tue,wed"),
        ("7-7", "sun"),
        ("5-7", "sun,fri,sat"),
    ],
)
def test_crontab_weekdays_count_sunday_as_zero(field: str, days: str) -> None:
    assert crontab_weekdays(field) == days


@pytest.mark.parametrize("bad", ["8", "5-1", "mon/0", "funday"])
def test_bad_weekday_fields_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        crontab_weekdays(bad)


def test_cron_with_both_day_fields_fires_on_either_as_crontab_does() -> None:
    """crontab(5): with both day-of-month and weekday restricted, a day matching either fires."""
    trigger = build_trigger(CronSchedule(type="cron", cron="0 2 1,15 * 1", jitter=None), "Asia/Shanghai")
    fires, now = [], datetime(2025, 1, 1, 3, 0, tzinfo=SHANGHAI)  # a Wednesday, after 02:00
    previous = None
    for _ in range(6):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fires.append(fire.strftime("%m-%d %a %H:%M"))
        previous, now = fire, fire + timedelta(seconds=1)
    assert fires == [
        "01-06 Mon 02:00", "01-13 Mon 02:00", "01-15 Wed 02:00",
        "01-20 Mon 02:00", "01-27 Mon 02:00", "02-01 Sat 02:00",
    ]
    only_days = build_trigger(CronSchedule(type="cron", cron="0 2 1,15 * *"), "Asia/Shanghai")
    fire = only_days.get_next_fire_time(None, datetime(2025, 1, 1, 3, 0, tzinfo=SHANGHAI))
    assert fire is not None and fire.strftime("%m-%d") == "01-15"


def test_interval_jitter_delays_each_planned_time_and_never_adds_up() -> None:
    """docs/daemon.md section 1: jitter delays each planned time (every n x ``every`` from the
    first) by at most ``jitter``. APScheduler's IntervalTrigger planned from the previous jittered
    time: `every: 15m, jitter: 5m` ran 82 times a day instead of 96, drifting ever later."""
    random.seed(1)
    schedule = IntervalSchedule(type="interval", every=timedelta(minutes=15), jitter=timedelta(minutes=5))
    trigger = build_trigger(schedule, SHANGHAI)
    first = datetime(2030, 3, 10, 0, 0, tzinfo=SHANGHAI)  # a run the scheduler planned itself
    fire: datetime | None = first
    late: list[timedelta] = []
    for n in range(1, 97):  # a day
        assert fire is not None
        fire = trigger.get_next_fire_time(fire, fire)
        assert fire is not None
        late.append(fire - (first + n * schedule.every))
    assert all(timedelta(0) <= d <= schedule.jitter for d in late), max(late)
    assert len(set(late)) > 1  # a fresh jitter each time


def test_interval_jitter_from_the_first_plan_and_catching_up() -> None:
    """The first time (no previous run) and APScheduler's catch-up (it asks for the time after a run
    it skipped, then after the last one it ran) stay on the grid of the first planned time."""
    random.seed(2)
    schedule = IntervalSchedule(type="interval", every=timedelta(minutes=10), jitter=timedelta(minutes=3))
    trigger = build_trigger(schedule, SHANGHAI)
    first = trigger.get_next_fire_time(None, datetime(2030, 3, 10, 8, 0, tzinfo=SHANGHAI))
    assert first is not None
    fires = [first]
    for _ in range(5):
        fire = trigger.get_next_fire_time(fires[-1], fires[-1])
        assert fire is not None
        fires.append(fire)
    late = fires[-1] + timedelta(minutes=25)  # the scheduler woke late: two runs due, one runs
    skipped = trigger.get_next_fire_time(fires[-1], late)
    assert skipped is not None
    fire = trigger.get_next_fire_time(skipped, late)
    assert fire is not None
    fires.append(fire)
    slots = []
    for fire in fires[1:]:
        offset = fire - first  # both jittered from their planned times: within one jitter of n x every
        n = round(offset / schedule.every)
        assert -schedule.jitter <= offset - n * schedule.every <= schedule.jitter, offset
        slots.append(n)
    assert slots == [1, 2, 3, 4, 5, 7]


def test_interval_jitter_longer_than_the_interval_never_goes_back() -> None:
    random.seed(3)
    schedule = IntervalSchedule(type="interval", every=timedelta(minutes=1), jitter=timedelta(minutes=5))
    trigger = build_trigger(schedule, SHANGHAI)
    fire = trigger.get_next_fire_time(None, datetime(2030, 3, 10, tzinfo=SHANGHAI))
    for _ in range(200):
        assert fire is not None
        following = trigger.get_next_fire_time(fire, fire)
        assert following is not None and following > fire
        fire = following


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # crontab(5): a day field starting with * is unrestricted, so both fields must match
        ("0 2 */2 * 1", ["01-13 Mon", "01-27 Mon", "02-03 Mon", "02-17 Mon", "03-03 Mon", "03-17 Mon"]),
        ("0 2 1-7 * */7", ["01-05 Sun", "02-02 Sun", "03-02 Sun", "04-06 Sun", "05-04 Sun", "06-01 Sun"]),
        ("0 2 * * 1", ["01-06 Mon", "01-13 Mon", "01-20 Mon", "01-27 Mon", "02-03 Mon", "02-10 Mon"]),
    ],
)
def test_cron_day_field_starting_with_a_star_is_unrestricted(cron: str, expected: list[str]) -> None:
    """cronie and vixie cron take both day fields together (AND) when either starts with ``*``:
    ``0 2 */2 * 1`` is 02:00 on odd days that are Mondays, not odd days or Mondays."""
    trigger = build_trigger(CronSchedule(type="cron", cron=cron), "Asia/Shanghai")
    fires, previous, now = [], None, datetime(2025, 1, 1, 3, 0, tzinfo=SHANGHAI)
    for _ in range(6):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fires.append(fire.strftime("%m-%d %a"))
        previous, now = fire, fire + timedelta(seconds=1)
    assert fires == expected


def test_cron_fires_in_the_configured_zone_on_a_utc_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        trigger = build_trigger(CronSchedule(type="cron", cron="0 2 * * *"), "Asia/Shanghai")
        now = datetime(2025, 3, 3, 12, 0, tzinfo=ZoneInfo("UTC"))  # 20:00 in Shanghai
        fire = trigger.get_next_fire_time(None, now)
        assert fire is not None
        assert fire.astimezone(SHANGHAI).replace(tzinfo=None) == datetime(2025, 3, 4, 2, 0)
        assert fire.astimezone(ZoneInfo("UTC")).hour == 18
        monday = build_trigger(CronSchedule(type="cron", cron="30 6 * * 1"), "Asia/Shanghai")
        fire = monday.get_next_fire_time(None, now)
        assert fire is not None and fire.astimezone(SHANGHAI).strftime("%a %H:%M") == "Mon 06:30"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(("grace", "missed"), [(timedelta(minutes=10), False), (timedelta(seconds=1), True)])
def test_a_busy_pool_runs_the_job_late_instead_of_skipping_it(grace: timedelta, missed: bool) -> None:
    ran: list[tuple[str, float]] = []
    start = time.monotonic()

    def run(name: str) -> None:
        ran.append((name, time.monotonic() - start))
        if name == "a" and len(ran) == 1:
            time.sleep(2.5)  # the only worker is busy when "b" is due

    skips: list[tuple[str, str]] = []
    sched = DatasetScheduler(
        run,
        timezone="Asia/Shanghai",
        max_concurrent=1,
        misfire_grace_time=grace,
        on_skipped=lambda name, outcome: skips.append((name, outcome)),
    )
    sched.start()
    try:
        sched.apply({"a": every(1), "b": every(1.05)})
        assert sched.job_options("b")["misfire_grace_time"] == int(grace.total_seconds())
        assert sched.job_options("b")["coalesce"] is True
        assert sched.job_options("b")["max_instances"] == 1
        with capture_logs() as logs:
            time.sleep(3.8)
    finally:
        sched.shutdown()
    first_b = next((t for n, t in ran if n == "b"), None)
    # "a" was due again twice while its first run slept: each is a skipped run, named and explained
    assert ("a", "skipped_running") in skips
    events = [e for e in logs if e["event"] == "schedule.skipped"]
    assert {(e["dataset"], e["outcome"]) for e in events} == set(skips)
    assert all(e["log_level"] == "warning" and e["hint"] and e["due"] for e in events)
    if missed:
        assert ("b", "skipped_missed") in skips
        hint = next(e["hint"] for e in events if e["outcome"] == "skipped_missed")
        assert "misfire_grace_time (1 s)" in hint
    else:
        assert ("b", "skipped_missed") not in skips
        assert first_b is not None and first_b >= 3.0  # ran late, right after "a" freed the worker


def test_log_context_does_not_leak_between_jobs() -> None:
    seen: dict[str, dict[str, Any]] = {}
    done = threading.Event()

    def run(name: str) -> None:
        seen.setdefault(name, structlog.contextvars.get_contextvars())
        if name == "a":
            structlog.contextvars.bind_contextvars(dataset="a", run_id="leaky")  # and never reset
        if len(seen) == 2:
            done.set()

    sched = DatasetScheduler(run, timezone="Asia/Shanghai", max_concurrent=1)  # one reused thread
    sched.start()
    try:
        sched.apply({"a": every(0.5), "b": every(0.8)})
        assert done.wait(5)
    finally:
        sched.shutdown()
    assert seen["b"] == {}


def test_reload_plan_adds_reschedules_and_removes() -> None:
    sched = DatasetScheduler(lambda name: None, timezone="Asia/Shanghai")
    sched.start()
    try:
        assert sched.apply({"a": every(60), "b": every(60)}).added == ["a", "b"]
        plan = sched.apply({"a": every(120), "c": CronSchedule(type="cron", cron="0 2 * * *")})
        assert (plan.added, plan.removed, plan.rescheduled) == (["c"], ["b"], ["a"])
        assert set(sched.next_run_times()) == {"a", "c"}
    finally:
        sched.shutdown()


def test_runbook_status_and_health_rule() -> None:
    book = RunBook(unhealthy_after_failures=2)
    book.track(["a", "b"])
    book.record("a", "success", now=100.0)
    book.record("b", "failed", now=110.0)
    assert book.status_line(2, now=113.0) == "2 datasets scheduled, last: b failed 3s ago, 1 failing"
    assert book.health(1.0, 60.0)[0]
    book.record("b", "refused", now=120.0)
    ok, details = book.health(1.0, 60.0)
    assert not ok and details["reasons"] == ["dataset b: last 2 runs failed"]
    assert not book.health(90.0, 60.0)[0]


def test_runbook_forgets_a_dataset_taken_out_of_service() -> None:
    book = RunBook(unhealthy_after_failures=1)
    book.track(["a"])
    book.record("a", "failed", now=1.0)
    assert not book.health(1.0, 60.0)[0]
    book.track([])  # a reload took it out of service (enabled: false, no schedule)
    book.record("a", "failed", now=2.0)  # the run it had going ends afterwards
    assert book.health(1.0, 60.0) == (True, {"heartbeat_age_s": 1.0, "failing": []})
    book.track(["a"])  # scheduled again: a clean record
    assert book.snapshot()["a"].failures_in_a_row == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=200, seed=2, app_secret=SECRET) as gw:
        port = _free_port()
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, metrics_port=port)
        yield Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_metrics_and_health_of_a_running_daemon(daemon: Daemon) -> None:
    port = daemon.app.daemon.metrics_port
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.serve()))
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if b'outcome="success"} 1.0' in _get(port, "/metrics")[1]:
                    break
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        status, body = _get(port, "/metrics")
        assert b'syncd_runs_total{dataset="residents",outcome="success"} 1.0' in body
        assert b"syncd_heartbeat_timestamp_seconds" in body
        # the scheduler's skipped runs reach the runs counter (each outcome exported from the start)
        assert b'syncd_runs_total{dataset="residents",outcome="skipped_running"} 0.0' in body
        daemon.scheduler._skipped(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "residents", "default", []))
        assert b'outcome="skipped_running"} 1.0' in _get(port, "/metrics")[1]
        assert b"syncd_authorization_remaining_seconds" in body
        check = promtool_check(body)
        assert check.returncode == 0, check.stdout + check.stderr
        status, body = _get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        daemon.request_stop()
        thread.join(30)
    assert result == [0]


def test_a_dataset_removed_by_a_reload_while_it_runs_stays_removed(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of the run re-created the series and the run-book entry that the reload had just
    removed: its last-success gauge aged and fired stale-data alerts until the next restart."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    faults = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.3)
    with Gateway(records=300, seed=4, app_secret=SECRET, faults=faults) as gw:
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="1h")
        daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
        daemon.store.ensure_schema()
        daemon._adopt(daemon.app)
        run = threading.Thread(target=daemon.run_job, args=("residents",))
        with capture_logs() as logs:
            run.start()
            try:
                deadline = time.monotonic() + 10
                while "residents" not in daemon.unfinished and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert daemon.unfinished == ["residents"]
                datasets = tmp_path / "datasets"
                (datasets / "residents.yaml").rename(datasets / "residents.yaml.off")
                assert daemon.reload()
                assert daemon.unfinished == ["residents"]  # the reload did not wait for the run
            finally:
                run.join(60)
                daemon.engine.dispose()
                daemon.locker.close()
    assert [e["status"] for e in logs if e["event"] == "sync.finish"] == ["success"]
    assert daemon.metrics.datasets == frozenset() and daemon.book.snapshot() == {}
    assert 'dataset="residents"' not in daemon.metrics.render().decode()


def test_restart_only_sections_changed_by_a_reload_wait_for_the_restart(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """daemon:, timezone: and logging: apply at the next restart, whole. A reload used to adopt
    them half-way: /healthz judged the heartbeat by the new timeout while the scheduler beat at the
    old interval (a healthy daemon flapped to 503), and runs used the new time zone while cron fired
    in the old one."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url="http://127.0.0.1:9", every="1h")
    daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
    before = daemon.app
    try:
        daemon._adopt(daemon.app)
        text = config.read_text(encoding="utf-8")
        text = text.replace("heartbeat_timeout: 5s", "heartbeat_timeout: 3s")
        text = text.replace("timezone: Asia/Shanghai", "timezone: Europe/Berlin")
        config.write_text(text, encoding="utf-8")
        with capture_logs() as logs:
            assert daemon.reload()
    finally:
        daemon.engine.dispose()
        daemon.locker.close()
    assert daemon.app.daemon == before.daemon and daemon.app.timezone == "Asia/Shanghai"
    (warning,) = [e for e in logs if e["event"] == "config.restart_needed"]
    assert "daemon" in str(warning) and "timezone" in str(warning)


def test_a_reload_that_cannot_read_the_datasets_dir_keeps_the_old_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loader's OSError went past the reload: a SIGHUP killed the daemon (daemon.start_failed,
    exit 1, no shutdown) when the datasets directory had become unreadable for the service's user."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with service_dir() as root:
        config = daemon_config(root, db_url=f"sqlite:///{root / 'target.db'}", gateway_url="http://127.0.0.1:9")
        daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
        daemon._adopt(daemon.app)
        assert daemon.reload()  # as root: everything the reload imports is imported
        give_to_service_user(root)
        (root / "datasets").chmod(0o300)
        try:
            with capture_logs() as logs, as_service_user():
                applied = daemon.reload()
        finally:
            daemon.engine.dispose()
            daemon.locker.close()
    assert not applied
    assert sorted(daemon.app.datasets) == ["residents"]  # the old configuration keeps running
    (failed,) = [e for e in logs if e["event"] == "config.reload_failed"]
    assert f"cannot read the datasets directory {root / 'datasets'}: Permission denied" in failed["issues"][0]
    assert b"syncd_config_reload_success 0.0" in daemon.metrics.render()


def test_a_run_locked_out_by_another_process_shows_in_the_metrics(daemon: Daemon) -> None:
    """skipped_locked: another node, or `syncd sync` run by hand, holds the dataset's lock."""
    daemon.store.ensure_schema()
    daemon._adopt(daemon.app)
    other = DatasetLocker(daemon.app.target.url.get_secret_value())
    try:
        with other.hold("residents") as acquired:
            assert acquired
            daemon.run_job("residents")
    finally:
        other.close()
        daemon.locker.close()
        daemon.engine.dispose()
    body = daemon.metrics.render()
    assert b'syncd_runs_total{dataset="residents",outcome="skipped_locked"} 1.0' in body
    assert b'syncd_runs_total{dataset="residents",outcome="success"} 0.0' in body
    assert daemon.book.snapshot()["residents"].last_status is None  # not a verdict on its health


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_scheduler_thread_makes_the_daemon_exit_non_zero(daemon: Daemon) -> None:
    inner = daemon.scheduler._scheduler

    def broken() -> float:
        raise RuntimeError("job store exploded")

    def kill_soon() -> None:
        time.sleep(0.5)
        inner._process_jobs = broken
        inner.wakeup()

    threading.Thread(target=kill_soon, daemon=True).start()
    with structlog.testing.capture_logs() as events:
        code = daemon.serve()
    assert code == 1
    assert any(e["event"] == "daemon.scheduler_dead" for e in events)



def _serve_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[int | BaseException]]:
    """``daemon.serve()`` in a thread; the list gets its exit code, or what it raised."""
    outcome: list[int | BaseException] = []

    def serve() -> None:
        try:
            outcome.append(daemon.serve())
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread, outcome


def _port_closed(port: int) -> bool:
    try:
        _get(port, "/healthz")
    except OSError:
        return True
    return False


def test_an_unexpected_error_after_the_start_stops_the_daemon_in_order(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception other than the handled ones left serve() at once, logged by `syncd run` as
    daemon.start_failed although the daemon had run for hours: no STOPPING=1, the scheduler still
    dispatching, the running dataset never asked to stop (the process then hung at exit waiting for
    its worker thread), the monitoring port still open. It now takes the stop path of a SIGTERM and
    says what failed, exit code 1."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    notify = NotifySocket()
    faults = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.3)
    try:
        with Gateway(records=600, seed=6, app_secret=SECRET, faults=faults) as gw:
            port = _free_port()
            config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, metrics_port=port)
            notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": notify.path})
            daemon = Daemon(config, load_config(config), notifier=notifier)

            def broken_apply(schedules: Any, last_started: Any = None) -> Any:
                raise RuntimeError("the scheduler's job store exploded")

            with capture_logs() as logs:
                thread, outcome = _serve_in_thread(daemon)
                try:
                    deadline = time.monotonic() + 15
                    while daemon.unfinished != ["residents"] and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert daemon.unfinished == ["residents"]  # a run is reading the slow gateway
                    monkeypatch.setattr(daemon.scheduler, "apply", broken_apply)
                    daemon.request_reload()
                    thread.join(30)
                finally:
                    if thread.is_alive():
                        daemon.request_stop()
                        thread.join(30)
            assert notify.wait_for("STOPPING=1")
            notifier.close()
    finally:
        notify.close()
    assert outcome == [1]
    (failed,) = [e for e in logs if e["event"] == "daemon.failed"]
    assert failed["log_level"] == "critical" and failed["during"] == "reload"
    assert failed["error_type"] == "RuntimeError" and "job store exploded" in failed["error"]
    assert failed["exc_info"] is True  # not an operator's problem: the traceback goes with it
    assert not [e for e in logs if e["event"] == "daemon.start_failed"]
    (stopping,) = [e for e in logs if e["event"] == "daemon.stopping"]
    assert stopping["reason"] == "failed" and stopping["running"] == ["residents"]
    assert [e["status"] for e in logs if e["event"] == "sync.finish"][-1] == "interrupted"
    assert daemon.unfinished == [] and not daemon.scheduler.alive
    assert _port_closed(port)
    assert [e["exit_code"] for e in logs if e["event"] == "daemon.stopped"] == [1]
    assert b'syncd_runs_total{dataset="residents",outcome="interrupted"} 1.0' in daemon.metrics.render()


def test_a_failure_late_in_the_start_stops_what_had_started(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitoring server and the scheduler had started when the first jobs could not be added:
    serve() raised, and the port stayed open with a scheduler thread behind it."""

    def broken_apply(schedules: Any, last_started: Any = None) -> Any:
        raise RuntimeError("no jobs today")

    monkeypatch.setattr(daemon.scheduler, "apply", broken_apply)
    with capture_logs() as logs:
        thread, outcome = _serve_in_thread(daemon)
        thread.join(30)
    assert outcome == [1]
    (failed,) = [e for e in logs if e["event"] == "daemon.start_failed"]
    assert failed["error_type"] == "RuntimeError" and failed["exc_info"] is True
    assert [e["reason"] for e in logs if e["event"] == "daemon.stopping"] == ["start_failed"]
    assert not daemon.scheduler.alive and _port_closed(daemon.app.daemon.metrics_port)


def test_a_busy_monitoring_port_is_a_start_failure_without_a_traceback(daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", daemon.app.daemon.metrics_port))
        taken.listen()
        with capture_logs() as logs:
            code = daemon.serve()
    assert code == 1
    (failed,) = [e for e in logs if e["event"] == "daemon.start_failed"]
    assert failed["error_type"] == "OSError" and "Address already in use" in failed["error"]
    assert failed["exc_info"] is False  # the operator's problem: the message says it
    assert "daemon.started" not in [e["event"] for e in logs]


# --------------------------------------------------------------------------- first run after a start


def _first_runs(schedules: dict[str, Any], last: dict[str, datetime | None]) -> dict[str, datetime | None]:
    sched = DatasetScheduler(lambda name: None, timezone="Asia/Shanghai")
    sched._scheduler.start(paused=True)  # next run times are computed; nothing is dispatched
    try:
        sched.apply(schedules, {name: when for name, when in last.items() if when is not None})
        return sched.next_run_times()
    finally:
        sched.shutdown()


def test_a_restart_does_not_starve_interval_datasets() -> None:
    """An interval dataset runs ``every`` after its last run started, not ``every`` after each start
    of the daemon (a daemon restarted more often than every 6 h never ran a 6-hour dataset)."""
    now = datetime.now(SHANGHAI)
    six_hours = IntervalSchedule(type="interval", every=timedelta(hours=6))
    first = _first_runs(
        {"recent": six_hours, "overdue": six_hours, "never": six_hours},
        {"recent": now - timedelta(hours=1), "overdue": now - timedelta(hours=7), "never": None},
    )
    recent, overdue, never = first["recent"], first["overdue"], first["never"]
    assert recent is not None and abs(recent - (now + timedelta(hours=5))) < timedelta(seconds=5)
    for due in (overdue, never):  # at once, within the catch-up spread (no jitter configured)
        assert due is not None and now - timedelta(seconds=1) <= due <= now + timedelta(seconds=35)


def test_a_cron_run_missed_while_the_daemon_was_down_runs_at_start() -> None:
    now = datetime.now(SHANGHAI)
    hourly = CronSchedule(type="cron", cron="0 * * * *")  # every hour on the hour
    first = _first_runs(
        {"missed": hourly, "current": hourly, "never": hourly},
        {"missed": now - timedelta(hours=2), "current": now - timedelta(seconds=1), "never": None},
    )
    on_the_hour = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    missed = first["missed"]
    assert missed is not None and missed <= now + timedelta(seconds=35)  # the 2-hours-ago slot passed
    assert first["current"] == on_the_hour  # ran this hour already: the next slot
    assert first["never"] == on_the_hour  # cron is chosen for the hours a gateway allows: no run now


def test_a_last_run_stamped_by_a_clock_that_was_ahead_means_run_now() -> None:
    """A run that started after now (the clock was 8 h fast when it ran: a hardware clock in Beijing
    time read as UTC) says nothing of when the dataset really ran: it runs at once, with a warning
    naming the dataset and the stored time, instead of waiting hours (interval) or for ever (cron)."""
    now = datetime.now(SHANGHAI)
    fast = now + timedelta(hours=8)
    with capture_logs() as logs:
        first = _first_runs(
            {"every15m": every(15 * 60), "nightly": CronSchedule(type="cron", cron="0 2 * * *")},
            {"every15m": fast, "nightly": fast},
        )
    for name in ("every15m", "nightly"):
        due = first[name]
        assert due is not None and due <= now + timedelta(seconds=35), name
    warned = {e["dataset"]: e for e in logs if e["event"] == "schedule.last_run_in_future"}
    assert set(warned) == {"every15m", "nightly"}
    assert warned["every15m"]["last_started"] == fast.isoformat() and "NTP" in warned["every15m"]["hint"]


def test_without_the_last_runs_a_new_job_takes_its_trigger() -> None:
    sched = DatasetScheduler(lambda name: None, timezone="Asia/Shanghai")
    sched._scheduler.start(paused=True)
    try:
        sched.apply({"a": IntervalSchedule(type="interval", every=timedelta(hours=6))}, None)
        due = sched.next_run_times()["a"]
    finally:
        sched.shutdown()
    assert due is not None and due > datetime.now(SHANGHAI) + timedelta(hours=5)


def test_the_pool_holds_every_connection_the_concurrent_runs_may_take(daemon: Daemon) -> None:
    # a run holds up to CONNECTIONS_PER_RUN pool connections at once (held look-up, batch write,
    # split look-up, snapshot seen-key table): max_concurrent_runs of them must never wait for one
    runs = daemon.app.daemon.max_concurrent_runs
    pool = daemon.engine.pool
    pool._timeout = 1  # type: ignore[attr-defined] # fail at once instead of waiting 30 s for a connection
    conns = [daemon.engine.connect() for _ in range(CONNECTIONS_PER_RUN * runs + 1)]
    for conn in conns:
        conn.close()
    assert pool_overflow(5, 4) == 12 and pool_overflow(40, 2) == 10  # never below SQLAlchemy's 10


# --------------------------------------------------------------------------- clock steps


class _AnyDatetime(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _REAL_DATETIME)


_REAL_DATETIME = datetime


class SteppedClock:
    """The wall clock as APScheduler and the dataset scheduler read it (``datetime.now``), ``offset``
    seconds away from the real one: setting ``offset`` steps it, as NTP, a VM restore or ``date -s``
    step the system clock (which a test cannot touch). Monotonic time and timers run on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def at(self, when: datetime) -> None:
        """Step the clock to ``when``."""
        self.offset = when.timestamp() - time.time()

    def now(self, tz: Any = None) -> datetime:
        return _REAL_DATETIME.fromtimestamp(time.time() + self.offset, tz)


@pytest.fixture
def stepped_clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    clock = SteppedClock()

    class Shifted(_REAL_DATETIME, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock.now(tz)

    patched = [
        name
        for name, module in list(sys.modules.items())
        if (name.startswith("apscheduler.") or name == "syncd.daemon.scheduler")
        and getattr(module, "datetime", None) is _REAL_DATETIME
    ]
    for name in patched:
        monkeypatch.setattr(sys.modules[name], "datetime", Shifted)
    assert "apscheduler.schedulers.base" in patched and "syncd.daemon.scheduler" in patched
    return clock


def test_a_clock_stepped_back_leaves_the_daemon_running(daemon: Daemon, stepped_clock: SteppedClock) -> None:
    """APScheduler plans on the wall clock: stepped back by an hour, it held every job (the heartbeat
    too) for an hour, the heartbeat went stale and the daemon exited as daemon.scheduler_dead. The
    step is noticed and the jobs re-armed: the heartbeat and the 1-second dataset go on."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.serve()))
    with capture_logs() as logs:
        thread.start()
        try:
            deadline = time.monotonic() + 15
            while not any(e["event"] == "sync.finish" for e in logs) and time.monotonic() < deadline:
                time.sleep(0.1)
            stepped_clock.offset = -3600.0
            before = sum(e["event"] == "sync.finish" for e in logs)
            time.sleep(daemon.app.daemon.heartbeat_timeout.total_seconds() + 2)
            assert thread.is_alive() and daemon.scheduler.heartbeat_age() < 2.5
            after = sum(e["event"] == "sync.finish" for e in logs)
        finally:
            daemon.request_stop()
            thread.join(30)
    assert result == [0]
    assert not [e for e in logs if e["event"] == "daemon.scheduler_dead"]
    assert after >= before + 2  # the dataset still runs every second
    (step,) = [e for e in logs if e["event"] == "daemon.clock_step"]
    assert step["log_level"] == "warning" and -3601 < step["step_s"] < -3599
    assert "residents" in step["rescheduled"]


def test_a_cron_time_the_clock_jumped_over_runs_once_instead_of_being_missed(
    stepped_clock: SteppedClock,
) -> None:
    """Stepped forward from 01:59 to 03:30, APScheduler found the 02:00 run 90 minutes late, past the
    misfire grace time, and skipped it: a day without data. It runs once now, like after a restart."""
    stepped_clock.at(datetime(2030, 3, 10, 1, 59, tzinfo=SHANGHAI))
    ran: list[datetime] = []
    skips: list[tuple[str, str]] = []
    sched = DatasetScheduler(
        lambda name: ran.append(stepped_clock.now(SHANGHAI)),
        timezone="Asia/Shanghai",
        heartbeat_interval=timedelta(seconds=0.5),
        on_skipped=lambda name, outcome: skips.append((name, outcome)),
    )
    sched.start()
    try:
        sched.apply({"nightly": CronSchedule(type="cron", cron="0 2 * * *", jitter=timedelta(seconds=1))})
        with capture_logs() as logs:
            stepped_clock.offset += 91 * 60  # 01:59 → 03:30
            deadline = time.monotonic() + 5
            while not ran and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        following = sched.next_run_times()["nightly"]
    finally:
        sched.shutdown()
    assert skips == [] and len(ran) == 1
    assert ran[0] >= datetime(2030, 3, 10, 3, 30, tzinfo=SHANGHAI)
    assert following is not None  # tomorrow's 02:00, within the jitter
    assert following.replace(second=0, microsecond=0) == datetime(2030, 3, 11, 2, 0, tzinfo=SHANGHAI)
    (step,) = [e for e in logs if e["event"] == "daemon.clock_step"]
    assert 5459 < step["step_s"] < 5461 and list(step["rescheduled"]) == ["nightly"]


def test_after_a_step_back_interval_jobs_keep_their_pace_and_cron_jobs_follow_the_new_time(
    stepped_clock: SteppedClock,
) -> None:
    """A VM restored to yesterday's snapshot: the hourly dataset waited a day and an hour, the 02:00 one
    two days. Interval jobs move back with the clock; cron jobs take their next time in the new one."""
    stepped_clock.at(datetime(2030, 3, 10, 3, 0, tzinfo=SHANGHAI))  # the 02:00 run is done
    sched = DatasetScheduler(
        lambda name: None, timezone="Asia/Shanghai", heartbeat_interval=timedelta(seconds=0.5)
    )
    sched.start()
    try:
        sched.apply({"hourly": every(3600), "nightly": CronSchedule(type="cron", cron="0 2 * * *")})
        hourly = sched.next_run_times()["hourly"]
        assert sched.next_run_times()["nightly"] == datetime(2030, 3, 11, 2, 0, tzinfo=SHANGHAI)
        with capture_logs() as logs:
            stepped_clock.offset -= 86400  # 2030-03-09 03:00
            time.sleep(1.5)  # the scheduler thread wakes for the heartbeat at least twice
        after = sched.next_run_times()
        assert sched.heartbeat_age() < 1.5
    finally:
        sched.shutdown()
    moved = after["hourly"]
    assert hourly is not None and moved is not None  # the step is measured to the microsecond
    assert abs(moved - (hourly - timedelta(days=1))) < timedelta(milliseconds=10)
    assert after["nightly"] == datetime(2030, 3, 10, 2, 0, tzinfo=SHANGHAI)
    (step,) = [e for e in logs if e["event"] == "daemon.clock_step"]
    assert step["log_level"] == "warning" and -86401 < step["step_s"] < -86399
    assert sorted(step["rescheduled"]) == ["hourly", "nightly"]


def test_the_daily_prune_the_clock_jumped_over_is_not_caught_up(stepped_clock: SteppedClock) -> None:
    """A clock set wrong far forward (a bad time source, `date -s` with a typo, a VM resumed with a
    wrong host clock) made the daily retention, jumped over, run at once with a cut-off computed from
    the wrong time: every entry looked old. The daemon's own daily jobs take their next time in the
    new clock instead, and the step is remembered (the daemon does not prune for a day after it)."""
    stepped_clock.at(datetime(2030, 3, 10, 3, 0, tzinfo=SHANGHAI))
    ran: list[datetime] = []
    sched = DatasetScheduler(
        lambda name: None, timezone="Asia/Shanghai", heartbeat_interval=timedelta(seconds=0.5)
    )
    sched.start()
    try:
        first = sched.set_daily(PRUNE_JOB, lambda: ran.append(stepped_clock.now(SHANGHAI)), (3, 30))
        assert first == datetime(2030, 3, 10, 3, 30, tzinfo=SHANGHAI)
        with capture_logs() as logs:
            stepped_clock.offset += 400 * 86400 + 3600  # 2031-04-14 04:00: today's 03:30 jumped over
            time.sleep(1.5)  # the scheduler thread wakes for the heartbeat at least twice
        following = sched._scheduler.get_job(PRUNE_JOB).next_run_time
    finally:
        sched.shutdown()
    assert ran == [], "the retention ran at once after the clock jumped forward"
    assert following == datetime(2031, 4, 15, 3, 30, tzinfo=SHANGHAI)
    since = sched.since_clock_step()
    assert since is not None and 0 <= since < 5
    (step,) = [e for e in logs if e["event"] == "daemon.clock_step"]
    assert step["rescheduled"] == {PRUNE_JOB: following.isoformat()}


def test_a_steady_clock_re_arms_nothing(stepped_clock: SteppedClock) -> None:
    sched = DatasetScheduler(lambda name: None, timezone="Asia/Shanghai")
    sched._scheduler.start(paused=True)
    try:
        sched.apply({"hourly": every(3600)})
        planned = sched.next_run_times()
        stepped_clock.offset += 1.0  # below the threshold: NTP slewing, a leap second
        assert sched.check_clock() is None
        assert sched.next_run_times() == planned
    finally:
        sched.shutdown()
