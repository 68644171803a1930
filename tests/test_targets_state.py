"""The state store on real databases: runs, watermarks, abandoned runs, the change feed reader."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from syncd.errors import TargetError
from syncd.targets import RunCounts, RunInfo, StateStore, create_target_engine, shape_from_dataset
from tests.test_targets_writer import RUN1, RUN2, RUN3, engine, make_dataset, resident, store

__all__ = ["engine", "store"]  # fixtures shared with test_targets_writer

T0 = datetime(2026, 11, 2, 0, 0, 0, 250000, tzinfo=UTC)


def run_info(
    run_id: str, dataset: str = "residents", *, at: datetime = T0, before: str | None = None
) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        dataset=dataset,
        started_at=at,
        approval_code="SJHL-2026-0042",
        purpose="民政救助核查",
        node="county-srv:4242",
        trigger="schedule",
        watermark_before=before,
    )


def test_run_lifecycle_and_watermark(store: StateStore) -> None:
    assert store.get_watermark("residents") is None
    store.begin_run(run_info(RUN1))
    (running,) = store.last_runs("residents")
    assert (running["status"], running["finished_at"], running["fetched"]) == ("running", None, 0)
    assert running["started_at"] == T0
    assert (running["approval_code"], running["purpose"], running["node"], running["trigger"]) == (
        "SJHL-2026-0042",
        "民政救助核查",
        "county-srv:4242",
        "schedule",
    )

    counts = RunCounts(
        fetched=10,
        inserted=7,
        updated=1,
        deleted=1,
        unchanged=0,
        quarantined=1,
        reported_total=10,
        requests=3,
        retries=1,
        pages=2,
    )
    store.finish_run(
        RUN1, "residents", status="success", counts=counts, error=None, watermark="2026-11-02 08:00:00"
    )
    assert store.get_watermark("residents") == "2026-11-02 08:00:00"
    (done,) = store.last_runs("residents")
    assert done["status"] == "success"
    assert done["finished_at"] >= done["started_at"]
    assert done["finished_at"].tzinfo is UTC
    assert {k: done[k] for k in counts.as_dict()} == counts.as_dict()
    assert (done["watermark_before"], done["watermark_after"]) == (None, "2026-11-02 08:00:00")

    # a failed run keeps the watermark: watermark_after is the one it started from
    store.begin_run(run_info(RUN2, at=T0 + timedelta(hours=1), before="2026-11-02 08:00:00"))
    store.finish_run(
        RUN2,
        "residents",
        status="failed",
        counts=RunCounts(fetched=3),
        error="upstream 系统繁忙",
        watermark=None,
    )
    assert store.get_watermark("residents") == "2026-11-02 08:00:00"
    latest = store.last_runs("residents")[0]
    assert (latest["run_id"], latest["status"], latest["error"]) == (RUN2, "failed", "upstream 系统繁忙")
    assert latest["watermark_after"] == "2026-11-02 08:00:00"

    store.begin_run(run_info(RUN3, at=T0 + timedelta(hours=2), before="2026-11-02 08:00:00"))
    store.finish_run(
        RUN3, "residents", status="success", counts=RunCounts(), error=None, watermark="2026-11-02 10:00:00"
    )
    assert store.get_watermark("residents") == "2026-11-02 10:00:00"


def test_a_crashed_run_is_marked_abandoned(store: StateStore) -> None:
    store.begin_run(run_info(RUN1))  # this process dies without finish_run
    store.begin_run(run_info("a" * 32, dataset="households"))  # another dataset, still running
    store.begin_run(run_info(RUN2, at=T0 + timedelta(minutes=5)))
    runs = {r["run_id"]: r for r in store.last_runs()}
    assert runs[RUN1]["status"] == "abandoned"
    assert runs[RUN1]["finished_at"] is not None
    assert runs[RUN2]["status"] == "running"
    assert runs["a" * 32]["status"] == "running"


def test_last_runs_newest_first_with_filter_and_limit(store: StateStore) -> None:
    for i, run_id in enumerate((RUN1, RUN2, RUN3)):
        store.begin_run(
            run_info(run_id, dataset="households" if i == 1 else "residents", at=T0 + timedelta(minutes=i))
        )
    assert [r["run_id"] for r in store.last_runs()] == [RUN3, RUN2, RUN1]
    assert [r["run_id"] for r in store.last_runs("residents")] == [RUN3, RUN1]
    assert [r["run_id"] for r in store.last_runs(limit=1)] == [RUN3]


def test_finishing_an_unknown_run_fails_and_keeps_the_watermark(store: StateStore) -> None:
    with pytest.raises(TargetError, match="begin_run must come first"):
        store.finish_run(RUN1, "residents", status="success", counts=RunCounts(), error=None, watermark="x")
    assert store.get_watermark("residents") is None


def test_values_that_do_not_fit_are_refused_before_the_database(store: StateStore) -> None:
    with pytest.raises(ValueError, match="run_id"):
        store.begin_run(run_info("x" * 33))
    store.begin_run(run_info(RUN1))
    with pytest.raises(ValueError, match="watermark"):
        store.finish_run(
            RUN1, "residents", status="success", counts=RunCounts(), error=None, watermark="9" * 65
        )


def test_long_errors_are_kept_truncated(store: StateStore) -> None:
    store.begin_run(run_info(RUN1))
    store.finish_run(
        RUN1, "residents", status="failed", counts=RunCounts(), error="错" * 30_000, watermark=None
    )
    assert len(store.last_runs()[0]["error"]) == 20_000


def test_run_info_create() -> None:
    info = RunInfo.create("residents", approval_code="A-1", trigger="schedule")
    assert len(info.run_id) == 32
    assert info.started_at.tzinfo is UTC
    assert info.node.rsplit(":", 1)[1].isdigit()


def test_changes_since_and_after_id(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(3)])
    with engine.begin() as conn:  # make the first batch look an hour old
        conn.execute(sa.update(store.tables.changes).values(changed_at=datetime(2026, 1, 1, 12, 0)))
    writer.write(RUN2, [resident(0, name="新名字")])
    everything = store.changes("residents")
    assert [e["op"] for e in everything] == ["insert"] * 3 + ["update"]
    assert everything[0]["changed_at"] == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    recent = store.changes("residents", since=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC))
    assert [e["op"] for e in recent] == ["update"]
    naive_utc = store.changes("residents", since=datetime(2026, 1, 1, 12, 0))  # naive means UTC
    assert len(naive_utc) == 4
    assert [e["id"] for e in store.changes("residents", after_id=everything[1]["id"], limit=1)] == [
        everything[2]["id"]
    ]
    assert store.changes("households") == []


def test_last_started_is_the_latest_run_that_ended(store: StateStore) -> None:
    """The scheduler's memory across restarts (syncd/daemon/scheduler.py): the start of the latest
    success, failure or refusal, in UTC; interrupted, abandoned and running runs do not count."""
    naive = T0.replace(tzinfo=None, microsecond=0)  # as the runner stores it: naive UTC
    assert store.last_started("residents") is None
    for i, (run_id, status) in enumerate(
        (("a" * 32, "success"), ("b" * 32, "failed"), ("c" * 32, "interrupted"), ("d" * 32, None))
    ):
        store.begin_run(run_info(run_id, at=naive + timedelta(hours=i)))
        if status is not None:
            done = RunCounts()
            store.finish_run(run_id, "residents", status=status, counts=done, error=None, watermark=None)
    store.begin_run(run_info("e" * 32, dataset="households", at=naive + timedelta(hours=9)))
    store.finish_run("e" * 32, "households", status="success", counts=RunCounts(), error=None, watermark=None)
    assert store.last_started("residents") == naive.replace(tzinfo=UTC) + timedelta(hours=1)  # the failure
    assert store.last_started("households") == naive.replace(tzinfo=UTC) + timedelta(hours=9)


def _ended(store: StateStore, run_id: str, status: str, at: datetime, dataset: str = "residents") -> None:
    store.begin_run(run_info(run_id, dataset, at=at))
    store.finish_run(run_id, dataset, status=status, counts=RunCounts(), error=None, watermark=None)


def test_runs_stamped_by_a_clock_that_was_ahead_are_set_apart(store: StateStore) -> None:
    """A hardware clock kept in Beijing time and read as UTC stamps runs 8 h ahead until NTP steps it
    back: the scheduler and the last-run gauges must not take such a run as the latest one."""
    now = datetime.now(UTC).replace(microsecond=0)
    _ended(store, "a" * 32, "success", now - timedelta(hours=2))
    _ended(store, "b" * 32, "failed", now - timedelta(hours=1))
    _ended(store, "c" * 32, "success", now + timedelta(hours=8))  # the clock was 8 h fast
    assert store.last_started("residents") == now - timedelta(hours=1)
    _ended(store, "d" * 32, "refused", now + timedelta(hours=8), dataset="households")  # only a fast one
    assert store.last_started("households") is None

    times = store.run_times(timeout=timedelta(seconds=30))
    ended = {r["run_id"]: r["finished_at"] for r in store.last_runs(limit=10)}
    residents = times["residents"]
    assert residents.started == now - timedelta(hours=1)  # the failure, not the run 8 h ahead
    assert residents.future == now + timedelta(hours=8)
    assert residents.finished == ended["b" * 32]
    assert residents.succeeded == ended["a" * 32]
    households = times["households"]
    assert (households.started, households.finished, households.succeeded) == (None, None, None)
    assert households.future == now + timedelta(hours=8)


def test_run_times_of_every_dataset_in_one_read(store: StateStore) -> None:
    """What the daemon reads at start and on reload: per dataset, the start of the latest ended run
    (what a schedule counts from), the end of the latest run (interrupted too) and of the latest
    success; running and abandoned runs count for none of them."""
    now = datetime.now(UTC).replace(microsecond=0)
    _ended(store, "a" * 32, "success", now - timedelta(hours=3))
    _ended(store, "b" * 32, "refused", now - timedelta(hours=2))
    _ended(store, "c" * 32, "interrupted", now - timedelta(hours=1))
    store.begin_run(run_info("d" * 32, "households", at=now - timedelta(minutes=5)))  # still running
    store.begin_run(run_info("e" * 32, "streets", at=now - timedelta(hours=9)))
    store.begin_run(run_info("f" * 32, "streets", at=now - timedelta(hours=8)))  # e becomes abandoned
    ended = {r["run_id"]: r["finished_at"] for r in store.last_runs(limit=10)}
    assert set(store.run_times(timeout=timedelta(seconds=30))) == {"residents"}
    residents = store.run_times(timeout=timedelta(seconds=30))["residents"]
    assert residents.started == now - timedelta(hours=2)  # not the interrupted one
    assert residents.finished == ended["c" * 32]  # the interrupted one ran
    assert residents.succeeded == ended["a" * 32]
    assert residents.future is None


def test_reading_the_run_times_gives_up_after_its_timeout(store: StateStore, engine: sa.Engine) -> None:
    """The daemon's main thread reads the run times at start and on reload: a runs table locked by
    a maintenance statement must cost it the timeout, not its watchdog. The connection goes back to
    the pool without the short timeout."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        pytest.skip("SQLite has no statement timeout (its busy timeout bounds the wait)")
    runs = store.tables.runs.name
    pg = dialect == "postgresql"
    lock = f"LOCK TABLE {runs} IN ACCESS EXCLUSIVE MODE" if pg else f"LOCK TABLES {runs} WRITE"
    dba = create_target_engine(engine.url.render_as_string(hide_password=False))
    try:
        with dba.connect() as conn:
            conn.execute(sa.text(lock))
            release = threading.Timer(60, conn.connection.dbapi_connection.close)  # never hang the suite
            release.start()
            try:
                with pytest.raises(TargetError, match="reading the latest runs of every dataset"):
                    store.run_times(timeout=timedelta(seconds=1))
            finally:
                release.cancel()
            conn.rollback()
            if not pg:
                conn.execute(sa.text("UNLOCK TABLES"))
    finally:
        dba.dispose()
    assert store.run_times(timeout=timedelta(seconds=30)) == {}
    if not pg:  # the session setting was put back on the pooled connection
        same = "SELECT @@session.max_statement_time = @@global.max_statement_time"
        with engine.connect() as conn:
            assert conn.execute(sa.text(same)).scalar()
