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
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql, postgresql, sqlite

from syncd.targets.engine import Family, dialect_family
from syncd.targets.sqltypes import mysql_key_collation

__all__ = [
    "MYSQL_STATEMENT_BYTES",
    "BulkWriter",
    "GrowthAnalyzer",
    "KeyLookup",
    "SetBuilder",
    "chunked",
    "mysql_literal_function",
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


class DriverCalls:
    """Statements sent to the DB-API connection directly (the hot paths), with driver errors
    raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError` — as if SQLAlchemy had run them,
    so callers catch one family — and never with the parameters (row keys can be ID numbers)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.error: type[Exception] = dialect.loaded_dbapi.Error

    @staticmethod
    def dbapi(conn: sa.Connection) -> Any:
        dbapi = conn.connection.dbapi_connection
        if dbapi is None:  # pragma: no cover - a live connection always has one
            raise RuntimeError("no database connection")
        return dbapi

    def wrapped(self, sql: str, exc: Exception) -> sa.exc.StatementError:
        return sa.exc.DBAPIError.instance(sql, None, exc, self.error)


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unchanged(value: Any) -> Any:
    return value


_PACKED_AGGREGATE = {"sqlite": ("json_group_array", "json_array"), "mysql": ("JSON_ARRAYAGG", "JSON_ARRAY")}
"""A packed look-up's aggregate of rows and its row constructor, where the database has them."""

_KEY_SEPARATOR = "\x1f"
"""ASCII unit separator: joins a chunk of text keys for PostgreSQL's ``string_to_array(…, chr(31))``
(a chunk in which a key holds it is sent as an array instead)."""

_SPLIT, _ARRAY, _JSON_TABLE = -1, 0, -2
"""Statement shapes of :meth:`KeyLookup._text` other than an IN list of ``n`` placeholders: the
keys as one text PostgreSQL splits, as one array, as one JSON array MariaDB/MySQL reads as a table."""


def _server_refused(exc: sa.exc.DBAPIError) -> bool:
    """The MariaDB/MySQL server answered with an error of its own (codes 1000-1999: syntax, an
    unknown function or collation), not a lost connection (client codes 2000 and up, 0): only
    then is another statement worth a try; otherwise the first error is the one to report."""
    args = getattr(exc.orig, "args", ())
    code = args[0] if args else None
    return isinstance(code, int) and 1000 <= code < 2000


def _json_table_support(dialect: sa.Dialect) -> bool:
    """MariaDB 10.6 and MySQL 8.0.4 brought ``JSON_TABLE``."""
    version = getattr(dialect, "server_version_info", None) or ()
    if getattr(dialect, "is_mariadb", False):
        return tuple(version[:2]) >= (10, 6)
    return tuple(version[:3]) >= (8, 0, 4)


class KeyLookup:
    """Rows of one table for many keys, in as few statements as possible, read with the DB-API.

    The batch writer reads the stored hashes of every key of every batch (``row_state``) and the
    current rows of every update candidate (the target table), so this is hot. SQLAlchemy's
    expanding ``IN``, statement compilation and result layer cost more than the database's own
    work here (6.2 vs 1.3 ms for a thousand ``row_state`` keys on SQLite), so the statement goes
    to the driver directly:

    - PostgreSQL, one key column: ``key = ANY(%s)`` with the keys as one array parameter (a single
      statement text, prepared once by the server); a text key as one text parameter the server
      splits, ``key = ANY(string_to_array(%s, chr(31)))``;
    - MariaDB/MySQL, a packed look-up on one text key (``row_state``): the keys as one JSON array
      the server reads as a table and joins on the primary key, ``FROM JSON_TABLE(%s, '$[*]'
      COLUMNS(k VARCHAR(n) … COLLATE c …)) AS j JOIN table AS t ON t.key = j.k``, where ``c`` is
      the key column's collation (``collation``; by default the one syncd declares keys with,
      :func:`~syncd.targets.sqltypes.mysql_key_collation`: MariaDB refuses to compare two columns
      of different collations, and the column's decides whether ``'A001 '`` is ``'A001'``). The same
      thousand primary-key look-ups cost MariaDB 10.11 3.4 ms instead of 5.5 as an ``IN`` list of
      literals, which it parses, converts and sorts first; PyMySQL escapes one text instead of a
      thousand. Servers without ``JSON_TABLE`` (MariaDB before 10.6, MySQL before 8.0.4) and keys
      it could not carry exactly (longer than the column, a NUL, a lone surrogate) get the list;
    - otherwise ``key IN (?, …)``, or ``(k1, k2) IN ((?, ?), …)`` for a composite key, with the
      placeholder text built once per chunk length.

    ``packed`` (text columns only) asks SQLite and MariaDB/MySQL for one row: the number of
    matching rows and the rows as one JSON array (``json_group_array`` / ``JSON_ARRAYAGG``),
    decoded by orjson. The sqlite3 module releases the GIL for every row it steps, and while the
    read-ahead thread decodes the next page each release can wait for it: a re-sync's
    thousand-key ``row_state`` look-up took 7.3 ms in a run against 1.1 ms alone (packed: 1.0 ms).
    PyMySQL parses every row of a result in Python: 4.3 ms of CPU per thousand rows, packed 1.0.
    Text round-trips JSON exactly. Where the database cannot (see :meth:`_fetch_packed`) the
    look-up reads rows as usual from then on.

    ``prepared=False`` (PostgreSQL) keeps psycopg from preparing the statement, for a table an
    operator may alter: after another session's ``ALTER TABLE`` a prepared select of its rows fails
    once with "cached plan must not change result type" on every connection that prepared it.

    ``scope`` names a leading equality column (``row_state.dataset``). Key values go through the
    key columns' bind processors and the read values through the columns' result processors (as
    SQLAlchemy would: a date from SQLite's text, a bool from its integer), so the rows are what a
    SQLAlchemy ``select`` would return, as plain tuples in ``columns`` order. A driver error is
    raised as SQLAlchemy's DBAPIError, without the parameters (keys can be ID numbers).
    """

    def __init__(
        self,
        bind: sa.Engine,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        budget: int,
        *,
        scope: str | None = None,
        packed: bool = False,
        prepared: bool = True,
        collation: str | None = None,
    ) -> None:
        dialect = bind.dialect
        q = dialect.identifier_preparer
        self._family = dialect_family(bind)
        self._dialect = dialect
        self._types = [table.c[c].type for c in columns]
        self._nkeys = len(key)
        key_procs = [_bind_processor(table.c[k].type, dialect) for k in key]
        self._key_procs: list[Callable[[Any], Any]] | None = None
        if any(p is not None for p in key_procs):
            self._key_procs = [_unchanged if p is None else p for p in key_procs]
        if packed and not all(isinstance(t, sa.String) for t in self._types):
            raise ValueError("a packed look-up reads text columns only")
        self._packed = packed and self._family in _PACKED_AGGREGATE
        cols = ", ".join(q.quote(c) for c in columns)
        self._scoped = scope is not None
        self._mark = "?" if self._family == "sqlite" else "%s"
        where = f"{q.quote(scope)} = {self._mark} AND " if scope is not None else ""
        source = f" FROM {q.format_table(table)} WHERE {where}"
        self._plain_head = f"SELECT {cols}{source}"
        self._table_name = table.name
        self._packed_head = ""
        if self._packed:
            aggregate, row = _PACKED_AGGREGATE[self._family]
            self._packed_head = f"SELECT COUNT(*), {aggregate}({row}({cols})){source}"
        names = [q.quote(k) for k in key]
        self._key_sql = names[0] if len(names) == 1 else f"({', '.join(names)})"
        self._array = self._family == "postgresql" and len(key) == 1
        # a text key: the keys as one text the server splits (psycopg dumps a list of str element
        # by element in Python, with a regular expression each: 1.5 of 5.2 ms per 1,000 keys)
        self._split = self._array and isinstance(table.c[key[0]].type, sa.String)
        usable = budget - (1 if self._scoped else 0)
        self._chunk = 10_000 if self._array else max(1, usable // len(key))
        if self._packed and self._family == "mysql":
            # MariaDB cuts JSON_ARRAYAGG at group_concat_max_len (1 MiB by default): 2,000 rows
            # leave room for keys of ~500 bytes; longer ones make it read plain rows (_fetch_packed)
            self._chunk = min(self._chunk, 2_000)
        key_type = table.c[key[0]].type
        self._json_key_length = 0  # > 0: JSON_TABLE look-ups, keys of at most this many characters
        self._json_table_sql = ("", "")  # (the packed statement, the plain one)
        if (
            self._packed
            and self._family == "mysql"
            and len(key) == 1
            and isinstance(key_type, sa.String)
            and key_type.length
            and _json_table_support(dialect)
        ):
            self._json_key_length = key_type.length
            key_collation = collation or mysql_key_collation(dialect)
            qualified = ", ".join(f"t.{q.quote(c)}" for c in columns)
            aggregate, row = _PACKED_AGGREGATE[self._family]
            keys = (
                f" FROM JSON_TABLE(%s, '$[*]' COLUMNS(k VARCHAR({key_type.length}) CHARACTER SET utf8mb4 "
                f"COLLATE {key_collation} PATH '$')) AS j JOIN {q.format_table(table)} AS t ON "
                + (f"t.{q.quote(scope)} = %s AND " if scope is not None else "")
                + f"t.{names[0]} = j.k"
            )
            self._json_table_sql = (
                f"SELECT COUNT(*), {aggregate}({row}({qualified})){keys}",
                f"SELECT {qualified}{keys}",
            )
        self._texts: dict[tuple[int, bool], str] = {}
        self._procs: dict[tuple[Any, ...], list[tuple[int, Callable[[Any], Any]]]] = {}
        self._driver = DriverCalls(dialect)
        # psycopg prepares a statement after five runs; prepared=False keeps it from doing so
        self._execute_options: dict[str, Any] = {}
        if not prepared and self._family == "postgresql":
            self._execute_options["prepare"] = False

    def _text(self, n: int, packed: bool = False) -> str:
        """The statement for ``n`` keys (an IN list), or for the keys as one parameter (``n`` is
        :data:`_ARRAY`, :data:`_SPLIT` or :data:`_JSON_TABLE`). ``packed``: the rows as one JSON array."""
        text = self._texts.get((n, packed))
        if text is None:
            head = self._packed_head if packed else self._plain_head
            if n == _JSON_TABLE:
                text = self._json_table_sql[0 if packed else 1]
            elif n == _SPLIT:
                text = f"{head}{self._key_sql} = ANY(string_to_array({self._mark}, chr(31)))"
            elif self._array:
                text = f"{head}{self._key_sql} = ANY({self._mark})"
            else:
                one = self._mark if self._nkeys == 1 else f"({', '.join([self._mark] * self._nkeys)})"
                text = f"{head}{self._key_sql} IN ({', '.join([one] * n)})"
            if len(self._texts) > 64:  # a run's chunk lengths: the full one and a few tails
                self._texts.clear()
            self._texts[(n, packed)] = text
        return text

    def _params(self, scope: Any, chunk: Sequence[Any]) -> tuple[int, tuple[Any, ...]]:
        """(which statement: see :meth:`_text`, its parameters)."""
        lead = (scope,) if self._scoped else ()
        procs = self._key_procs
        if self._nkeys == 1:
            values = list(chunk) if procs is None else [procs[0](v) for v in chunk]
            if self._json_key_length and len(values) > 1:
                keys = self._json_keys(values)
                if keys is not None:
                    return _JSON_TABLE, (keys, *lead)
            if not self._array:
                return len(values), (*lead, *values)
            if self._split and len(values) > 1 and all(v.__class__ is str for v in values):
                joined = _KEY_SEPARATOR.join(values)
                if joined.count(_KEY_SEPARATOR) == len(values) - 1:  # no key holds the separator
                    return _SPLIT, (*lead, joined)
            return _ARRAY, (*lead, values)
        flat: list[Any] = list(lead)
        for item in chunk:
            flat.extend(item if procs is None else (p(v) for p, v in zip(procs, item, strict=True)))
        return len(chunk), tuple(flat)

    def _json_keys(self, values: list[Any]) -> str | None:
        """The distinct keys as one JSON array for JSON_TABLE, or None where an IN list must carry
        them: a key that is not text or longer than the column (JSON_TABLE would cut it), or that
        holds a NUL or a lone surrogate."""
        limit = self._json_key_length
        if not all(v.__class__ is str and len(v) <= limit for v in values):
            return None
        try:
            text = orjson.dumps(list(dict.fromkeys(values))).decode()
        except orjson.JSONEncodeError:
            return None
        return None if "\\u0000" in text else text

    def _result_procs(self, description: Sequence[Any]) -> list[tuple[int, Callable[[Any], Any]]]:
        """(position, processor) of the columns whose values SQLAlchemy would convert, for the
        driver's column type codes (psycopg's numeric processor depends on them)."""
        codes = tuple(d[1] for d in description)
        procs = self._procs.get(codes)
        if procs is None:
            procs = []
            for i, (type_, code) in enumerate(zip(self._types, codes, strict=True)):
                proc = type_.dialect_impl(self._dialect).result_processor(self._dialect, code)
                if proc is not None:
                    procs.append((i, proc))
            self._procs[codes] = procs
        return procs

    def fetch(self, conn: sa.Connection, keys: Sequence[Any], scope: Any = None) -> Iterator[tuple[Any, ...]]:
        """The rows of ``keys`` (any order): key values (a tuple of them for a composite key), in
        the scope ``scope`` when the lookup has one."""
        dbapi = self._driver.dbapi(conn)
        for chunk in chunked(keys, self._chunk):
            shape, params = self._params(scope, chunk)
            try:
                rows = self._fetch_chunk(dbapi, shape, params)
            except sa.exc.DBAPIError as exc:
                if shape != _JSON_TABLE or not _server_refused(exc):
                    raise
                # a server that refuses the statement after all: the IN list from now on
                self._json_key_length = 0
                reason = f"JSON_TABLE: {exc.orig}"
                _log.warning("target.lookup_unpacked", table=self._table_name, reason=reason[:200])
                shape, params = self._params(scope, chunk)
                rows = self._fetch_chunk(dbapi, shape, params)
            yield from rows

    def _fetch_chunk(self, dbapi: Any, shape: int, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._packed:
            found = self._fetch_packed(dbapi, shape, params)
            if found is not None:
                return found
        rows, description = self._execute(dbapi, self._text(shape), params)
        procs = self._result_procs(description) if rows else []
        if not procs:
            return rows
        converted = []
        for row in rows:
            values = list(row)
            for i, proc in procs:
                values[i] = proc(values[i])
            converted.append(tuple(values))
        return converted

    def _execute(self, dbapi: Any, text: str, params: tuple[Any, ...]) -> tuple[list[Any], Any]:
        driver = self._driver
        try:
            cursor = dbapi.cursor()
            try:
                cursor.execute(text, params, **self._execute_options)
                return cursor.fetchall(), cursor.description
            finally:
                cursor.close()
        except driver.error as exc:
            raise driver.wrapped(text, exc) from exc

    def _fetch_packed(self, dbapi: Any, shape: int, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        """The chunk's rows read as one JSON array, or None (and no more packing) when the database
        cannot: no JSON functions (SQLite before 3.38 may lack them, MariaDB before 10.5 has no
        ``JSON_ARRAYAGG``), or an array MariaDB cut (``group_concat_max_len``) or refused (larger
        than ``max_allowed_packet``: NULL) — the row count read beside it tells."""
        try:
            ((count, packed),), _ = self._execute(dbapi, self._text(shape, packed=True), params)
        except sa.exc.DBAPIError as exc:
            if shape == _JSON_TABLE or "json" not in str(exc.orig).lower():
                raise
            self._unpack(str(exc.orig))
            return None
        if not count:
            return []
        try:
            rows = orjson.loads(packed) if packed is not None else None
        except orjson.JSONDecodeError:
            rows = None
        if rows is None or len(rows) != count:
            self._unpack(f"the JSON array of {count} rows came back cut or empty")
            return None
        return [tuple(row) for row in rows]

    def _unpack(self, reason: str) -> None:
        self._packed = False
        _log.warning("target.lookup_unpacked", table=self._table_name, reason=reason[:200])


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


_TEXT_OID = 25
_PG_BINARY: dict[int, tuple[type, int, tuple[int, int] | None]] = {
    25: (str, _TEXT_OID, None),  # text
    1043: (str, _TEXT_OID, None),  # varchar: the same bytes as text on the wire
    1042: (str, _TEXT_OID, None),  # char(n): the server pads and checks the length as for text
    21: (int, 21, (-(2**15), 2**15 - 1)),  # smallint
    23: (int, 23, (-(2**31), 2**31 - 1)),  # integer
    20: (int, 20, (-(2**63), 2**63 - 1)),  # bigint
    1700: (Decimal, 1700, None),  # numeric
    701: (float, 701, None),  # double precision
    16: (bool, 16, None),  # boolean
    1082: (date, 1082, None),  # date
    1114: (datetime, 1114, None),  # timestamp: naive datetimes only
    1184: (datetime, 1184, None),  # timestamptz: aware datetimes only
}
"""PostgreSQL column types (by OID, as the server describes the table) that ``COPY`` may send in
binary format: the one Python class whose psycopg binary dumper writes what the text format
would have meant, the dumper's type and the range the value must have. psycopg's smallint and
integer dumpers wrap a value out of range instead of refusing it (40,000 arrives as -25,536), and
its bigint dumper raises OverflowError, not a database error: such a batch goes as text, where the
server refuses it with its own message. Any other type (json, uuid, arrays, a real …) or value
class — an int in a text column, a datetime in a date column, a naive datetime in a timestamptz
column — sends the batch as text, exactly as before."""

_NONE = type(None)


class BulkWriter:
    """Writes many rows with one driver call and no per-row SQLAlchemy work (the hot path).

    Built for a fixed tuple of ``columns``; ``write(conn, rows)`` takes tuples of values in that
    order and runs inside the caller's transaction. With ``key`` it upserts (the ``update``
    columns are overwritten; none means "leave an existing row alone"); without, it plainly
    inserts.

    - SQLite, MariaDB: DB-API ``executemany`` of one statement (PyMySQL turns it into multi-row
      INSERTs).
    - PostgreSQL: ``COPY`` into a session temp table (``ON COMMIT DELETE ROWS``), then one
      ``INSERT … SELECT … ON CONFLICT``; a plain insert is one ``COPY`` into the table.

    ``fresh=True`` says the caller expects none of the keys to exist (they were not in
    ``row_state``): on PostgreSQL the rows are then copied straight into the table inside a
    savepoint, without the temp table and the merge; if a key does exist after all (a row loaded
    by hand, or another writer), the savepoint is rolled back and the rows take the upsert path.

    Values go through the column types' bind processors (e.g. Decimal → text on SQLite), so the
    database sees what SQLAlchemy would have sent. Names come from the table definition only.
    """

    def __init__(
        self,
        bind: sa.Engine | sa.Connection,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> None:
        self._family: Family = dialect_family(bind)
        dialect = bind.dialect
        self._driver = DriverCalls(dialect)
        self.columns = tuple(columns)
        key, update = tuple(key), [c for c in update if c in self.columns]
        q = dialect.identifier_preparer
        name = q.format_table(table)
        self._table_name = table.name
        cols = [table.c[c] for c in self.columns]
        procs = [_bind_processor(c.type, dialect) for c in cols]
        self._converting = [(i, p) for i, p in enumerate(procs) if p is not None]
        names = ", ".join(q.quote(c) for c in self.columns)
        keys = ", ".join(q.quote(k) for k in key)
        self._copy_direct = self._stage_ddl = self._copy_stage = self._truncate_stage = self._drop_stage = ""
        self._mysql_head = self._mysql_tail = b""
        # PostgreSQL: the statement that describes each COPY's table (see _described)
        self._describe: dict[str, str] = {}
        self._text_logged = False
        if self._family == "postgresql":
            self._copy_direct = f"COPY {name} ({names}) FROM STDIN"
            self._describe[self._copy_direct] = f"SELECT {names} FROM {name} LIMIT 0"  # noqa: S608
            self._sql = ""
            if key:
                digest = hashlib.blake2b(table.name.encode(), digest_size=4).hexdigest()
                stage = q.quote(f"syncd_stage_{table.name[:30]}_{digest}")
                self._stage_ddl = (
                    f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                    f"(LIKE {name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                self._copy_stage = f"COPY {stage} ({names}) FROM STDIN"
                # the table's columns, then the stage's: a stage made before an ALTER TABLE is made again
                both = ", ".join([f"{side}.{q.quote(c)}" for side in ("t", "s") for c in self.columns])
                self._describe[self._copy_stage] = f"SELECT {both} FROM {name} AS t, {stage} AS s LIMIT 0"  # noqa: S608
                self._drop_stage = f"DROP TABLE {stage}"
                self._truncate_stage = f"TRUNCATE {stage}"
                self._sql = f"INSERT INTO {name} ({names}) SELECT {names} FROM {stage}"  # noqa: S608
                self._sql += _pg_conflict(keys, [q.quote(c) for c in update])
        else:
            mark = "?" if self._family == "sqlite" else "%s"
            self._sql = f"INSERT INTO {name} ({names}) VALUES ({', '.join([mark] * len(cols))})"  # noqa: S608
            if key and self._family == "sqlite":
                self._sql += _pg_conflict(keys, [q.quote(c) for c in update])
            elif key:
                sets = [f"{q.quote(c)} = VALUES({q.quote(c)})" for c in update] or [
                    f"{q.quote(key[0])} = {q.quote(key[0])}"
                ]
                tail = " ON DUPLICATE KEY UPDATE " + ", ".join(sets)
                self._sql += tail
                self._mysql_tail = tail.encode()
            if self._family == "mysql":
                self._mysql_head = f"INSERT INTO {name} ({names}) VALUES ".encode()  # noqa: S608

    def _bound(self, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        """The rows with every converting column run through its bind processor, column-wise
        (``rows`` itself when no column converts: the drivers take any sequence of tuples)."""
        if not self._converting:
            return rows
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i, proc in self._converting:
            last: Any = _UNSET  # a value repeated in the batch (changed_at, a date) converts once
            out: Any = None
            converted: list[Any] = []
            append = converted.append
            for value in columns[i]:
                if value is not last:
                    last, out = value, proc(value)
                append(out)
            columns[i] = converted
        return list(zip(*columns, strict=True))

    def write(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]], *, fresh: bool = False) -> None:
        """Write ``rows`` (tuples in ``columns`` order) inside the caller's transaction."""
        if not rows:
            return
        values = self._bound(rows)
        if self._family == "mysql":
            self._insert_literals(conn, values)
            return
        if self._family != "postgresql":
            self._executemany(conn, values)
            return
        if not self._sql:  # a plain insert
            self._copy(conn, self._copy_direct, values)
            return
        if fresh:
            try:
                with conn.begin_nested():
                    self._copy(conn, self._copy_direct, values)
                return
            except sa.exc.IntegrityError as exc:  # rolled back to the savepoint: merge instead
                _log.info(
                    "target.fresh_rows_existed",
                    table=self._table_name,
                    rows=len(values),
                    error=" ".join(str(exc.orig).split())[:200],
                )
        conn.exec_driver_sql(self._stage_ddl)
        self._copy(conn, self._copy_stage, values)
        conn.exec_driver_sql(self._sql)  # through SQLAlchemy, so its events and echo see the statements
        conn.exec_driver_sql(self._truncate_stage)

    def _executemany(self, conn: sa.Connection, values: Sequence[tuple[Any, ...]]) -> None:
        """The statement through SQLAlchemy and the driver's ``executemany`` (SQLite; MariaDB on a
        connection that is not UTF-8)."""
        # a list of tuples is an executemany (SQLAlchemy reads a tuple as one row's parameters)
        conn.exec_driver_sql(self._sql, values if isinstance(values, list) else list(values))

    def _insert_literals(self, conn: sa.Connection, values: Sequence[tuple[Any, ...]]) -> None:
        """MariaDB/MySQL: multi-row INSERTs with the values written as SQL literals, as PyMySQL's
        ``executemany`` builds them (at most :data:`MYSQL_STATEMENT_BYTES` each) but without its
        per-value dispatch (:func:`mysql_literal_function`): PyMySQL escaping the rows was 40 % of
        the run process's CPU in a first load. A failed statement is reported with the statement's
        text with placeholders, never with the values.

        Only on a UTF-8 connection (syncd's own engines force ``charset=utf8mb4``): the escaping
        relies on no multi-byte character holding the byte of a backslash, which GBK or Big5 do;
        on any other connection charset PyMySQL's ``executemany`` writes the rows as before."""
        driver = self._driver
        raw = driver.dbapi(conn)
        if getattr(raw, "encoding", None) not in _UTF8_CODECS:
            self._executemany(conn, values)
            return
        try:
            literal = mysql_literal_function(raw)
            head, tail = self._mysql_head, self._mysql_tail
            room = MYSQL_STATEMENT_BYTES - len(head) - len(tail)
            with raw.cursor() as cursor:
                parts: list[bytes] = []
                size = 0
                for row in values:
                    text = ("(" + ",".join([literal(v) for v in row]) + ")").encode()
                    if parts and size + len(text) + 1 > room:
                        cursor.execute(head + b",".join(parts) + tail)
                        parts, size = [], 0
                    parts.append(text)
                    size += len(text) + 1
                if parts:
                    cursor.execute(head + b",".join(parts) + tail)
        except driver.error as exc:
            raise driver.wrapped(self._sql, exc) from exc

    def _copy(self, conn: sa.Connection, sql: str, values: Sequence[tuple[Any, ...]]) -> None:
        """``COPY`` the rows, in binary format where :meth:`_binary_types` allows it: psycopg then
        dumps values without quoting and escaping them as text (a first load's run process spent
        0.45 s of CPU less per 100,000 rows, and its wall time fell 11 %)."""
        driver = self._driver
        try:
            cursor: Any = driver.dbapi(conn).cursor()  # a psycopg 3 cursor
            with cursor:
                types = self._binary_types(self._described(cursor, sql), values)
                with cursor.copy(sql if types is None else sql + " (FORMAT BINARY)") as copy:
                    if types is not None:
                        copy.set_types(types)
                    write_row = copy.write_row
                    for item in values:
                        write_row(item)
        except driver.error as exc:
            raise driver.wrapped(sql, exc) from exc

    def _described(self, cursor: Any, sql: str) -> Sequence[Any]:
        """The columns of the table ``sql`` copies into, as the server describes them now.

        Inside the batch's transaction, whose lock keeps an ``ALTER TABLE`` out until the commit,
        so the description holds for this COPY (it is never kept across batches). Never a prepared
        statement: psycopg prepares a statement run five times, and after another session's
        ``ALTER TABLE`` a prepared one fails once ("cached plan must not change result type"),
        which would fail the batch. The stage table is described beside the table and made again
        when they no longer match (:meth:`_current_stage`)."""
        cursor.execute(self._describe[sql], prepare=False)
        description: Sequence[Any] = cursor.description
        if sql == self._copy_stage:
            description = self._current_stage(cursor, description)
        return description

    def _binary_types(self, columns: Sequence[Any], values: Sequence[tuple[Any, ...]]) -> list[int] | None:
        """The dumper types for a binary ``COPY`` of ``values`` into the described ``columns``,
        or None for text: every column's type must be in :data:`_PG_BINARY` and every
        value of the class it names (None aside), within its range, and of the right awareness
        for timestamps."""
        found = _binary_plan(columns, values)
        if isinstance(found, str):
            if not self._text_logged:  # once per writer: which table goes as text, and why
                self._text_logged = True
                _log.debug("target.copy_as_text", table=self._table_name, reason=found)
            return None
        return found

    def _current_stage(self, cursor: Any, both: Sequence[Any]) -> Sequence[Any]:
        """The stage table's columns, after making it again if the table's have changed since the
        session made it (``CREATE TEMP TABLE IF NOT EXISTS … LIKE``, once per connection): after a
        DBA widened a column, a pooled connection's old stage refused the longer values."""
        n = len(self.columns)
        table, stage = both[:n], both[n:]
        if [_column_shape(c) for c in table] == [_column_shape(c) for c in stage]:
            return stage
        cursor.execute(self._drop_stage)
        cursor.execute(self._stage_ddl)
        _log.info("target.stage_recreated", table=self._table_name)
        return table


def _column_shape(column: Any) -> tuple[Any, ...]:
    """What a described column says of its type: the type and its length, precision and scale."""
    return (column.type_code, column.display_size, column.precision, column.scale)


def _binary_plan(description: Sequence[Any], values: Sequence[tuple[Any, ...]]) -> list[int] | str:
    """The dumper types of a binary ``COPY`` (see :data:`_PG_BINARY`), or why it must be text."""
    types: list[int] = []
    for described, column in zip(description, zip(*values, strict=True), strict=True):
        spec = _PG_BINARY.get(described.type_code)
        if spec is None:
            return f"column {described.name} has a type sent as text (oid {described.type_code})"
        cls, oid, bounds = spec
        classes = set(map(type, column))
        if not classes <= {cls, _NONE}:
            other = ", ".join(sorted(c.__name__ for c in classes - {cls, _NONE}))
            return f"column {described.name} holds {other}"
        if bounds is not None or cls is datetime:
            present = column if _NONE not in classes else [v for v in column if v is not None]
            if present and bounds is not None and (min(present) < bounds[0] or max(present) > bounds[1]):
                return f"column {described.name} holds a value out of its type's range"
            if present and cls is datetime and {v.tzinfo is None for v in present} != {oid == 1114}:
                kind = "aware" if oid == 1114 else "naive"
                return f"column {described.name} holds {kind} datetimes"
        types.append(oid)
    return types


# --------------------------------------------------------------------------- MariaDB literals

MYSQL_STATEMENT_BYTES = 1_024_000
"""Largest multi-row INSERT sent to MariaDB/MySQL: PyMySQL's own ``executemany`` limit, well under
the server's ``max_allowed_packet`` (16 MiB by default since MariaDB 10.2; 1 MiB on the oldest)."""

_UTF8_CODECS = ("utf8", "utf-8", "utf8mb4")  # PyMySQL's Python codec name of the connection charset
_NO_BACKSLASH_ESCAPES = 512  # SERVER_STATUS_NO_BACKSLASH_ESCAPES, as the server reports its sql_mode


def _quoted(value: str) -> str:
    """A string literal for the default sql_mode, where a backslash escapes. Only the backslash,
    the quote and NUL need it (the connection is utf8mb4: no multi-byte character holds the byte
    0x5c); PyMySQL also escapes newlines and the double quote, which the server reads as the
    same string either way — at 10× the cost on long texts such as the change feed's JSON."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "'" in value:
        value = value.replace("'", "\\'")
    if "\0" in value:
        value = value.replace("\0", "\\0")
    return "'" + value + "'"


def _quoted_standard(value: str) -> str:
    """A string literal under ``NO_BACKSLASH_ESCAPES``: only the quote is doubled (as PyMySQL)."""
    return "'" + value.replace("'", "''") + "'"


def mysql_literal_function(dbapi_connection: Any) -> Callable[[Any], str]:
    """value → its SQL literal on this PyMySQL connection, as PyMySQL's ``escape`` writes it.

    The common classes are written here directly: str, int, None, naive datetime, date and
    finite Decimal. Everything else (bool, float, bytes, an aware datetime, a NaN …) goes through
    the connection's own ``escape``, so it is exactly what PyMySQL would have sent. The server's
    ``NO_BACKSLASH_ESCAPES`` flag is read now, as PyMySQL reads it for each value: call this again
    for each statement batch."""
    escape: Callable[[Any], str] = dbapi_connection.escape
    standard = bool(dbapi_connection.server_status & _NO_BACKSLASH_ESCAPES)

    def naive_datetime(value: datetime) -> str:
        if value.tzinfo is not None:  # PyMySQL drops the offset; isoformat would keep it
            return escape(value)
        return "'" + value.isoformat(" ") + "'"

    def decimal(value: Decimal) -> str:
        return format(value, "f") if value.is_finite() else escape(value)  # NaN: PyMySQL's error

    known: dict[type, Callable[[Any], str]] = {
        str: _quoted_standard if standard else _quoted,
        int: int.__repr__,
        type(None): lambda _value: "NULL",
        datetime: naive_datetime,
        date: lambda value: "'" + value.isoformat() + "'",
        Decimal: decimal,
    }
    lookup = known.get

    def literal(value: Any) -> str:
        write = lookup(value.__class__)
        return escape(value) if write is None else write(value)

    return literal


# SQLAlchemy's SQLite DATE/DATETIME storage formats, spelled by ``isoformat`` exactly and several
# times faster (the %-formatting with a dict per value was 7 % of an initial load).
_SQLITE_DATE_FORMAT = "%(year)04d-%(month)02d-%(day)02d"
_SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


def _bind_processor(type_: Any, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """The column type's bind processor; on SQLite, a faster one with the same output for dates."""
    impl = type_.dialect_impl(dialect)
    proc: Callable[[Any], Any] | None = impl.bind_processor(dialect)
    if proc is None or dialect.name != "sqlite":
        return proc
    storage = getattr(impl, "_storage_format", None)
    general = proc
    if isinstance(impl, sa.DateTime) and storage == _SQLITE_DATETIME_FORMAT:

        def datetime_text(value: Any) -> Any:
            if value.__class__ is datetime and value.tzinfo is None:
                return value.isoformat(" ", "microseconds")
            return general(value)  # None, a date, an aware value (SQLAlchemy drops the offset)

        return datetime_text
    if isinstance(impl, sa.Date) and storage == _SQLITE_DATE_FORMAT:

        def date_text(value: Any) -> Any:
            return value.isoformat() if value.__class__ is date else general(value)

        return date_text
    return proc


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
    transaction — O(log n) cheap, sampled ANALYZEs per run. Only the columns the look-ups filter
    on are analysed (the table's size estimate, which is what the planner was missing, is
    refreshed by any ANALYZE): statistics of every column of a wide table cost five times more.
    Other databases need nothing: SQLite and MariaDB always probe the primary key for such look-ups.
    """

    def __init__(
        self, bind: sa.Engine, tables: Sequence[tuple[sa.Table, Sequence[str]]], first: int = 5_000
    ) -> None:
        self._engine = bind
        self._enabled = dialect_family(bind) == "postgresql"
        q = bind.dialect.identifier_preparer
        self._names = [q.format_table(t) for t, _ in tables]
        self._statements = [
            f"ANALYZE {q.format_table(t)} ({', '.join(q.quote(c) for c in columns)})" for t, columns in tables
        ]
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
                for statement in self._statements:
                    conn.exec_driver_sql(statement)
                conn.commit()
        except sa.exc.SQLAlchemyError as exc:  # only a missed optimisation: the data is committed
            _log.warning("target.analyze_failed", tables=self._names, error=" ".join(str(exc).split())[:300])
