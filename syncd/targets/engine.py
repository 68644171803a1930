"""SQLAlchemy engines for the target database (SQLite, PostgreSQL, MariaDB/MySQL).

Each backend is set up for a daemon that writes batches for years:

- SQLite: WAL journal, ``busy_timeout`` 30 s, ``synchronous=NORMAL``, a checkpoint every
  :data:`SQLITE_WAL_PAGES` pages and the WAL file cut back to 64 MB after one. The stdlib driver's own
  transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself (the recipe of the
  SQLAlchemy SQLite docs, "Serializable isolation / Savepoints / Transactional DDL"), so DDL is
  transactional and a write transaction can start with ``BEGIN IMMEDIATE`` (see
  :func:`write_engine`): it takes the write lock up front, so a concurrent writer waits out the
  busy timeout instead of failing on a stale snapshot.
- PostgreSQL (psycopg 3): pre-ping. ``postgresql://`` URLs get the psycopg driver. syncd's own
  sessions plan with ``random_page_cost = 1.1`` (the server default 4 models spinning disks): the
  hot statements look up a batch's thousand keys in ``row_state`` and the target table, tables
  the run keeps in cache, and under the default the planner reads the whole table instead
  (PostgreSQL 15, 10⁵ rows: a sequential scan of 8-11 ms instead of 3.5 ms through the primary
  key, for every batch). Only syncd's sessions are affected; a ``SET`` rather than a startup
  option, which a pooler such as PgBouncer may refuse.
- MariaDB/MySQL (PyMySQL): pre-ping, connections recycled hourly, ``charset=utf8mb4`` forced,
  READ COMMITTED, and strict SQL mode so an over-long value is an error, never silently cut. No
  TLS on a connection to this machine itself unless the URL asks for it, the URL's TLS flags as
  booleans (:func:`syncd.targets.dbtls.mysql_tls_args`).

PostgreSQL and MariaDB/MySQL connections notice a peer gone silent (a firewall that dropped the
connection's state, a failover, a pulled cable) within about a minute, through TCP keepalive,
instead of waiting for hours (:mod:`syncd.targets.deadpeer`; without ``TCP_USER_TIMEOUT`` here,
which would cut a bulk write that waits for another transaction's lock).

Every engine hides statement parameters from error messages (``hide_parameters``): rows hold
personal data, and errors end up in logs.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from syncd.errors import TargetError
from syncd.targets.dbtls import mysql_tls_args
from syncd.targets.deadpeer import detect_dead_peers

__all__ = [
    "WRITE_OPTION",
    "create_target_engine",
    "describe_url",
    "dialect_family",
    "with_driver",
    "write_engine",
]

WRITE_OPTION = "syncd_write"
"""Execution option marking a write transaction (SQLite: ``BEGIN IMMEDIATE``)."""

_SECRET_QUERY_KEYS = ("password", "passwd", "secret", "token", "key")
_MYSQL_STRICT = (
    "SET SESSION sql_mode = IF(@@SESSION.sql_mode = '', 'STRICT_TRANS_TABLES', "
    "CONCAT(@@SESSION.sql_mode, ',STRICT_TRANS_TABLES'))"
)

Family = Literal["sqlite", "postgresql", "mysql"]

def with_driver(url: sa.URL) -> sa.URL:
    """``url`` with syncd's driver where it names none: ``postgresql://`` → psycopg 3,
    ``mysql://`` / ``mariadb://`` → PyMySQL with ``charset=utf8mb4`` (SQLAlchemy's own defaults,
    psycopg2 and mysqlclient, are not installed)."""
    backend = url.get_backend_name()
    if backend == "postgresql" and "+" not in url.drivername:
        return url.set(drivername="postgresql+psycopg")
    if backend in ("mysql", "mariadb"):
        if "+" not in url.drivername:
            url = url.set(drivername=f"{backend}+pymysql")
        return url.update_query_dict({"charset": "utf8mb4"})
    return url


def describe_url(url: str | sa.URL) -> str:
    """The URL for messages: password (and secret-looking query parameters) replaced by ``***``."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return "<a database URL that cannot be parsed>"
    query = {
        k: ("***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v) for k, v in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def dialect_family(bind: sa.Engine | sa.Connection | sa.Dialect) -> Family:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB included)."""
    dialect = bind if isinstance(bind, sa.Dialect) else bind.dialect
    name = dialect.name
    if name == "sqlite":
        return "sqlite"
    if name == "postgresql":
        return "postgresql"
    if name in ("mysql", "mariadb"):
        return "mysql"
    raise TargetError(f"unsupported target database {name!r}: use SQLite, PostgreSQL or MariaDB/MySQL")


def write_engine(engine: sa.Engine) -> sa.Engine:
    """The same engine (same pool) whose transactions are write transactions."""
    return engine.execution_options(**{WRITE_OPTION: True})


CONNECTIONS_PER_RUN = 4
"""The most pool connections one run of a dataset holds at once: the look-up connection held for a
re-sync's stored digests, the write transaction of a batch, the second half of a split look-up
(:data:`syncd.targets.writer.SPLIT_LOOKUP_KEYS`) and, with ``snapshot_delete``, the connection that
holds the run's seen-key table. The daemon sizes its pool for ``max_concurrent_runs`` such runs."""


def pool_overflow(pool_size: int, runs: int) -> int:
    """``max_overflow`` for a pool of ``pool_size`` shared by ``runs`` concurrent runs: enough for
    each to hold :data:`CONNECTIONS_PER_RUN` (plus one for the daemon's own queries), never less
    than SQLAlchemy's default of 10. Overflow connections are closed when given back."""
    return max(10, CONNECTIONS_PER_RUN * runs + 1 - pool_size)


def create_target_engine(url: str, pool_size: int = 5, max_overflow: int = 10) -> sa.Engine:
    """An engine for ``url`` configured for its backend (see the module docstring). The pool keeps
    ``pool_size`` connections and opens up to ``max_overflow`` more while they are all in use.

    Raises TargetError for a URL that cannot be parsed or a backend syncd does not support;
    the message never contains the password.
    """
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # no chaining: the parser's message quotes the URL, password included
        raise TargetError(
            "the target database URL cannot be parsed: write it like sqlite:////var/lib/syncd/syncd.db, "
            "postgresql+psycopg://user:password@host:5432/db or "
            "mysql+pymysql://user:password@host:3306/db"
        ) from None
    backend = parsed.get_backend_name()
    parsed = with_driver(parsed)
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, max_overflow)
    if backend == "postgresql":
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args={"connect_timeout": 10, "application_name": "syncd"},
        )
        event.listen(engine, "connect", _postgres_session)
        return detect_dead_peers(engine, user_timeout=False)  # bulk writes: see deadpeer
    if backend in ("mysql", "mariadb"):
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=3600,
            isolation_level="READ COMMITTED",
            hide_parameters=True,
            connect_args={"connect_timeout": 10, "init_command": _MYSQL_STRICT, **mysql_tls_args(parsed)},
        )
        return detect_dead_peers(engine, user_timeout=False)  # bulk writes: see deadpeer
    raise TargetError(
        f"unsupported target database {backend!r} in {describe_url(parsed)}: "
        "use sqlite, postgresql (also KingbaseES/openGauss) or mysql/mariadb"
    )


_PG_SESSION = "SET random_page_cost = 1.1"


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    """Session settings of a new PostgreSQL connection (see the module docstring)."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # a SET outside any transaction SQLAlchemy will begin
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_PG_SESSION)
    finally:
        dbapi_connection.autocommit = autocommit


SQLITE_WAL_PAGES = 10_000
"""SQLite checkpoints the WAL into the database once it holds this many pages (40 MB at 4 KiB;
SQLite's default is 1,000). A first load's batches touch the same table and index pages again and
again: checkpointed less often, each page is copied to the database file fewer times and fewer
checkpoints wait for their fsync. First load of 10⁵ rows, 16 alternating pairs on two days' hosts:
13 faster, medians -3 % and -13 %; 10⁶ rows: 55.9 → 53.1 s and 59.3 → 56.4 s."""
SQLITE_WAL_KEEP_BYTES = 64 << 20
"""Size the WAL file is cut back to after a checkpoint: a WAL that grew while a local
application's long read held the checkpoint back does not keep its size on disk for good."""


def _sqlite_engine(url: sa.URL, pool_size: int, max_overflow: int) -> sa.Engine:
    # an in-memory database gets SQLAlchemy's one-connection-per-thread pool, which has no overflow
    pool_class = getattr(url.get_dialect(), "get_pool_class")(url)  # noqa: B009 - not in the Dialect stubs
    queued = issubclass(pool_class, QueuePool)
    overflow = {"max_overflow": max_overflow} if queued else {}
    engine = sa.create_engine(
        url, pool_size=pool_size, hide_parameters=True, connect_args={"timeout": 30}, **overflow
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # let SQLAlchemy's "begin" event below emit BEGIN, instead of the driver's own logic
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout = 30000")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_KEEP_BYTES}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
