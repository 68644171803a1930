"""Shared fixtures: real databases (SQLite always; PostgreSQL and MariaDB on loopback).

Each test that asks for ``db_url`` gets a fresh, empty database of its own. PostgreSQL and
MariaDB tests are skipped when the server is not reachable, unless SYNCD_REQUIRE_DBS=1 (set by
.ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("SYNCD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_ADMIN_URL = os.environ.get("SYNCD_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_DBS = os.environ.get("SYNCD_REQUIRE_DBS") == "1"


def _unavailable(what: str, exc: Exception) -> NoReturn:
    msg = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if REQUIRE_DBS:
        pytest.fail(f"{msg}; SYNCD_REQUIRE_DBS=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


class _Supply:
    """Fresh databases of one server: the next one created while a test runs, the last one
    dropped after it, on one thread of this pytest process.

    ``CREATE DATABASE`` on PostgreSQL costs about 0.3 s (template1 copied through the WAL and
    flushed), ``DROP DATABASE`` about 0.1 s: with one per test that was a sixth of the suite's
    time, spent while the test itself waited. The tests mostly wait (on sockets, subprocesses,
    the database server), so the thread's work overlaps theirs. Every test still gets a database
    no other test has touched; one created ahead and never taken is dropped at the session's end.
    """

    def __init__(self, what: str, admin_url: str, create: str, drop: str, **engine_args: Any) -> None:
        self.what, self.admin_url, self._create_sql, self._drop_sql = what, admin_url, create, drop
        self._engine_args = engine_args
        self._admin: sa.Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._ahead: Future[str] | None = None
        self._drops: list[tuple[str, Future[None]]] = []

    def _run(self, sql: str) -> None:
        if self._admin is None:
            self._admin = sa.create_engine(self.admin_url, **self._engine_args)
        with self._admin.begin() as conn:
            conn.execute(sa.text(sql))

    def _create(self) -> str:
        name = f"syncd_t_{uuid.uuid4().hex[:12]}"
        self._run(self._create_sql.format(name=name))
        return name

    def _submit_create(self) -> Future[str]:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-supply")
        return self._thread.submit(self._create)

    def take(self) -> str:
        """A new database's name (one is created ahead for the next test)."""
        ahead, self._ahead = self._ahead, None
        try:
            name = (ahead or self._submit_create()).result()
        except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
            _unavailable(self.what, exc)
        self._ahead = self._submit_create()
        return name

    def give_back(self, name: str) -> None:
        assert self._thread is not None
        self._drops.append((name, self._thread.submit(self._run, self._drop_sql.format(name=name))))
        self._drops = [(n, d) for n, d in self._drops if not d.done() or d.exception() is not None]

    def close(self) -> list[str]:
        """Drop the database created ahead; the problems of every drop, one line each."""
        if self._ahead is not None:
            with contextlib.suppress(Exception):  # a create that failed left nothing to drop
                self.give_back(self._ahead.result())
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._admin is not None:
            self._admin.dispose()
        return [
            f"{self.what}: DROP DATABASE {n} failed: {d.exception()}"
            for n, d in self._drops
            if d.exception() is not None
        ]


_SUPPLIES: dict[str, _Supply] = {}


def _supply(kind: str) -> _Supply:
    if kind not in _SUPPLIES:
        if kind == "postgresql":
            _SUPPLIES[kind] = _Supply(
                "PostgreSQL",
                PG_ADMIN_URL,
                'CREATE DATABASE "{name}"',
                'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                isolation_level="AUTOCOMMIT",
            )
        else:  # "mariadb:<collation>"
            collation = kind.partition(":")[2]
            _SUPPLIES[kind] = _Supply(
                "MariaDB",
                MARIADB_ADMIN_URL,
                f"CREATE DATABASE `{{name}}` CHARACTER SET utf8mb4 COLLATE {collation}",
                "DROP DATABASE IF EXISTS `{name}`",
            )
    return _SUPPLIES[kind]


@pytest.fixture(scope="session", autouse=True)
def _database_supplies() -> Iterator[None]:
    """Drop the databases created ahead; a drop that failed fails the session's last test."""
    yield
    problems = [problem for supply in _SUPPLIES.values() for problem in supply.close()]
    _SUPPLIES.clear()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _fresh_postgres() -> Iterator[str]:
    supply = _supply("postgresql")
    name = supply.take()
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        supply.give_back(name)


def _fresh_mariadb(collation: str = "utf8mb4_bin") -> Iterator[str]:
    supply = _supply(f"mariadb:{collation}")
    name = supply.take()
    url = sa.make_url(MARIADB_ADMIN_URL).set(database=name, query={"charset": "utf8mb4"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        supply.give_back(name)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh empty database, once per kind: SQLite, PostgreSQL, MariaDB."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'target.db'}"
    elif kind == "postgresql":
        yield from _fresh_postgres()
    else:
        yield from _fresh_mariadb()


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def tcp_db(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh database of each networked kind, reached over TCP on 127.0.0.1."""
    fresh = _fresh_postgres if request.param == "postgresql" else _fresh_mariadb
    for url in fresh():
        assert sa.make_url(url).host == "127.0.0.1"
        yield request.param, url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _fresh_postgres()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    yield from _fresh_mariadb()


@pytest.fixture
def mariadb_ci_url() -> Iterator[str]:
    """A fresh MariaDB database whose default collation is the server's usual one,
    utf8mb4_general_ci: case-insensitive and PAD SPACE."""
    yield from _fresh_mariadb("utf8mb4_general_ci")


@pytest.fixture(autouse=True)
def _fresh_credentials() -> Iterator[None]:
    """Tokens are cached process-wide by gateway URL; a later test's gateway may reuse a port."""
    yield
    from syncd.sources.http.auth.base import forget_shared_state

    forget_shared_state()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that calls ``configure_logging`` points the process's logging at its own captured
    stream; left in place, every later test would log into that closed stream (a logging error
    per event, and traced memory growing with each: the memory tests failed after such a test)."""
    import logging

    import structlog

    from syncd.logs import forget_secrets

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    forget_secrets()  # the secrets a test's configuration load handed to the log pipeline


# --------------------------------------------------------------------------- secret scan
# The end-to-end tests configure this value as the gateway's app secret (tests/e2e.py). It must never
# appear in anything a test prints or logs: every test's captured stdout, stderr and log records are
# scanned, and a test whose output contains it fails, whatever it asserted itself.
CANARY_SECRETS = ("s3cr3t-Vx9-never-logged",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    for section, content in report.sections:
        for secret in CANARY_SECRETS:
            if secret in content:
                report.outcome = "failed"
                report.longrepr = f"a configured secret leaked into the test's {section!r}"


def remove_sm3(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's hashlib as on a host whose OpenSSL was built without SM3 (国密)."""
    real_new: Callable[..., object] = hashlib.new

    def without_sm3(name: str, *args: object, **kwargs: object) -> object:
        if name.lower() == "sm3":
            raise ValueError("unsupported hash type sm3")
        return real_new(name, *args, **kwargs)

    monkeypatch.setattr(hashlib, "new", without_sm3)
