"""Pruning the change feed on real SQLite, PostgreSQL and MariaDB: ``FeedPruner`` (by time, by id, in
batches smaller than the data, dry run, resuming), ``syncd changes prune`` and the gap warning of
``syncd changes``, the daemon's daily retention, and a sync's batch beside an open prune on MariaDB."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.cli import main
from syncd.config import load_config
from syncd.daemon.locks import DatasetLocker
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.scheduler import PRUNE_JOB
from syncd.daemon.service import Daemon
from syncd.gateway import Gateway
from syncd.ops.prune import prune_datasets, retention_bounds
from syncd.targets import StateStore, create_target_engine, shape_from_dataset, write_engine
from syncd.targets.prune import PRUNE_LOCK, FeedPruner, PruneBound
from tests.daemon_proc import daemon_config
from tests.e2e import SECRET, SECRET_ENV
from tests.test_daemon_units import _REAL_DATETIME, SteppedClock, _AnyDatetime
from tests.test_targets_writer import RUN1, RUN2, RUN3, engine, make_dataset, resident, store

__all__ = ["engine", "store"]  # fixtures shared with test_targets_writer

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=100)


def fill(store: StateStore, name: str, n: int, *, start: int = 0, run: str = RUN1) -> list[int]:
    """``n`` insert entries of dataset ``name`` (table ``t_<name>``); their ids, in order."""
    ds = make_dataset(name=name, table=f"t_{name}")
    store.writer(ds, shape_from_dataset(ds)).write(run, [resident(i) for i in range(start, start + n)])
    return [e["id"] for e in store.changes(name, limit=100_000)]


def age(engine: sa.Engine, ids: list[int], when: datetime = OLD) -> None:
    """Make these entries look written at ``when``."""
    ch = sa.table("syncd_changes", sa.column("id"), sa.column("changed_at"))
    with engine.begin() as conn:
        conn.execute(sa.update(ch).where(ch.c.id.in_(ids)).values(changed_at=when.replace(tzinfo=None)))


def ids_of(store: StateStore, name: str) -> list[int]:
    return [e["id"] for e in store.changes(name, limit=100_000)]


# --------------------------------------------------------------------------- the pruner


def test_prune_by_id_in_batches_smaller_than_the_data(store: StateStore) -> None:
    residents = fill(store, "residents", 25)
    households = fill(store, "households", 6)
    pruner = FeedPruner(store, batch_size=4)
    result = pruner.prune("residents", PruneBound(upto_id=residents[19]))
    assert (result.deleted, result.batches, result.last_deleted_id) == (20, 5, residents[19])
    assert result.newest_id == residents[-1] and not result.stopped
    assert ids_of(store, "residents") == residents[20:]
    assert ids_of(store, "households") == households  # another dataset's entries are never touched
    mark = pruner.pruned("residents")
    assert mark is not None and (mark.upto_id, mark.deleted) == (residents[19], 20)  # summed over batches
    assert pruner.pruned("households") is None
    # nothing left within the bound: nothing happens, the mark stays
    again = pruner.prune("residents", PruneBound(upto_id=residents[19]))
    assert (again.deleted, again.last_deleted_id) == (0, None)
    assert pruner.pruned("residents") == mark


def test_prune_by_time_deletes_exactly_the_older_entries(store: StateStore, engine: sa.Engine) -> None:
    residents = fill(store, "residents", 30)
    age(engine, residents[:17])
    age(engine, residents[17:19], NOW - timedelta(days=20))
    result = FeedPruner(store, batch_size=5).prune("residents", PruneBound(before=NOW - timedelta(days=30)))
    assert (result.deleted, result.batches) == (17, 4)
    assert ids_of(store, "residents") == residents[17:]
    mark = FeedPruner(store).pruned("residents")
    assert mark is not None and mark.upto_id == residents[16]
    assert abs(mark.upto_changed_at - OLD) < timedelta(seconds=1)


def test_an_entry_newer_than_the_bound_is_never_deleted_even_between_older_ones(
    store: StateStore, engine: sa.Engine
) -> None:
    """Entries are in id order, but a clock can step back: a time bound deletes up to the first entry
    within it, and what comes after it stays, old-looking or not."""
    residents = fill(store, "residents", 12)
    age(engine, residents[:10])
    age(engine, [residents[4]], NOW - timedelta(days=1))  # written while the clock was ahead
    FeedPruner(store, batch_size=3).prune("residents", PruneBound(before=NOW - timedelta(days=30)))
    assert ids_of(store, "residents") == residents[4:]


def test_entries_stamped_while_the_clock_was_behind_stay_after_the_young_ones(
    store: StateStore, engine: sa.Engine
) -> None:
    """A server whose RTC lost its time boots before NTP sets the clock: syncd stamps the entries it
    writes meanwhile weeks back, and a clock corrected in steps (or by a wrong time source first)
    stamps later ones out of order too. The prune cut the feed at its earliest-stamped young entry
    and deleted every old-looking entry before that one: here entries written an hour ago, before
    any reader saw them. A time bound now ends at the first young entry in id order."""
    residents = fill(store, "residents", 30)
    age(engine, residents[:9])  # really old
    age(engine, residents[9:12], NOW - timedelta(days=2))  # young: written before the reboot
    behind = residents[12:25]  # written an hour ago, with the clock 60 days behind
    age(engine, behind, NOW - timedelta(days=60))
    age(engine, residents[25:27], NOW - timedelta(days=20))  # then 20 days behind; then right
    bound = PruneBound(before=NOW - timedelta(days=30))
    pruner = FeedPruner(store, batch_size=4)
    assert pruner.prune("residents", bound, dry_run=True).deleted == 9
    result = pruner.prune("residents", bound)
    assert (result.deleted, result.batches, result.last_deleted_id) == (9, 3, residents[8])
    assert ids_of(store, "residents") == residents[9:]
    mark = pruner.pruned("residents")
    assert mark is not None and mark.upto_id == residents[8]
    assert abs(mark.upto_changed_at - OLD) < timedelta(seconds=1)
    assert pruner.prune("residents", bound).deleted == 0  # again: the young entries still come first
    # once those expire the cut moves on, past the entries stamped while the clock was behind
    age(engine, residents[9:12], NOW - timedelta(days=40))
    assert pruner.prune("residents", bound).deleted == 3 + len(behind)
    assert ids_of(store, "residents") == residents[25:]


def test_the_newest_entry_of_a_dataset_always_stays(store: StateStore, engine: sa.Engine) -> None:
    """SQLite hands out the largest id + 1 again once the newest row is gone (and MySQL < 8 after a
    restart): a reader that had processed that id would never see the entry that reuses it."""
    residents = fill(store, "residents", 5)
    age(engine, residents)
    result = FeedPruner(store, batch_size=2).prune("residents", PruneBound(before=NOW, upto_id=10**12))
    assert result.deleted == 4 and ids_of(store, "residents") == residents[-1:]
    fill(store, "residents", 1, start=100, run=RUN2)
    assert ids_of(store, "residents")[-1] > residents[-1]  # a new id, never one handed out before
    assert FeedPruner(store).prune("nosuch", PruneBound(before=NOW)).newest_id is None


def test_a_dry_run_counts_and_changes_nothing(store: StateStore, engine: sa.Engine) -> None:
    residents = fill(store, "residents", 14)
    age(engine, residents[:9])
    bound = PruneBound(before=NOW - timedelta(days=1), upto_id=residents[6])
    dry = FeedPruner(store, batch_size=2).prune("residents", bound, dry_run=True)
    assert (dry.deleted, dry.batches, dry.dry_run) == (7, 0, True)
    assert ids_of(store, "residents") == residents
    assert FeedPruner(store).pruned("residents") is None
    assert FeedPruner(store, batch_size=2).prune("residents", bound).deleted == 7  # as counted


def test_an_interrupted_prune_keeps_its_batches_and_carries_on_when_run_again(store: StateStore) -> None:
    residents = fill(store, "residents", 20)
    pruner = FeedPruner(store, batch_size=3)
    seen: list[int] = []
    stopped = pruner.prune(
        "residents", PruneBound(upto_id=residents[14]), should_stop=lambda: len(seen) >= 2,
        on_batch=lambda _name, n: seen.append(n),
    )
    assert stopped.stopped and stopped.deleted == 6 == sum(seen)
    assert ids_of(store, "residents") == residents[6:]
    resumed = pruner.prune("residents", PruneBound(upto_id=residents[14]))
    assert resumed.deleted == 9 and ids_of(store, "residents") == residents[15:]
    mark = pruner.pruned("residents")
    assert mark is not None and (mark.upto_id, mark.deleted) == (residents[14], 15)


def test_prune_datasets_takes_the_prune_lock(store: StateStore, db_url: str) -> None:
    residents = fill(store, "residents", 4)
    locker, other = DatasetLocker(db_url), DatasetLocker(db_url)
    try:
        with other.hold(PRUNE_LOCK) as held, capture_logs() as logs:
            assert held
            outcome = prune_datasets(store, locker, {"residents": PruneBound(upto_id=residents[-1])})
        assert outcome.locked and ids_of(store, "residents") == residents
        assert [e["event"] for e in logs] == ["changes.prune_skipped_locked"]
        outcome = prune_datasets(store, locker, {"residents": PruneBound(upto_id=residents[-1])})
        assert not outcome.locked and outcome.deleted == 3
    finally:
        locker.close()
        other.close()


# --------------------------------------------------------------------------- MariaDB: beside a sync


def _held_while(action: Any, seconds: float = 10) -> bool:
    """Run ``action`` in a thread; whether it finished within ``seconds``."""
    errors: list[BaseException] = []
    done = threading.Event()

    def go() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    finished = done.wait(seconds)
    if finished:
        thread.join()
        assert not errors, errors
    return finished


@pytest.fixture
def maria(mariadb_url: str) -> Iterator[tuple[sa.Engine, StateStore]]:
    eng = create_target_engine(mariadb_url)
    s = StateStore(eng)
    s.ensure_schema()
    try:
        yield eng, s
    finally:
        eng.dispose()


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
@pytest.mark.parametrize("bound", ["time", "id"])
def test_mariadb_a_syncs_batch_does_not_wait_for_an_open_prune(
    maria: tuple[sa.Engine, StateStore], bound: str, isolation: str
) -> None:
    """InnoDB's next-key locks can block inserts at the end of an index. syncd's sessions run at READ
    COMMITTED, where a DELETE's range scan takes no gap locks. At REPEATABLE READ (a server's default,
    not syncd's) deleting a dataset's entries up to its newest one, the last in the index, locks the
    gap where new entries go until the prune commits; the newest entry stays, so the scan stops
    there. Either way the sync's batch — new entries, updates of rows whose old entries are being
    deleted, another dataset — goes through while the prune's transaction is still open."""
    eng, store = maria
    fill(store, "households", 5)
    residents = fill(store, "residents", 40)  # the last entries in both indexes
    age(eng, residents)
    by_time = PruneBound(before=NOW - timedelta(days=1))
    prune = by_time if bound == "time" else PruneBound(upto_id=residents[-1])
    res = make_dataset(name="residents", table="t_residents")
    hh = make_dataset(name="households", table="t_households")
    res_writer = store.writer(res, shape_from_dataset(res))
    hh_writer = store.writer(hh, shape_from_dataset(hh))

    def sync() -> None:
        res_writer.write(RUN2, [resident(i, name="新名字") for i in range(0, 39, 7)] + [resident(50)])
        hh_writer.write(RUN2, [resident(60)])

    pruner = FeedPruner(store, batch_size=1000)
    with write_engine(eng).execution_options(isolation_level=isolation).begin() as conn:
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 20")
        span = pruner._span(conn, "residents", prune)  # what prune() deletes, in a transaction left open
        assert span is not None
        lowest, upper, _ = span
        _, deleted, _ = pruner.delete_batch("residents", prune, lowest - 1, upper, conn=conn)
        assert _held_while(sync), "the sync's batch waited for the prune's open transaction"
        assert deleted == 39
    after = store.changes("residents", limit=1000)
    assert after[0]["id"] == residents[-1]
    assert sorted(e["op"] for e in after[1:]) == ["insert"] + ["update"] * 6


def test_mariadb_a_prune_does_not_wait_for_a_syncs_open_batch(maria: tuple[sa.Engine, StateStore]) -> None:
    eng, store = maria
    residents = fill(store, "residents", 30)
    age(eng, residents[:25])
    ch = store.tables.changes
    entry = {
        "dataset": "residents", "run_id": RUN3, "op": "insert", "row_key": "R99999", "changed_columns": "[]",
        "old_values": None, "new_values": None, "changed_at": NOW,
    }
    with write_engine(eng).begin() as conn:  # a sync's batch, not committed yet
        conn.execute(sa.insert(ch), [entry])
        pruner = FeedPruner(store, batch_size=4)
        assert _held_while(lambda: pruner.prune("residents", PruneBound(before=NOW - timedelta(days=1))))
    assert ids_of(store, "residents")[:5] == residents[25:]
    assert len(ids_of(store, "residents")) == 6


# --------------------------------------------------------------------------- the command line


def _synced(tmp_path: Path, db_url: str) -> Iterator[Path]:
    with Gateway(records=60, seed=9, app_secret=SECRET) as gw:
        path = daemon_config(tmp_path, db_url=db_url, gateway_url=gw.url, every="15m")
        assert main(["-c", str(path), "--log-format", "json", "sync", "residents"]) == 0
        yield path


@pytest.fixture
def config(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A configuration whose dataset residents has synced 60 records (60 insert entries)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield from _synced(tmp_path, db_url)


@pytest.fixture
def lite_config(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The same on SQLite only (command-line checks that do not depend on the database)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield from _synced(tmp_path, sqlite_url)


def _feed(config: Path) -> tuple[sa.Engine, StateStore]:
    app = load_config(config)
    eng = create_target_engine(app.target.url.get_secret_value())
    return eng, StateStore(eng)


def test_cli_prune_by_keep_days_and_by_checkpoint(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eng, store = _feed(config)
    try:
        everything = ids_of(store, "residents")
        assert len(everything) == 60
        age(eng, everything[:40])
        capsys.readouterr()
        args = ["-c", str(config), "changes", "prune", "residents", "--keep-days", "30", "--batch-size", "7"]
        assert main([*args, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "residents: would delete 40 change entries" in out and "dry run" in out
        assert ids_of(store, "residents") == everything
        assert main(args) == 0
        out = capsys.readouterr().out
        kept = f"(newest entry kept: id {everything[-1]})"
        assert f"residents: deleted 40 change entries in 6 batch(es) {kept}" in out
        assert out.rstrip().endswith("deleted 40 change entries of 1 dataset(s)")
        assert ids_of(store, "residents") == everything[40:]
        # a reader's checkpoint: everything up to id N is done
        upto = ["-c", str(config), "changes", "prune", "residents", "--upto-id", str(everything[49])]
        assert main(upto) == 0
        assert ids_of(store, "residents") == everything[50:]
        assert main(["-c", str(config), "changes", "prune", "--all", "--keep-days", "30"]) == 0
        assert "residents: nothing to delete" in capsys.readouterr().out
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["residents"], "say what to delete"),
        (["residents", "--before", "2026-01-01", "--keep-days", "3"], "not both"),
        (["residents", "--all", "--keep-days", "3"], "or give --all (not both)"),
        (["--keep-days", "3"], "name the datasets to prune"),
        (["--all", "--upto-id", "5"], "name exactly one dataset"),
        (["residents", "--keep-days", "0"], "at least 1"),
        (["residents", "--keep-days", "1000000"], "--keep-days must be at most 36500"),
        (["residents", "--keep-days", "99999999999999999999"], "--keep-days must be at most 36500"),
        (["residents", "--before", "0001-01-01"], "is too early: give a time from 1900-01-01 on"),
        (["residents", "--before", "9999-12-31T23:59-05:00"], "is out of range"),
        (["residents", "--upto-id", "-1"], "--upto-id must be between 0 and 9223372036854775807"),
        (["residents", "--upto-id", "99999999999999999999"], "--upto-id must be between 0 and"),
        (["residents", "--before", "2999-01-01"], "in the future"),
        (["residents", "--before", "yesterday"], "is not a time"),
        (["residents", "--keep-days", "3", "--batch-size", "0"], "--batch-size must be between"),
        (["residents", "--keep-days", "3", "--limit", "5"], "--limit go with showing a feed"),
        (["residentz", "--keep-days", "3"], "unknown dataset(s) residentz"),
    ],
)
def test_cli_prune_usage_errors(
    lite_config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    capsys.readouterr()
    assert main(["-c", str(lite_config), "changes", "prune", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--after-id", "99999999999999999999"], "--after-id must be between -9223372036854775807 and 922"),
        (["--after-id", "0", "--limit", "99999999999999999999"], "--limit must be between 1 and 922"),
        (["--since", "0001-01-01"], "'0001-01-01' is too early: give a time from 1900-01-01 on"),
    ],
)
def test_cli_show_usage_errors(
    lite_config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """Numbers and times out of the database's (or Python's) range were tracebacks."""
    capsys.readouterr()
    assert main(["-c", str(lite_config), "changes", "residents", *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_show_options_and_prune_options_do_not_mix(
    lite_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["-c", str(lite_config), "changes", "residents", "--after-id", "0", "--dry-run"]) == 2
    assert "--dry-run go with `syncd changes prune`" in capsys.readouterr().err


def test_changes_warns_a_reader_whose_position_was_pruned(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eng, store = _feed(config)
    try:
        everything = ids_of(store, "residents")
        upto = ["-c", str(config), "changes", "prune", "residents", "--upto-id", str(everything[9])]
        assert main(upto) == 0
        capsys.readouterr()
        behind = ["-c", str(config), "changes", "residents", "--after-id", str(everything[3])]
        assert main([*behind, "--format", "jsonl"]) == 0
        captured = capsys.readouterr()
        assert f"up to id {everything[9]}" in captured.err and "were deleted by a prune" in captured.err
        assert f"after id {everything[3]}" in captured.err and "resident_info" in captured.err
        assert len(captured.out.splitlines()) == 50  # what is left is still printed
        # a reader at (or past) the pruned end has missed nothing
        assert main(["-c", str(config), "changes", "residents", "--after-id", str(everything[9])]) == 0
        assert capsys.readouterr().err == ""
        assert main(["-c", str(config), "changes", "residents", "--since", "2000-01-01", "--limit", "1"]) == 0
        assert "were deleted by a prune" in capsys.readouterr().err
    finally:
        eng.dispose()


# --------------------------------------------------------------------------- the daemon's retention


def test_the_daemon_prunes_expired_entries_once_a_day(config: Path) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text + "changes: {retention_days: 30, prune_at: '04:15'}\n", encoding="utf-8")
    daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
    try:
        store = daemon.store
        everything = ids_of(store, "residents")
        age(daemon.engine, everything[:25])
        daemon._adopt(daemon.app)
        assert set(retention_bounds(daemon.app, NOW)) == {"residents"}
        with capture_logs() as logs:
            daemon.prune_job()  # what the scheduler runs at 04:15
        assert ids_of(store, "residents") == everything[25:]
        pruned = [e for e in logs if e["event"] == "changes.pruned"]
        assert [(e["dataset"], e["deleted"]) for e in pruned] == [("residents", 25)]
        assert 'syncd_changes_pruned_total{dataset="residents"} 25.0' in daemon.metrics.render().decode()
        # scheduled daily at prune_at, in the configured zone; the dataset's own setting wins
        daemon.scheduler.start()
        nxt = daemon._schedule_retention(daemon.app)
        assert nxt is not None and nxt.endswith("+08:00") and "T04:15:00" in nxt
        job = daemon.scheduler._scheduler.get_job(PRUNE_JOB)
        assert job is not None and job.executor == "maintenance"
        assert PRUNE_JOB not in daemon.scheduler.next_run_times()
        dataset_file = config.parent / "datasets" / "residents.yaml"
        with dataset_file.open("a", encoding="utf-8") as f:
            f.write("changes: {retention_days: forever}\n")
        assert daemon.reload()
        assert daemon.scheduler._scheduler.get_job(PRUNE_JOB) is None  # nothing expires any more
    finally:
        daemon.scheduler.shutdown()
        daemon.locker.close()
        daemon.engine.dispose()


def test_without_retention_the_daemon_deletes_nothing(config: Path) -> None:
    daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
    try:
        everything = ids_of(daemon.store, "residents")
        age(daemon.engine, everything)
        assert retention_bounds(daemon.app, NOW) == {}
        daemon.prune_job()
        assert ids_of(daemon.store, "residents") == everything
        daemon.scheduler.start()
        assert daemon._schedule_retention(daemon.app) is None
    finally:
        daemon.scheduler.shutdown()
        daemon.locker.close()
        daemon.engine.dispose()


# --------------------------------------------------------------------------- wrong clocks


def shift_clock(monkeypatch: pytest.MonkeyPatch, modules: tuple[str, ...]) -> SteppedClock:
    """The wall clock (``datetime.now``) of these modules, and APScheduler's, ``offset`` seconds from
    the real one, as a stepped system clock is to the whole process (tests/test_daemon_units.py);
    the database server's clock stays right."""
    clock = SteppedClock()

    class Shifted(_REAL_DATETIME, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock.now(tz)

    for name, module in list(sys.modules.items()):
        ours = name.startswith("apscheduler.") or name in modules
        if ours and getattr(module, "datetime", None) is _REAL_DATETIME:
            monkeypatch.setattr(module, "datetime", Shifted)
    return clock


DAEMON_CLOCK = (
    "syncd.daemon.scheduler", "syncd.daemon.service", "syncd.targets.writer", "syncd.targets.prune"
)


def test_entries_written_before_ntp_set_the_clock_survive_the_step(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server boots with its RTC 400 days behind (syncd.service was not ordered after
    time-sync.target): the daemon's first runs stamp today's entries 400 days back. Then chrony steps
    the clock right: the daemon re-armed the daily retention it had "jumped over" to run at once, and
    with retention_days: 30 it deleted every entry written seconds before, unread. The retention is
    not caught up after a step, and waits a day after one."""
    clock = shift_clock(monkeypatch, DAEMON_CLOCK)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock.offset = -400 * 86400
    with Gateway(records=60, seed=9, app_secret=SECRET) as gw:
        # its first run comes within the jitter, not within the 30 s catch-up spread
        config = daemon_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, every="1h", jitter="1s")
        at = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(hours=6)).strftime("%H:%M")
        config.write_text(config.read_text() + f"changes: {{retention_days: 30, prune_at: '{at}'}}\n")
        daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
        thread = threading.Thread(target=daemon.serve)
        with capture_logs() as logs:
            thread.start()
            try:
                deadline = time.monotonic() + 30
                while not any(e["event"] == "sync.finish" for e in logs) and time.monotonic() < deadline:
                    time.sleep(0.05)
                written = ids_of(daemon.store, "residents")
                assert len(written) == 60
                clock.offset = 0.0  # chrony steps the clock right
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if any(e["event"] == "daemon.clock_step" for e in logs):
                        break
                    time.sleep(0.05)
                time.sleep(2)  # a prune caught up "at once" would be running now
                following = daemon.scheduler._scheduler.get_job(PRUNE_JOB).next_run_time
            finally:
                daemon.request_stop()
                thread.join(60)
        left = ids_of(daemon.store, "residents")
    assert left == written, f"{len(written) - len(left)} of the entries written seconds ago were pruned"
    assert not [e for e in logs if e["event"].startswith("changes.prune")]
    assert following.strftime("%H:%M") == at and following > datetime.now(UTC)
    since = daemon.scheduler.since_clock_step()
    assert since is not None and since < 60


def test_the_daemon_does_not_prune_within_a_day_of_a_clock_step(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text + "changes: {retention_days: 30, prune_at: '04:15'}\n", encoding="utf-8")
    clock = shift_clock(monkeypatch, ("syncd.daemon.scheduler",))
    daemon = Daemon(config, load_config(config), notifier=SystemdNotifier(environ={}))
    try:
        everything = ids_of(daemon.store, "residents")
        age(daemon.engine, everything[:25])
        daemon.scheduler.start()
        daemon._schedule_retention(daemon.app)
        clock.offset -= 7 * 86400  # a VM restored from last week's snapshot
        daemon.scheduler.check_clock()  # (or the scheduler thread did, waking up)
        with capture_logs() as logs:
            daemon.prune_job()  # the daily job, within the day
        assert ids_of(daemon.store, "residents") == everything
        (skipped,) = [e for e in logs if e["event"] == "changes.prune_skipped"]
        assert skipped["reason"] == "clock_step" and skipped["log_level"] == "warning"
        assert "Nothing was deleted" in skipped["hint"]
        daemon.scheduler._stepped_at -= 86400  # a day later, on the steady clock
        daemon.prune_job()
        assert ids_of(daemon.store, "residents") == everything[25:]
    finally:
        daemon.scheduler.shutdown()
        daemon.locker.close()
        daemon.engine.dispose()


@pytest.fixture
def clock_ahead(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    """This process's clock an hour ahead of the database server's."""
    clock = shift_clock(monkeypatch, ("syncd.targets.prune", "syncd.commands.changes"))
    clock.offset = 3600.0
    return clock


def test_a_prune_by_time_refuses_when_the_database_server_disagrees_about_the_time(
    config: Path, db_url: str, clock_ahead: SteppedClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cut-off of a prune by time comes from this machine's clock, and it stamped the entries: a
    clock an hour (or a year) off deletes entries that are not old. The database server keeps a clock
    of its own (not SQLite: a file on this machine), read once per prune."""
    eng, store = _feed(config)
    locker = DatasetLocker(db_url)
    try:
        everything = ids_of(store, "residents")
        age(eng, everything[:10], datetime.now(UTC) - timedelta(days=30, minutes=30))
        capsys.readouterr()
        code = main(["-c", str(config), "changes", "prune", "residents", "--keep-days", "30"])
        captured = capsys.readouterr()
        if db_url.startswith("sqlite"):
            assert code == 0 and ids_of(store, "residents") == everything[10:]
            return
        assert code == 1, captured
        assert ids_of(store, "residents") == everything
        assert "refused: this machine's clock (" in captured.err
        assert " s ahead of the database server's (" in captured.err
        assert "Nothing was deleted" in captured.err and "timedatectl" in captured.err
        with capture_logs() as logs:
            outcome = prune_datasets(store, locker, {"residents": PruneBound(before=datetime.now(UTC))})
        assert outcome.refused is not None and not outcome.results and not outcome.locked
        (skipped,) = [e for e in logs if e["event"] == "changes.prune_skipped"]
        assert skipped["reason"] == "clock_mismatch" and 3590 < skipped["apart_s"] < 3610
        # the lock was not taken: whoever's clock agrees prunes meanwhile
        with locker.hold(PRUNE_LOCK) as held:
            assert held
        # an id bound does not depend on the clock
        assert prune_datasets(store, locker, {"residents": PruneBound(upto_id=everything[4])}).deleted == 5
    finally:
        locker.close()
        eng.dispose()
