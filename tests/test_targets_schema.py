"""Engines and tables on real databases: engine settings, table creation, verification messages."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.errors import TargetError
from syncd.targets import (
    StateStore,
    TargetSchemaError,
    create_target_engine,
    describe_url,
    ensure_target_table,
    shape_from_dataset,
    write_engine,
)
from syncd.targets.dbtls import mysql_tls_args
from tests.test_targets_writer import (
    RESIDENT_COLUMNS,
    RUN1,
    engine,
    make_dataset,
    resident,
    store,
    table_rows,
)

__all__ = ["engine", "store"]  # fixtures shared with test_targets_writer

# --------------------------------------------------------------------------- URLs and engines


def test_describe_url_hides_secrets() -> None:
    shown = describe_url("postgresql+psycopg://syncd:Pa55-w0rd@db.county.gov.cn:5432/data?sslpassword=xyz")
    assert "Pa55-w0rd" not in shown
    assert "xyz" not in shown
    assert shown.startswith("postgresql+psycopg://syncd:***@db.county.gov.cn:5432/data")
    assert describe_url("sqlite:////var/lib/syncd/syncd.db") == "sqlite:////var/lib/syncd/syncd.db"
    assert describe_url("::not a url::") == "<a database URL that cannot be parsed>"


def test_bad_urls_fail_without_leaking_the_password() -> None:
    with pytest.raises(TargetError) as caught:
        create_target_engine("oracle://scott:tiger-Secret1@host/orcl")
    assert "unsupported target database 'oracle'" in str(caught.value)
    assert "tiger-Secret1" not in str(caught.value)
    with pytest.raises(TargetError) as caught:
        create_target_engine("postgres ql://u:tiger-Secret1@host/db")
    assert "cannot be parsed" in str(caught.value)
    assert caught.value.__cause__ is None
    assert "tiger-Secret1" not in repr(caught.value)


def test_driver_defaults() -> None:
    pg = create_target_engine("postgresql://postgres@127.0.0.1:5432/test")
    my = create_target_engine("mysql://root@127.0.0.1:3306/test?charset=latin1")
    try:
        assert pg.dialect.driver == "psycopg"
        assert my.dialect.driver == "pymysql"
        assert my.url.query["charset"] == "utf8mb4"
    finally:
        pg.dispose()
        my.dispose()


def test_sqlite_engine_settings(sqlite_url: str) -> None:
    eng = create_target_engine(sqlite_url)
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 10_000
            assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == 64 << 20
        # a write transaction takes the write lock at BEGIN: a second writer cannot start
        other = sa.create_engine(sqlite_url, connect_args={"timeout": 0})
        try:
            with write_engine(eng).begin(), other.connect() as conn, pytest.raises(sa.exc.OperationalError):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            other.dispose()
    finally:
        eng.dispose()


@pytest.mark.mariadb
def test_mariadb_engine_settings(mariadb_url: str) -> None:
    eng = create_target_engine(mariadb_url.replace("charset=utf8mb4", "charset=utf8"))
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@character_set_connection").scalar() == "utf8mb4"
            assert "STRICT_TRANS_TABLES" in conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
            assert conn.exec_driver_sql("SELECT @@tx_isolation").scalar() == "READ-COMMITTED"
    finally:
        eng.dispose()


@pytest.mark.mariadb
def test_mariadb_connections_to_this_machine_build_no_tls_context(mariadb_url: str) -> None:
    """PyMySQL 1.2 would try TLS on every connection ("preferred", unverified) and load the
    system's CA store for it each time: 22 ms of CPU per connection, for nothing on loopback."""
    eng = create_target_engine(mariadb_url)
    try:
        with eng.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None and dbapi.ssl is False and getattr(dbapi, "ctx", None) is None
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("url", "args"),
    [
        ("mysql+pymysql://u@127.0.0.1:3306/d", {"ssl_disabled": True}),
        ("mysql+pymysql://u@localhost/d", {"ssl_disabled": True}),
        ("mysql+pymysql://u@[::1]:3306/d", {"ssl_disabled": True}),
        ("mysql+pymysql://u@/d?unix_socket=/run/mysqld/mysqld.sock", {"ssl_disabled": True}),
        ("mysql+pymysql://u@db.county.example:3306/d", {}),  # another machine: PyMySQL decides
        ("mysql+pymysql://u@10.1.2.3/d", {}),
        # asked for: kept (the ssl settings built from the URL: tests/test_database_tls.py)
        ("mysql+pymysql://u@127.0.0.1/d?ssl_disabled=false", {"ssl_disabled": False}),
    ],
)
def test_mysql_tls_is_left_alone_except_on_loopback(url: str, args: dict[str, Any]) -> None:
    assert mysql_tls_args(sa.make_url(url)) == args


@pytest.mark.mariadb
@pytest.mark.parametrize("scheme", ["mysql+pymysql", "mariadb+pymysql", "mariadb"])
def test_mariadb_tables_are_utf8mb4_bin_whatever_the_database_default(mariadb_url: str, scheme: str) -> None:
    url = sa.make_url(mariadb_url)
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE `{url.database}` COLLATE utf8mb4_general_ci")
    finally:
        admin.dispose()
    eng = create_target_engine(url.set(drivername=scheme).render_as_string(hide_password=False))
    try:
        StateStore(eng).ensure_schema()
        ds = make_dataset()
        ensure_target_table(eng, ds, shape_from_dataset(ds))
        with eng.connect() as conn:
            collations = dict(
                conn.exec_driver_sql(
                    "SELECT table_name, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                ).all()
            )
    finally:
        eng.dispose()
    assert len(collations) == 8  # the seven state tables and the target table
    assert set(collations.values()) == {"utf8mb4_bin"}, collations


# --------------------------------------------------------------------------- state tables


def _index_names(eng: sa.Engine, table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(eng).get_indexes(table)}


def test_state_schema_is_idempotent_and_survives_a_race(db_url: str) -> None:
    engines = [create_target_engine(db_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def create(eng: sa.Engine) -> None:
        try:
            start.wait()
            StateStore(eng).ensure_schema()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        StateStore(engines[0]).ensure_schema()  # and once more, on a complete schema
        names = set(sa.inspect(engines[0]).get_table_names())
        assert {f"syncd_{n}" for n in ("row_state", "changes", "watermarks", "runs", "quarantine")} <= names
        indexes = _index_names(engines[0], "syncd_changes")
        assert {"ix_syncd_changes_dataset_id", "ix_syncd_changes_dataset_at"} <= indexes
    finally:
        for e in engines:
            e.dispose()


def test_a_complete_state_schema_is_checked_without_waiting_for_writers(db_url: str) -> None:
    """Every run checks the state tables. On a complete schema that must not wait for another
    dataset's open batch: PostgreSQL's CREATE INDEX IF NOT EXISTS queues for a SHARE lock behind
    it (and every later writer behind that), SQLite's DDL for the write lock (30 s busy wait)."""
    eng = create_target_engine(db_url)
    StateStore(eng).ensure_schema()
    batch = write_engine(eng).connect()
    checked = threading.Event()
    try:
        batch.begin()  # another dataset's batch, not committed yet
        batch.exec_driver_sql(
            "INSERT INTO syncd_row_state (dataset, row_key, row_hash) VALUES ('other', 'k', 'h')"
        )
        batch.exec_driver_sql(
            "INSERT INTO syncd_changes (dataset, run_id, row_key, op, changed_columns, changed_at) "
            "VALUES ('other', 'r', 'k', 'insert', '[]', '2026-12-06 10:00:00')"
        )
        def check() -> None:
            StateStore(eng).ensure_schema()
            checked.set()

        thread = threading.Thread(target=check, daemon=True)
        thread.start()
        thread.join(10)
        assert checked.is_set(), "ensure_schema waited for an open write transaction"
    finally:
        batch.rollback()
        batch.close()
        thread.join(60)
        eng.dispose()


def test_a_dropped_state_index_is_created_again(db_url: str) -> None:
    eng = create_target_engine(db_url)
    try:
        StateStore(eng).ensure_schema()
        with eng.begin() as conn:
            on = " ON syncd_changes" if eng.dialect.name in ("mysql", "mariadb") else ""
            conn.exec_driver_sql(f"DROP INDEX ix_syncd_changes_dataset_at{on}")
        assert "ix_syncd_changes_dataset_at" not in _index_names(eng, "syncd_changes")
        StateStore(eng).ensure_schema()
        assert "ix_syncd_changes_dataset_at" in _index_names(eng, "syncd_changes")
    finally:
        eng.dispose()


def test_an_older_quarantine_table_gets_its_new_columns(db_url: str) -> None:
    engine = create_target_engine(db_url)
    try:
        with engine.begin() as conn:  # the quarantine of earlier syncd databases
            conn.exec_driver_sql(
                "CREATE TABLE syncd_quarantine (dataset VARCHAR(64) NOT NULL, "
                "raw_hash CHAR(32) NOT NULL, run_id VARCHAR(32) NOT NULL, record_key VARCHAR(512), "
                "raw TEXT NOT NULL, reason TEXT NOT NULL, first_seen TIMESTAMP NULL, "
                "last_seen TIMESTAMP NULL, times INTEGER NOT NULL, PRIMARY KEY (dataset, raw_hash))"
            )
            conn.exec_driver_sql(
                "INSERT INTO syncd_quarantine (dataset, raw_hash, run_id, record_key, raw, reason, times) "
                "VALUES ('d', 'h', 'r', 'k', '{}', 'bad', 1)"
            )
        StateStore(engine).ensure_schema()
        inspector = sa.inspect(engine)
        assert {"row_key", "protected"} <= {c["name"] for c in inspector.get_columns("syncd_quarantine")}
        indexes = {i["name"] for i in inspector.get_indexes("syncd_quarantine")}
        assert "ix_syncd_quarantine_dataset_row_key" in indexes
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT record_key, row_key, protected FROM syncd_quarantine").one()
        assert tuple(row) == ("k", None, None)
        StateStore(engine).ensure_schema()  # and again: nothing left to add
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_state_keys_compare_bytes_whatever_the_database_collation(pg_url: str) -> None:
    """Dataset names and row keys are matched by equality and paged in key order only: "C", not
    the database's linguistic collation (zh_CN, ICU), which made the row_state look-ups of a full
    snapshot re-sync 14 % slower. The temporary stage tables copy it (LIKE)."""
    from syncd.sources.files.ledger import files_table
    from syncd.targets.schema import create_tables
    from syncd.targets.snapshot import missing_table

    eng = create_target_engine(pg_url)
    try:
        store = StateStore(eng)
        store.ensure_schema()
        metadata = sa.MetaData()
        create_tables(eng, [missing_table(metadata), files_table(metadata)])
        query = (
            "SELECT table_name || '.' || column_name, collation_name FROM information_schema.columns "
            "WHERE table_name LIKE 'syncd_%%' AND column_name IN ('dataset', 'row_key')"
        )
        with eng.connect() as conn:
            collations = dict(conn.exec_driver_sql(query).all())
        assert set(collations) == {
            "syncd_row_state.dataset",
            "syncd_row_state.row_key",
            "syncd_changes.dataset",
            "syncd_changes.row_key",
            "syncd_watermarks.dataset",
            "syncd_runs.dataset",
            "syncd_quarantine.dataset",
            "syncd_quarantine.row_key",
            "syncd_changes_pruned.dataset",
            "syncd_key_defs.dataset",
            "syncd_snapshot_missing.dataset",
            "syncd_snapshot_missing.row_key",
            "syncd_files.dataset",
        }
        assert set(collations.values()) == {"C"}, collations
    finally:
        eng.dispose()


def test_table_prefix(engine: sa.Engine) -> None:
    StateStore(engine, prefix="hl_").ensure_schema()
    assert "hl_runs" in sa.inspect(engine).get_table_names()


# --------------------------------------------------------------------------- target tables


def test_target_table_is_created_typed_keyed_and_utf8mb4(store: StateStore, engine: sa.Engine) -> None:
    ds = make_dataset()
    table = ensure_target_table(engine, ds, shape_from_dataset(ds))
    assert [c.name for c in table.columns] == list(RESIDENT_COLUMNS)
    inspector = sa.inspect(engine)
    assert inspector.get_pk_constraint("resident")["constrained_columns"] == ["id"]
    types = {c["name"]: c["type"] for c in inspector.get_columns("resident")}
    assert isinstance(types["id"], sa.String)
    assert types["id"].length == 32
    assert types["name"].length == 64
    assert isinstance(types["birth_date"], sa.Date)
    assert isinstance(types["income"], sa.Numeric)
    assert (types["income"].precision, types["income"].scale) == (12, 2)
    assert isinstance(types["updated_at"], sa.DateTime)
    assert isinstance(types["verified"], sa.Boolean | sa.Integer)
    assert isinstance(types["household_size"], sa.BigInteger)
    assert isinstance(types["remark"], sa.String)
    assert types["remark"].length is None  # TEXT / LONGTEXT
    nullable = {c["name"]: c["nullable"] for c in inspector.get_columns("resident")}
    assert nullable["id"] is False
    assert nullable["remark"] is True

    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.connect() as conn:
            collations = dict(
                conn.exec_driver_sql(
                    "SELECT table_name, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                ).all()
            )
        assert set(collations.values()) == {"utf8mb4_bin"}, collations

    # characters outside the BMP and exact decimals survive the round trip
    writer = store.writer(ds, shape_from_dataset(ds))
    writer.write(RUN1, [resident(1, name="𠮷野家 𪚥", income=Decimal("9999999999.99"))])
    row = table_rows(engine, "resident")["R00001"]
    assert row["name"] == "𠮷野家 𪚥"
    assert row["income"] == Decimal("9999999999.99")
    assert store.changes("residents")[0]["new_values"]["name"] == "𠮷野家 𪚥"
    ensure_target_table(engine, ds, shape_from_dataset(ds))  # and it verifies clean


def _create_by_hand(engine: sa.Engine, *columns: Any, name: str = "resident") -> None:
    metadata = sa.MetaData()
    sa.Table(name, metadata, *columns)
    metadata.create_all(engine)


def test_incompatible_existing_table_gets_a_precise_message(engine: sa.Engine) -> None:
    _create_by_hand(
        engine,
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("birth_date", sa.String(20)),
        sa.Column("income", sa.Float()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("household_size", sa.Integer()),
        sa.Column("created_by", sa.String(20), nullable=False),
    )
    ds = make_dataset()
    with pytest.raises(TargetSchemaError) as caught:
        ensure_target_table(engine, ds, shape_from_dataset(ds))
    err = caught.value
    assert err.missing == ("verified", "remark")
    assert (
        "column birth_date is VARCHAR(20) in the database but the mapping declares date (not a DATE type)"
        in err.incompatible
    )
    assert any(
        text.startswith("column income is ")
        and "mapping declares decimal(12,2) (not an exact decimal type)" in text
        for text in err.incompatible
    ), err.incompatible
    created_by = "column created_by is not in the mapping and is NOT NULL without a default"
    assert f"{created_by}, so syncd cannot insert rows" in err.incompatible
    assert any(
        text.startswith("column updated_at is ")  # TIMESTAMP WITHOUT TIME ZONE, DATETIME, …
        and " NOT NULL in the database but the mapping declares datetime (NOT NULL, while the mapping "
        "allows empty values (nullable: true))"
        in text
        for text in err.incompatible
    ), err.incompatible
    # household_size as INTEGER is fine for int; name is NOT NULL as part of the primary key,
    # which the key problem covers
    assert len(err.incompatible) == 4
    assert err.key_problem is not None
    assert err.key_problem.startswith("the primary key is (name) in the database but target.key is (id)")
    message = str(err)
    assert "table resident in " + describe_url(engine.url) in message
    assert "  - column verified is missing" in message
    assert "ALTER TABLE resident ADD COLUMN remark" in message
    assert "CREATE UNIQUE INDEX ux_resident_key ON resident (id);" in message
    assert "let syncd create it (target.create: true)" in message


def test_compatible_existing_table_is_used_as_it_is(store: StateStore, engine: sa.Engine) -> None:
    _create_by_hand(
        engine,
        sa.Column("id", sa.String(40), primary_key=True),  # wider than declared
        sa.Column("name", sa.Text()),
        sa.Column("birth_date", sa.Date()),
        sa.Column("income", sa.Numeric(14, 4)),  # more room both sides
        sa.Column("updated_at", sa.DateTime()),
        sa.Column("verified", sa.Boolean()),
        sa.Column("household_size", sa.Integer()),
        sa.Column("remark", sa.String(500)),
        sa.Column("note", sa.String(20)),  # not mapped, nullable
        sa.Column("source_system", sa.String(20), nullable=False, server_default="province"),
    )
    ds = make_dataset()
    writer = store.writer(ds, shape_from_dataset(ds))
    assert writer.write(RUN1, [resident(1)]).inserted == 1
    assert writer.write(RUN1, [resident(1)]).unchanged == 1  # Numeric(14,4) gives 1235.5000: no change
    row = table_rows(engine, "resident")["R00001"]
    assert (row["source_system"], row["note"]) == ("province", None)


def test_a_unique_key_is_as_good_as_the_primary_key(store: StateStore, engine: sa.Engine) -> None:
    _create_by_hand(
        engine,
        sa.Column("row_no", sa.Integer(), primary_key=True, autoincrement=True),
        *(
            sa.Column(n, sa.String(64) if n != "id" else sa.String(32), unique=n == "id", nullable=n != "id")
            for n in ("id", "name", "remark")
        ),
    )
    columns = {k: RESIDENT_COLUMNS[k] for k in ("id", "name", "remark")}
    ds = make_dataset(columns=columns)
    writer = store.writer(ds, shape_from_dataset(ds))
    assert writer.write(RUN1, [("R1", "甲", None)]).inserted == 1
    assert writer.write(RUN1, [("R1", "乙", None)]).updated == 1
    assert [r["name"] for r in table_rows(engine, "resident").values()] == ["乙"]


def test_unique_keys_are_read_only_when_the_primary_key_is_not_the_key(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two catalogue reads a run (four queries of SQLAlchemy's on PostgreSQL) are saved where the
    primary key is the key, as in every table syncd creates."""
    reads: list[str] = []
    for method in ("get_unique_constraints", "get_indexes"):
        real = getattr(sa.engine.reflection.Inspector, method)

        def spy(self: Any, *args: Any, _real: Any = real, _name: str = method, **kwargs: Any) -> Any:
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(sa.engine.reflection.Inspector, method, spy)
    ds = make_dataset()
    ensure_target_table(engine, ds, shape_from_dataset(ds))  # created
    ensure_target_table(engine, ds, shape_from_dataset(ds))  # verified
    assert reads == []

    columns = {k: RESIDENT_COLUMNS[k] for k in ("id", "name", "remark")}
    keyed_by_row_no = make_dataset(columns=columns, table="resident_by_row_no")
    _create_by_hand(
        engine,
        sa.Column("row_no", sa.Integer(), primary_key=True, autoincrement=True),
        *(sa.Column(n, sa.String(64), unique=n == "id", nullable=n != "id") for n in columns),
        name="resident_by_row_no",
    )
    ensure_target_table(engine, keyed_by_row_no, shape_from_dataset(keyed_by_row_no))
    assert sorted(reads) == ["get_indexes", "get_unique_constraints"]


def test_missing_table_with_create_false(engine: sa.Engine) -> None:
    ds = make_dataset(create=False)
    with pytest.raises(TargetSchemaError) as caught:
        ensure_target_table(engine, ds, shape_from_dataset(ds))
    message = str(caught.value)
    assert "table resident does not exist" in message
    assert "target.create is false" in message
    assert "CREATE TABLE resident" in message
    assert "resident" not in sa.inspect(engine).get_table_names()


def test_soft_delete_column_is_created_and_required(engine: sa.Engine) -> None:
    ds = make_dataset(soft=True)
    ensure_target_table(engine, ds, shape_from_dataset(ds))
    cols = {c["name"]: c for c in sa.inspect(engine).get_columns("resident")}
    assert cols["is_deleted"]["nullable"] is False

    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE resident RENAME TO resident_old"))
    hard = make_dataset()
    ensure_target_table(engine, hard, shape_from_dataset(hard))  # created without the flag
    with pytest.raises(TargetSchemaError) as caught:
        ensure_target_table(engine, ds, shape_from_dataset(ds))
    assert caught.value.missing == ("is_deleted",)
    fix = next(line for line in str(caught.value).splitlines() if "ADD COLUMN is_deleted" in line)
    assert "BOOL" in fix
    assert "NOT NULL" in fix
    assert "DEFAULT" in fix


def test_mapping_keys_must_match_target_key(engine: sa.Engine) -> None:
    ds = make_dataset()
    shape = shape_from_dataset(ds)
    wrong = type(shape)(columns=shape.columns, key_indexes=(1,), specs=shape.specs)
    with pytest.raises(ValueError, match=r"key columns \(name\) differ from target.key \(id\)"):
        ensure_target_table(engine, ds, wrong)


_PG_PLAIN_COLUMNS = """
    "Name" varchar(18) COLLATE "C", b varchar, c char(2), d text, e text COLLATE "C", f smallint,
    g integer NOT NULL DEFAULT 3, h bigint, i real, j double precision, k date NOT NULL, l boolean,
    m numeric, n numeric(12,2), o numeric(5), p timestamp, q timestamp(3), r timestamptz,
    s timestamp(0) with time zone, t serial, id varchar(20),
    PRIMARY KEY (id, "Name")
"""


@pytest.mark.parametrize(
    "other",
    [
        "u integer[]",
        "u jsonb",
        "u time",
        "u syncd_t_code",
        "u integer GENERATED ALWAYS AS IDENTITY",
        "u integer GENERATED ALWAYS AS (f + 1) STORED",
        "u bit(3)",
        "u interval",
    ],
)
def test_postgresql_tables_are_read_from_one_catalogue_query_as_sqlalchemy_reflects_them(
    pg_url: str, other: str
) -> None:
    """PostgreSQL: the target check reads a table's columns and primary key with one catalogue
    query (SQLAlchemy's reflection took 45-55 ms of a fresh process's re-sync). For the types it
    knows it must give what SQLAlchemy's reflection gives, type parameters and collation included;
    a table with any other kind of column (arrays, json, time, a domain, identity and generated
    columns, …) is left to SQLAlchemy, whose reflection it then gets."""
    from syncd.targets.verify import _reflect, _reflect_postgresql

    eng = create_target_engine(pg_url)
    try:
        with eng.begin() as conn:
            conn.exec_driver_sql("CREATE DOMAIN syncd_t_code AS varchar(6)")
            conn.exec_driver_sql(f"CREATE TABLE plain_t ({_PG_PLAIN_COLUMNS})")
            conn.exec_driver_sql(f"CREATE TABLE other_t ({_PG_PLAIN_COLUMNS}, {other})")
            conn.exec_driver_sql("CREATE VIEW plain_v AS SELECT id, d, k FROM plain_t")
            conn.exec_driver_sql("CREATE INDEX plain_ix ON plain_t (d)")

        def described(columns: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
            return {
                name: (repr(c["type"]), c["nullable"], c.get("default") is not None)
                for name, c in columns.items()
            }

        inspector = sa.inspect(eng)
        for name in ("plain_t", "plain_v"):
            fast = _reflect_postgresql(eng, name)
            assert fast is not None, name
            expected = {c["name"]: c for c in inspector.get_columns(name)}
            assert described(fast.columns) == described(expected)
            assert list(fast.columns) == list(expected)
            assert fast.pk == tuple(inspector.get_pk_constraint(name)["constrained_columns"])
        assert _reflect_postgresql(eng, "plain_t").pk == ("id", "Name")  # key order, not column order
        assert _reflect_postgresql(eng, "plain_v").pk == ()

        assert _reflect_postgresql(eng, "other_t") is None
        assert _reflect_postgresql(eng, "no_such_table") is None
        assert _reflect_postgresql(eng, "plain_ix") is None  # an index is not a table
        slow = _reflect(eng, "other_t")  # SQLAlchemy's reflection
        assert described(slow.columns) == described({c["name"]: c for c in inspector.get_columns("other_t")})
        assert slow.pk == ("id", "Name")
    finally:
        eng.dispose()
