"""Per-dataset run locks, so that several daemons on one configuration never run a dataset twice.

* PostgreSQL: ``pg_try_advisory_xact_lock`` — a TRANSACTION-scoped advisory lock, taken on a
  dedicated connection whose transaction stays open for the whole run and is rolled back at the
  end. The lock cannot outlive the run (session-level locks leak through a connection pool, DESIGN
  §6), and when a node dies its connection closes and the lock goes with it.
* MariaDB / MySQL: ``GET_LOCK(name, 0)`` is session-scoped, so it is held on a dedicated,
  unpooled connection that is released with ``RELEASE_LOCK`` and then closed, whatever happens.
  Lock names are limited to 64 characters: see :func:`mysql_lock_name`.
* SQLite: a single-host database, so an ``flock`` on a file per dataset beside it
  (``<database>.syncd-locks/<dataset>.lock``): the daemon and a ``syncd sync`` or
  ``syncd quarantine replay`` started by hand while it runs exclude each other, as two daemons on
  one file do. The kernel drops the lock when the process ends (kill -9 included); the files stay
  (empty) and mean nothing by themselves. An in-memory database takes no lock.

Every writer of a dataset holds its lock: the daemon's runs, ``syncd sync`` and ``syncd quarantine
replay``. Two runs of one dataset at once classify the same new key as an insert each (two
insert entries for one row in the change feed), write each other's rows back with stale
content, and the second marks the first ``abandoned`` in the runs table while it is still running.
(In earlier versions they also overwrote each other's ``row_state.seen_run`` marks, and the
full-snapshot run that ended first deleted live rows as gone upstream; seen keys are now per run.)

The locker owns a small engine of its own with no pool (``NullPool``): every lock is a fresh
connection, closed when the run ends, never handed to other code.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.pool import NullPool

from syncd.errors import TargetError
from syncd.targets.dbtls import mysql_tls_args
from syncd.targets.engine import with_driver

__all__ = ["DatasetLocker", "lock_key", "mysql_lock_name", "sqlite_lock_dir"]

log = structlog.get_logger(__name__)


def lock_key(dataset: str) -> int:
    """A stable signed 64-bit key for ``dataset`` (the same on every node and Python version)."""
    digest = hashlib.sha256(f"syncd:{dataset}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_MYSQL_LOCK_NAME_MAX = 64  # GET_LOCK names longer than this are an error (MySQL) or cut (MariaDB)


def mysql_lock_name(dataset: str) -> str:
    """The ``GET_LOCK`` name of ``dataset``: ``syncd:<dataset>`` when that fits in 64 characters
    (the name every version used, so that old and new processes exclude each other); otherwise a
    readable prefix, ``#`` and 16 hex digits of the SHA-256 of the full name. Cutting the name
    alone gave two datasets sharing their first 58 characters one lock. ``#`` never occurs in a
    dataset name, so a shortened name never equals a full one."""
    name = f"syncd:{dataset}"
    if len(name) <= _MYSQL_LOCK_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: _MYSQL_LOCK_NAME_MAX - len(digest) - 1]}#{digest}"


def sqlite_lock_dir(url: sa.URL) -> Path | None:
    """The directory of the dataset lock files of a SQLite database (beside its file), or None for
    an in-memory database."""
    database = url.database or ""
    if database.startswith("file:"):  # a URI filename (?uri=true)
        database, _, query = database[5:].partition("?")
        if "mode=memory" in query:
            return None
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    path = Path(database).expanduser().absolute()  # relative: to the working directory, as SQLite's
    return path.with_name(path.name + ".syncd-locks")


class DatasetLocker:
    """``with locker.hold(name) as acquired:`` — run only when ``acquired`` is True."""

    def __init__(self, url: str | sa.URL) -> None:
        self._engine: sa.Engine | None = None
        self._lock_dir: Path | None = None
        parsed = with_driver(sa.make_url(url))  # postgresql:// alone would ask for psycopg2
        backend = parsed.get_backend_name()
        families = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
        self.family = families.get(backend, "sqlite")
        if self.family in ("postgresql", "mysql"):
            tls = mysql_tls_args(parsed) if self.family == "mysql" else {}  # each lock is a new connection
            self._engine = sa.create_engine(
                parsed, poolclass=NullPool, hide_parameters=True, connect_args=tls
            )
        else:
            self._lock_dir = sqlite_lock_dir(parsed)

    @property
    def enabled(self) -> bool:
        """False only for an in-memory SQLite database (one process: nothing to coordinate)."""
        return self._engine is not None or self._lock_dir is not None

    @contextmanager
    def hold(self, dataset: str) -> Iterator[bool]:
        """Try to take the dataset's lock without waiting; yield whether it was acquired."""
        if self._lock_dir is not None:
            yield from self._hold_file(self._lock_dir, dataset)
            return
        if self._engine is None:
            yield True
            return
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"cannot connect to take the run lock of dataset {dataset}: {exc}") from exc
        try:
            if self.family == "postgresql":
                yield from self._hold_postgres(conn, dataset)
            else:
                yield from self._hold_mysql(conn, dataset)
        finally:
            conn.close()

    @staticmethod
    def _hold_file(directory: Path, dataset: str) -> Iterator[bool]:
        path = directory / f"{dataset}.lock"  # dataset names are identifiers (config validation)
        try:
            # readable by whoever may read the database: flock needs no write access to the file
            directory.mkdir(mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TargetError(
                f"cannot take the run lock of dataset {dataset}: {path}: {exc.strerror}; syncd needs to "
                "write in the SQLite database's directory (its -wal and -shm files live there too)"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    reason = f"{path}: {exc.strerror}"
                    raise TargetError(f"cannot take the run lock of dataset {dataset}: {reason}") from exc
                acquired = False
            yield acquired
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _hold_postgres(conn: sa.Connection, dataset: str) -> Iterator[bool]:
        tx = conn.begin()  # the transaction (and the lock) lasts for the whole run
        try:
            # the transaction sits idle for the whole run: a server or role default of
            # idle_in_transaction_session_timeout (managed PostgreSQL often sets one) would end the
            # session, and the lock with it, while the run goes on
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            query = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
            acquired = bool(conn.execute(query, {"key": lock_key(dataset)}).scalar())
            yield acquired
        finally:
            try:
                tx.rollback()
            except sa.exc.SQLAlchemyError:  # the session is gone (terminated): so is its lock
                log.warning("lock.release_failed", dataset=dataset, exc_info=True)

    @staticmethod
    def _hold_mysql(conn: sa.Connection, dataset: str) -> Iterator[bool]:
        name = mysql_lock_name(dataset)
        # the connection idles for the whole run: the server's wait_timeout (8 h by default, often
        # set lower) would close it, and release the lock, while the run goes on (31536000: the max)
        conn.execute(sa.text("SET SESSION wait_timeout = 31536000"))
        acquired = conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar() == 1
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                except sa.exc.SQLAlchemyError:  # closing the session releases it anyway
                    log.warning("lock.release_failed", dataset=dataset, exc_info=True)
            conn.rollback()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
