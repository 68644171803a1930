"""Table definitions: syncd's state tables and the target tables built from a mapping.

The state tables live in the target database beside the data, so that a batch's rows, row
hashes and change entries commit in one transaction (DESIGN §4.2). Names carry a prefix
(default ``syncd_``):

- ``row_state``  (dataset, row_key) → row_hash of the last written content, ``record_digest``
  (the digest of the raw record it was mapped from, so an unchanged record is not mapped again)
  and ``seen_run`` (written by earlier versions only: the last full-snapshot run that saw the
  key; snapshot delete detection now keeps a run's seen keys in a temporary table of its own)
- ``changes``    the change feed local applications read (one row per insert/update/delete)
- ``watermarks`` dataset → the incremental position of the last successful run
- ``runs``       one row per run: who, when, under which approval, how many rows (使用留痕)
- ``quarantine`` records that could not be mapped, with their raw payload and the reason; its
  ``row_key`` (the key of the row the record stands for, as ``row_state`` holds it) lets a later
  write of that key remove the entry it supersedes, and ``protected`` keeps the values of its
  masked/hashed columns as the mapping computed them from the clear record (replay needs them:
  the raw payload is stored redacted)
- ``changes_pruned`` dataset → the highest change-feed ``id`` (and ``changed_at``) deleted by
  ``syncd changes prune`` or the daemon's retention, so a reader whose position lies below it
  learns that entries it has not read are gone (:mod:`syncd.targets.prune`)
- ``key_defs``   dataset → the digest of its key definition the row keys in ``row_state`` were
  made under (:mod:`syncd.targets.keydef`): a run whose configuration makes keys differently is
  refused until the operator reverts the change or resets the dataset (``syncd reset``)

On MariaDB every table is InnoDB, utf8mb4 (characters outside the BMP, 𠮷, survive) with the
utf8mb4_bin collation as the table's default, whatever the database's default: text never
compares case-insensitively. Key columns — the target table's text keys, the state tables' row
keys and dataset names — are declared with the server's NO PAD binary collation
(:class:`~syncd.targets.sqltypes.KeyText`: ``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin``
on MySQL 8.0.17+), because utf8mb4_bin is PAD SPACE: ``'A001 '`` would be the key ``'A001'``.
Other text columns keep utf8mb4_bin: syncd compares their values in Python, never in SQL, and
PAD SPACE does not change what is stored. Key columns of tables made by earlier versions (or by
an operator) that do not compare exactly are reported, with the ``ALTER TABLE`` that fixes them,
by :func:`warn_inexact_keys`; syncd never rebuilds a table by itself.
Timestamps are UTC, DATETIME(6) on MariaDB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.schema import CreateIndex, CreateTable

from syncd.changes.keys import ROW_KEY_LENGTH
from syncd.config.model import ColumnConfig, DatasetConfig
from syncd.errors import TargetError
from syncd.targets.engine import describe_url, dialect_family, write_engine
from syncd.targets.sqltypes import LONG_TEXT, KeyChar, KeyText, UtcDateTime, column_type, exact_text
from syncd.targets.verify import (
    KeyColumn,
    TargetSchemaError,
    key_columns,
    missing_table_error,
    verify_target_table,
)

__all__ = [
    "ADDED_QUARANTINE_COLUMNS",
    "ADDED_STATE_COLUMNS",
    "MYSQL_TABLE_OPTIONS",
    "DatasetShape",
    "MappingShape",
    "StateTables",
    "TargetSchemaError",
    "add_missing_columns",
    "create_tables",
    "ensure_target_table",
    "key_column_names",
    "shape_from_dataset",
    "state_tables",
    "target_table",
    "text_key_columns",
    "warn_inexact_keys",
]

log = structlog.get_logger(__name__)

_MYSQL_OPTIONS = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_bin"}
# SQLAlchemy reads mysql_* for mysql:// URLs and mariadb_* for mariadb:// URLs
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    f"{dialect}_{name}": value for dialect in ("mysql", "mariadb") for name, value in _MYSQL_OPTIONS.items()
}


class MappingShape(Protocol):
    """What the writer needs to know about a compiled mapping (``syncd.mapping.CompiledMapping``)."""

    @property
    def columns(self) -> tuple[str, ...]: ...  # target column names, in row order

    @property
    def key_indexes(self) -> tuple[int, ...]: ...  # positions of the target.key columns in a row

    @property
    def specs(self) -> Mapping[str, ColumnConfig]: ...  # column name → its config


@dataclass(frozen=True, slots=True)
class DatasetShape:
    """A MappingShape read straight from a dataset's config (no compiled mapping needed)."""

    columns: tuple[str, ...]
    key_indexes: tuple[int, ...]
    specs: Mapping[str, ColumnConfig]


def shape_from_dataset(dataset: DatasetConfig) -> DatasetShape:
    columns = tuple(dataset.columns)
    return DatasetShape(
        columns=columns,
        key_indexes=tuple(columns.index(k) for k in dataset.target.key),
        specs=dict(dataset.columns),
    )


def key_column_names(shape: MappingShape) -> tuple[str, ...]:
    return tuple(shape.columns[i] for i in shape.key_indexes)


def text_key_columns(dataset: DatasetConfig) -> tuple[str, ...]:
    """The key columns of ``dataset`` that hold text (those whose collation matters)."""
    return tuple(k for k in dataset.target.key if dataset.columns[k].type == "string")


@dataclass(frozen=True, slots=True)
class StateTables:
    row_state: sa.Table
    changes: sa.Table
    watermarks: sa.Table
    runs: sa.Table
    quarantine: sa.Table
    changes_pruned: sa.Table
    key_defs: sa.Table

    def all(self) -> tuple[sa.Table, ...]:
        return (
            self.row_state, self.changes, self.watermarks, self.runs, self.quarantine, self.changes_pruned,
            self.key_defs,
        )


def state_tables(metadata: sa.MetaData, prefix: str = "syncd_") -> StateTables:
    """Define syncd's state tables on ``metadata`` (see the module docstring)."""
    dataset = exact_text(64)
    row_key = exact_text(ROW_KEY_LENGTH)
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
    row_state = sa.Table(
        f"{prefix}row_state",
        metadata,
        sa.Column("dataset", dataset, primary_key=True),
        sa.Column("row_key", row_key, primary_key=True),
        # MariaDB/MySQL: every text column in the row key's collation (KeyChar)
        sa.Column("row_hash", KeyChar(32), nullable=False),
        # no longer written (syncd.targets.snapshot keeps seen keys in a temporary table): the
        # last full-snapshot run that saw the key, in databases an earlier version wrote
        sa.Column("seen_run", KeyText(32)),
        # digest of the raw record the row was mapped from (syncd.changes.hashing.record_digester);
        # NULL for deleted keys and rows written without one
        sa.Column("record_digest", KeyChar(32)),
        **MYSQL_TABLE_OPTIONS,
    )
    changes = sa.Table(
        f"{prefix}changes",
        metadata,
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("dataset", dataset, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("row_key", row_key, nullable=False),
        sa.Column("changed_columns", LONG_TEXT, nullable=False),
        sa.Column("old_values", LONG_TEXT),
        sa.Column("new_values", LONG_TEXT),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.Index(f"ix_{prefix}changes_dataset_id", "dataset", "id"),
        sa.Index(f"ix_{prefix}changes_dataset_at", "dataset", "changed_at"),
        **MYSQL_TABLE_OPTIONS,
    )
    watermarks = sa.Table(
        f"{prefix}watermarks",
        metadata,
        sa.Column("dataset", dataset, primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    counters = ("fetched", "inserted", "updated", "deleted", "unchanged", "quarantined")
    http_counters = ("requests", "retries", "pages")
    runs = sa.Table(
        f"{prefix}runs",
        metadata,
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("dataset", dataset, nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime()),
        sa.Column("status", sa.String(16), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in counters),
        sa.Column("reported_total", sa.BigInteger()),
        *(sa.Column(name, sa.Integer(), nullable=False, server_default="0") for name in http_counters),
        sa.Column("error", LONG_TEXT),
        sa.Column("watermark_before", sa.String(64)),
        sa.Column("watermark_after", sa.String(64)),
        sa.Column("approval_code", sa.String(255)),
        sa.Column("purpose", sa.String(512)),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Index(f"ix_{prefix}runs_dataset_started", "dataset", "started_at"),
        **MYSQL_TABLE_OPTIONS,
    )
    quarantine = sa.Table(
        f"{prefix}quarantine",
        metadata,
        sa.Column("dataset", dataset, primary_key=True),
        sa.Column("raw_hash", sa.CHAR(32), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("record_key", sa.String(ROW_KEY_LENGTH)),
        sa.Column("raw", LONG_TEXT, nullable=False),
        sa.Column("reason", LONG_TEXT, nullable=False),
        sa.Column("first_seen", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        # added after the first release (ADDED_QUARANTINE_COLUMNS): NULL in entries written before
        sa.Column("row_key", row_key),
        sa.Column("protected", LONG_TEXT),
        sa.Index(f"ix_{prefix}quarantine_dataset_row_key", "dataset", "row_key"),
        **MYSQL_TABLE_OPTIONS,
    )
    changes_pruned = sa.Table(
        f"{prefix}changes_pruned",
        metadata,
        sa.Column("dataset", dataset, primary_key=True),
        # the highest id and the latest changed_at among the dataset's deleted change entries: never
        # lowered (a reader after id N has missed entries exactly when N < upto_id)
        sa.Column("upto_id", sa.BigInteger(), nullable=False),
        sa.Column("upto_changed_at", UtcDateTime(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),  # entries deleted so far, in all
        sa.Column("pruned_at", UtcDateTime(), nullable=False),  # the last prune that deleted any
        **MYSQL_TABLE_OPTIONS,
    )
    key_defs = sa.Table(
        f"{prefix}key_defs",
        metadata,
        sa.Column("dataset", dataset, primary_key=True),
        # syncd.targets.keydef.key_definition: JSON of digests (never a salt in clear)
        sa.Column("definition", LONG_TEXT, nullable=False),  # per-entry digests of large code tables
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    return StateTables(row_state, changes, watermarks, runs, quarantine, changes_pruned, key_defs)


def target_table(metadata: sa.MetaData, dataset: DatasetConfig, shape: MappingShape) -> sa.Table:
    """The target table of ``dataset`` as the mapping describes it (columns in row order).

    Key columns form the primary key (never autoincrement); with soft deletes
    (``target.logical_delete.mode: soft``) a BOOLEAN ``soft_column`` NOT NULL DEFAULT false is added.
    """
    keys = key_column_names(shape)
    if set(keys) != set(dataset.target.key) or len(keys) != len(dataset.target.key):
        raise ValueError(
            f"the mapping's key columns ({', '.join(keys)}) differ from target.key "
            f"({', '.join(dataset.target.key)}) of dataset {dataset.name}"
        )
    columns: list[sa.Column[Any]] = []
    for name in shape.columns:
        spec = shape.specs[name]
        is_key = name in keys
        columns.append(
            sa.Column(
                name,
                column_type(spec, key=is_key),
                primary_key=is_key,
                autoincrement=False,
                nullable=not is_key and spec.nullable,
            )
        )
    soft = dataset.target.logical_delete
    if soft is not None and soft.mode == "soft":
        columns.append(sa.Column(soft.soft_column, sa.Boolean(), nullable=False, server_default=sa.false()))
    return sa.Table(dataset.target.table, metadata, *columns, **MYSQL_TABLE_OPTIONS)


# The names a connection would create tables in, read from the catalogue: tables as (name, ""),
# indexes as (table, index). PostgreSQL and SQLite name indexes per schema, MariaDB per table.
_CATALOGUE = {
    "sqlite": (
        "SELECT tbl_name, CASE type WHEN 'index' THEN name ELSE '' END FROM sqlite_master "
        "WHERE type IN ('table', 'index') AND tbl_name IN :names"
    ),
    "postgresql": (
        "SELECT tablename, '' FROM pg_catalog.pg_tables "
        "WHERE schemaname = current_schema() AND tablename IN :names "
        "UNION ALL SELECT tablename, indexname FROM pg_catalog.pg_indexes "
        "WHERE schemaname = current_schema() AND tablename IN :names"
    ),
    "mysql": (
        "SELECT table_name, '' FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name IN :names "
        "UNION SELECT table_name, index_name FROM information_schema.statistics "
        "WHERE table_schema = DATABASE() AND table_name IN :names"
    ),
}
_COLUMNS = {
    "sqlite": "SELECT name FROM pragma_table_info(:table)",
    # not information_schema.columns: a view with privilege checks, 10 ms a query on PostgreSQL 15
    "postgresql": (
        "SELECT attname FROM pg_catalog.pg_attribute "
        "WHERE attrelid = to_regclass(quote_ident(:table)) AND attnum > 0 AND NOT attisdropped"
    ),
    "mysql": (
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = :table"
    ),
}


def _missing_ddl(engine: sa.Engine, tables: tuple[sa.Table, ...]) -> list[Any]:
    """``CREATE … IF NOT EXISTS`` for the tables and indexes the catalogue does not list.

    The check reads the catalogue only. The DDL itself is not harmless on a complete schema:
    PostgreSQL's ``CREATE INDEX IF NOT EXISTS`` takes its SHARE lock on the table before it finds
    the index, so it waits for every open write transaction on that table, and every writer
    that comes after waits behind it (each run start stalled the other datasets' batches);
    SQLite's DDL waits for the database's write lock."""
    wanted: list[tuple[tuple[str, str], Any]] = []
    for table in tables:
        wanted.append(((table.name, ""), CreateTable(table, if_not_exists=True)))
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            wanted.append(((table.name, str(index.name)), CreateIndex(index, if_not_exists=True)))
    query = sa.text(_CATALOGUE[dialect_family(engine)]).bindparams(sa.bindparam("names", expanding=True))
    names = [t.name for t in tables]
    try:
        with engine.connect() as conn:
            present = {(str(t), str(i or "")) for t, i in conn.execute(query, {"names": names})}
    except sa.exc.DBAPIError as exc:  # the DDL decides, as it did before this check
        log.debug("create_tables.catalogue_unreadable", error=str(exc.orig))
        present = set()
    return [ddl for name, ddl in wanted if name not in present]


def create_tables(engine: sa.Engine, tables: Iterable[sa.Table], *, attempts: int = 4) -> None:
    """Create the tables (and their indexes) that do not exist yet.

    Nothing is executed when the catalogue lists them all (:func:`_missing_ddl`: every run
    checks its tables). Safe when several processes do it at the same moment: ``IF NOT EXISTS``
    everywhere, and a lost race (PostgreSQL can report a duplicate catalogue entry) is retried.
    """
    tables = tuple(tables)
    for attempt in range(1, attempts + 1):
        try:
            missing = _missing_ddl(engine, tables)
            if not missing:
                return
            with write_engine(engine).begin() as conn:
                for ddl in missing:
                    conn.execute(ddl)
            return
        except sa.exc.DBAPIError as exc:
            if attempt == attempts:
                names = ", ".join(t.name for t in tables)
                raise TargetError(
                    f"cannot create table(s) {names} in {describe_url(engine.url)}: {exc.orig}. "
                    "Check that the database user may create tables, or create them yourself."
                ) from exc
            log.debug("create_tables.retry", attempt=attempt, error=str(exc.orig))
            time.sleep(0.05 * attempt)


def _column_names(engine: sa.Engine, table: sa.Table) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(_COLUMNS[dialect_family(engine)]), {"table": table.name})
        return {str(name) for (name,) in rows}


def _present_columns(engine: sa.Engine, table: sa.Table, *, attempts: int = 4) -> set[str]:
    """:func:`_column_names`, tried again like :func:`create_tables` while another process creates
    the tables (SQLite: a new database file is switched to WAL by the first connection)."""
    for attempt in range(1, attempts + 1):
        try:
            return _column_names(engine, table)
        except sa.exc.DBAPIError as exc:
            if attempt == attempts:
                where = describe_url(engine.url)
                raise TargetError(f"cannot inspect table {table.name} in {where}: {exc.orig}") from exc
            log.debug("add_missing_columns.retry", attempt=attempt, error=str(exc.orig))
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


ADDED_STATE_COLUMNS: dict[str, str] = {"seen_run": "VARCHAR(32)", "record_digest": "CHAR(32)"}
"""Nullable ``row_state`` columns added after the first release, with their DDL types: a
database made by an older syncd gets them added (:func:`add_missing_columns`)."""

ADDED_QUARANTINE_COLUMNS = ("row_key", "protected")
"""Nullable ``quarantine`` columns added after the first release (their types are the table's)."""


def add_missing_columns(
    engine: sa.Engine,
    table: sa.Table,
    columns: Mapping[str, str | sa.types.TypeEngine[Any]],
    *,
    only_existing: bool = False,
) -> list[str]:
    """``ALTER TABLE … ADD`` the nullable ``columns`` (name → DDL type, or a SQLAlchemy type
    compiled for the engine's database) that ``table`` lacks in the database; returns the names
    added. A column added meanwhile by another process is fine. ``only_existing``: nothing when
    the table does not exist yet (creating it makes every column)."""
    present = _present_columns(engine, table)
    if only_existing and not present:
        return []
    added = []
    name = engine.dialect.identifier_preparer.format_table(table)
    for column, kind in columns.items():
        if column in present:
            continue
        ddl = kind if isinstance(kind, str) else str(kind.compile(dialect=engine.dialect))
        quoted = engine.dialect.identifier_preparer.quote(column)
        try:
            with write_engine(engine).begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {name} ADD {quoted} {ddl}")
        except sa.exc.DBAPIError as exc:
            fresh = _column_names(engine, table)
            if column in fresh:  # another process added it first
                continue
            raise TargetError(
                f"cannot add column {column} to {table.name} in {describe_url(engine.url)}: {exc.orig}. "
                f"Add it yourself: ALTER TABLE {table.name} ADD {column} {ddl}"
            ) from exc
        added.append(column)
    return added


_warned: set[tuple[str, str, str, str | None]] = set()
_warned_lock = threading.Lock()


def warn_inexact_keys(engine: sa.Engine, found: Iterable[KeyColumn], *, dataset: str | None = None) -> None:
    """Log ``target.key_collation_inexact`` for each key column of ``found`` whose keys do not
    compare exactly, once per process for each database, table, column and collation (every run
    checks its tables; the daemon says it at its first run, ``syncd sync`` every time)."""
    where = describe_url(engine.url)
    for key in found:
        if key.problem is None:
            continue
        mark = (where, key.table, key.column, key.collation)
        with _warned_lock:
            if mark in _warned:
                continue
            _warned.add(mark)
        log.warning(
            "target.key_collation_inexact",
            dataset=dataset,
            table=key.table,
            column=key.column,
            collation=key.collation,
            problem=key.problem,
            fix=key.fix,
            hint=key.describe(),
        )


def ensure_target_table(
    engine: sa.Engine, dataset: DatasetConfig, shape: MappingShape, *, table: sa.Table | None = None
) -> sa.Table:
    """Return the target table, creating it when absent and ``target.create`` allows, else
    verifying the existing one (TargetSchemaError lists every mismatch and how to fix it).

    ``table`` is the definition built for an earlier run of the same dataset configuration:
    reusing it keeps SQLAlchemy's compiled-statement cache hitting instead of filling it with a
    copy of the table per run (that grew a long-running daemon's memory with every run)."""
    if table is None:
        table = target_table(sa.MetaData(), dataset, shape)
    where = describe_url(engine.url)
    try:
        exists = sa.inspect(engine).has_table(table.name)
    except sa.exc.DBAPIError as exc:
        raise TargetError(f"cannot read the tables of {where}: {exc.orig}") from exc
    if not exists:
        if not dataset.target.create:
            raise missing_table_error(engine, table, dataset)
        create_tables(engine, [table])
        log.info("target.table_created", dataset=dataset.name, table=table.name, database=where)
    try:
        verify_target_table(engine, table, dataset)
        keys = key_columns(engine, table.name, text_key_columns(dataset))
    except sa.exc.DBAPIError as exc:
        raise TargetError(f"cannot inspect table {table.name} in {where}: {exc.orig}") from exc
    warn_inexact_keys(engine, keys.values(), dataset=dataset.name)
    return table
