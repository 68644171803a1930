"""Dead-peer detection on syncd's database connections (syncd.targets.deadpeer).

For PostgreSQL and MariaDB, each of the three engines syncd opens (the target's, a front-end
database source's, the run locks') connects over TCP to 127.0.0.1 and the keepalive timers and
TCP_USER_TIMEOUT (not on the target's) are read back from the live socket; a query longer than
those timers still completes (the server's kernel answers the probes while it works), and so does
a target COPY that waits for another transaction's lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from syncd.daemon.locks import DatasetLocker
from syncd.sources.sql import source_engine
from syncd.targets import deadpeer
from syncd.targets.engine import create_target_engine

# --------------------------------------------------------------------------- connections


@contextmanager
def _opened(engine: sa.Engine) -> Iterator[list[Any]]:
    """Collects the DB-API connections ``engine`` opens meanwhile."""
    opened: list[Any] = []

    def _seen(dbapi_connection: Any, _record: Any) -> None:
        opened.append(dbapi_connection)

    event.listen(engine, "connect", _seen)
    try:
        yield opened
    finally:
        event.remove(engine, "connect", _seen)


@contextmanager
def _connection_of(engine: sa.Engine) -> Iterator[tuple[Any, Callable[[str], Any]]]:
    try:
        with engine.connect() as conn:
            yield conn.connection.dbapi_connection, lambda sql: conn.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()


def _target_connection(url: str) -> contextlib.AbstractContextManager[tuple[Any, Callable[[str], Any]]]:
    return _connection_of(create_target_engine(url))


def _source_connection(url: str) -> contextlib.AbstractContextManager[tuple[Any, Callable[[str], Any]]]:
    return _connection_of(source_engine(url, timezone="Asia/Shanghai"))


@contextmanager
def _lock_connection(url: str) -> Iterator[tuple[Any, Callable[[str], Any]]]:
    """The run lock's own connection, while the lock is held (it is opened inside ``take``)."""
    locker = DatasetLocker(url)
    try:
        with _opened_by_any_engine() as opened, locker.take("dead_peer") as held:
            assert held is not None
            (dbapi_connection,) = opened

            def query(sql: str) -> Any:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute(sql)
                    return cursor.fetchone()[0]
                finally:
                    cursor.close()

            yield dbapi_connection, query
            held.check(force=True)  # the lock's session survived what the test did on it
    finally:
        locker.close()


@contextmanager
def _opened_by_any_engine() -> Iterator[list[Any]]:
    """Collects the DB-API connections any engine opens meanwhile (the locker's engine is its own)."""
    opened: list[Any] = []

    def _seen(dbapi_connection: Any, _record: Any) -> None:
        opened.append(dbapi_connection)

    event.listen(sa.Engine, "connect", _seen)
    try:
        yield opened
    finally:
        event.remove(sa.Engine, "connect", _seen)


ENGINES = {"target": _target_connection, "source": _source_connection, "lock": _lock_connection}


# --------------------------------------------------------------------------- socket options


def _pg_socket(dbapi_connection: Any) -> socket.socket:
    """A duplicate of a psycopg connection's socket (closing it leaves the connection alone)."""
    return socket.socket(fileno=os.dup(dbapi_connection.pgconn.socket))


def _options(sock: socket.socket) -> dict[str, int]:
    return {
        "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "TCP_KEEPIDLE": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "TCP_KEEPINTVL": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "TCP_KEEPCNT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "TCP_USER_TIMEOUT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def _socket_options(kind: str, dbapi_connection: Any) -> dict[str, int]:
    if kind == "postgresql":
        with _pg_socket(dbapi_connection) as sock:
            assert sock.family == socket.AF_INET
            return _options(sock)
    sock = dbapi_connection._sock
    assert sock.family == socket.AF_INET
    return _options(sock)


CONFIGURED = {
    "SO_KEEPALIVE": 1,
    "TCP_KEEPIDLE": deadpeer.KEEPALIVE_IDLE_S,
    "TCP_KEEPINTVL": deadpeer.KEEPALIVE_INTERVAL_S,
    "TCP_KEEPCNT": deadpeer.KEEPALIVE_COUNT,
    "TCP_USER_TIMEOUT": deadpeer.TCP_USER_TIMEOUT_S * 1000,
}


def test_settings_are_a_minute() -> None:
    """The documented numbers: a silent peer noticed about a minute after its last packet."""
    assert deadpeer.KEEPALIVE_IDLE_S + deadpeer.KEEPALIVE_INTERVAL_S * deadpeer.KEEPALIVE_COUNT == 60
    assert deadpeer.TCP_USER_TIMEOUT_S == 60


@pytest.mark.parametrize("engine", list(ENGINES))
def test_live_socket_has_the_dead_peer_settings(tcp_db: tuple[str, str], engine: str) -> None:
    kind, url = tcp_db
    with ENGINES[engine](url) as (dbapi_connection, query):
        assert query("SELECT 1") == 1
        expected = CONFIGURED if engine != "target" else {**CONFIGURED, "TCP_USER_TIMEOUT": 0}
        assert _socket_options(kind, dbapi_connection) == expected


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_query_longer_than_the_timers_is_not_cut_off(
    tcp_db: tuple[str, str], engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes every second, the peer given up after 1 s without an answer: the server's kernel
    answers them while it sleeps, and the query returns."""
    kind, url = tcp_db
    monkeypatch.setattr(deadpeer, "KEEPALIVE_IDLE_S", 1)
    monkeypatch.setattr(deadpeer, "KEEPALIVE_INTERVAL_S", 1)
    monkeypatch.setattr(deadpeer, "KEEPALIVE_COUNT", 1)
    monkeypatch.setattr(deadpeer, "TCP_USER_TIMEOUT_S", 1)
    sleep = "SELECT 1 FROM pg_sleep(2)" if kind == "postgresql" else "SELECT SLEEP(2) + 1"
    with ENGINES[engine](url) as (dbapi_connection, query):
        assert _socket_options(kind, dbapi_connection)["TCP_KEEPIDLE"] == 1
        assert query(sleep) == 1
        assert query("SELECT 1") == 1


@pytest.mark.postgres
def test_a_target_copy_waiting_for_a_lock_is_not_cut_off(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COPY into the target that waits mid-stream for another transaction's uncommitted row of
    the same key: the server stops reading while the client still sends, its receive window stays
    at zero. A live, legitimate wait; TCP_USER_TIMEOUT would end the connection after its time
    (Linux 5.11 and later), so the target engine has none."""
    monkeypatch.setattr(deadpeer, "KEEPALIVE_IDLE_S", 1)
    monkeypatch.setattr(deadpeer, "KEEPALIVE_INTERVAL_S", 1)
    monkeypatch.setattr(deadpeer, "KEEPALIVE_COUNT", 1)
    monkeypatch.setattr(deadpeer, "TCP_USER_TIMEOUT_S", 1)
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, pad text)"))
    holder = admin.connect()
    holding = holder.begin()
    holder.execute(sa.text("INSERT INTO t VALUES (0, 'x')"))
    release = threading.Timer(4, holding.rollback)
    release.start()
    engine = create_target_engine(pg_url)
    pad = "y" * 20_000
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor, cursor.copy("COPY t (id, pad) FROM STDIN") as copy:
                for i in range(3000):  # 60 MB: far more than the socket buffers hold
                    copy.write_row((i, pad))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 3000
    finally:
        release.join()
        engine.dispose()
        holder.close()
        admin.dispose()


@pytest.mark.postgres
def test_a_url_setting_wins(pg_url: str) -> None:
    engine = create_target_engine(pg_url + "?keepalives_idle=120")
    try:
        with engine.connect() as conn, _pg_socket(conn.connection.dbapi_connection) as sock:
            options = _options(sock)
        assert options == {**CONFIGURED, "TCP_KEEPIDLE": 120, "TCP_USER_TIMEOUT": 0}
    finally:
        engine.dispose()


PG_SOCKET_DIR = Path("/var/run/postgresql")
MARIADB_SOCKET = Path("/run/mysqld/mysqld.sock")


@pytest.mark.postgres
def test_a_unix_socket_postgres_connection_works(pg_url: str) -> None:
    """libpq ignores the keepalive parameters on a Unix socket, rather than refusing them."""
    if not (PG_SOCKET_DIR / ".s.PGSQL.5432").exists():
        pytest.skip(f"no PostgreSQL Unix socket in {PG_SOCKET_DIR}")
    url = sa.make_url(pg_url).set(host=None, query={"host": str(PG_SOCKET_DIR)})
    for make in (create_target_engine, source_engine):
        engine = make(url.render_as_string(hide_password=False))
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT 1").scalar() == 1
                # the empty address of a Unix socket: no client address on the server's side
                assert conn.exec_driver_sql("SELECT inet_client_addr()").scalar() is None
        finally:
            engine.dispose()


@pytest.mark.mariadb
def test_a_unix_socket_mariadb_connection_is_left_alone(mariadb_url: str) -> None:
    if not MARIADB_SOCKET.exists():
        pytest.skip(f"no MariaDB Unix socket at {MARIADB_SOCKET}")
    url = sa.make_url(mariadb_url).set(host="localhost")
    url = url.update_query_dict({"unix_socket": str(MARIADB_SOCKET)})
    engine = create_target_engine(url.render_as_string(hide_password=False))
    try:
        with _opened(engine) as opened, engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
            assert opened[0]._sock.family == socket.AF_UNIX
    finally:
        engine.dispose()
