"""Full-snapshot delete detection through the runner, with a SQLite front-end database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.gateway import FaultPlan
from syncd.runner import Progress, run_dataset
from syncd.targets import StateStore
from syncd.targets import snapshot as snapshot_module
from tests.e2e import (
    ListSource,
    Syncer,
    change_log,
    demo_gateway,
    read_whole_with_snapshot_deletes,
    target_rows,
    upstream_active,
    write_config,
)
from tests.sources_kit import local_rows, make_app, store_for, upstream_table

NOW = datetime(2026, 3, 1, 12, 0, 0)
_ENGINES: list[sa.Engine] = []


@pytest.fixture(autouse=True)
def _dispose() -> Iterator[None]:
    yield
    while _ENGINES:
        _ENGINES.pop().dispose()


def _track(engine: sa.Engine) -> sa.Engine:
    _ENGINES.append(engine)
    return engine


def _store(url: str) -> StateStore:
    store = store_for(url)
    _track(store.engine)
    return store


def _setup(tmp_path: Path, db_url: str, rows: int, **snapshot: object):
    front = f"sqlite:///{tmp_path / 'front.db'}"
    engine = _track(sa.create_engine(front))
    table = upstream_table(engine, rows, when=NOW)
    app, ds = make_app(
        db_url,
        {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"], "page_size": 37},
        connections={"qzk": {"type": "sql", "url": front}},
        target={"snapshot_delete": {"max_ratio": 0.1, **snapshot}},
    )
    return engine, table, app, ds, _store(db_url)


def _delete(engine: sa.Engine, table: sa.Table, ids: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.id.in_(ids)))


def test_missing_keys_are_deleted_once_and_logged(tmp_path: Path, db_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, db_url, 200)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00003", "p00150"])
    result = run_dataset(app, ds, store, now=NOW)
    assert result.ok, result.error
    assert result.counts.deleted == 2
    rows = local_rows(store)
    assert len(rows) == 198 and "p00003" not in rows and "p00150" not in rows
    deletes = [c for c in store.changes("people") if c["op"] == "delete"]
    assert sorted(c["row_key"] for c in deletes) == ["p00003", "p00150"]
    again = run_dataset(app, ds, store, now=NOW)
    assert again.ok and again.counts.deleted == 0
    assert len([c for c in store.changes("people") if c["op"] == "delete"]) == 2


def test_a_snapshot_missing_90_percent_is_refused_and_nothing_deleted(tmp_path: Path, db_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, db_url, 200)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, [f"p{i:05d}" for i in range(180)])
    result = run_dataset(app, ds, store, now=NOW)
    assert result.status == "failed"
    assert result.error is not None
    assert "180 of 200" in result.error and "90.0%" in result.error
    assert "target.snapshot_delete.max_ratio" in result.error
    assert len(local_rows(store)) == 200
    assert not [c for c in store.changes("people") if c["op"] == "delete"]


def test_an_empty_upstream_never_wipes_the_table(tmp_path: Path, db_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, db_url, 50)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, [f"p{i:05d}" for i in range(50)])
    result = run_dataset(app, ds, store, now=NOW)
    assert result.status == "failed" and "50 of 50" in (result.error or "")
    assert len(local_rows(store)) == 50


def test_missing_runs_waits_for_consecutive_complete_runs(tmp_path: Path, db_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, db_url, 100, missing_runs=2)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00010"])
    first = run_dataset(app, ds, store, now=NOW)
    assert first.ok and first.counts.deleted == 0 and "p00010" in local_rows(store)
    second = run_dataset(app, ds, store, now=NOW)
    assert second.ok and second.counts.deleted == 1 and "p00010" not in local_rows(store)


def test_a_key_seen_again_restarts_its_streak(tmp_path: Path, sqlite_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, sqlite_url, 100, missing_runs=2)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00010"])
    assert run_dataset(app, ds, store, now=NOW).counts.deleted == 0
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": "p00010", "name": "回来", "amount": 10, "upd": NOW}])
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00010"])
    assert run_dataset(app, ds, store, now=NOW).counts.deleted == 0  # streak 1 again
    assert run_dataset(app, ds, store, now=NOW).counts.deleted == 1


def test_soft_snapshot_deletes_set_the_flag(tmp_path: Path, sqlite_url: str) -> None:
    front = f"sqlite:///{tmp_path / 'front.db'}"
    engine = _track(sa.create_engine(front))
    table = upstream_table(engine, 40, when=NOW)
    app, ds = make_app(
        sqlite_url,
        {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        connections={"qzk": {"type": "sql", "url": front}},
        target={"snapshot_delete": {"max_ratio": 0.5},
                "logical_delete": {"field": "gone", "mode": "soft", "soft_column": "is_deleted"}},
    )
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE people ADD gone VARCHAR(1)"))
    store = _store(sqlite_url)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00001"])
    result = run_dataset(app, ds, store, now=NOW)
    assert result.ok and result.counts.deleted == 1
    with store.engine.connect() as conn:
        flags = dict(conn.execute(sa.text("SELECT pid, is_deleted FROM people_local")).all())
    assert flags["p00001"] in (1, True) and sum(bool(v) for v in flags.values()) == 1
    assert run_dataset(app, ds, store, now=NOW).counts.deleted == 0


def test_an_interrupted_read_infers_no_deletes(tmp_path: Path, sqlite_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, sqlite_url, 200)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00199"])
    calls = iter(range(1000))
    result = run_dataset(app, ds, store, now=NOW, should_stop=lambda: next(calls) > 3)
    assert result.status == "interrupted" and result.counts.deleted == 0
    assert "p00199" in local_rows(store)
    assert run_dataset(app, ds, store, now=NOW).counts.deleted == 1


# --------------------------------------------------------------------------- over HTTP, page numbers


def _http_snapshot_syncer(tmp_path: Path, db_url: str, gateway_url: str) -> Syncer:
    """The demo residents dataset read whole each run (no ``incremental:``) with snapshot deletes."""
    cfg = write_config(tmp_path, db_url=db_url, gateway_url=gateway_url, page_size=100, batch_size=100)
    read_whole_with_snapshot_deletes(tmp_path)
    return Syncer(cfg)


def test_a_record_skipped_by_a_shifting_page_is_read_again_not_deleted(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that leaves the upstream result while it is paged by page number shifts the rest
    one place up: the first record of a later page moves onto a page already read, and the read
    never sees it. Deleting what such a read did not see would delete a live record (and the next
    run would insert it again). The reported total changed between pages, so the run reads the
    snapshot a second time and sees every live record: nothing live is deleted, and the deletes are
    not deferred either (the second read was steady). The record removed after its page was read
    was seen by this run; the next run deletes it, and only it."""
    with demo_gateway(monkeypatch, records=450, seed=11) as gateway:
        syncer = _http_snapshot_syncer(tmp_path, db_url, gateway.url)
        try:
            first = syncer.run()
            assert first.ok and first.counts.inserted > 400, first.error
            gone = gateway.store.ids()[0]  # first in the gateway's order: on page 1

            def remove_during_the_read(progress: Progress) -> None:
                if progress.pages == 1:  # page 2 may already be read ahead; pages 3-5 shift
                    gateway.store.hard_delete([gone])

            with capture_logs() as logs:
                shifted = syncer.run(on_progress=remove_during_the_read)
            assert shifted.ok, shifted.error
            events = [e["event"] for e in logs]
            assert "sync.reread" in events
            assert "sync.read_unstable" not in events and "snapshot.deferred" not in events
            assert shifted.counts.deleted == 0  # without the second read: the skipped live record
            assert set(target_rows(db_url)) == set(upstream_active(gateway.store)) | {gone}
            settled = syncer.run()
            assert settled.ok and settled.counts.deleted == 1
            assert set(target_rows(db_url)) == set(upstream_active(gateway.store))
            deletes = [c["row_key"] for c in change_log(db_url) if c["op"] == "delete"]
            assert deletes == [gone]
        finally:
            syncer.close()


def test_snapshot_deletes_wait_when_both_reads_moved(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose total changes between pages of the second read too: the run deletes
    nothing and says why; the next steady read deletes."""
    with demo_gateway(monkeypatch, records=450, seed=11) as gateway:
        syncer = _http_snapshot_syncer(tmp_path, db_url, gateway.url)
        try:
            assert syncer.run().ok
            gone = gateway.store.ids()[-1]
            gateway.store.hard_delete([gone])
            gateway.faults = FaultPlan(rate=0.5, kinds=["total_drift"], seed=3)  # some pages, both reads
            with capture_logs() as logs:
                drifting = syncer.run()
            assert drifting.ok, drifting.error
            events = [e["event"] for e in logs]
            assert events.count("sync.reread") == 1 and events.count("sync.read_unstable") == 1
            assert "snapshot.deferred" in events
            assert drifting.counts.deleted == 0 and gone in target_rows(db_url)
            assert any("snapshot deletes wait for the next complete read" in w for w in drifting.warnings)
            assert any("upstream kept changing while it was read twice" in w for w in drifting.warnings)
            gateway.faults = FaultPlan()
            settled = syncer.run()
            assert settled.ok and settled.counts.deleted == 1 and gone not in target_rows(db_url)
        finally:
            syncer.close()


def _state(store: StateStore) -> list[tuple[object, ...]]:
    rs = store.tables.row_state
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(rs).order_by(rs.c.dataset, rs.c.row_key))]


def test_an_unchanged_snapshot_leaves_the_row_state_alone(tmp_path: Path, db_url: str) -> None:
    # the seen keys go into the run's own temporary table: a re-sync that finds nothing new
    # writes nothing to row_state (earlier versions updated seen_run on every key, every run)
    engine, table, app, ds, store = _setup(tmp_path, db_url, 200)
    assert run_dataset(app, ds, store, now=NOW).ok
    before = _state(store)
    again = run_dataset(app, ds, store, now=NOW)
    assert again.ok and again.counts.unchanged == 200 and again.counts.deleted == 0
    assert _state(store) == before
    _delete(engine, table, ["p00007"])
    gone = run_dataset(app, ds, store, now=NOW)
    assert gone.ok and gone.counts.deleted == 1
    assert _state(store) == [row for row in before if row[1] != "p00007"]


def test_seen_keys_inserted_in_several_bulk_inserts_delete_exactly_the_missing(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_module, "SEEN_BUFFER", 7)  # page_size 37: flushed within and across pages
    engine, table, app, ds, store = _setup(tmp_path, db_url, 200)
    assert run_dataset(app, ds, store, now=NOW).ok
    gone = {"p00000", "p00036", "p00037", "p00199"}
    _delete(engine, table, sorted(gone))
    result = run_dataset(app, ds, store, now=NOW)
    assert result.ok and result.counts.deleted == 4
    assert set(local_rows(store)) == {f"p{i:05d}" for i in range(200)} - gone


def _seen_tables(store: StateStore) -> int:
    """Temporary seen-key tables alive in any session of the target database."""
    name = f"{store.prefix}seen_keys"
    engine = store.engine
    if engine.dialect.name == "postgresql":
        query = "SELECT count(*) FROM pg_class WHERE relname = %(n)s AND relpersistence = 't'"
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(query, {"n": name}).scalar_one())
    # SQLite, MariaDB: a temporary table belongs to one session; ask every connection the pool holds
    checkedin = getattr(engine.pool, "checkedin", None)  # an in-memory database's pool has one connection
    conns = [engine.connect() for _ in range(max(1, checkedin() if callable(checkedin) else 1))]
    found = 0
    try:
        for conn in conns:
            try:
                conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()  # noqa: S608 - a test's own name
                found += 1
            except sa.exc.DBAPIError:
                conn.rollback()
    finally:
        for conn in conns:
            conn.close()
    return found


def test_the_seen_key_table_ends_with_the_run(tmp_path: Path, db_url: str) -> None:
    engine, table, app, ds, store = _setup(tmp_path, db_url, 100)
    assert run_dataset(app, ds, store, now=NOW).ok
    assert _seen_tables(store) == 0
    _delete(engine, table, [f"p{i:05d}" for i in range(50)])  # refused by the guard, after the seen keys
    failed = run_dataset(app, ds, store, now=NOW)
    assert failed.status == "failed" and "max_ratio" in (failed.error or "")
    assert _seen_tables(store) == 0


def test_snapshot_deletes_on_an_in_memory_target(tmp_path: Path) -> None:
    # an in-memory SQLite database lives in its one connection: the seen-key table is dropped at
    # the end of the run, never by discarding that connection (which would take the data with it)
    engine, table, app, ds, store = _setup(tmp_path, "sqlite://", 80)
    assert run_dataset(app, ds, store, now=NOW).ok
    _delete(engine, table, ["p00005"])
    result = run_dataset(app, ds, store, now=NOW)
    assert result.ok and result.counts.deleted == 1
    assert len(local_rows(store)) == 79 and "p00005" not in local_rows(store)
    assert _seen_tables(store) == 0


def _list_source(records: list[dict[str, object]]) -> Callable[[object, object], ListSource]:
    """One page of ``records``, anew for each run (a run takes the records off its pages)."""
    return lambda app, ds: ListSource([[dict(r) for r in records]])


@pytest.mark.parametrize(
    "pid",
    [
        {"source": "id", "type": "string", "nullable": False},  # no length: the writer rejects the row
        {"source": "id", "type": "string", "length": 32, "nullable": False},  # the mapping quarantines it
    ],
    ids=["writer", "mapping"],
)
def test_a_key_too_long_for_row_state_is_quarantined_and_the_snapshot_goes_on(
    db_url: str, pid: dict[str, object]
) -> None:
    """row_state and the seen-key table hold keys of at most 512 characters: such a record is
    quarantined (DESIGN §4.6), and its key is not marked seen (it stands for no stored row) — on
    PostgreSQL and MariaDB marking it failed every run while upstream sent the record."""
    columns = {"pid": pid, "name": {"source": "name", "type": "string", "length": 64}}
    app, ds = make_app(db_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
                       connections={"qzk": {"type": "sql", "url": "sqlite://"}},
                       target={"snapshot_delete": {"max_ratio": 0.5}}, columns=columns)
    store = _store(db_url)
    records = [{"id": f"k{i}", "name": "n"} for i in range(10)] + [{"id": "x" * 600, "name": "n"}]
    for _ in range(2):
        result = run_dataset(app, ds, store, now=NOW, source_factory=_list_source(records))
        assert result.ok, result.error
        assert result.counts.quarantined == 1 and result.counts.deleted == 0
    assert len(_names(store)) == 10


def _names(store: StateStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT pid, name FROM people_local").tuples().all())


def test_a_record_quarantined_this_time_keeps_its_row(db_url: str) -> None:
    """A record read again but no longer mappable (here a name grown too long) is quarantined; its
    row stays. It is marked seen under its mapped key — ID numbers upper-cased here, so upstream's
    ``…123x`` is the row ``…123X`` — not under the key text upstream sent."""
    columns = {
        "pid": {"source": "id", "type": "string", "length": 32, "nullable": False, "transforms": ["upper"]},
        "name": {"source": "name", "type": "string", "length": 8},
    }
    app, ds = make_app(db_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
                       connections={"qzk": {"type": "sql", "url": "sqlite://"}},
                       target={"snapshot_delete": {"max_ratio": 0.5}}, columns=columns)
    store = _store(db_url)
    others = [{"id": f"p{i}", "name": "n"} for i in range(1, 10)]
    once = [{"id": "11010119900101123x", "name": "ok"}, *others]
    first = run_dataset(app, ds, store, now=NOW, source_factory=_list_source(once))
    assert first.ok and first.counts.inserted == 10
    again = [{"id": "11010119900101123x", "name": "far too long a name"}, *others]
    second = run_dataset(app, ds, store, now=NOW, source_factory=_list_source(again))
    assert second.ok, second.error
    assert (second.counts.quarantined, second.counts.deleted) == (1, 0)
    assert _names(store)["11010119900101123X"] == "ok"
