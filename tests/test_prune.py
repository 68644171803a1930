"""Pruning the change feed on real SQLite, PostgreSQL and MariaDB: ``FeedPruner`` (by time, by id, in
batches smaller than the data, dry run, resuming) and a sync's batch beside an open prune on MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.targets import StateStore, create_target_engine, shape_from_dataset, write_engine
from syncd.targets.prune import FeedPruner, PruneBound
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
    """Entries are in id order, but a clock can step back: the time condition is in every DELETE."""
    residents = fill(store, "residents", 12)
    age(engine, residents[:10])
    age(engine, [residents[4]], NOW - timedelta(days=1))  # written while the clock was ahead
    FeedPruner(store, batch_size=3).prune("residents", PruneBound(before=NOW - timedelta(days=30)))
    left = ids_of(store, "residents")
    assert residents[4] in left and not set(residents[:4]) & set(left)


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
