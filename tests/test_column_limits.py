"""A value the target column cannot hold is quarantined, never a batch that fails on every run.

* a text key column without ``length:`` is VARCHAR(255) in a table syncd creates: a longer key is
  quarantined, its reason naming the column and the fix (set ``length:``);
* an existing table (``target.create: false``) narrower than the mapping (VARCHAR(10) for a string
  without a length, a 32-bit INTEGER for ``type: int`` or ``decimal(12,0)``, NUMERIC(6,0)): the
  table's limits are read and applied by the casts, so the one value too big for the column is
  quarantined with the column, the value's size and the table's limit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.runner import RunResult, run_dataset
from syncd.targets import StateStore
from tests.e2e import ListSource
from tests.sources_kit import make_app, store_for

NOW = datetime(2026, 3, 1, 12, 0, 0)
SOURCE = {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]}
CONNECTIONS = {"qzk": {"type": "sql", "url": "sqlite://"}}


def _reasons(store: StateStore) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT reason FROM syncd_quarantine")).scalars())


def _run_twice(app: Any, ds: Any, store: StateStore, records: list[dict[str, Any]]) -> list[RunResult]:
    """Two runs over the same page: each succeeds with exactly one record quarantined (the next run
    is no better, and no worse)."""
    def source(_app: object, _ds: object) -> ListSource:
        return ListSource([list(records)])  # a fresh page each run

    results = []
    for _ in range(2):
        result = run_dataset(app, ds, store, now=NOW, source_factory=source)
        assert result.ok, result.error
        assert result.counts.quarantined == 1
        results.append(result)
    return results


def test_a_key_longer_than_its_255_character_column_is_quarantined(db_url: str) -> None:
    columns = {
        "pid": {"source": "id", "type": "string", "nullable": False},  # no length: VARCHAR(255)
        "name": {"source": "name", "type": "string", "length": 64},
    }
    app, ds = make_app(db_url, SOURCE, connections=CONNECTIONS, columns=columns)
    store = store_for(db_url)
    try:
        good = [{"id": f"p{i}", "name": "张三"} for i in range(20)] + [{"id": "k" * 255, "name": "王五"}]
        bad = {"id": "k" * 300, "name": "李四"}
        for run, result in enumerate(_run_twice(app, ds, store, [*good, bad])):
            assert result.counts.inserted + result.counts.unchanged == 21
            assert result.counts.inserted == (21 if run == 0 else 0)
        (reason,) = _reasons(store)
        assert reason.startswith("pid: ") and "too long (300 > 255)" in reason
        assert "set `length:`" in reason
    finally:
        store.engine.dispose()


def _table(engine: sa.Engine, **types: sa.types.TypeEngine[Any]) -> None:
    meta = sa.MetaData()
    sa.Table(
        "people_local", meta, sa.Column("pid", sa.String(32), primary_key=True),
        *(sa.Column(name, type_) for name, type_ in types.items()),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
    )
    meta.create_all(engine)


WHERE = ": column amount of table people_local is "
CASES = {
    # case: (column spec, table type, bad value, what the reason says)
    "int": ({"type": "int"}, sa.Integer(), 3_000_000_000, f"out of range (-2147483648 to 2147483647){WHERE}"),
    "smallint": ({"type": "int"}, sa.SmallInteger(), -40_000, f"out of range (-32768 to 32767){WHERE}"),
    "numeric": ({"type": "int"}, sa.Numeric(6, 0), 1_000_000, f"out of range (-999999 to 999999){WHERE}"),
    "decimal": (
        {"type": "decimal", "precision": 12, "scale": 0}, sa.Integer(), "3000000000",
        f"out of range (-2147483648 to 2147483647){WHERE}",
    ),
    "text": ({"type": "string"}, sa.String(10), "一个很长很长很长的名字啊", f"too long (12 > 10){WHERE}"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_value_too_big_for_an_existing_column_is_quarantined(db_url: str, case: str) -> None:
    spec, table_type, bad_value, why = CASES[case]
    if db_url.startswith("sqlite") and case != "text":
        pytest.skip("SQLite integers are 64-bit whatever the declared type")
    columns = {
        "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
        "amount": {"source": "amount", **spec},
    }
    app, ds = make_app(db_url, SOURCE, connections=CONNECTIONS, target={"create": False}, columns=columns)
    store = store_for(db_url)
    try:
        _table(store.engine, amount=table_type)
        fits = 999 if case != "text" else "张三"
        good = [{"id": f"p{i}", "amount": fits} for i in range(19)] + [{"id": "none", "amount": None}]
        bad = {"id": "bad", "amount": bad_value}
        for run, result in enumerate(_run_twice(app, ds, store, [*good, bad])):
            assert result.counts.inserted == (20 if run == 0 else 0)
        (reason,) = _reasons(store)
        assert reason.startswith("amount: ") and why in reason, reason
        assert "(ALTER TABLE), then `syncd quarantine replay people`" in reason
        with store.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT amount FROM people_local WHERE pid = 'p0'")).scalar_one()
        assert stored == fits
    finally:
        store.engine.dispose()
