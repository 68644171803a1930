"""Text keys compare exactly on every target database: 'A001', 'A001 ' and 'a001' are three rows.

MariaDB's utf8mb4_bin (and MySQL 8's) is PAD SPACE: 'A001 ' equals 'A001'. syncd declares key
columns with the server's NO PAD binary collation, whatever the database's default collation
(often the case-insensitive utf8mb4_general_ci), and warns, with the fixing ALTER TABLE, about key
columns of tables an earlier version made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable
from structlog.testing import capture_logs

from syncd.ops.plan import plan_dataset
from syncd.runner import run_dataset
from syncd.targets import StateStore
from syncd.targets.schema import state_tables
from syncd.targets.sqltypes import key_collation_problem, mysql_key_collation
from syncd.targets.verify import key_columns
from tests.e2e import ListSource
from tests.sources_kit import make_app, store_for

NOW = datetime(2026, 3, 1, 12, 0, 0)
COLUMNS = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "name": {"source": "name", "type": "string", "length": 64},
}
TWINS = [
    {"id": "A001", "name": "plain"},
    {"id": "A001 ", "name": "one trailing space"},
    {"id": "A001  ", "name": "two trailing spaces"},
    {"id": "a001", "name": "lower case"},
]
OTHERS = [{"id": f"k{i}", "name": "n"} for i in range(8)]
_ENGINES: list[sa.Engine] = []


@pytest.fixture(autouse=True)
def _dispose() -> Iterator[None]:
    yield
    while _ENGINES:
        _ENGINES.pop().dispose()


def _store(url: str) -> StateStore:
    store = store_for(url)
    _ENGINES.append(store.engine)
    return store


def _source(records: list[dict[str, Any]]) -> Callable[[object, object], ListSource]:
    return lambda app, ds: ListSource([[dict(r) for r in records]])


def _rows(store: StateStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT pid, name FROM people_local").tuples().all())


def _state_keys(store: StateStore) -> set[str]:
    with store.engine.connect() as conn:
        return {str(k) for (k,) in conn.exec_driver_sql("SELECT row_key FROM syncd_row_state")}


def _app(url: str, **snapshot: object) -> tuple[Any, Any]:
    return make_app(
        url,
        {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
        connections={"qzk": {"type": "sql", "url": "sqlite://"}},
        target={"snapshot_delete": {"max_ratio": 0.5, **snapshot}},
        columns=COLUMNS,
    )


def _keys_stay_apart(url: str) -> None:
    app, ds = _app(url)
    store = _store(url)
    records = TWINS + OTHERS
    with capture_logs() as logs:
        first = run_dataset(app, ds, store, now=NOW, source_factory=_source(records))
        assert first.ok, first.error
        assert first.counts.inserted == len(records)
        assert _rows(store) == {r["id"]: r["name"] for r in records}
        assert _state_keys(store) == {r["id"] for r in records}

        again = run_dataset(app, ds, store, now=NOW, source_factory=_source(records))
        assert again.ok, again.error
        assert (again.counts.inserted, again.counts.updated, again.counts.deleted) == (0, 0, 0)
        assert again.counts.unchanged == len(records)
        assert len(store.changes("people")) == len(records)

        gone = [r for r in records if r["id"] != "A001 "]  # full snapshot: 'A001 ' was deleted upstream
        third = run_dataset(app, ds, store, now=NOW, source_factory=_source(gone))
        assert third.ok, third.error
        assert (third.counts.inserted, third.counts.updated, third.counts.deleted) == (0, 0, 1)
        assert _rows(store) == {r["id"]: r["name"] for r in gone}
        deletes = [c["row_key"] for c in store.changes("people") if c["op"] == "delete"]
        assert deletes == ["A001 "]

        fourth = run_dataset(app, ds, store, now=NOW, source_factory=_source(gone))
        assert fourth.ok and fourth.counts.unchanged == len(gone)
        assert len(store.changes("people")) == len(records) + 1
    events = {e["event"] for e in logs}
    # the row_state look-ups kept their JSON_TABLE form (MariaDB), and the new tables are exact
    assert "target.lookup_unpacked" not in events
    assert "target.key_collation_inexact" not in events


def test_keys_differing_in_trailing_spaces_or_case_are_separate_rows(db_url: str) -> None:
    """Two rows, no churn on the next run, and a full-snapshot delete of exactly the one missing:
    on MariaDB 'A001 ' and 'A001' were one primary key (utf8mb4_bin is PAD SPACE)."""
    _keys_stay_apart(db_url)


@pytest.mark.mariadb
def test_keys_stay_apart_under_a_case_insensitive_database_default(mariadb_ci_url: str) -> None:
    """The database's default collation (utf8mb4_general_ci: 'a001' = 'A001 ') does not matter:
    syncd declares its tables' collations itself."""
    _keys_stay_apart(mariadb_ci_url)
    engine = sa.create_engine(mariadb_ci_url)
    _ENGINES.append(engine)
    checked = [("people_local", "pid"), ("syncd_row_state", "row_key"), ("syncd_row_state", "row_hash"),
               ("syncd_changes", "row_key"), ("syncd_snapshot_missing", "row_key")]
    for table, column in checked:
        (found,) = key_columns(engine, table, [column]).values()
        assert found.collation == "utf8mb4_nopad_bin"
        # row_hash is CHAR(64) (hex digests, never a trailing space), asked of as a key here only
        assert found.problem is None or (column == "row_hash" and "CHAR" in found.problem)


OLD = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


@pytest.mark.mariadb
def test_pad_space_key_columns_of_an_earlier_version_are_reported_with_their_fix(mariadb_url: str) -> None:
    app, ds = _app(mariadb_url, missing_runs=2)
    store = _store(mariadb_url)
    records = [TWINS[0], *OTHERS]
    assert run_dataset(app, ds, store, now=NOW, source_factory=_source(records)).ok
    with store.engine.begin() as conn:  # the tables as an earlier version made them
        conn.exec_driver_sql(f"ALTER TABLE syncd_row_state CONVERT TO {OLD}")
        conn.exec_driver_sql(f"ALTER TABLE syncd_snapshot_missing CONVERT TO {OLD}")
        pid = f"pid VARCHAR(32) {OLD} NOT NULL COMMENT '居民''编号'"  # an operator's comment is kept
        conn.exec_driver_sql(f"ALTER TABLE people_local MODIFY {pid}")

    with capture_logs() as logs:
        store = _store(mariadb_url)  # a new process
        first = run_dataset(app, ds, store, now=NOW, source_factory=_source(records))
        second = run_dataset(app, ds, store, now=NOW, source_factory=_source(records[:-1]))
    assert first.ok and second.ok, (first.error, second.error)
    assert (first.counts.unchanged, second.counts.unchanged, second.counts.deleted) == (9, 8, 0)
    warned = [e for e in logs if e["event"] == "target.key_collation_inexact"]
    assert sorted((e["table"], e["column"]) for e in warned) == [
        ("people_local", "pid"), ("syncd_row_state", "row_key"), ("syncd_snapshot_missing", "row_key")
    ]  # once each: not again at the second run
    fixes = {e["table"]: e["fix"] for e in warned}
    assert fixes["syncd_row_state"] == (
        "ALTER TABLE syncd_row_state CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;"
    )
    assert fixes["people_local"] == (
        "ALTER TABLE people_local MODIFY pid varchar(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin "
        "NOT NULL COMMENT '居民''编号';"
    )
    for event in warned:
        assert "PAD SPACE" in event["problem"] and event["collation"] == "utf8mb4_bin"
        assert event["fix"] in event["hint"] and "syncd stopped" in event["hint"]
    # the seen-key table and the JSON_TABLE look-ups took row_state's collation: no error, no fallback
    assert not [e for e in logs if e["event"] == "target.lookup_unpacked"]

    plan = plan_dataset(app, ds, store.engine, now=NOW, source_factory=_source(records))
    shown = [w for w in plan.warnings if "PAD SPACE" in w]
    assert len(shown) == 3 and all(fix in "\n".join(shown) for fix in fixes.values())

    with store.engine.begin() as conn:  # the operator runs the statements
        for fix in fixes.values():
            conn.exec_driver_sql(fix)
    with store.engine.connect() as conn:
        comment = conn.exec_driver_sql(
            "SELECT column_comment FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'people_local' AND column_name = 'pid'"
        ).scalar_one()
    assert comment == "居民'编号"
    with capture_logs() as logs:
        store = _store(mariadb_url)
        both = [*records, TWINS[1]]
        third = run_dataset(app, ds, store, now=NOW, source_factory=_source(both))
    assert third.ok and third.counts.inserted == 1, third.error
    assert _rows(store)["A001 "] == "one trailing space" and _rows(store)["A001"] == "plain"
    assert not [e for e in logs if e["event"] in ("target.key_collation_inexact", "target.lookup_unpacked")]
    assert not [w for w in plan_dataset(app, ds, store.engine, source_factory=_source(both)).warnings
                if "key column" in w]


_CHAR_KEY_TABLE = {  # an operator's target table keyed by a CHAR column (ID numbers often are CHAR(18))
    "sqlite": "CREATE TABLE people_local (pid CHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64))",
    "postgresql": "CREATE TABLE people_local (pid CHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64))",
    "mysql": f"CREATE TABLE people_local (pid CHAR(32) {OLD} NOT NULL PRIMARY KEY, name VARCHAR(64)) "
             "CHARACTER SET utf8mb4",
}
_CHAR_KEY_FIX = {
    "postgresql": "ALTER TABLE people_local ALTER COLUMN pid TYPE varchar(32);",
    "mysql": "ALTER TABLE people_local MODIFY pid VARCHAR(32) CHARACTER SET utf8mb4 "
             "COLLATE utf8mb4_nopad_bin NOT NULL;",
}


def test_a_char_key_column_is_reported_until_it_is_varchar(db_url: str) -> None:
    """A CHAR key column pads its values and ignores trailing spaces in comparisons, whatever its
    collation: 'A001' and 'A001 ' were one row (the change feed showed two inserts). MariaDB's fix
    kept CHAR and changed only the collation, which silenced the warning and fixed nothing;
    PostgreSQL's character(n) was not reported at all. SQLite compares CHAR text exactly."""
    app, ds = _app(db_url)
    store = _store(db_url)
    family = store.engine.dialect.name.replace("mariadb", "mysql")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(_CHAR_KEY_TABLE[family])
    with capture_logs() as logs:
        first = run_dataset(app, ds, store, now=NOW, source_factory=_source(OTHERS))
    assert first.ok, first.error
    warned = [e for e in logs if e["event"] == "target.key_collation_inexact"]
    fix = _CHAR_KEY_FIX.get(family)
    if fix is None:
        assert warned == []
    else:
        assert [(e["table"], e["column"], e["fix"]) for e in warned] == [("people_local", "pid", fix)]
        assert "fixed-length (CHAR)" in warned[0]["problem"] and fix in warned[0]["hint"]
        plan = plan_dataset(app, ds, store.engine, now=NOW, source_factory=_source(OTHERS))
        assert [w for w in plan.warnings if "key column pid" in w and fix in w], plan.warnings
        with store.engine.begin() as conn:  # the operator runs it
            conn.exec_driver_sql(fix)
    with capture_logs() as logs:
        store = _store(db_url)  # a new process
        records = [*TWINS[:2], *OTHERS]
        second = run_dataset(app, ds, store, now=NOW, source_factory=_source(records))
        third = run_dataset(app, ds, store, now=NOW, source_factory=_source(records))
    assert second.ok and third.ok, (second.error, third.error)
    assert _rows(store) == {r["id"]: r["name"] for r in records}
    assert (second.counts.inserted, third.counts.inserted, third.counts.updated) == (2, 0, 0)
    assert not [e for e in logs if e["event"] == "target.key_collation_inexact"]


@pytest.mark.mariadb
@pytest.mark.parametrize("old", ["syncd_row_state", "syncd_snapshot_missing"])
def test_plan_previews_the_streaks_when_row_state_and_the_streak_table_differ_in_collation(
    mariadb_url: str, old: str
) -> None:
    """After an upgrade, a row_state an earlier version made (utf8mb4_bin) meets a streak table made
    since (NO PAD); or the operator ran the fix syncd printed for row_state only (nothing is said of
    snapshot_missing while missing_runs is 1). `syncd plan` joined the two key columns, and MariaDB
    refused ("Illegal mix of collations"): a traceback instead of a plan."""
    app, ds = _app(mariadb_url, missing_runs=2)
    store = _store(mariadb_url)
    records = [TWINS[0], *OTHERS]
    assert run_dataset(app, ds, store, now=NOW, source_factory=_source(records)).ok
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {old} CONVERT TO {OLD}")
    store = _store(mariadb_url)  # a new process
    read = records[:-1]  # k7 gone upstream
    second = run_dataset(app, ds, store, now=NOW, source_factory=_source(read))
    assert second.ok and second.counts.deleted == 0, second.error  # its streak starts

    plan = plan_dataset(app, ds, store.engine, now=NOW, source_factory=_source(read))
    assert plan.snapshot is not None and (plan.snapshot.missing, plan.snapshot.due) == (1, 1)
    assert [s["key"] for s in plan.categories["delete"].samples] == ["k7"]
    shown = [w for w in plan.warnings if "PAD SPACE" in w]
    assert len(shown) == 1 and f"table {old}, key column row_key" in shown[0], plan.warnings

    third = run_dataset(app, ds, store, now=NOW, source_factory=_source(read))
    assert third.ok and third.counts.deleted == 1, third.error


@pytest.mark.parametrize(
    ("server", "collation"),
    [
        ({"is_mariadb": True, "server_version_info": (10, 11, 19)}, "utf8mb4_nopad_bin"),
        ({"is_mariadb": True, "server_version_info": (10, 2, 44)}, "utf8mb4_nopad_bin"),
        ({"is_mariadb": True, "server_version_info": (10, 1, 48)}, "utf8mb4_bin"),
        ({"is_mariadb": False, "server_version_info": (8, 4, 3)}, "utf8mb4_0900_bin"),
        ({"is_mariadb": False, "server_version_info": (8, 0, 17)}, "utf8mb4_0900_bin"),
        ({"is_mariadb": False, "server_version_info": (8, 0, 16)}, "utf8mb4_bin"),
        ({"is_mariadb": False, "server_version_info": (5, 7, 44)}, "utf8mb4_bin"),
    ],
)
def test_the_key_collation_is_the_servers_no_pad_binary_one(server: dict[str, Any], collation: str) -> None:
    """MySQL cannot run here: its DDL is checked as compiled for the server version it would report."""
    assert mysql_key_collation(SimpleNamespace(**server)) == collation  # type: ignore[arg-type]
    dialect = mysql.dialect()
    dialect.is_mariadb = server["is_mariadb"]
    dialect.server_version_info = server["server_version_info"]
    ddl = str(CreateTable(state_tables(sa.MetaData()).row_state).compile(dialect=dialect))
    assert f"row_key VARCHAR(512) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL" in ddl
    assert ddl.rstrip().endswith("COLLATE utf8mb4_bin")  # the other text columns: binary, as before


@pytest.mark.parametrize(
    ("collation", "exact"),
    [
        (None, True),
        ("binary", True),
        ("utf8mb4_nopad_bin", True),
        ("utf8mb4_0900_bin", True),
        ("utf8mb4_bin", False),
        ("utf8mb4_general_ci", False),
        ("utf8mb4_0900_ai_ci", False),
        ("utf8mb4_uca1400_nopad_ai_ci", False),
        ("utf8mb4_0900_as_cs", False),
    ],
)
def test_which_collations_compare_keys_exactly(collation: str | None, exact: bool) -> None:
    assert (key_collation_problem(collation) is None) is exact
