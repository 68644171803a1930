"""Per-dataset run locks, so that several daemons on one configuration never run a dataset twice.

* PostgreSQL: ``pg_try_advisory_xact_lock`` — a TRANSACTION-scoped advisory lock, taken on a
  dedicated connection whose transaction stays open for the whole run and is rolled back at the
  end. The lock cannot outlive the run (session-level locks leak through a connection pool, DESIGN
  §6), and when a node dies its connection closes and the lock goes with it.
* MariaDB / MySQL: ``GET_LOCK(name, 0)`` is session-scoped, so it is held on a dedicated,
  unpooled connection that is released with ``RELEASE_LOCK`` and then closed, whatever happens.
  Lock names are server-wide, so they carry the database's name, and are limited to 64
  characters: see :func:`mysql_lock_name`.
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
connection, closed when the run ends, never handed to other code. The connection idles for the
whole run: TCP keepalive keeps a firewall from forgetting it, and notices within about a minute a
server gone silent (:mod:`syncd.targets.deadpeer`), so :meth:`HeldLock.check` then fails at once
(or within that minute), never hangs.

A lock can be lost while its run goes on: a DBA ends the lock's session (``pg_terminate_backend``,
``KILL``), the database fails over, the network drops the connection. Another node or a ``syncd sync``
by hand can then take it and run the dataset at the same time. :meth:`DatasetLocker.take` hands
the run a :class:`HeldLock` to ask, between batches, whether it still holds the lock
(:meth:`HeldLock.check`, at most every :data:`LOCK_CHECK_INTERVAL_S` seconds, and always before the
steps that must not overlap another run: snapshot deletes, the watermark); a lost lock raises
:class:`~syncd.errors.RunLockLost` and the run stops there.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.pool import NullPool

from syncd.errors import RunLockLost, TargetError
from syncd.targets.dbtls import mysql_tls_args
from syncd.targets.deadpeer import detect_dead_peers
from syncd.targets.engine import with_driver
from syncd.targets.writer import failure_reason

__all__ = [
    "LOCK_CHECK_INTERVAL_S",
    "DatasetLocker",
    "HeldLock",
    "lock_key",
    "mysql_lock_name",
    "sqlite_lock_dir",
]

log = structlog.get_logger(__name__)

LOCK_CHECK_INTERVAL_S = 2.0
"""How often a run asks the database whether it still holds its lock (one round trip on the lock's
connection), at most: batches are often far shorter than this."""

Probe = Callable[[], str | None]
"""Asks the database whether the lock is still held: None when it is, else why not."""


class HeldLock:
    """A run lock this process holds, for the run to check that it still does (the runner's
    ``RunLock``). ``check()`` probes the lock's connection at most every ``interval`` seconds
    (``force=True``: now) and raises :class:`~syncd.errors.RunLockLost` once the lock is gone;
    an ``flock`` (``probe`` None) cannot be lost while its process lives."""

    def __init__(self, dataset: str, probe: Probe | None, *, interval: float | None = None) -> None:
        self.dataset = dataset
        self._probe = probe
        self._interval = LOCK_CHECK_INTERVAL_S if interval is None else interval
        self._next = time.monotonic() + self._interval  # it was taken just now
        self.lost: str | None = None  # why, once a check found it gone

    def check(self, *, force: bool = False) -> None:
        if self._probe is None:
            return
        if self.lost is None:
            now = time.monotonic()
            if not force and now < self._next:
                return
            self._next = now + self._interval
            self.lost = self._probe()
            if self.lost is None:
                return
        raise RunLockLost(
            f"the run lock of dataset {self.dataset} was lost during the run: {self.lost}. Another syncd "
            "process (another node, or a `syncd sync` by hand) may be running this dataset now, and two "
            "runs at once corrupt the change feed, so this run stopped here, before writing more: the "
            "batches it committed stay, the watermark was not advanced (the next run reads that data "
            "again; unchanged rows cost nothing) and no more snapshot deletes were made. Find out what "
            "ended the lock's database session (pg_terminate_backend or KILL by a DBA, a failover, a "
            "network drop, a server or proxy timeout)",
            reason=self.lost,
        )


def lock_key(dataset: str) -> int:
    """A stable signed 64-bit key for ``dataset`` (the same on every node and Python version)."""
    digest = hashlib.sha256(f"syncd:{dataset}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_MYSQL_LOCK_NAME_MAX = 64  # GET_LOCK names longer than this are an error (MySQL) or cut (MariaDB)


def mysql_lock_name(dataset: str, database: str | None = None) -> str:
    """The ``GET_LOCK`` name of ``dataset`` in ``database``: ``syncd:<database>:<dataset>`` when that
    fits in 64 characters, otherwise a readable prefix, ``#`` and 16 hex digits of the SHA-256 of
    the full name (cutting the name alone gave two datasets sharing their first characters one
    lock). ``#`` never occurs in a dataset name, so a shortened name never equals a full one.

    GET_LOCK names are server-wide, not per database (PostgreSQL's advisory locks are per database):
    without the database in the name, deployments on two databases of one server (a test and a
    production database, two units sharing a server) skipped each other's runs of datasets with the
    same name as "locked". Earlier versions used ``syncd:<dataset>``; ``database`` None gives that."""
    name = f"syncd:{dataset}" if not database else f"syncd:{database}:{dataset}"
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
    # relative: to the working directory, as SQLite's; symbolic links resolved, so that processes
    # reaching one database file by different paths (/var/lib/syncd -> /data/syncd) share its locks
    path = Path(database).expanduser().resolve()
    return path.with_name(path.name + ".syncd-locks")


class DatasetLocker:
    """``with locker.hold(name) as acquired:`` — run only when ``acquired`` is True."""

    def __init__(self, url: str | sa.URL) -> None:
        self._engine: sa.Engine | None = None
        self._lock_dir: Path | None = None
        parsed = with_driver(sa.make_url(url))  # postgresql:// alone would ask for psycopg2
        self._database = parsed.database  # MariaDB/MySQL lock names carry it (see mysql_lock_name)
        backend = parsed.get_backend_name()
        families = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
        self.family = families.get(backend, "sqlite")
        if self.family in ("postgresql", "mysql"):
            tls = mysql_tls_args(parsed) if self.family == "mysql" else {}  # each lock is a new connection
            self._engine = detect_dead_peers(sa.create_engine(
                parsed, poolclass=NullPool, hide_parameters=True, connect_args=tls
            ))
        else:
            self._lock_dir = sqlite_lock_dir(parsed)

    @property
    def enabled(self) -> bool:
        """False only for an in-memory SQLite database (one process: nothing to coordinate)."""
        return self._engine is not None or self._lock_dir is not None

    @contextmanager
    def hold(self, dataset: str) -> Iterator[bool]:
        """Try to take the dataset's lock without waiting; yield whether it was acquired."""
        with self.take(dataset) as held:
            yield held is not None

    @contextmanager
    def take(self, dataset: str) -> Iterator[HeldLock | None]:
        """Try to take the dataset's lock without waiting; yield it held (hand it to the run, which
        checks it between batches), or None when another process holds it."""
        if self._lock_dir is not None:
            yield from self._hold_file(self._lock_dir, dataset)
            return
        if self._engine is None:
            yield HeldLock(dataset, None)
            return
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"cannot connect to take the run lock of dataset {dataset}: {exc}") from exc
        try:
            if self.family == "postgresql":
                yield from self._hold_postgres(conn, dataset)
            else:
                yield from self._hold_mysql(conn, mysql_lock_name(dataset, self._database), dataset)
        finally:
            conn.close()

    @staticmethod
    def _hold_file(directory: Path, dataset: str) -> Iterator[HeldLock | None]:
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
            yield HeldLock(dataset, None) if acquired else None  # an flock is not lost while we live
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _hold_postgres(conn: sa.Connection, dataset: str) -> Iterator[HeldLock | None]:
        tx = conn.begin()  # the transaction (and the lock) lasts for the whole run
        held: HeldLock | None = None
        try:
            # the transaction sits idle for the whole run: a server or role default of
            # idle_in_transaction_session_timeout (managed PostgreSQL often sets one) would end the
            # session, and the lock with it, while the run goes on
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            if (conn.dialect.server_version_info or (0,)) >= (17,):
                # PostgreSQL 17's transaction_timeout (a server or role default) would end every
                # run longer than it, the lock's transaction lasting the whole run
                conn.exec_driver_sql("SET LOCAL transaction_timeout = 0")
            query = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
            acquired = bool(conn.execute(query, {"key": lock_key(dataset)}).scalar())

            def alive() -> str | None:
                # a transaction-scoped lock lasts exactly as long as its transaction: while a
                # statement succeeds in it, the session and the transaction (and the lock) are
                # alive. An error would have aborted it, and PostgreSQL frees an aborted
                # transaction's locks at once; every later statement then fails here too
                try:
                    conn.exec_driver_sql("SELECT 1")
                except sa.exc.SQLAlchemyError as exc:
                    return f"its PostgreSQL session ended ({failure_reason(exc)})"
                return None

            held = HeldLock(dataset, alive) if acquired else None
            yield held
        finally:
            try:
                tx.rollback()
            except sa.exc.SQLAlchemyError:  # the session is gone (terminated): so is its lock
                _release_failed(dataset, held)

    @staticmethod
    def _hold_mysql(conn: sa.Connection, name: str, dataset: str) -> Iterator[HeldLock | None]:
        # the connection idles for the whole run: the server's wait_timeout (8 h by default, often
        # set lower) would close it, and release the lock, while the run goes on (31536000: the max)
        conn.execute(sa.text("SET SESSION wait_timeout = 31536000"))
        acquired = conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar() == 1
        mine = sa.text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()")

        def held_here() -> str | None:
            try:  # exact: 1 while this session holds it; 0 (another's) or NULL (free) once lost
                if conn.execute(mine, {"name": name}).scalar() == 1:
                    return None
            except sa.exc.SQLAlchemyError as exc:
                return f"its MariaDB/MySQL session ended ({failure_reason(exc)})"
            return f"the server no longer has lock {name} on syncd's lock session (IS_USED_LOCK)"

        held = HeldLock(dataset, held_here) if acquired else None
        try:
            yield held
        finally:
            if acquired:
                try:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                except sa.exc.SQLAlchemyError:  # closing the session releases it anyway
                    _release_failed(dataset, held)
            conn.rollback()  # after a disconnect: a no-op on the invalidated connection

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _release_failed(dataset: str, held: HeldLock | None) -> None:
    """Releasing failed on a dead session (its lock went with it). Worth a warning when the run did
    not see the loss; when it did, ``sync.lock_lost`` already said so."""
    if held is not None and held.lost is not None:
        log.debug("lock.release_failed", dataset=dataset, lost=held.lost)
    else:
        log.warning("lock.release_failed", dataset=dataset, exc_info=True)
