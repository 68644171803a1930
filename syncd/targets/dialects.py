"""Per-dialect SQL: native upserts and bind-parameter budgets.

An upsert is built once per table and executed with executemany (one round of statements per
batch, never one per row):

- SQLite and PostgreSQL: ``INSERT … ON CONFLICT (key) DO UPDATE SET col = excluded.col``
- MariaDB/MySQL: ``INSERT … ON DUPLICATE KEY UPDATE col = VALUES(col)``; assignments run in
  the order given and see the columns already assigned, so callers list the ones that read the
  old row first.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql, postgresql, sqlite

from syncd.targets.engine import Family, dialect_family

__all__ = [
    "BulkWriter",
    "GrowthAnalyzer",
    "SetBuilder",
    "StateLookup",
    "chunked",
    "param_budget",
    "upsert_statement",
]

T = TypeVar("T")

_log = structlog.get_logger(__name__)

SetBuilder = Callable[[Any], list[tuple[str, Any]]]
"""Given the incoming-row accessor (``excluded`` / ``inserted``), the ordered SET assignments."""

_UNSET = object()
_SERVER_BUDGET = 30_000  # PostgreSQL caps a statement at 65,535 parameters; MariaDB's packets at MBs


def param_budget(engine: sa.Engine) -> int:
    """How many bind parameters one statement may carry on this database (with headroom)."""
    if dialect_family(engine) != "sqlite":
        return _SERVER_BUDGET
    import sqlite3

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if raw is not None else 999
    return max(100, min(limit - 50, 100_000))


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StateLookup:
    """Columns of ``row_state`` for many row keys of one dataset, in as few statements as possible.

    The batch writer reads the stored hashes of every key of every batch, so this is hot. An
    expanding ``IN`` built by SQLAlchemy costs more than the database's own work here: on
    PostgreSQL one ``row_key = ANY(%s)`` with the keys as one array parameter (a single statement
    text, prepared once by the server), elsewhere ``IN (?, …)`` with the placeholder text built
    once per chunk length. Rows come back as plain tuples, ``columns`` in order.
    """

    def __init__(self, bind: sa.Engine, table: sa.Table, columns: Sequence[str], budget: int) -> None:
        q = bind.dialect.identifier_preparer
        self._family = dialect_family(bind)
        cols = ", ".join(q.quote(c) for c in columns)
        dataset, row_key = q.quote("dataset"), q.quote("row_key")
        self._head = f"SELECT {cols} FROM {q.format_table(table)} WHERE {dataset} = "  # noqa: S608
        self._row_key = row_key
        self._mark = "?" if self._family == "sqlite" else "%s"
        self._chunk = 10_000 if self._family == "postgresql" else max(1, budget - 1)
        self._texts: dict[int, str] = {}

    def _text(self, n: int) -> str:
        text = self._texts.get(n)
        if text is None:
            if self._family == "postgresql":
                text = f"{self._head}%s AND {self._row_key} = ANY(%s)"
            else:
                marks = ", ".join([self._mark] * n)
                text = f"{self._head}{self._mark} AND {self._row_key} IN ({marks})"
            if len(self._texts) > 64:  # a run's chunk lengths: the full one and a few tails
                self._texts.clear()
            self._texts[n] = text
        return text

    def fetch(self, conn: sa.Connection, dataset: str, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        for chunk in chunked(keys, self._chunk):
            if self._family == "postgresql":
                params: tuple[Any, ...] = (dataset, list(chunk))
                text = self._text(0)
            else:
                params = (dataset, *chunk)
                text = self._text(len(chunk))
            yield from conn.exec_driver_sql(text, params).tuples()


def upsert_statement(
    bind: sa.Engine | sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    update: Sequence[str] | SetBuilder,
) -> sa.Insert:
    """INSERT that updates the row when ``key`` already exists.

    ``update`` names the columns overwritten with the incoming values, or is a SetBuilder for
    computed assignments. No columns to update means "insert, or leave the existing row alone".
    """
    family: Family = dialect_family(bind)
    if family == "mysql":
        stmt = mysql.insert(table)
        assignments = _assignments(update, stmt.inserted)
        if not assignments:  # a no-op assignment keeps ON DUPLICATE KEY from failing
            assignments = [(key[0], table.c[key[0]])]
        return stmt.on_duplicate_key_update(assignments)
    dialect_insert = postgresql.insert if family == "postgresql" else sqlite.insert
    pg_or_lite = dialect_insert(table)
    assignments = _assignments(update, pg_or_lite.excluded)
    if not assignments:
        return pg_or_lite.on_conflict_do_nothing(index_elements=list(key))
    return pg_or_lite.on_conflict_do_update(index_elements=list(key), set_=dict(assignments))


def _assignments(update: Sequence[str] | SetBuilder, incoming: Any) -> list[tuple[str, Any]]:
    if callable(update):
        return update(incoming)
    return [(name, incoming[name]) for name in update]


# --------------------------------------------------------------------------- bulk path

Processor = Callable[[Any], Any] | None


class BulkWriter:
    """Writes many rows with one driver call and no per-row SQLAlchemy work (the hot path).

    ``write(conn, rows)`` takes dicts (all with the same keys, the columns to write) and runs
    inside the caller's transaction. With ``key`` it upserts (the ``update`` columns are
    overwritten; none means "leave an existing row alone"); without, it plainly inserts.

    - SQLite, MariaDB: DB-API ``executemany`` of one statement, parameters as tuples (PyMySQL
      turns it into multi-row INSERTs).
    - PostgreSQL: ``COPY`` into a session temp table (``ON COMMIT DELETE ROWS``), then one
      ``INSERT … SELECT … ON CONFLICT``; a plain insert is one ``COPY`` into the table.

    Values go through the column types' bind processors (e.g. Decimal → text on SQLite), so the
    database sees what SQLAlchemy would have sent. Names come from the table definition only.
    """

    def __init__(
        self,
        bind: sa.Engine | sa.Connection,
        table: sa.Table,
        key: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> None:
        self._family: Family = dialect_family(bind)
        self._dialect = bind.dialect
        self._table = table
        self._key = tuple(key)
        self._update = tuple(update)
        self._cache: dict[tuple[str, ...], tuple[str, str, tuple[Processor, ...]]] = {}
        q = self._dialect.identifier_preparer
        self._name = q.format_table(table)
        digest = hashlib.blake2b(table.name.encode(), digest_size=4).hexdigest()
        self._stage = q.quote(f"syncd_stage_{table.name[:30]}_{digest}")

    def _compiled(self, columns: tuple[str, ...]) -> tuple[str, str, tuple[Processor, ...]]:
        """(statement, stage DDL or "", bind processors) for rows with these columns."""
        cached = self._cache.get(columns)
        if cached is not None:
            return cached
        q, dialect, family = self._dialect.identifier_preparer, self._dialect, self._family
        cols = [self._table.c[c] for c in columns]
        procs = tuple(c.type.dialect_impl(dialect).bind_processor(dialect) for c in cols)
        names = ", ".join(q.quote(c) for c in columns)
        keys = ", ".join(q.quote(k) for k in self._key)
        update = [c for c in self._update if c in columns]
        stage = ""
        if family == "postgresql":
            if not self._key:
                sql = f"COPY {self._name} ({names}) FROM STDIN"
            else:
                stage = (
                    f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} "
                    f"(LIKE {self._name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                sql = f"INSERT INTO {self._name} ({names}) SELECT {names} FROM {self._stage}"  # noqa: S608
                sql += _pg_conflict(keys, [q.quote(c) for c in update])
        else:
            mark = "?" if family == "sqlite" else "%s"
            sql = f"INSERT INTO {self._name} ({names}) VALUES ({', '.join([mark] * len(columns))})"  # noqa: S608
            if self._key and family == "sqlite":
                sql += _pg_conflict(keys, [q.quote(c) for c in update])
            elif self._key:
                sets = [f"{q.quote(c)} = VALUES({q.quote(c)})" for c in update] or [
                    f"{q.quote(self._key[0])} = {q.quote(self._key[0])}"
                ]
                sql += " ON DUPLICATE KEY UPDATE " + ", ".join(sets)
        compiled = (sql, stage, procs)
        self._cache[columns] = compiled
        return compiled

    def write(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        columns = tuple(rows[0])
        sql, stage, procs = self._compiled(columns)
        getter = _getter(columns)
        converting = [(i, p) for i, p in enumerate(procs) if p is not None]
        values: list[Any]
        if converting:
            values = [list(getter(row)) for row in rows]
            for i, proc in converting:  # only the columns whose type converts anything, column-wise:
                last: Any = _UNSET  # a value repeated in the batch (changed_at, a date) converts once
                out: Any = None
                for items in values:
                    value = items[i]
                    if value is not last:
                        last, out = value, proc(value)
                    items[i] = out
            values = [tuple(items) for items in values]  # SQLAlchemy takes a list of tuples
        else:
            values = [tuple(getter(row)) for row in rows]
        if self._family != "postgresql":
            conn.exec_driver_sql(sql, values)  # a list of tuples: executemany
            return
        dbapi = conn.connection.dbapi_connection
        if dbapi is None:  # pragma: no cover - a live transaction always has one
            raise RuntimeError("no database connection")
        names = ", ".join(self._dialect.identifier_preparer.quote(c) for c in columns)
        target = self._stage if stage else self._name
        if stage:
            conn.exec_driver_sql(stage)
        copy_sql = f"COPY {target} ({names}) FROM STDIN"
        driver_error: type[Exception] = self._dialect.loaded_dbapi.Error
        try:
            cursor: Any = dbapi.cursor()  # a psycopg 3 cursor
            with cursor, cursor.copy(copy_sql) as copy:
                for item in values:
                    copy.write_row(item)
        except driver_error as exc:  # as SQLAlchemy would have wrapped it
            raise sa.exc.DBAPIError.instance(copy_sql, None, exc, driver_error) from exc
        if stage:  # through SQLAlchemy, so its events and echo see the statements
            conn.exec_driver_sql(sql)
            conn.exec_driver_sql(f"TRUNCATE {self._stage}")


def _getter(columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """A fast ``row → values in column order`` (itemgetter returns a bare value for one column)."""
    if len(columns) == 1:
        name = columns[0]
        return lambda row: (row[name],)
    return operator.itemgetter(*columns)


def _pg_conflict(keys: str, update: list[str]) -> str:
    if not update:
        return f" ON CONFLICT ({keys}) DO NOTHING"
    return f" ON CONFLICT ({keys}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)


class GrowthAnalyzer:
    """PostgreSQL: refresh the planner's statistics of tables a run is filling fast.

    A table created (or nearly empty) at the start of a run has statistics saying "tiny", so the
    per-batch ``row_key IN (…)`` look-ups get planned as a scan of the whole dataset with the key
    list as a filter: each batch then costs O(rows so far × batch size), and an initial load of
    10⁶ rows slows to a crawl long before autovacuum's next ANALYZE. After every doubling of the
    rows this writer added (from ``first`` on) it runs ``ANALYZE`` on the tables, in its own short
    transaction — O(log n) cheap, sampled ANALYZEs per run. Other databases need nothing: SQLite
    and MariaDB always probe the primary key for such look-ups.
    """

    def __init__(self, bind: sa.Engine, tables: Sequence[sa.Table], first: int = 5_000) -> None:
        self._engine = bind
        self._enabled = dialect_family(bind) == "postgresql"
        q = bind.dialect.identifier_preparer
        self._names = [q.format_table(t) for t in tables]
        self._added = 0
        self._next = first

    def added(self, rows: int) -> None:
        """Count rows added to the tables; ANALYZE them when the count has doubled."""
        if not self._enabled or rows <= 0:
            return
        self._added += rows
        if self._added < self._next:
            return
        self._next = self._added * 2
        try:
            with self._engine.connect() as conn:
                for name in self._names:
                    conn.exec_driver_sql(f"ANALYZE {name}")
                conn.commit()
        except sa.exc.SQLAlchemyError as exc:  # only a missed optimisation: the data is committed
            _log.warning("target.analyze_failed", tables=self._names, error=" ".join(str(exc).split())[:300])
