"""Database faults: the target database stops in the middle of a run and comes back.

Each test runs against a PRIVATE server (``tests/dbserver.py``) — never the shared ones on 5432/3306,
which other engineers' runs depend on. The run must fail cleanly with a message naming the database
(host:port/database) and never its password; the next run, after the server is back, converges:
target equals upstream, and the change log holds one insert per row.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.gateway import FaultPlan, Gateway
from tests.dbserver import (
    PrivateMariaDB,
    PrivatePostgres,
    add_password_user,
    mariadb_available,
    postgres_available,
    require_binaries,
    server_root,
)
from tests.e2e import SECRET, SECRET_ENV, Syncer, change_log, target_rows, upstream_active, write_config
from tests.reliability_kit import report

DB_PASSWORD = "Db-pw-7Qz-never-shown"
DB_PASSWORD_ENV = "SYNCD_TEST_DB_PASSWORD"


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    require_binaries(postgres_available(), "PostgreSQL")
    with PrivatePostgres(server_root("syncd-pg-")) as server:
        yield server


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    require_binaries(mariadb_available(), "MariaDB")
    with PrivateMariaDB(server_root("syncd-mariadb-")) as server:
        add_password_user(server, DB_PASSWORD)
        yield server


def _pg_url(server: PrivatePostgres, name: str) -> str:
    server.create_database(name)  # trust auth: the password is accepted and ignored
    return f"postgresql+psycopg://postgres:${{{DB_PASSWORD_ENV}}}@127.0.0.1:{server.port}/{name}"


def _mariadb_url(server: PrivateMariaDB, name: str) -> str:
    server.create_database(name)
    return f"mysql+pymysql://syncd:${{{DB_PASSWORD_ENV}}}@127.0.0.1:{server.port}/{name}?charset=utf8mb4"


def _stop_after(gw: Gateway, pages: int, stop: Callable[[], None]) -> threading.Thread:
    base = len(gw.request_log)

    def watch() -> None:
        deadline = time.monotonic() + 60
        while len(gw.request_log) - base < pages and time.monotonic() < deadline:
            time.sleep(0.002)
        stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _outage_then_converge(  # noqa: PLR0917 - a test helper: each caller passes all six
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    where: str,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> dict[str, Any]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(DB_PASSWORD_ENV, DB_PASSWORD)
    gw = Gateway(records=3000, seed=23, app_key="demo-app", app_secret=SECRET)
    gw.start()
    syncer = Syncer(write_config(tmp_path, db_url=url, gateway_url=gw.url, page_size=100, batch_size=100))
    url = url.replace(f"${{{DB_PASSWORD_ENV}}}", DB_PASSWORD)  # the tests' own queries
    try:
        gw.store.churn(200, random.Random(5))  # logical deletes too: the log must hold none of them
        gw.faults.fail_next("slow", 1000)  # 50 ms per page: the outage lands mid-run
        gw.faults.slow_seconds = 0.05
        watcher = _stop_after(gw, 8, stop)
        failed = syncer.run()
        watcher.join()
        assert failed.status == "failed", failed
        assert failed.error is not None
        assert where in failed.error, f"the message does not name the database: {failed.error}"
        assert DB_PASSWORD not in failed.error and SECRET not in failed.error
        assert failed.counts.fetched < 3000

        start()
        gw.faults = FaultPlan()
        good = syncer.run()
        assert good.ok, good.error
        rows = target_rows(url)
        upstream = upstream_active(gw.store)
        assert rows.keys() == upstream.keys()
        log = change_log(url)
        assert Counter((e["row_key"], e["op"]) for e in log) == Counter((k, "insert") for k in upstream), (
            "the change log is not exactly one insert per upstream row"
        )
        for table in ("syncd_changes", "syncd_runs", "syncd_quarantine", "resident_info"):
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                dump = json.dumps(
                    [list(map(str, r)) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]  # noqa: S608
                )
            engine.dispose()
            assert DB_PASSWORD not in dump and SECRET not in dump, f"a secret is stored in {table}"
        return {"error": failed.error, "fetched_before_outage": failed.counts.fetched, "rows": len(rows)}
    finally:
        syncer.close()
        gw.stop()


def _report(db: str, figures: dict[str, Any]) -> None:
    report({"test": "database_outage", "db": db, **figures, "held": True})


@pytest.mark.slow
def test_postgres_stopped_mid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_pg: PrivatePostgres
) -> None:
    url = _pg_url(private_pg, "outage")
    figures = _outage_then_converge(
        tmp_path, monkeypatch, url, f"127.0.0.1:{private_pg.port}/outage", private_pg.stop, private_pg.start
    )
    _report("postgresql", figures)


@pytest.mark.slow
def test_mariadb_stopped_mid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_mariadb: PrivateMariaDB
) -> None:
    url = _mariadb_url(private_mariadb, "outage")
    figures = _outage_then_converge(
        tmp_path,
        monkeypatch,
        url,
        f"127.0.0.1:{private_mariadb.port}/outage",
        private_mariadb.stop,
        private_mariadb.start,
    )
    _report("mariadb", figures)
