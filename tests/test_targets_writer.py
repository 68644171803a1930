"""The batch writer on real SQLite, PostgreSQL and MariaDB: change detection, the feed, atomicity.

Every test runs once per database (the ``db_url`` fixture). Helpers here are reused by the
other ``test_targets_*`` modules.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.changes import DELETED_HASH, row_hash
from syncd.config.model import DatasetConfig
from syncd.errors import TargetError
from syncd.targets import (
    BatchCounts,
    BatchWriter,
    QuarantineItem,
    StateStore,
    create_target_engine,
    describe_url,
    shape_from_dataset,
)
from syncd.targets import writer as writer_module
from syncd.targets.dialects import BulkWriter, KeyLookup

RUN1, RUN2, RUN3 = "1" * 32, "2" * 32, "3" * 32

RESIDENT_COLUMNS: dict[str, Any] = {
    "id": {"source": "id", "length": 32},
    "name": {"source": "name", "length": 64},
    "birth_date": {"source": "birthDate", "type": "date"},
    "income": {"source": "income", "type": "decimal", "precision": 12, "scale": 2},
    "updated_at": {"source": "updateTime", "type": "datetime"},
    "verified": {"source": "verified", "type": "bool"},
    "household_size": {"source": "size", "type": "int"},
    "remark": {"source": "remark"},
}


def make_dataset(
    *,
    name: str = "residents",
    table: str = "resident",
    key: tuple[str, ...] = ("id",),
    columns: dict[str, Any] | None = None,
    soft: bool = False,
    create: bool = True,
) -> DatasetConfig:
    target: dict[str, Any] = {"table": table, "key": list(key), "create": create}
    if soft:
        target["logical_delete"] = {"field": "isDeleted", "mode": "soft"}
    return DatasetConfig.model_validate(
        {
            "name": name,
            "source": {"type": "http", "connection": "gw", "path": "/api/residents"},
            "authorization": {
                "approval_code": "SJHL-2026-0042",
                "fields": ["id"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-12-31",
            },
            "target": target,
            "columns": columns or RESIDENT_COLUMNS,
        }
    )


def resident(i: int, **changes: Any) -> tuple[Any, ...]:
    """A mapped resident row, in RESIDENT_COLUMNS order."""
    values: dict[str, Any] = {
        "id": f"R{i:05d}",
        "name": f"张𠮷{i}",
        "birth_date": date(1980, 1, 1) + timedelta(days=i),
        "income": Decimal("1234.50") + i,
        "updated_at": datetime(2026, 11, 2, 8, 0, 0, 123456) + timedelta(seconds=i),
        "verified": i % 2 == 0,
        "household_size": i % 5,
        "remark": None,
    }
    values.update(changes)
    return tuple(values[c] for c in RESIDENT_COLUMNS)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = create_target_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> StateStore:
    s = StateStore(engine)
    s.ensure_schema()
    return s


class StatementLog:
    """Every statement an engine sends through SQLAlchemy (its before_cursor_execute event), and
    MariaDB's multi-row INSERTs of literals, which syncd sends past SQLAlchemy, once per call by
    their text with placeholders, as SQLAlchemy saw the executemany they replace. PostgreSQL's
    COPY is not in it."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    def writes(self) -> list[str]:
        return [s for s in self.statements if s.split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]


@contextmanager
def statement_log(engine: sa.Engine) -> Iterator[StatementLog]:
    log = StatementLog()
    literals = BulkWriter._insert_literals

    def logged_literals(writer: BulkWriter, conn: sa.Connection, values: Sequence[tuple[Any, ...]]) -> None:
        log(conn, None, writer._sql)
        literals(writer, conn, values)

    sa.event.listen(engine, "before_cursor_execute", log)
    BulkWriter._insert_literals = logged_literals  # type: ignore[method-assign,assignment]
    try:
        yield log
    finally:
        BulkWriter._insert_literals = literals  # type: ignore[method-assign]
        sa.event.remove(engine, "before_cursor_execute", log)


def table_rows(engine: sa.Engine, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    with engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), autoload_with=conn)
        return {r[key]: dict(r) for r in conn.execute(sa.select(t)).mappings()}


def row_state(engine: sa.Engine, dataset: str = "residents") -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT row_key, row_hash FROM syncd_row_state WHERE dataset = :d"), {"d": dataset}
        )
        return {str(k): str(h) for k, h in rows.tuples()}


def feed(store: StateStore, dataset: str = "residents") -> list[dict[str, Any]]:
    return store.changes(dataset, limit=100_000)


# --------------------------------------------------------------------------- inserts and idempotence


def test_insert_batch_writes_rows_and_one_insert_entry_each(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    before = datetime.now(UTC) - timedelta(seconds=1)
    counts = writer.write(RUN1, [resident(i) for i in range(5)])
    assert counts == BatchCounts(inserted=5)

    rows = table_rows(engine, "resident")
    assert set(rows) == {f"R{i:05d}" for i in range(5)}
    r2 = rows["R00002"]
    assert r2["name"] == "张𠮷2"
    assert r2["birth_date"] == date(1980, 1, 3)
    assert r2["income"] == Decimal("1236.50")
    assert r2["updated_at"] == datetime(2026, 11, 2, 8, 0, 2, 123456)
    assert bool(r2["verified"]) is True
    assert r2["household_size"] == 2
    assert r2["remark"] is None

    entries = feed(store)
    assert [e["op"] for e in entries] == ["insert"] * 5
    e = entries[2]
    assert e["row_key"] == "R00002"
    assert e["run_id"] == RUN1
    assert e["changed_columns"] == list(RESIDENT_COLUMNS)
    assert e["old_values"] is None
    assert e["new_values"] == {
        "id": "R00002",
        "name": "张𠮷2",
        "birth_date": "1980-01-03",
        "income": "1236.50",
        "updated_at": "2026-11-02T08:00:02.123456",
        "verified": True,
        "household_size": 2,
        "remark": None,
    }
    assert before <= e["changed_at"] <= datetime.now(UTC) + timedelta(seconds=1)
    assert row_state(engine) == {f"R{i:05d}": row_hash(resident(i)) for i in range(5)}


def test_same_batch_again_writes_nothing_even_from_a_new_process(store: StateStore, db_url: str) -> None:
    """The exactly-once property: a batch committed before a crash, re-sent by the next run."""
    ds = make_dataset()
    rows = [resident(i) for i in range(20)]
    assert store.writer(ds, shape_from_dataset(ds)).write(RUN1, rows).inserted == 20

    fresh = create_target_engine(db_url)  # the process restarted after the crash
    try:
        writer = StateStore(fresh).writer(ds, shape_from_dataset(ds))
        with statement_log(fresh) as log:
            counts = writer.write(RUN2, rows)
        assert counts == BatchCounts(unchanged=20)
        assert log.writes() == []
    finally:
        fresh.dispose()
    assert len(feed(store)) == 20


def test_numerically_equal_decimal_is_not_a_change(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(1, income=Decimal("1.5"))])
    with statement_log(engine) as log:
        counts = writer.write(RUN2, [resident(1, income=Decimal("1.50"))])
    assert counts == BatchCounts(unchanged=1)
    assert log.writes() == []
    assert feed(store)[0]["new_values"]["income"] == "1.50"


# --------------------------------------------------------------------------- updates


def test_update_of_one_column_gives_exactly_that_column(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(4)])
    batch = [
        resident(0),
        resident(1, name="李四"),
        resident(2, income=Decimal("99.9"), remark="已核实"),
        resident(3),
    ]
    counts = writer.write(RUN2, batch)
    assert counts == BatchCounts(updated=2, unchanged=2)

    updates = [e for e in feed(store) if e["op"] == "update"]
    assert [(e["row_key"], e["changed_columns"]) for e in updates] == [
        ("R00001", ["name"]),
        ("R00002", ["income", "remark"]),
    ]
    assert updates[0]["old_values"] == {"name": "张𠮷1"}
    assert updates[0]["new_values"] == {"name": "李四"}
    assert updates[1]["old_values"] == {"income": "1236.50", "remark": None}
    assert updates[1]["new_values"] == {"income": "99.90", "remark": "已核实"}
    assert all(e["run_id"] == RUN2 for e in updates)
    rows = table_rows(engine, "resident")
    assert rows["R00001"]["name"] == "李四"
    assert rows["R00002"]["income"] == Decimal("99.90")
    assert row_state(engine)["R00001"] == row_hash(resident(1, name="李四"))


def test_stale_hash_without_real_difference_only_refreshes_row_state(
    store: StateStore, engine: sa.Engine
) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(1)])
    with engine.begin() as conn:  # as after a change of the hash encoding
        conn.execute(sa.text("UPDATE syncd_row_state SET row_hash = :h"), {"h": "0" * 32})
    with statement_log(engine) as log:
        counts = writer.write(RUN2, [resident(1)])
    assert counts == BatchCounts(unchanged=1)
    assert [s.split(" ")[2] for s in log.writes()] == ["syncd_row_state"]
    assert row_state(engine) == {"R00001": row_hash(resident(1))}
    assert len(feed(store)) == 1


def test_rows_unknown_to_row_state_are_upserted_and_fed_as_inserts(
    store: StateStore, engine: sa.Engine
) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    with engine.begin() as conn:  # a row put there by hand, before syncd managed the table
        conn.execute(sa.text("INSERT INTO resident (id, name) VALUES ('R00001', '旧名字')"))
    counts = writer.write(RUN1, [resident(1), resident(2)])
    assert counts == BatchCounts(inserted=2)
    assert table_rows(engine, "resident")["R00001"]["name"] == "张𠮷1"
    assert [e["op"] for e in feed(store)] == ["insert", "insert"]

    with engine.begin() as conn:  # known to row_state, but removed from the table by hand
        conn.execute(sa.text("DELETE FROM resident WHERE id = 'R00002'"))
    counts = writer.write(RUN2, [resident(2, name="王五")])
    assert counts == BatchCounts(inserted=1)
    assert table_rows(engine, "resident")["R00002"]["name"] == "王五"
    assert feed(store)[-1]["op"] == "insert"


# --------------------------------------------------------------------------- deletes


def test_hard_delete(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(3)])
    counts = writer.write(RUN2, [], deletes=[("R00001",), ("R99999",)])
    assert counts == BatchCounts(deleted=1, unchanged=1)  # an unknown key is ignored
    assert set(table_rows(engine, "resident")) == {"R00000", "R00002"}
    assert "R00001" not in row_state(engine)
    entry = feed(store)[-1]
    assert (entry["op"], entry["row_key"], entry["new_values"]) == ("delete", "R00001", None)
    assert entry["changed_columns"] == list(RESIDENT_COLUMNS)
    assert entry["old_values"]["name"] == "张𠮷1"

    with statement_log(engine) as log:  # the same delete re-sent: nothing to do
        assert writer.write(RUN3, [], deletes=[("R00001",)]) == BatchCounts(unchanged=1)
    assert log.writes() == []
    assert writer.write(RUN3, [resident(1)]) == BatchCounts(inserted=1)  # and it may come back


def test_soft_delete_and_undelete(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset(soft=True)
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(3)])
    assert feed(store)[0]["new_values"]["is_deleted"] is False

    assert writer.write(RUN2, [], deletes=[resident(1)]) == BatchCounts(deleted=1)  # a whole row works too
    rows = table_rows(engine, "resident")
    assert bool(rows["R00001"]["is_deleted"]) is True
    assert bool(rows["R00000"]["is_deleted"]) is False
    assert row_state(engine)["R00001"] == DELETED_HASH
    entry = feed(store)[-1]
    assert (entry["op"], entry["row_key"]) == ("delete", "R00001")
    assert entry["old_values"]["is_deleted"] is False

    with statement_log(engine) as log:  # deleted again: nothing
        assert writer.write(RUN3, [], deletes=[("R00001",)]) == BatchCounts(unchanged=1)
    assert log.writes() == []

    counts = writer.write(RUN3, [resident(1)])  # comes back as it was
    assert counts == BatchCounts(updated=1)
    entry = feed(store)[-1]
    assert (entry["op"], entry["changed_columns"]) == ("update", ["is_deleted"])
    assert (entry["old_values"], entry["new_values"]) == ({"is_deleted": True}, {"is_deleted": False})
    assert bool(table_rows(engine, "resident")["R00001"]["is_deleted"]) is False
    assert row_state(engine)["R00001"] == row_hash(resident(1))

    writer.write(RUN3, [], deletes=[("R00002",)])
    writer.write(RUN3, [resident(2, name="赵六")])  # comes back changed
    assert feed(store)[-1]["changed_columns"] == ["name", "is_deleted"]


def test_duplicate_keys_within_a_batch_last_wins(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    counts = writer.write(RUN1, [resident(1, name="first"), resident(2), resident(1, name="last")])
    assert counts == BatchCounts(inserted=2, unchanged=1)
    assert counts.total == 3
    assert table_rows(engine, "resident")["R00001"]["name"] == "last"
    assert [e["row_key"] for e in feed(store)] == ["R00001", "R00002"]

    counts = writer.write(RUN2, [resident(2, name="gone"), resident(3)], deletes=[("R00002",), ("R00002",)])
    assert counts == BatchCounts(inserted=1, deleted=1, unchanged=2)  # the delete wins over the row
    assert set(table_rows(engine, "resident")) == {"R00001", "R00003"}


def test_composite_keys(store: StateStore, engine: sa.Engine) -> None:
    columns = {
        "division_code": {"source": "code", "length": 12},
        "year": {"source": "year", "type": "int"},
        "population": {"source": "pop", "type": "int"},
        "head": {"source": "head", "length": 16},
    }
    ds = make_dataset(name="population", table="population", key=("division_code", "year"), columns=columns)
    writer = store.writer(ds, shape_from_dataset(ds))
    rows = [("330102001", 2024, 100, "张三"), ("330102001", 2025, 110, "张三"), ("330102002", 2024, 90, "𠮷")]
    assert writer.write(RUN1, rows) == BatchCounts(inserted=3)
    assert set(row_state(engine, "population")) == {
        '["330102001",2024]',
        '["330102001",2025]',
        '["330102002",2024]',
    }
    counts = writer.write(
        RUN2, [("330102001", 2025, 111, "张三"), ("330102002", 2024, 90, "𠮷")], deletes=[("330102001", 2024)]
    )
    assert counts == BatchCounts(updated=1, deleted=1, unchanged=1)
    entries = store.changes("population")
    assert [(e["op"], e["row_key"]) for e in entries[3:]] == [
        ("update", '["330102001",2025]'),
        ("delete", '["330102001",2024]'),
    ]
    assert entries[3]["new_values"] == {"population": 111}
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT division_code, year FROM population ORDER BY year, division_code")
        )
        assert [tuple(r) for r in left] == [("330102002", 2024), ("330102001", 2025)]


def test_keys_with_dates_and_decimals(store: StateStore, engine: sa.Engine) -> None:
    columns = {
        "station": {"source": "s", "length": 8},
        "day": {"source": "d", "type": "date"},
        "grade": {"source": "g", "type": "decimal", "precision": 4, "scale": 1},
        "value": {"source": "v", "type": "int"},
    }
    ds = make_dataset(name="readings", table="readings", key=("station", "day", "grade"), columns=columns)
    writer = store.writer(ds, shape_from_dataset(ds))
    day = date(2026, 11, 2)
    assert writer.write(RUN1, [("S1", day, Decimal("1.5"), 10), ("S1", day, Decimal("2"), 20)]).inserted == 2
    assert set(row_state(engine, "readings")) == {'["S1","2026-11-02","1.5"]', '["S1","2026-11-02","2.0"]'}
    counts = writer.write(RUN2, [("S1", day, Decimal("1.50"), 11)], deletes=[("S1", day, Decimal("2.0"))])
    assert counts == BatchCounts(updated=1, deleted=1)
    assert [(e["op"], e["changed_columns"]) for e in store.changes("readings")[2:]] == [
        ("update", ["value"]),
        ("delete", ["station", "day", "grade", "value"]),
    ]


# --------------------------------------------------------------------------- quarantine


def test_quarantine_upsert_is_idempotent(store: StateStore) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    items = [
        QuarantineItem(
            raw={"id": "R1", "birthDate": "2024年13月45日"},
            reason="birth_date: impossible date",
            record_key="R1",
        ),
        QuarantineItem(
            raw={"id": "R2", "idCard": "3.30102E+17"},
            reason="id_card: looks damaged by Excel",
            record_key="R2",
        ),
    ]
    assert writer.write(RUN1, [], quarantined=items) == BatchCounts(quarantined=2)
    writer.write(RUN1, [], quarantined=items)  # the same run sees them again (overlapping pages)
    listed = {q["record_key"]: q for q in store.quarantined("residents")}
    assert set(listed) == {"R1", "R2"}
    assert listed["R1"]["times"] == 1
    assert listed["R1"]["raw"] == {"id": "R1", "birthDate": "2024年13月45日"}
    assert listed["R1"]["reason"] == "birth_date: impossible date"

    writer.write(RUN2, [], quarantined=[items[0]])  # the next run
    listed = {q["record_key"]: q for q in store.quarantined("residents")}
    assert len(listed) == 2
    assert (listed["R1"]["times"], listed["R1"]["run_id"]) == (2, RUN2)
    assert listed["R1"]["last_seen"] >= listed["R1"]["first_seen"]
    assert listed["R2"]["times"] == 1


def _bad(i: int, version: str, after: tuple[int, int] | None = None) -> QuarantineItem:
    key = f"R{i:05d}"
    raw = {"id": key, "birthDate": f"bad-{version}"}
    return QuarantineItem(raw=raw, reason="birth_date: bad", record_key=key, row_key=key, after=after)


@pytest.mark.parametrize("held", [writer_module.QUARANTINE_KEYS_HELD, 1])
def test_a_later_record_of_a_key_supersedes_its_quarantine_entry(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    """Within a write the last record of a key decides (``after``: rows and deletes before it);
    across writes every later record of the key does. ``held``: the writer holds the keys of the
    entries (the usual case), or there are more than it holds and every write deletes by key."""
    monkeypatch.setattr(writer_module, "QUARANTINE_KEYS_HELD", held)
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))

    def versions() -> dict[str, str]:
        return {str(q["row_key"]): q["raw"]["birthDate"] for q in store.quarantined("residents")}

    # R1: row then failing record (it stays); R2: failing then row (it goes); R3: failing twice
    # (the last stays); R4: failing, then deleted; R5, R6: failing alone
    writer.write(
        RUN1,
        [resident(1), resident(2), resident(4)],
        deletes=[("R00004",)],
        quarantined=[_bad(1, "a", (1, 0)), _bad(2, "a", (1, 0)), _bad(3, "a", (3, 0)), _bad(3, "b", (3, 0)),
                     _bad(4, "a", (2, 0)), _bad(5, "a", (3, 1)), _bad(6, "a", (3, 1))],
        delete_after=[3],
    )
    assert versions() == {"R00001": "bad-a", "R00003": "bad-b", "R00005": "bad-a", "R00006": "bad-a"}
    # later writes: a row of R1, a delete of R3, a newer failing R5; R6 untouched
    writer.write(RUN2, [resident(1, name="newer")], deletes=[("R00003",)], quarantined=[_bad(5, "b")])
    assert versions() == {"R00005": "bad-b", "R00006": "bad-a"}
    # another writer (the next run) finds the entries by their keys; unchanged rows count too
    again = store.writer(ds, shape_from_dataset(ds))
    again.write(RUN3, [resident(1, name="newer")])
    again.supersede(["R00006"])
    assert versions() == {"R00005": "bad-b"}


def test_past_the_held_entries_only_keys_holding_one_pay_a_delete(
    store: StateStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more entries than the writer holds, every key may hold one: a re-sync that writes
    nothing used to commit a DELETE … IN (a thousand keys) for every thousand records read again
    unchanged, and every batch deleted too — PostgreSQL re-syncs took twice as long with 20,000
    entries. A read now asks which keys hold entries; only those are deleted. And a writer whose
    held keys grow past the limit (many records failing in one run) stops holding them."""
    monkeypatch.setattr(writer_module, "QUARANTINE_KEYS_HELD", 2)
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(10)], quarantined=[_bad(i, "a") for i in range(20, 23)])
    deletes: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "quarantine" in statement:
            deletes.append(statement)

    again = store.writer(ds, shape_from_dataset(ds))
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        again.supersede([f"R{i:05d}" for i in range(10)])  # read again unchanged: none holds an entry
        again.write(RUN2, [resident(i, name="newer") for i in range(5)])
        assert deletes == [], "a DELETE for keys that hold no entry"
        again.supersede(["R00021"])
        again.write(RUN2, [resident(22)])
        assert len(deletes) == 2
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert {q["row_key"] for q in store.quarantined("residents")} == {"R00020"}
    grown = store.writer(ds, shape_from_dataset(ds))
    grown.write(RUN3, [], quarantined=[_bad(i, "b") for i in range(30, 33)])
    assert grown._every_key and not grown._entry_keys  # the bound on memory


def test_null_and_overlong_keys_are_quarantined_by_the_writer(store: StateStore, engine: sa.Engine) -> None:
    columns = {"id": {"source": "id", "length": 700}, "name": {"source": "name"}}
    ds = make_dataset(columns=columns, table="wide_keys")
    writer = store.writer(ds, shape_from_dataset(ds))
    counts = writer.write(RUN1, [(None, "a"), ("x" * 600, "b"), ("ok", "c")])
    assert counts == BatchCounts(inserted=1, quarantined=2)
    reasons = sorted(q["reason"] for q in store.quarantined("residents"))
    assert reasons == ["key column id is empty (null)", "the record key is longer than 512 characters"]
    assert set(table_rows(engine, "wide_keys")) == {"ok"}


# --------------------------------------------------------------------------- atomicity and errors


def test_a_failing_batch_leaves_no_trace(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(3)])
    rows_before, state_before = table_rows(engine, "resident"), row_state(engine)
    with engine.begin() as conn:  # the change-log insert, the last write of a batch, will now fail
        conn.execute(sa.text("DROP TABLE syncd_changes"))

    with pytest.raises(TargetError) as caught:
        writer.write(
            RUN2,
            [resident(0, name="changed"), resident(7)],
            deletes=[("R00001",)],
            quarantined=[QuarantineItem(raw={"id": "x"}, reason="bad")],
        )
    message = str(caught.value)
    assert "writing syncd_changes" in message
    assert describe_url(engine.url) in message
    assert "rolled back" in message
    assert table_rows(engine, "resident") == rows_before  # no insert, no update, no delete kept
    assert row_state(engine) == state_before
    assert store.quarantined("residents") == []


def test_a_resyncs_digest_reads_hold_one_connection_outside_any_transaction(
    store: StateStore, engine: sa.Engine
) -> None:
    """A re-sync looks up the stored digests of every batch. On PostgreSQL and MariaDB those
    look-ups share one connection held for the run, in autocommit: one round trip each, no pool
    check-out (with its ping) per batch, and no transaction left open between batches. SQLite
    (in-process, no ping) checks one out per look-up. The connection is returned at the end,
    also when the run fails."""
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    digests = [f"{i:032d}" for i in range(6)]
    writer.write(RUN1, [resident(i) for i in range(6)], digests=digests)
    keys = [f"R{i:05d}" for i in range(6)]
    checkouts: list[object] = []

    def count(*_: object) -> None:
        checkouts.append(None)

    sa.event.listen(engine, "checkout", count)
    try:
        with writer.digest_reads():
            for part in (keys[:2], keys[2:4], keys[4:]):
                assert writer.stored_digests(part) == {k: digests[keys.index(k)] for k in part}
            if engine.dialect.name == "postgresql":
                with engine.connect() as other:
                    states = (
                        other.exec_driver_sql(
                            "SELECT state FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                        .scalars()
                        .all()
                    )
                assert states == ["idle"]  # not "idle in transaction"
                checkouts.pop()  # the one for that check
        assert len(checkouts) == (3 if engine.dialect.name == "sqlite" else 1)
        assert engine.pool.checkedout() == 0

        with pytest.raises(RuntimeError), writer.digest_reads():
            writer.stored_digests(keys)
            raise RuntimeError("the run failed")
        assert engine.pool.checkedout() == 0
        assert writer.stored_digests(keys[:1]) == {keys[0]: digests[0]}  # and outside a block as before
    finally:
        sa.event.remove(engine, "checkout", count)


@contextmanager
def checkout_threads(engine: sa.Engine) -> Iterator[list[str]]:
    """The name of the thread of every connection check-out from ``engine``'s pool."""
    names: list[str] = []

    def note(*_: object) -> None:
        names.append(threading.current_thread().name)

    sa.event.listen(engine, "checkout", note)
    try:
        yield names
    finally:
        sa.event.remove(engine, "checkout", note)


def test_slow_look_ups_are_read_in_two_halves_at_once_with_the_same_result(
    store: StateStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look-up that waited on the disk (more than SPLIT_LOOKUP_SLOW_S a key) makes the next one
    of its kind read its second half on another connection in a thread of its own, at the same
    time: the stored digests and the current rows come back complete, and the batch writes exactly
    what it would have. Here every look-up counts as slow (0 s a key) and four keys are enough."""
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_KEYS", 4)
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_SLOW_S", 0.0)
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    digests = [f"{i:032d}" for i in range(10)]
    writer.write(RUN1, [resident(i) for i in range(10)], digests=digests)
    keys = [f"R{i:05d}" for i in range(10)]
    expected = dict(zip(keys, digests, strict=True))

    with checkout_threads(engine) as threads:
        assert writer.stored_digests(keys) == expected  # the first: not known to be slow yet
        assert "syncd-lookup" not in threads
        assert writer.stored_digests(keys) == expected
        assert "syncd-lookup" in threads  # the second half, on a connection of its own

    writer.write(RUN2, [resident(i, remark="一") for i in range(10)])  # current rows: learns "slow"
    with checkout_threads(engine) as threads:
        batch = [resident(i, remark="二" if i % 2 else "一") for i in range(10)]
        counts = writer.write(RUN3, batch)
    assert "syncd-lookup" in threads
    assert counts == BatchCounts(updated=5, unchanged=5)
    updates = [e for e in feed(store) if e["run_id"] == RUN3]
    assert sorted(e["row_key"] for e in updates) == [k for i, k in enumerate(keys) if i % 2]
    assert all(e["old_values"] == {"remark": "一"} and e["new_values"] == {"remark": "二"} for e in updates)
    assert engine.pool.checkedout() == 0
    assert not [t for t in threading.enumerate() if t.name == "syncd-lookup"]


def test_fast_look_ups_are_not_split(
    store: StateStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_KEYS", 4)
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_SLOW_S", 1.0)  # a second a key: never this slow
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(10)], digests=[f"{i:032d}" for i in range(10)])
    keys = [f"R{i:05d}" for i in range(10)]
    with checkout_threads(engine) as threads:
        for _ in range(3):
            writer.stored_digests(keys)
        writer.write(RUN2, [resident(i, remark="一") for i in range(10)])
        writer.write(RUN3, [resident(i, remark="二") for i in range(10)])
    assert "syncd-lookup" not in threads


def test_a_failing_second_half_fails_the_batch_and_leaves_no_trace(
    store: StateStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_KEYS", 4)
    monkeypatch.setattr(writer_module, "SPLIT_LOOKUP_SLOW_S", 0.0)
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(10)])
    writer.write(RUN2, [resident(i, remark="一") for i in range(10)])  # current rows: learns "slow"
    rows_before, state_before = table_rows(engine, "resident"), row_state(engine)

    def refuse(*_: object, **__: object) -> Iterator[tuple[Any, ...]]:
        raise sa.exc.OperationalError("SELECT …", {}, Exception("the server went away"))

    monkeypatch.setattr(writer._rows_of_2, "fetch", refuse)
    with pytest.raises(TargetError) as caught:
        writer.write(RUN3, [resident(i, remark="二") for i in range(10)])
    assert "the server went away" in str(caught.value)
    assert "rolled back" in str(caught.value)
    assert table_rows(engine, "resident") == rows_before
    assert row_state(engine) == state_before
    assert [e for e in feed(store) if e["run_id"] == RUN3] == []
    assert engine.pool.checkedout() == 0


def test_rows_of_the_wrong_width_are_refused(store: StateStore) -> None:
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    with pytest.raises(ValueError, match="a row has 2 values but the mapping has 8 columns"):
        writer.write(RUN1, [("R1", "x")])
    with pytest.raises(ValueError, match="expected the 1 key values"):
        writer.write(RUN1, [], deletes=[("R1", "x")])


# --------------------------------------------------------------------------- no per-row round trips


def test_statement_count_does_not_grow_with_rows(store: StateStore, engine: sa.Engine) -> None:
    def run(dataset: str, n: int) -> list[list[str]]:
        ds = make_dataset(name=dataset, table=f"t_{dataset}")
        writer = store.writer(ds, shape_from_dataset(ds))
        rows = [resident(i) for i in range(n)]
        changed = [resident(i, name="新", remark="r") for i in range(n)]
        logs = []
        for batch, deletes in (
            (rows, []),
            (rows, []),
            (changed, []),
            ([], [(f"R{i:05d}",) for i in range(n)]),
        ):
            with statement_log(engine) as log:
                writer.write(RUN1, batch, deletes=deletes)
            logs.append(log.statements)
        return logs

    # 10,000 rows on SQLite (well under a few seconds); 2,500 on the servers keeps the file fast
    n = 10_000 if engine.dialect.name == "sqlite" else 2_500
    small, large = run("small", 100), run("large", n)
    assert [len(s) for s in small] == [len(s) for s in large]
    assert all(len(s) <= 8 for s in large), large
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT COUNT(*) FROM syncd_changes WHERE dataset = 'large'")).scalar()
    assert logged == 3 * n  # inserts, updates, deletes; the re-sent batch added nothing
    (first,) = store.changes("large", limit=1, after_id=0)
    assert first["new_values"]["id"] == "R00000"


# --------------------------------------------------------------------------- PostgreSQL bulk path


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[tuple[sa.Engine, StateStore, BatchWriter]]:
    """A fresh PostgreSQL database: its engine, the state store and a writer for ``make_dataset()``."""
    engine = create_target_engine(pg_url)
    try:
        store = StateStore(engine)
        store.ensure_schema()
        ds = make_dataset()
        yield engine, store, store.writer(ds, shape_from_dataset(ds))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_copies_new_keys_without_a_merge(
    pg_store: tuple[sa.Engine, StateStore, BatchWriter],
) -> None:
    engine, store, writer = pg_store
    with statement_log(engine) as log:  # COPY goes past SQLAlchemy; a merge would not
        assert writer.write(RUN1, [resident(i) for i in range(3)]) == BatchCounts(inserted=3)
    assert not [s for s in log.writes() if s.startswith("INSERT INTO")], log.statements
    assert len(table_rows(engine, "resident")) == 3
    assert row_state(engine) == {f"R{i:05d}": row_hash(resident(i)) for i in range(3)}

    with engine.begin() as conn:  # a row put there by hand: the copy fails, the merge takes over
        conn.execute(sa.text("INSERT INTO resident (id, name) VALUES ('R00009', '旧名字')"))
    with statement_log(engine) as log:
        assert writer.write(RUN2, [resident(8), resident(9)]) == BatchCounts(inserted=2)
    assert any(s.startswith("ROLLBACK TO SAVEPOINT") for s in log.statements), log.statements
    assert any(s.startswith("INSERT INTO resident") for s in log.writes())
    assert table_rows(engine, "resident")["R00009"]["name"] == "张𠮷9"
    assert [e["op"] for e in feed(store)] == ["insert"] * 5

    # current rows and deletes are matched with one array parameter, not an IN list per key; the
    # current rows are read past SQLAlchemy (KeyLookup)
    with statement_log(engine) as log:
        changed = writer.write(RUN3, [resident(i, name="新") for i in range(3)], deletes=[("R00009",)])
    assert changed == BatchCounts(updated=3, deleted=1)
    assert not [s for s in log.statements if s.startswith("SELECT")], log.statements
    assert writer._rows_of._text(-1).endswith(" WHERE id = ANY(string_to_array(%s, chr(31)))")
    (delete,) = [s for s in log.statements if s.startswith("DELETE FROM resident")]
    assert "ANY" in delete and " IN " not in delete


@pytest.mark.postgres
def test_postgresql_batches_go_on_after_another_session_alters_the_table(
    pg_store: tuple[sa.Engine, StateStore, BatchWriter], pg_url: str
) -> None:
    """A DBA widens a column (as syncd's own schema message may ask) while the daemon's pooled
    connections hold psycopg's prepared statements and their session's stage table: a prepared
    look-up of the table's current rows would fail once with "cached plan must not change result
    type", and a stage table made before the change would refuse the longer values."""
    engine, _, writer = pg_store
    writer.write(RUN1, [resident(i) for i in range(3)])
    with capture_logs() as before:
        for n in range(6):  # update batches, each reading the current rows: past psycopg's threshold (5)
            writer.write(RUN2, [resident(i, name=f"改名{n}") for i in range(3)])
    assert not [e for e in before if e["event"] == "target.stage_recreated"]  # every type matches
    other = create_target_engine(pg_url)
    try:
        with other.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE resident ALTER COLUMN name TYPE varchar(200)")
    finally:
        other.dispose()
    long_name = "长" * 150  # fits the widened column, not the 64 of before
    with capture_logs() as after:
        assert writer.write(RUN3, [resident(i, name=long_name) for i in range(3)]) == BatchCounts(updated=3)
    assert [e["table"] for e in after if e["event"] == "target.stage_recreated"] == ["resident"]
    assert {r["name"] for r in table_rows(engine, "resident").values()} == {long_name}


@pytest.mark.postgres
def test_postgresql_analyzes_the_look_up_columns_of_a_growing_table(
    pg_store: tuple[sa.Engine, StateStore, BatchWriter],
) -> None:
    engine, _, writer = pg_store
    for start in range(0, 6_000, 2_000):  # past the first ANALYZE at 5,000 added rows
        writer.write(RUN1, [resident(i) for i in range(start, start + 2_000)])
    with engine.connect() as conn:
        stats = conn.execute(
            sa.text("SELECT tablename, attname FROM pg_stats WHERE schemaname = 'public' ORDER BY 1, 2")
        ).all()
        sizes = "SELECT relname, reltuples FROM pg_class WHERE relname IN ('resident', 'syncd_row_state')"
        tuples = dict(conn.execute(sa.text(sizes)).all())
    # only the columns the per-batch look-ups filter on; the size estimate is what the planner needed
    assert stats == [("resident", "id"), ("syncd_row_state", "dataset"), ("syncd_row_state", "row_key")]
    assert tuples["resident"] >= 5_000 and tuples["syncd_row_state"] >= 5_000


_COPY_TYPES = {
    "t_text": "text",
    "t_varchar": "varchar(8)",
    "t_char": "char(4)",
    "t_small": "smallint",
    "t_int": "integer",
    "t_big": "bigint",
    "t_numeric": "numeric(12, 2)",
    "t_float": "double precision",
    "t_bool": "boolean",
    "t_date": "date",
    "t_stamp": "timestamp",
    "t_stamptz": "timestamptz",
}
_COPY_COLUMNS = tuple(_COPY_TYPES)


@contextmanager
def copy_statements() -> Iterator[list[str]]:
    """The COPY statements psycopg is asked to run (COPY goes past SQLAlchemy's events)."""
    import psycopg

    seen: list[str] = []
    copy = psycopg.Cursor.copy

    def recorded(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(statement))
        return copy(cursor, statement, *args, **kwargs)

    psycopg.Cursor.copy = recorded  # type: ignore[method-assign,assignment]
    try:
        yield seen
    finally:
        psycopg.Cursor.copy = copy  # type: ignore[method-assign]


def _copy_both_ways(engine: sa.Engine, rows: list[tuple[Any, ...]]) -> tuple[Any, Any, list[str]]:
    """Write ``rows`` into two tables of every binary-capable type: with BulkWriter, and with a
    plain text COPY as the reference. Each outcome: the rows read back (as their repr: NaN is not
    equal to itself), or "refused"."""
    import psycopg

    with engine.begin() as conn:
        for name in ("copy_bulk", "copy_text"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            columns = ", ".join(f"{c} {t}" for c, t in _COPY_TYPES.items())
            conn.exec_driver_sql(f"CREATE TABLE {name} (n serial PRIMARY KEY, {columns})")
    table = sa.Table("copy_bulk", sa.MetaData(), *(sa.Column(c) for c in _COPY_COLUMNS))
    names = ", ".join(_COPY_COLUMNS)
    outcomes: list[Any] = []
    with copy_statements() as seen:
        try:
            with engine.begin() as conn:
                BulkWriter(engine, table, _COPY_COLUMNS).write(conn, rows)
        except sa.exc.DBAPIError:  # a database error, reported as every batch failure is
            outcomes.append("refused")
        else:
            outcomes.append(_read_back(engine, "copy_bulk"))
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor, cursor.copy(f"COPY copy_text ({names}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
        raw.commit()
    except psycopg.Error:
        raw.rollback()
        outcomes.append("refused")
    else:
        outcomes.append(_read_back(engine, "copy_text"))
    finally:
        raw.close()
    return outcomes[0], outcomes[1], seen


def _read_back(engine: sa.Engine, table: str) -> str:
    names = ", ".join(_COPY_COLUMNS)
    with engine.connect() as conn:
        return repr(conn.exec_driver_sql(f"SELECT {names} FROM {table} ORDER BY n").all())  # noqa: S608


_TZ8 = timezone(timedelta(hours=8))


def _copy_row(**values: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = {
        "t_text": "张𠮷 tab\there\nand a backslash \\",
        "t_varchar": "中文字",
        "t_char": "ab",
        "t_small": -(2**15),
        "t_int": 2**31 - 1,
        "t_big": -(2**63),
        "t_numeric": Decimal("-1234567890.05"),
        "t_float": 0.1,
        "t_bool": True,
        "t_date": date(1, 1, 1),
        "t_stamp": datetime(9999, 12, 31, 23, 59, 59, 999999),
        "t_stamptz": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=_TZ8),
    }
    base.update(values)
    return tuple(base[c] for c in _COPY_COLUMNS)


@pytest.mark.postgres
def test_postgresql_copies_in_binary_exactly_what_text_would_write(pg_url: str) -> None:
    engine = create_target_engine(pg_url)
    try:
        rows = [
            _copy_row(),
            _copy_row(t_numeric=Decimal("NaN"), t_float=float("inf"), t_bool=False, t_small=2**15 - 1),
            tuple(None for _ in _COPY_COLUMNS),
        ]
        bulk, text, seen = _copy_both_ways(engine, rows)
        assert bulk == text and bulk.count("'中文字'") == 2 and bulk.endswith(", None)]")
        assert seen and all(s.endswith("(FORMAT BINARY)") for s in seen), seen
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("values", "binary"),
    [
        ({"t_small": 40_000}, False),  # psycopg's smallint dumper would store -25,536
        ({"t_int": -(2**31) - 1}, False),  # ... and its integer dumper 2,147,483,647
        ({"t_big": 2**63}, False),  # its bigint dumper raises OverflowError, not a database error
        ({"t_text": 5}, False),  # an int in a text column: text writes "5"
        ({"t_big": True}, False),  # a bool in a bigint column: the server refuses "t"
        ({"t_date": datetime(2026, 1, 2, 3, 4)}, False),  # a datetime in a date column: the server cuts it
        ({"t_stamp": datetime(2026, 1, 2, 3, 4, tzinfo=_TZ8)}, False),  # aware in a timestamp column
        ({"t_stamptz": datetime(2026, 1, 2, 3, 4)}, False),  # naive in timestamptz: the session's zone
        ({"t_numeric": 7}, False),  # an int in a numeric column
        ({"t_text": "a\x00b"}, True),  # NUL: refused by the server either way
    ],
)
def test_postgresql_copy_goes_as_text_where_binary_would_differ(
    pg_url: str, values: dict[str, Any], binary: bool
) -> None:
    engine = create_target_engine(pg_url)
    try:
        with capture_logs() as logs:
            bulk, text, seen = _copy_both_ways(engine, [_copy_row(), _copy_row(**values)])
        assert bulk == text
        assert seen and {"BINARY" in s for s in seen} == {binary}, seen
        noted = [e for e in logs if e["event"] == "target.copy_as_text"]
        assert len(noted) == (0 if binary else 1), noted
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_stage_table_of_every_type_is_kept_between_batches(pg_url: str) -> None:
    """The stage check compares the table's and the stage's described columns: for every type a
    mapping can declare they match, so the stage is made once per session, never per batch."""
    engine = create_target_engine(pg_url)
    try:
        columns = ", ".join(f"{c} {t}" for c, t in _COPY_TYPES.items())
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE staged (k text PRIMARY KEY, {columns})")
        names = ("k", *_COPY_COLUMNS)
        table = sa.Table("staged", sa.MetaData(), *(sa.Column(c) for c in names))
        writer = BulkWriter(engine, table, names, key=("k",), update=_COPY_COLUMNS)
        with capture_logs() as logs, copy_statements() as seen:
            for n in range(3):
                with engine.begin() as conn:
                    writer.write(conn, [(f"k{i}", *_copy_row(t_small=n)) for i in range(2)])
        assert not [e for e in logs if e["event"] == "target.stage_recreated"]
        assert len(seen) == 3 and all("syncd_stage_staged" in s and "BINARY" in s for s in seen), seen
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT k, t_small, t_varchar FROM staged ORDER BY k").all()
        assert stored == [("k0", 2, "中文字"), ("k1", 2, "中文字")]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_binary_copy_follows_a_column_altered_between_batches(pg_url: str) -> None:
    engine = create_target_engine(pg_url)
    other = create_target_engine(pg_url)  # another session alters the table, as a DBA would
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE altered (k text PRIMARY KEY, v bigint)")
        table = sa.Table("altered", sa.MetaData(), sa.Column("k"), sa.Column("v"))
        writer = BulkWriter(engine, table, ("k", "v"))
        with copy_statements() as seen:
            for n in range(6):  # more often than psycopg's prepare threshold (5)
                with engine.begin() as conn:
                    writer.write(conn, [(f"a{n}", n)])
            with other.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE altered ALTER COLUMN v TYPE integer")
            with engine.begin() as conn:  # an int8 field read as int4 would be refused
                writer.write(conn, [("b", 2)])
            with other.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE altered ALTER COLUMN v TYPE text")
            with engine.begin() as conn:  # ... and read as text, stored as eight raw bytes
                writer.write(conn, [("c", 3)])
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT k, v FROM altered ORDER BY k").all()
        assert stored == [*((f"a{n}", str(n)) for n in range(6)), ("b", "2"), ("c", "3")]
        assert ["BINARY" in s for s in seen] == [True] * 7 + [False]
    finally:
        other.dispose()
        engine.dispose()


def test_key_lookup_reads_what_sqlalchemy_reads(store: StateStore, engine: sa.Engine) -> None:
    """KeyLookup sends its SELECT to the driver, but its rows are SQLAlchemy's: every column type
    through its result processor (SQLite's dates are text, its bools integers), single and
    composite keys bound through the key columns' bind processors (a date key), keys in chunks."""
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(i) for i in range(50)])
    names = list(RESIDENT_COLUMNS)
    typed = writer._table  # the writer's own definition: the types the mapping declared
    keys = [f"R{i:05d}" for i in range(0, 60, 3)]  # 40 of them do not exist
    lookup = KeyLookup(engine, typed, names, ("id",), 7)  # chunks of 7 keys
    with engine.connect() as conn:
        got = sorted(lookup.fetch(conn, keys))
        select = sa.select(*(typed.c[c] for c in names)).where(typed.c.id.in_(keys))
        want = sorted(tuple(r) for r in conn.execute(select))
    assert got == want and len(got) == 17
    assert [type(v) for v in got[0]] == [type(v) for v in want[0]]
    assert isinstance(got[0][2], date) and isinstance(got[0][3], Decimal) and got[0][5] is True

    columns = {
        "station": {"source": "s", "length": 8},
        "day": {"source": "d", "type": "date"},
        "v": {"source": "v", "type": "int"},
    }
    ds2 = make_dataset(name="readings", table="readings", key=("station", "day"), columns=columns)
    w2 = store.writer(ds2, shape_from_dataset(ds2))
    day = date(2026, 11, 2)
    w2.write(RUN1, [(f"S{i}", day + timedelta(days=i % 3), i) for i in range(30)])
    # S20-S38 do not exist; S1 is on day + 1
    pairs = [(f"S{i}", day + timedelta(days=i % 3)) for i in range(0, 40, 2)] + [("S1", day)]
    composite = KeyLookup(engine, w2._table, ("station", "day", "v"), ("station", "day"), 5)
    with engine.connect() as conn:
        rows = sorted(composite.fetch(conn, pairs), key=lambda r: r[2])
    assert rows == [(f"S{i}", day + timedelta(days=i % 3), i) for i in range(0, 30, 2)]


def test_packed_state_lookup_reads_text_exactly(store: StateStore, engine: sa.Engine) -> None:
    """On SQLite and MariaDB the row_state look-ups come back as one JSON row (KeyLookup
    packed=True): every text reads back exactly (quotes, backslashes, control characters, 𠮷 and
    emoji), NULL stays None, no match is no row; where the database cannot (no JSON functions, an
    array cut short) the look-up reads plain rows from then on."""
    rs = store.tables.row_state
    keys = ['a"b', "c\\d", "e\nf\tg", "张𠮷", "🙂", "x" * 512, "'; DROP TABLE t; --", "\x01\x1f"]
    rows = [
        {"dataset": "d", "row_key": k, "row_hash": "h" * 32, "record_digest": None if i % 2 else k[:32]}
        for i, k in enumerate(keys)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(rs), rows)
    cols = ("row_key", "row_hash", "record_digest")
    plain = KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset")
    asked = [*keys, "missing"]
    packs = engine.dialect.name != "postgresql"

    def packed() -> KeyLookup:
        return KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset", packed=True)

    with engine.connect() as conn:
        want = sorted(plain.fetch(conn, asked, "d"))
        assert len(want) == len(keys)
        lookup = packed()
        assert sorted(lookup.fetch(conn, asked, "d")) == want
        assert list(lookup.fetch(conn, ["missing"], "d")) == []
        assert lookup._packed is packs  # PostgreSQL reads rows; psycopg parses them in C

        if packs:  # a database without the JSON functions
            lookup = packed()
            head = lookup._packed_head
            lookup._packed_head = head.replace("_ARRAY", "_ARRAYX").replace("_array", "_arrayx")
            json_table, rows_of = lookup._json_table_sql  # MariaDB: the same aggregate after JSON_TABLE
            lookup._json_table_sql = (json_table.replace("_ARRAY", "_ARRAYX"), rows_of)
            assert sorted(lookup.fetch(conn, asked, "d")) == want
            assert lookup._packed is False
        if engine.dialect.name in {"mariadb", "mysql"}:
            lookup = packed()  # MariaDB cuts JSON_ARRAYAGG at group_concat_max_len, with a warning only
            conn.exec_driver_sql("SET SESSION group_concat_max_len = 100")
            try:
                assert sorted(lookup.fetch(conn, asked, "d")) == want
            finally:
                conn.exec_driver_sql("SET SESSION group_concat_max_len = DEFAULT")
            assert lookup._packed is False
    with pytest.raises(ValueError, match="text columns only"):
        KeyLookup(engine, store.tables.runs, ("run_id", "fetched"), ("run_id",), 3, packed=True)


@pytest.mark.mariadb
def test_mariadb_state_keys_go_as_one_json_table_unless_a_key_cannot(mariadb_url: str) -> None:
    """MariaDB reads a chunk of row_state keys as one JSON array (JSON_TABLE joined on the primary
    key) and finds exactly the rows an IN list finds: case and trailing spaces kept apart
    (utf8mb4_nopad_bin, the key collation), a key twice. A key longer than the column, with a NUL or a lone
    surrogate goes in an IN list; a server that refuses the statement gets IN lists from then on."""
    engine = create_target_engine(mariadb_url)
    try:
        store = StateStore(engine)
        store.ensure_schema()
        rs = store.tables.row_state
        stored = ["abc", "ABD", "张𠮷", "🙂", 'q"uo\\te', "\\u0041", "x" * 512, "tab\tand\x01"]
        with engine.begin() as conn:
            conn.execute(
                sa.insert(rs),
                [
                    {"dataset": "d", "row_key": k, "row_hash": "h" * 32, "record_digest": f"{i:032d}"}
                    for i, k in enumerate(stored)
                ],
            )
        cols = ("row_key", "record_digest")
        listed = KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset")
        lookup = KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset", packed=True)
        asked = [*stored, "ABC", "abd", "abc ", "abc", "A", "missing", "x" * 513]
        with engine.connect() as conn:
            want = set(listed.fetch(conn, asked, "d"))
            assert {k for k, _ in want} == set(stored)  # "abc " is not "abc" (NO PAD), "abd" not "ABD"
            assert lookup._params("d", stored)[0] == -2  # one JSON array
            assert list(lookup.fetch(conn, ["abc ", "ABC", "abc  "], "d")) == []
            assert set(lookup.fetch(conn, [*stored, "ABC", "abc ", "abc"], "d")) == {
                r for r in want if r[0] in stored
            }
            assert lookup._params("d", asked)[0] == len(asked)  # a key past 512: an IN list
            assert set(lookup.fetch(conn, asked, "d")) == want
            for odd in ("nul\x00key", "lone\ud800"):
                assert lookup._params("d", ["abc", odd])[0] == 2, odd
            assert set(lookup.fetch(conn, ["abc", "nul\x00key"], "d")) == {r for r in want if r[0] == "abc"}

            refused = KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset", packed=True)
            packed_sql, rows_sql = refused._json_table_sql
            refused._json_table_sql = (
                packed_sql.replace("JSON_TABLE", "JSON_TABLEX"),
                rows_sql.replace("JSON_TABLE", "JSON_TABLEX"),
            )
            with capture_logs() as logs:
                assert set(refused.fetch(conn, stored, "d")) == {r for r in want if r[0] in stored}
            assert [e["event"] for e in logs] == ["target.lookup_unpacked"]
            assert "JSON_TABLE" in logs[0]["reason"]
            assert refused._params("d", stored)[0] == len(stored)  # an IN list from now on
            assert refused._packed is True  # still one JSON row

        # a lost connection is reported as itself, not retried as another statement
        lookup = KeyLookup(engine, rs, cols, ("row_key",), 30_000, scope="dataset", packed=True)
        with engine.connect() as conn:
            victim = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            with engine.connect() as other:
                other.exec_driver_sql(f"KILL CONNECTION {int(victim)}")
            with capture_logs() as logs, pytest.raises(sa.exc.DBAPIError) as lost:
                list(lookup.fetch(conn, stored, "d"))
            conn.invalidate()
        assert logs == []
        assert lost.value.orig.args[0] in (2006, 2013), lost.value.orig
        assert lookup._json_key_length == 512
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_text_keys_go_as_one_text_unless_one_holds_the_separator(
    pg_store: tuple[sa.Engine, StateStore, BatchWriter],
) -> None:
    """psycopg dumps a list of str element by element in Python: text keys go as one text split by
    the server on chr(31); a chunk with a key holding chr(31), a single key (string_to_array('')
    is empty) or a non-text key column goes as an array. Every shape finds exactly its rows."""
    engine, store, _ = pg_store
    rs = store.tables.row_state
    keys = ["a", "b,c", "{d}", 'e"f', "g\\h", "", "张𠮷", "with\x1fseparator", "NULL"]
    with engine.begin() as conn:
        conn.execute(sa.insert(rs), [{"dataset": "d", "row_key": k, "row_hash": "h" * 32} for k in keys])
    lookup = KeyLookup(engine, rs, ("row_key",), ("row_key",), 30_000, scope="dataset")
    plain = [k for k in keys if "\x1f" not in k]
    with engine.connect() as conn:
        for asked, shape in ((plain, -1), (keys, 0), ([""], 0), (["a"], 0), (["", "a"], -1)):
            assert lookup._params("d", asked)[0] == shape, asked
            got = sorted(row[0] for row in lookup.fetch(conn, [*asked, "missing"], "d"))
            assert got == sorted(asked), (asked, got)
    counts = KeyLookup(engine, store.tables.runs, ("run_id",), ("fetched",), 30_000)
    assert counts._params(None, [1, 2])[0] == 0  # a BIGINT key: an array


def _plan_of_lookup(engine: sa.Engine, store: StateStore, keys: list[str]) -> str:
    rs = store.tables.row_state
    lookup = KeyLookup(engine, rs, ("row_key", "record_digest"), ("row_key",), 30_000, scope="dataset")
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        shape, params = lookup._params("d", keys)
        assert shape == -1  # text keys: one text the server splits
        cursor.execute("EXPLAIN " + lookup._text(shape), params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_postgres_lookups_of_a_batch_use_the_primary_key(
    pg_store: tuple[sa.Engine, StateStore, BatchWriter], pg_url: str
) -> None:
    """A batch's thousand row_state keys are probed through the primary key, not by reading the
    whole table: under the server's default random_page_cost (4) PostgreSQL 15 plans a sequential
    scan of 10⁵ rows for this (8-11 ms per batch instead of 3.5 ms); syncd's sessions set 1.1."""
    engine, store, _ = pg_store
    rs = store.tables.row_state
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {rs.name} (dataset, row_key, row_hash) FROM STDIN") as copy:
            for i in range(100_000):
                copy.write_row(("d", f"R{i:08d}", "0" * 32))
        cursor.execute(f"ANALYZE {rs.name}")
    keys = [f"R{i:08d}" for i in range(0, 100_000, 100)]
    assert "Index" in _plan_of_lookup(engine, store, keys)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW random_page_cost").scalar() == "1.1"
    plain = sa.create_engine(sa.make_url(pg_url).set(drivername="postgresql+psycopg"))
    try:  # the control: the server's default plans the scan this setting avoids
        assert "Seq Scan" in _plan_of_lookup(plain, store, keys)
    finally:
        plain.dispose()


def test_a_connection_pymysql_found_closed_is_named_in_the_error() -> None:
    """PyMySQL's whole message for a connection the server closed is ``(0, '')``."""
    from syncd.targets.writer import failure_reason

    closed = sa.exc.InterfaceError("SELECT 1", None, Exception(0, ""))
    assert failure_reason(closed) == (
        "the connection to the database was closed (server stopped or restarted?) (0, '')"
    )
    other = sa.exc.OperationalError("SELECT 1", None, Exception(2013, "Lost connection\nduring query"))
    assert failure_reason(other) == "(2013, 'Lost connection\\nduring query')"
    # the state store (runs, watermarks) words its errors the same way
    store = StateStore(sa.create_engine("sqlite://"), "syncd_")
    assert str(store._fail("reading the watermark of dataset d", closed)) == (
        "reading the watermark of dataset d in sqlite:// failed: the connection to the database was closed "
        "(server stopped or restarted?) (0, '')"
    )


def test_generated_insert_functions_match_the_plain_loop() -> None:
    """The writer's generated per-insert functions (normalised row, change-feed values) give what
    the plain loop gives, with the soft-delete flag, and take column names as data, never as code."""
    from syncd.changes.detector import normaliser_for_type
    from syncd.changes.hashing import json_text
    from syncd.targets.writer import _row_normaliser, _values_json

    norm = normaliser_for_type
    norm_at = [(1, norm("decimal", 2)), (2, norm("date")), (4, norm("int"))]
    rows = [
        ("a", Decimal("1.5"), "2024-01-02", None, "7"),
        ("b", None, datetime(2024, 1, 2, 3, 4), "x", 8),
        ("c", Decimal("1.005"), date(2024, 2, 29), "", None),
    ]
    for soft in (False, True):
        normalised = _row_normaliser(5, norm_at, soft=soft)
        for row in rows:
            expected = list(row)
            for i, normalise in norm_at:
                expected[i] = normalise(expected[i])
            assert normalised(row) == tuple(expected + ([False] if soft else []))
    assert _row_normaliser(5, [], soft=False)(rows[0]) == rows[0]

    names = ("id", 'q"uote', "x}: 1, {'y", "__import__('os')", "中文")
    values_json = _values_json(names)
    row = ("R1", Decimal("1.50"), date(2024, 1, 2), None, "值")
    assert values_json(row) == json_text(dict(zip(names, row, strict=True)))
