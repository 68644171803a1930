"""Decimals an SQLite target cannot store exactly are quarantined, never stored rounded.

SQLite's NUMERIC affinity turns the text syncd binds for a number with decimals into a REAL (15
significant digits): with the default ``precision: 18``, ``1234567890123456.78`` would be stored as
``1234567890123456.8`` while the change feed says ``…56.78``, and every later change of the row would
record a phantom old value. PostgreSQL and MariaDB keep the declared precision."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.runner import run_dataset
from syncd.targets import QuarantineItem, shape_from_dataset
from syncd.targets.sqltypes import sqlite_decimal_limit
from tests.e2e import ListSource
from tests.sources_kit import make_app, store_for
from tests.test_targets_writer import make_dataset

NOW = datetime(2026, 3, 1, 12, 0, 0)
COLUMNS = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "name": {"source": "name", "type": "string", "length": 64},
    "amount": {"source": "amount", "type": "decimal", "scale": 2},  # default precision: 18
}
BIG = "1234567890123456.78"  # 18 significant digits


def _records(name: str) -> list[list[dict[str, Any]]]:
    fillers = [{"id": f"q{i:02}", "name": name, "amount": "9999999999999.99"} for i in range(19)]
    return [[{"id": "p1", "name": name, "amount": BIG}, *fillers]]


def test_a_decimal_past_what_sqlite_keeps_is_quarantined_and_kept_exactly_elsewhere(db_url: str) -> None:
    app, ds = make_app(db_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
                       connections={"qzk": {"type": "sql", "url": "sqlite://"}}, columns=COLUMNS)
    store = store_for(db_url)
    try:
        for name in ("a", "b"):  # the second read changes only the name
            source = ListSource(_records(name))
            result = run_dataset(app, ds, store, now=NOW, source_factory=lambda a, d, s=source: s)
            assert result.ok, result
        with store.engine.connect() as conn:
            stored = dict(conn.execute(sa.text("SELECT pid, amount FROM people_local")).all())
        feed = store.changes("people", limit=1000)
        entries = store.quarantined("people")
    finally:
        store.engine.dispose()
    # 15 significant digits survive everywhere, SQLite included
    assert {Decimal(str(v)) for k, v in stored.items() if k != "p1"} == {Decimal("9999999999999.99")}
    p1 = [e for e in feed if e["row_key"] == "p1"]
    if db_url.startswith("sqlite"):
        assert "p1" not in stored and not p1
        (entry,) = entries
        assert entry["row_key"] == "p1" and entry["raw"]["name"] == "b"  # the newer record's entry stands
        reason = entry["reason"]
        for part in ("column amount", BIG, "18 significant digits", "columns.amount",
                     "PostgreSQL or MariaDB", "syncd sync people --full"):
            assert part in reason, reason
    else:
        assert Decimal(str(stored["p1"])) == Decimal(BIG) and not entries
        assert p1[0]["new_values"]["amount"] == BIG
        assert [e["changed_columns"] for e in p1[1:]] == [["name"]]


def test_on_sqlite_the_last_record_of_a_key_wins_over_its_inexact_version(sqlite_url: str) -> None:
    """A too-precise row is quarantined in its place in the read, as the mapping quarantines a record:
    a later row of its key supersedes the entry (no entry, the row written), a later one stands."""
    store = store_for(sqlite_url)
    try:
        store.ensure_schema()
        ds = make_dataset(columns={"id": {"source": "id", "length": 8}, **{"amount": COLUMNS["amount"]}},
                          table="amounts", name="amounts")
        writer = store.writer(ds, shape_from_dataset(ds))
        big, ok = Decimal(BIG), Decimal("12.50")
        counts = writer.write("1" * 32, [("a", big), ("a", ok), ("b", ok), ("b", big)])
        assert (counts.inserted, counts.quarantined) == (2, 2)  # per record read, as the mapping counts
        (entry,) = store.quarantined("amounts")
        assert entry["row_key"] == "b"
        writer.write("2" * 32, [("b", Decimal("-" + BIG))])  # still too precise: its newer version stands
        (entry,) = store.quarantined("amounts")
        assert "-" + BIG in entry["reason"]
        writer.write("3" * 32, [], deletes=[("b",)])  # a delete of the key supersedes the entry
        assert store.quarantined("amounts") == []
        # beside records the mapping quarantined, the last record of the key in the read stands
        before, after = (QuarantineItem({"id": k}, "unmappable", None, k, after=(n, 0))
                         for k, n in (("c", 0), ("d", 2)))
        writer.write("4" * 32, [("c", big), ("d", big)], [], [before, after])
        entries = {e["row_key"]: e["reason"] for e in store.quarantined("amounts")}
        assert entries["c"].startswith("column amount") and entries["d"] == "unmappable"
        with store.engine.connect() as conn:
            rows = dict(conn.execute(sa.text("SELECT id, amount FROM amounts")).all())
    finally:
        store.engine.dispose()
    assert {k: Decimal(str(v)) for k, v in rows.items()} == {"a": ok}


def test_the_limit_is_where_sqlite_stops_storing_a_decimal_exactly(sqlite_url: str) -> None:
    """Every value under the limit of its column type reads back exactly; whole numbers are INTEGERs."""
    cases = [(18, 2, ["9999999999999.99", "-9999999999999.99", "0.01"]),
             (18, 0, ["999999999999999999", "-999999999999999999"]),
             (20, 6, ["999999999.999999", "123456789.123456"]),
             (15, 2, ["9999999999999.99"]),
             (19, 0, ["9223372036854775807", "-9223372036854775807", "1000000000000000000"])]
    assert sqlite_decimal_limit(15, 2) is None and sqlite_decimal_limit(18, 0) is None
    assert sqlite_decimal_limit(18, 2) == Decimal("1E13") and sqlite_decimal_limit(19, 0) == 2**63
    engine = sa.create_engine(sqlite_url)
    try:
        for precision, scale, values in cases:
            column = {"source": "v", "type": "decimal", "precision": precision, "scale": scale}
            ds = make_dataset(columns={"id": {"source": "id", "length": 24}, "v": column},
                              table=f"t{precision}_{scale}", name=f"t{precision}")
            store = store_for(sqlite_url)
            rows = [(v, Decimal(v)) for v in values]
            counts = store.writer(ds, shape_from_dataset(ds)).write("1" * 32, rows)
            store.engine.dispose()
            assert counts.quarantined == 0
            with engine.connect() as conn:
                got = dict(conn.execute(sa.text(f"SELECT id, v FROM t{precision}_{scale}")).all())  # noqa: S608
            assert {k: Decimal(str(v)) for k, v in got.items()} == {v: Decimal(v) for v in values}
    finally:
        engine.dispose()


DATASET = """name: people
source: {type: sql, connection: qzk, table: people, key: [id]}
authorization:
  {approval_code: "A-1", fields: [id, amount, count], valid_from: 2020-01-01, valid_until: 2099-12-31}
target: {table: people_local, key: [pid]}
columns:
  pid: {source: id, length: 32}
  amount: {source: amount, type: decimal, scale: 2}
  count: {source: count, type: decimal, precision: 18, scale: 0}
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_check_warns_of_a_decimal_column_sqlite_cannot_keep(tmp_path: Path, kind: str) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "people.yaml").write_text(DATASET, encoding="utf-8")
    url = f"sqlite:///{tmp_path}/t.db" if kind == "sqlite" else "postgresql+psycopg://u@127.0.0.1/test"
    config = tmp_path / "syncd.yaml"
    config.write_text(f'target: {{url: "{url}"}}\nconnections:\n  qzk: {{type: sql, url: "sqlite://"}}\n',
                      encoding="utf-8")
    with capture_logs() as logs:  # what `syncd check` and every start load
        load_config(config)
    warnings = [e for e in logs if e["event"] == "config.sqlite_decimal_digits"]
    if kind != "sqlite":
        assert warnings == []
        return
    (warning,) = warnings  # `count` (scale 0, precision 18) is stored as an exact INTEGER
    assert warning["file"].endswith("people.yaml") and warning["line"] == 8, warning
    assert warning["field"] == "columns.amount", warning  # precision: the default 18
    assert "15" in warning["fix"] and "PostgreSQL" in warning["fix"], warning
