"""Dead-peer detection on the database connections syncd opens (target, front-end database, run locks).

A daemon that runs for years meets peers that go silent without closing anything: a firewall that
drops idle TCP state after some minutes (common in government networks), a failover, a pulled
cable. Without help the kernel notices late or never: a read waiting for the answer to a request
the server acknowledged waits for TCP keepalive (two hours by default, if the driver switches it on
at all), a write retransmits for about 15 minutes (``tcp_retries2``). A run stuck there holds its
dataset's job slot and run lock, and nothing alarms.

:func:`detect_dead_peers` gives an engine's TCP connections:

- keepalive probes after :data:`KEEPALIVE_IDLE_S` seconds of silence, every
  :data:`KEEPALIVE_INTERVAL_S` seconds, the peer given up after :data:`KEEPALIVE_COUNT` unanswered
  ones. The probes also keep a middlebox's idle state from expiring in the first place;
- ``TCP_USER_TIMEOUT`` of :data:`TCP_USER_TIMEOUT_S` (``user_timeout=True``: the run-lock and
  front-end database engines): data sent but not acknowledged for that long ends the connection.
  Keepalive does not cover a pending write, and a run lock's connection is never idle long enough
  for keepalive (it is asked every few seconds): its check would wait out the kernel's
  retransmissions (``net.ipv4.tcp_retries2``, about 15 minutes). NOT on the target engine: since
  Linux 5.11 it also ends a connection whose peer keeps its receive window at zero that long, which
  is what a live server does while a ``COPY`` or a large insert waits for another transaction's
  lock (the server stops reading, the client keeps sending): a legitimate wait. Those two engines
  send only small queries, so a live server never leaves their data unacknowledged.

The connection then fails with an error instead of hanging (about a minute after the peer went
silent), the run fails with a database error and is retried as any run is. Long queries are not
affected: while the server works on a query its kernel answers the probes. No read or write timeout
of the driver is used (PyMySQL's ``read_timeout`` would end a long merge or a slow front-end query).

- PostgreSQL (libpq: psycopg 3, psycopg2): the connection parameters ``keepalives``,
  ``keepalives_idle``, ``keepalives_interval``, ``keepalives_count`` and ``tcp_user_timeout``.
  libpq applies them to TCP connections only and ignores them for a Unix socket. One given in the
  URL's query wins (``?keepalives_idle=120``).
- MariaDB/MySQL (PyMySQL): PyMySQL switches ``SO_KEEPALIVE`` on but leaves the kernel's timers
  (two hours); they are set on the connection's socket when it connects. A Unix socket, another
  driver (no ``_sock``) or a platform without one of the options is left as it is, never an error.
- SQLite: a local file, nothing to do.
"""

from __future__ import annotations

import socket
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event

__all__ = [
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE_S",
    "KEEPALIVE_INTERVAL_S",
    "TCP_USER_TIMEOUT_S",
    "detect_dead_peers",
    "libpq_dead_peer_args",
]

log = structlog.get_logger(__name__)

# A silent peer is noticed about a minute after its last packet: 30 s idle, then 3 probes 10 s
# apart (30 + 3 × 10 = 60 s). TCP_USER_TIMEOUT matches that minute: on Linux, once it is set it also
# decides when unanswered keepalive probes end the connection (the probe count is then not used),
# and it ends a connection whose sent data goes unacknowledged that long. 30 s idle is short enough
# to keep a firewall's or NAT's idle-connection state (often 5-30 minutes) alive. A minute without
# any acknowledgement is not a slow network but a gone one; a long query is unaffected, since the
# server's kernel answers keepalive probes while the query runs. Read at each new connection.
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_S = 60

_LIBPQ_DRIVERS = ("psycopg", "psycopg2")
_LIBPQ_TCP_USER_TIMEOUT = 120000  # libpq 12 added tcp_user_timeout; an older one refuses the name


def detect_dead_peers(engine: sa.Engine, *, user_timeout: bool = True) -> sa.Engine:
    """Set up ``engine`` so that its connections notice a silent peer (see the module docstring),
    with ``TCP_USER_TIMEOUT`` when ``user_timeout`` (never for an engine that sends bulk data);
    returns ``engine``. A SQLite engine, or a driver syncd does not know, is left as it is."""
    dialect = engine.dialect
    family = dialect.name
    if family == "postgresql" and dialect.driver in _LIBPQ_DRIVERS:
        libpq = _libpq_version(dialect) if user_timeout else 0

        @event.listens_for(engine, "do_connect")
        def _libpq_args(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            for name, value in libpq_dead_peer_args(libpq).items():
                cparams.setdefault(name, value)  # a value the URL gives wins

    elif family in ("mysql", "mariadb"):

        @event.listens_for(engine, "connect")
        def _timers(dbapi_connection: Any, _record: Any) -> None:
            _socket_timers(dbapi_connection, user_timeout=user_timeout)

    return engine


def libpq_dead_peer_args(libpq_version: int | None = None) -> dict[str, Any]:
    """libpq connection parameters of the current settings (``tcp_user_timeout`` in milliseconds,
    left out for a libpq older than 12, whose ``libpq_version`` is below 120000, and for 0: an
    engine without it)."""
    args: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
    }
    if libpq_version is None or libpq_version >= _LIBPQ_TCP_USER_TIMEOUT:
        args["tcp_user_timeout"] = TCP_USER_TIMEOUT_S * 1000
    return args


def _libpq_version(dialect: sa.Dialect) -> int | None:
    """The libpq the driver runs on, as libpq numbers it (PostgreSQL 18.0: 180000); None: unknown."""
    dbapi = dialect.loaded_dbapi
    try:
        if dialect.driver == "psycopg":
            return int(dbapi.pq.version())
        return int(dbapi.extensions.libpq_version())
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - every libpq driver has one
        return None


def _socket_options(*, user_timeout: bool = True) -> list[tuple[int, str, int, int]]:
    """(level, name, option, value) for a TCP socket, each option this platform has."""
    wanted = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPALIVE_COUNT),
    ]
    if user_timeout:
        wanted.append((socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_S * 1000))
    options: list[tuple[int, str, int, int]] = []
    for level, name, value in wanted:
        option = getattr(socket, name, None)
        if option is not None:
            options.append((level, name, option, value))
    return options


def _socket_timers(dbapi_connection: Any, *, user_timeout: bool) -> None:
    """On a MariaDB/MySQL connection: the keepalive timers (and the user timeout) on PyMySQL's
    socket (a TCP one only)."""
    sock = getattr(dbapi_connection, "_sock", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket (a local server), or a driver that keeps its socket elsewhere
    for level, name, option, value in _socket_options(user_timeout=user_timeout):
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:  # the kernel does not know it: detection is slower, nothing breaks
            log.debug("db.socket_option_refused", option=name, error=str(exc))
