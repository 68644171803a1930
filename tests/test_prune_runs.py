"""Pruning the runs table on real SQLite, PostgreSQL and MariaDB: ``RunPruner`` (old runs deleted in
batches, each dataset's latest run of every status kept, running runs kept, what the daemon reads back
unchanged), ``prune_runs`` (the prune lock, the clock check, a failure reported), the daemon's daily
retention (``runs.retention_days``: scheduled, "forever" deleting nothing, not within a day of a clock
step), and a run starting and ending beside an open prune on MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.daemon.locks import DatasetLocker
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.scheduler import PRUNE_JOB
from syncd.daemon.service import Daemon
from syncd.errors import TargetError
from syncd.ops.prune import prune_runs, runs_before
from syncd.targets import StateStore, create_target_engine, write_engine
from syncd.targets.history import read_run_times
from syncd.targets.prune import PRUNE_LOCK
from syncd.targets.records import RunCounts, RunInfo
from syncd.targets.runprune import RunPruner
from tests.test_prune import clock_ahead, config, shift_clock
from tests.test_targets_writer import engine, store

__all__ = ["clock_ahead", "config", "engine", "store"]  # fixtures shared with other modules

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
BEFORE = NOW - 30 * DAY  # a retention of 30 days


def add_run(
    engine: sa.Engine,
    dataset: str,
    started: datetime,
    status: str = "success",
    *,
    took: timedelta | None = timedelta(minutes=2),
    finished: datetime | None = None,
) -> str:
    """One row in the runs table, as a run of ``dataset`` would leave it; its run_id. ``took`` None:
    still running (no end)."""
    run_id = uuid.uuid4().hex
    end = finished if finished is not None else (None if took is None else started + took)
    runs = StateStore(engine).tables.runs
    row = {
        "run_id": run_id,
        "dataset": dataset,
        "started_at": started,
        "finished_at": end,
        "status": status,
        "approval_code": "审批-2026-001",
        "purpose": "低保核查",
        "node": "node1:1",
        "trigger": "schedule",
    }
    with write_engine(engine).begin() as conn:
        conn.execute(sa.insert(runs), [row])
    return run_id


def run_ids(engine: sa.Engine, dataset: str | None = None) -> set[str]:
    runs = StateStore(engine).tables.runs
    query = sa.select(runs.c.run_id)
    if dataset is not None:
        query = query.where(runs.c.dataset == dataset)
    with engine.connect() as conn:
        return {str(r) for r in conn.execute(query).scalars()}


def read_back(store: StateStore) -> dict[str, Any]:
    """Everything the daemon and the commands read of the latest runs."""
    with store.engine.connect() as conn:
        times = read_run_times(conn, store.tables.runs, datetime.now(UTC))
    names = sorted(times)
    return {
        "run_times": times,
        "last_started": {n: store.last_started(n) for n in names},
        "latest": {n: [r["run_id"] for r in store.last_runs(n, limit=1)] for n in names},
    }


def history(engine: sa.Engine) -> dict[str, dict[str, str]]:
    """Old runs of residents, households and streets (names → run_id), and young ones."""
    ids: dict[str, dict[str, str]] = {"residents": {}, "households": {}, "streets": {}}
    res = ids["residents"]
    for day in range(200, 100, -10):  # ten old successes, all older than the young ones
        res[f"success-{day}"] = add_run(engine, "residents", NOW - day * DAY)
    res["failed-150"] = add_run(engine, "residents", NOW - 150 * DAY, "failed")
    res["failed-120"] = add_run(engine, "residents", NOW - 120 * DAY, "failed")  # the latest failure
    res["refused-400"] = add_run(engine, "residents", NOW - 400 * DAY, "refused")  # the only refusal
    res["interrupted-180"] = add_run(engine, "residents", NOW - 180 * DAY, "interrupted")
    res["interrupted-90"] = add_run(engine, "residents", NOW - 90 * DAY, "interrupted")
    res["abandoned-170"] = add_run(engine, "residents", NOW - 170 * DAY, "abandoned", took=timedelta(days=1))
    res["abandoned-60"] = add_run(engine, "residents", NOW - 60 * DAY, "abandoned", took=timedelta(days=1))
    res["running-300"] = add_run(engine, "residents", NOW - 300 * DAY, "running", took=None)  # no end
    for day in (20, 10, 1):
        res[f"success-young-{day}"] = add_run(engine, "residents", NOW - day * DAY)
    hh = ids["households"]  # nothing young: its latest runs are all old, and all stay
    for day in (90, 80, 70, 60):
        hh[f"success-{day}"] = add_run(engine, "households", NOW - day * DAY)
    hh["failed-75"] = add_run(engine, "households", NOW - 75 * DAY, "failed")
    hh["failed-65"] = add_run(engine, "households", NOW - 65 * DAY, "failed")
    st = ids["streets"]  # clocks gone wrong: starts and ends out of order, a start in the future
    st["success-lasted"] = add_run(engine, "streets", NOW - 101 * DAY, finished=NOW - 99 * DAY)  # ends last
    st["success-started-last"] = add_run(engine, "streets", NOW - 100 * DAY)  # starts last
    st["success-earlier"] = add_run(engine, "streets", NOW - 102 * DAY)
    st["success-ahead"] = add_run(engine, "streets", NOW + 300 * DAY)  # stamped by a clock that was ahead
    st["failed-ends-ahead"] = add_run(engine, "streets", NOW - 95 * DAY, "failed", finished=NOW + 3 * DAY)
    st["failed-80"] = add_run(engine, "streets", NOW - 80 * DAY, "failed")
    st["failed-85"] = add_run(engine, "streets", NOW - 85 * DAY, "failed")
    return ids


KEPT = {
    "residents": {
        "failed-120",
        "refused-400",
        "interrupted-90",
        "abandoned-60",
        "running-300",
        "success-young-20",
        "success-young-10",
        "success-young-1",
    },
    "households": {"success-60", "failed-65"},
    # the latest start and the latest end of its successes are two runs; the success stamped in the
    # future does not count (it is not read back as a start either); the failure that ends in the
    # future is no older than the latest one that counts, and is read back once now reaches its end
    "streets": {"success-lasted", "success-started-last", "success-ahead", "failed-ends-ahead", "failed-80"},
}


# --------------------------------------------------------------------------- the pruner


def test_old_runs_go_and_each_status_keeps_its_latest(store: StateStore, engine: sa.Engine) -> None:
    ids = history(engine)
    before = read_back(store)
    assert before["run_times"]["streets"].future is not None  # the run stamped a year ahead
    pruner = RunPruner(store, batch_size=3)
    seen: list[tuple[str, int]] = []
    results = {
        name: pruner.prune(name, BEFORE, on_batch=lambda n, k: seen.append((n, k))) for name in sorted(ids)
    }
    for name, runs in ids.items():
        kept = {runs[k] for k in KEPT[name]}
        assert run_ids(engine, name) == kept, sorted(k for k, v in runs.items() if v in run_ids(engine, name))
        assert results[name].deleted == len(runs) - len(kept)
    assert results["residents"].deleted == 13 and results["residents"].batches == 7  # 18 old runs, 3 a batch
    assert sum(n for name, n in seen if name == "residents") == 13
    assert read_back(store) == before  # what the daemon reads back is the same
    # nothing more to delete: a second prune changes nothing
    assert sum(pruner.prune(name, BEFORE).deleted for name in ids) == 0


def test_read_back_stays_the_same_as_time_goes_on(store: StateStore, engine: sa.Engine) -> None:
    """The latest of each status is the latest among the runs up to now: later, runs stamped in the
    future count as well, and what a pruned table reads back is still what the whole one would."""
    ids = history(engine)
    moments = [NOW + 4 * DAY, NOW + 400 * DAY]  # the failure's end counts; then the success ahead
    with engine.connect() as conn:
        whole = [read_run_times(conn, store.tables.runs, later) for later in moments]
    assert whole[0]["streets"].finished == NOW + 3 * DAY
    for name in ids:
        RunPruner(store).prune(name, BEFORE)
    with engine.connect() as conn:
        assert [read_run_times(conn, store.tables.runs, later) for later in moments] == whole


def test_a_dry_run_counts_and_changes_nothing(store: StateStore, engine: sa.Engine) -> None:
    history(engine)
    everything = run_ids(engine)
    dry = RunPruner(store, batch_size=2).prune("residents", BEFORE, dry_run=True)
    assert (dry.deleted, dry.batches, dry.dry_run) == (13, 0, True)
    assert run_ids(engine) == everything
    assert RunPruner(store, batch_size=2).prune("residents", BEFORE).deleted == 13  # as counted


def test_an_interrupted_prune_keeps_its_batches_and_carries_on(store: StateStore, engine: sa.Engine) -> None:
    for day in range(100, 40, -2):  # 30 old successes
        add_run(engine, "residents", NOW - day * DAY)
    pruner = RunPruner(store, batch_size=4)
    seen: list[int] = []
    stopped = pruner.prune(
        "residents", BEFORE, should_stop=lambda: len(seen) >= 2, on_batch=lambda _, n: seen.append(n)
    )
    assert stopped.stopped and stopped.deleted == 8 == sum(seen)
    assert len(run_ids(engine, "residents")) == 22
    assert pruner.prune("residents", BEFORE).deleted == 21  # the latest success stays
    assert len(run_ids(engine, "residents")) == 1


def test_runs_tied_at_a_batch_boundary_all_go(store: StateStore, engine: sa.Engine) -> None:
    """A range ends at a start time: every run of that start falls in it, none is skipped."""
    for _ in range(5):
        add_run(engine, "residents", NOW - 90 * DAY)
    latest = add_run(engine, "residents", NOW - 40 * DAY)
    result = RunPruner(store, batch_size=2).prune("residents", BEFORE)
    assert result.deleted == 5 and run_ids(engine, "residents") == {latest}


def test_young_runs_and_a_dataset_without_runs(store: StateStore, engine: sa.Engine) -> None:
    young = {add_run(engine, "residents", NOW - day * DAY) for day in (29, 20, 2)}
    assert RunPruner(store).prune("residents", BEFORE).deleted == 0
    assert run_ids(engine) == young
    assert RunPruner(store).prune("nosuch", BEFORE).deleted == 0


# --------------------------------------------------------------------------- prune_runs


def test_prune_runs_takes_the_prune_lock(store: StateStore, engine: sa.Engine, db_url: str) -> None:
    old = [add_run(engine, "residents", NOW - day * DAY) for day in (90, 80, 70)]
    locker, other = DatasetLocker(db_url), DatasetLocker(db_url)
    try:
        with other.hold(PRUNE_LOCK) as held, capture_logs() as logs:
            assert held
            outcome = prune_runs(store, locker, ["residents"], BEFORE)
        assert outcome.locked and run_ids(engine) == set(old)
        assert [e["event"] for e in logs] == ["runs.prune_skipped_locked"]
        with capture_logs() as logs:
            outcome = prune_runs(store, locker, ["residents"], BEFORE)
        assert not outcome.locked and outcome.deleted == 2 and run_ids(engine) == {old[-1]}
        (pruned,) = [e for e in logs if e["event"] == "runs.pruned"]
        assert (pruned["dataset"], pruned["deleted"], pruned["log_level"]) == ("residents", 2, "info")
        (finished,) = [e for e in logs if e["event"] == "runs.prune_finished"]
        assert finished["deleted"] == 2 and finished["failed"] == []
    finally:
        locker.close()
        other.close()


def test_a_failing_prune_is_reported_and_the_next_dataset_goes_on(
    store: StateStore, engine: sa.Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("households", "residents"):
        for day in (90, 80):
            add_run(engine, name, NOW - day * DAY)
    real = RunPruner.survivors

    def broken(self: RunPruner, conn: sa.Connection, dataset: str, now: datetime) -> Any:
        if dataset == "households":
            conn.execute(sa.text("SELECT no_such_column FROM no_such_table"))
        return real(self, conn, dataset, now)

    monkeypatch.setattr(RunPruner, "survivors", broken)
    locker = DatasetLocker(db_url)
    try:
        with capture_logs() as logs:
            outcome = prune_runs(store, locker, ["households", "residents"], BEFORE)
    finally:
        locker.close()
    assert list(outcome.failures) == ["households"] and "no_such_table" in outcome.failures["households"]
    assert outcome.deleted == 1 and len(run_ids(engine, "households")) == 2
    (failed,) = [e for e in logs if e["event"] == "runs.prune_failed"]
    assert failed["dataset"] == "households" and failed["log_level"] == "error"
    assert "pruning the runs of dataset households" in failed["error"]
    (finished,) = [e for e in logs if e["event"] == "runs.prune_finished"]
    assert finished["failed"] == ["households"]


def test_a_prune_of_runs_refuses_when_the_database_server_disagrees_about_the_time(
    store: StateStore, engine: sa.Engine, db_url: str, clock_ahead: Any
) -> None:
    old = [add_run(engine, "residents", NOW - day * DAY) for day in (90, 80)]
    locker = DatasetLocker(db_url)
    try:
        with capture_logs() as logs:
            outcome = prune_runs(store, locker, ["residents"], BEFORE)
    finally:
        locker.close()
    if db_url.startswith("sqlite"):  # no second clock to compare with
        assert outcome.refused is None and outcome.deleted == 1
        return
    assert outcome.refused is not None and "the runs were stamped by it" in outcome.refused
    assert run_ids(engine) == set(old) and not outcome.results
    (skipped,) = [e for e in logs if e["event"] == "runs.prune_skipped"]
    assert skipped["reason"] == "clock_mismatch"


# --------------------------------------------------------------------------- the daemon's retention


@pytest.fixture
def daemon_with(config: Path) -> Iterator[Any]:
    """``daemon_with(extra_yaml)``: a daemon over ``config`` (residents synced once) with these lines
    added to the main file."""
    made: list[Daemon] = []

    def make(extra: str) -> Daemon:
        config.write_text(config.read_text(encoding="utf-8") + extra, encoding="utf-8")
        daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.scheduler.shutdown()
        daemon.locker.close()
        daemon.engine.dispose()


def test_the_daemon_prunes_old_runs_once_a_day(daemon_with: Any) -> None:
    daemon = daemon_with("runs: {retention_days: 30}\nchanges: {prune_at: '04:15'}\n")
    assert runs_before(daemon.app, NOW) == NOW - 30 * DAY
    synced = run_ids(daemon.engine)  # the sync's run, today
    old = [
        add_run(daemon.engine, "residents", NOW - day * DAY, status)
        for day, status in ((90, "success"), (80, "failed"), (70, "success"), (60, "failed"))
    ]
    entries = len(daemon.store.changes("residents", limit=1000))
    before = read_back(daemon.store)
    daemon._adopt(daemon.app)  # as at start: the datasets' series
    with capture_logs() as logs:
        daemon.prune_job()  # what the scheduler runs at 04:15
    # the old successes go (today's is later), and the older failure (the 60-day one is the latest)
    assert run_ids(daemon.engine) == synced | {old[3]}
    assert read_back(daemon.store) == before
    assert len(daemon.store.changes("residents", limit=1000)) == entries  # the change feed is left alone
    pruned = [(e["dataset"], e["deleted"]) for e in logs if e["event"] == "runs.pruned"]
    assert pruned == [("residents", 3)]
    assert 'syncd_runs_pruned_total{dataset="residents"} 3.0' in daemon.metrics.render().decode()
    assert not [e for e in logs if e["event"].startswith("changes.prune")]  # its retention is off
    # scheduled daily at changes.prune_at, though the change feed is kept for good
    daemon.scheduler.start()
    nxt = daemon._schedule_retention(daemon.app)
    assert nxt is not None and "T04:15:00" in nxt
    assert daemon.scheduler._scheduler.get_job(PRUNE_JOB) is not None
    daemon.config_path.write_text(
        daemon.config_path.read_text(encoding="utf-8").replace(
            "retention_days: 30", "retention_days: forever"
        ),
        encoding="utf-8",
    )
    assert daemon.reload()
    assert daemon.scheduler._scheduler.get_job(PRUNE_JOB) is None  # nothing expires any more


def test_without_run_retention_the_daemon_deletes_no_run(daemon_with: Any) -> None:
    daemon = daemon_with("runs: {retention_days: forever}\nchanges: {retention_days: 30}\n")
    assert runs_before(daemon.app, NOW) is None
    for day in (90, 80, 70):
        add_run(daemon.engine, "residents", NOW - day * DAY)
    everything = run_ids(daemon.engine)
    with capture_logs() as logs:
        daemon.prune_job()  # the change feed's retention runs, the runs' does not
    assert run_ids(daemon.engine) == everything
    assert not [e for e in logs if e["event"].startswith("runs.")]
    assert [e for e in logs if e["event"] == "changes.prune_finished"]


def test_a_failure_of_one_retention_does_not_stop_the_other(
    daemon_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = daemon_with("runs: {retention_days: 30}\nchanges: {retention_days: 30}\n")

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise TargetError("the database went away")

    monkeypatch.setattr("syncd.daemon.service.prune_runs", unreachable)
    with capture_logs() as logs:
        daemon.prune_job()  # never raises
    (failed,) = [e for e in logs if e["event"] == "runs.prune_failed"]
    assert failed["log_level"] == "error" and "the database went away" in failed["error"]
    assert [e for e in logs if e["event"] == "changes.prune_finished"]  # ran before it
    monkeypatch.setattr("syncd.daemon.service.prune_runs", prune_runs)  # back, and the other one fails
    monkeypatch.setattr("syncd.daemon.service.prune_datasets", unreachable)
    for day in (90, 80):
        add_run(daemon.engine, "residents", NOW - day * DAY)
    with capture_logs() as logs:
        daemon.prune_job()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["changes.prune_failed"]
    assert [(e["dataset"], e["deleted"]) for e in logs if e["event"] == "runs.pruned"] == [("residents", 2)]


def test_the_daemon_does_not_prune_runs_within_a_day_of_a_clock_step(
    daemon_with: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = shift_clock(monkeypatch, ("syncd.daemon.scheduler",))
    daemon = daemon_with("runs: {retention_days: 30}\n")
    for day in (90, 80, 70):
        add_run(daemon.engine, "residents", NOW - day * DAY)
    everything = run_ids(daemon.engine)
    daemon.scheduler.start()
    daemon._schedule_retention(daemon.app)
    clock.offset -= 7 * 86400  # a VM restored from last week's snapshot
    daemon.scheduler.check_clock()
    with capture_logs() as logs:
        daemon.prune_job()  # the daily job, within the day
    assert run_ids(daemon.engine) == everything
    (skipped,) = [e for e in logs if e["event"].endswith("prune_skipped")]
    assert skipped["event"] == "runs.prune_skipped" and skipped["reason"] == "clock_step"
    assert skipped["log_level"] == "warning" and "Nothing was deleted" in skipped["hint"]
    daemon.scheduler._stepped_at -= 86400  # a day later, on the steady clock
    daemon.prune_job()
    assert len(run_ids(daemon.engine)) == len(everything) - 3  # the sync's run of today is the latest


# --------------------------------------------------------------------------- MariaDB: beside a run


def test_mariadb_a_run_starts_and_ends_beside_an_open_prune(mariadb_url: str) -> None:
    """A run's start marks the dataset's older running rows abandoned (an UPDATE over the dataset's
    rows, some of them locked by the prune) and inserts its own row after the dataset's last one; its
    end updates that row. At READ COMMITTED, syncd's sessions' level, none of them waits for a prune's
    batch whose transaction is still open, even when every run of the dataset is old and the DELETE's
    scan reaches the end of the dataset's rows in the index."""
    from tests.test_prune import _held_while

    eng = create_target_engine(mariadb_url)
    try:
        store = StateStore(eng)
        store.ensure_schema()
        for day in range(120, 40, -1):
            add_run(eng, "residents", NOW - day * DAY)
        add_run(eng, "residents", NOW - 100 * DAY, "running", took=None)  # a run whose process died
        add_run(eng, "households", NOW - 50 * DAY)  # the next dataset in the index
        pruner = RunPruner(store, batch_size=1000)
        deletable = pruner.deletable("residents", NOW)
        assert deletable is not None
        run = RunInfo.create("residents")

        def a_run() -> None:
            store.begin_run(run)
            store.finish_run(
                run.run_id, "residents", status="success", counts=RunCounts(), error=None, watermark=None
            )

        with write_engine(eng).begin() as conn:  # READ COMMITTED, as every session of syncd's
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 20")
            _, done, deleted = pruner.delete_batch("residents", BEFORE, deletable, None, conn=conn)
            assert done and deleted == 79
            assert _held_while(a_run), "the run waited for the prune's open transaction"
        # the latest old success, the dead run (now abandoned), the new run
        assert len(run_ids(eng, "residents")) == 3
    finally:
        eng.dispose()
