"""Two real `syncd run` processes on one PostgreSQL target never run one dataset at the same time."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.daemon.locks import DatasetLocker, lock_key, mysql_lock_name
from syncd.gateway import FaultPlan, Gateway
from tests.conftest import _fresh_mariadb
from tests.daemon_proc import DaemonProcess, daemon_config
from tests.e2e import SECRET

pytestmark = pytest.mark.postgres


def test_lock_key_is_stable() -> None:
    assert lock_key("residents") == lock_key("residents") != lock_key("residents2")
    assert -(2**63) <= lock_key("residents") < 2**63


def test_advisory_lock_is_exclusive_and_released(pg_url: str) -> None:
    a, b = DatasetLocker(pg_url), DatasetLocker(pg_url)
    try:
        with a.hold("residents") as first:
            assert first
            with b.hold("residents") as second, b.hold("other") as third:
                assert not second and third
        with b.hold("residents") as again:
            assert again  # released with the transaction
    finally:
        a.close()
        b.close()


def test_the_lock_outlives_the_servers_idle_in_transaction_timeout(pg_url: str) -> None:
    """A server or role default of idle_in_transaction_session_timeout (here 0.5 s, through the
    connection's options) ended the lock's idle session mid-run: a second node then took the lock
    while the first still ran, and leaving the first hold raised on the dead connection."""
    strict = sa.make_url(pg_url).update_query_dict({"options": "-c idle_in_transaction_session_timeout=500"})
    a, b = DatasetLocker(strict), DatasetLocker(pg_url)
    try:
        with a.hold("residents") as first:
            assert first
            time.sleep(1.5)  # the run works on other connections meanwhile
            with b.hold("residents") as second:
                assert not second
    finally:
        a.close()
        b.close()


def test_a_mariadb_lock_outlives_the_servers_wait_timeout(mariadb_url: str) -> None:
    """The lock's connection idles for the whole run: a short server wait_timeout (here 1 s, set
    when the connection opens) closed it and released the lock mid-run."""
    strict = sa.make_url(mariadb_url).update_query_dict({"init_command": "SET SESSION wait_timeout=1"})
    a, b = DatasetLocker(strict), DatasetLocker(mariadb_url)
    try:
        with a.hold("residents") as first:
            assert first
            time.sleep(2.5)
            with b.hold("residents") as second:
                assert not second
    finally:
        a.close()
        b.close()


def test_a_terminated_lock_session_does_not_fail_the_finished_run(pg_url: str) -> None:
    """A DBA ending the lock's session (pg_terminate_backend) takes the lock with it; leaving the
    hold then logs lock.release_failed instead of raising, which turned a run already recorded as
    a success into a failed one in the daemon's counts."""
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    a = DatasetLocker(pg_url)
    name = "terminated_lock_session"  # a lock no other test takes: its holder is found by its key
    key = lock_key(name) & 0xFFFFFFFFFFFFFFFF
    holder = sa.text(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
        " AND classid = :hi AND objid = :lo AND objsubid = 1"
    )
    try:
        with capture_logs() as logs, a.hold(name) as first:
            assert first
            with admin.connect() as conn:
                ended = conn.execute(holder, {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalars().all()
            assert ended == [True]
            time.sleep(0.2)
        assert [e["dataset"] for e in logs if e["event"] == "lock.release_failed"] == [name]
    finally:
        a.close()
        admin.dispose()


# two valid dataset names (at most 63 characters) sharing their first 58 characters
LONG_A = "population_household_registration_records_of_township_ab_a1"
LONG_B = "population_household_registration_records_of_township_ab_a2"


def test_mysql_lock_names_fit_carry_the_database_and_keep_short_names() -> None:
    assert mysql_lock_name("residents") == "syncd:residents"  # what every earlier version used
    assert mysql_lock_name("residents", "syncd") == "syncd:syncd:residents"
    assert mysql_lock_name("x" * 58) == "syncd:" + "x" * 58  # the longest name that fits as it is
    assert mysql_lock_name("x" * 50, "db_prod") == "syncd:db_prod:" + "x" * 50
    long_names = [mysql_lock_name(n) for n in (LONG_A, LONG_B, "x" * 59, "x" * 63)]
    long_names += [mysql_lock_name(n, "county_a") for n in (LONG_A, LONG_B, "x" * 51)]
    long_names += [mysql_lock_name(LONG_A, "county_b")]
    assert all(len(n) == 64 and n.startswith("syncd:") and "#" in n for n in long_names)
    assert len(set(long_names)) == len(long_names)
    assert mysql_lock_name(LONG_A) == mysql_lock_name(LONG_A)  # stable: the same on every node


@pytest.mark.mariadb
def test_mariadb_locks_of_two_databases_on_one_server_are_apart(mariadb_url: str) -> None:
    """GET_LOCK names are server-wide: a deployment on another database of the same server (a test
    copy, another unit) running a dataset of the same name skipped this one's runs as locked."""
    other = _fresh_mariadb()
    other_url = next(other)
    a, b, c = DatasetLocker(mariadb_url), DatasetLocker(other_url), DatasetLocker(mariadb_url)
    try:
        with a.hold("residents") as first, b.hold("residents") as second:
            assert first and second
        with a.hold("residents") as first, c.hold("residents") as again:
            assert first and not again  # within one database still exclusive
    finally:
        for locker in (a, b, c):
            locker.close()
        next(other, None)


@pytest.mark.mariadb
def test_mariadb_datasets_sharing_a_long_prefix_have_their_own_locks(mariadb_url: str) -> None:
    """GET_LOCK names were cut to 64 characters: two datasets with the same first 58 characters
    shared one lock, and one of them was skipped as "locked" whenever the other ran."""
    a, b = DatasetLocker(mariadb_url), DatasetLocker(mariadb_url)
    try:
        with a.hold(LONG_A) as first, b.hold(LONG_B) as second:
            assert first and second
        with a.hold(LONG_A) as first, b.hold(LONG_A) as again:
            assert first and not again  # still exclusive
        with a.hold("residents") as first:  # the lock name carries the database's
            assert first
            engine = sa.create_engine(mariadb_url)
            name = mysql_lock_name("residents", sa.make_url(mariadb_url).database)
            try:
                with engine.connect() as conn:
                    assert conn.execute(sa.text("SELECT IS_FREE_LOCK(:n)"), {"n": name}).scalar() == 0
            finally:
                engine.dispose()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "fixture",
    ["pg_url", pytest.param("mariadb_url", marks=pytest.mark.mariadb)],
)
def test_a_url_without_a_driver_gets_syncds_driver(request: pytest.FixtureRequest, fixture: str) -> None:
    """The target engine reads ``postgresql://`` as psycopg 3 and ``mysql://`` as PyMySQL; the
    daemon's lock engine did not (SQLAlchemy's defaults, psycopg2 and mysqlclient, are not
    installed) and the daemon could not start with such a URL."""
    url = sa.make_url(request.getfixturevalue(fixture))
    bare = url.set(drivername=url.get_backend_name())
    assert "+" not in bare.drivername
    locker = DatasetLocker(bare.render_as_string(hide_password=False))
    try:
        with locker.hold("residents") as acquired:
            assert acquired
    finally:
        locker.close()


@pytest.mark.slow
def test_two_daemons_never_overlap_on_a_dataset(tmp_path: Path, pg_url: str) -> None:
    faults = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.3)
    with Gateway(records=400, seed=4, app_secret=SECRET, faults=faults) as gw:
        config = daemon_config(tmp_path, db_url=pg_url, gateway_url=gw.url, every="1s")
        first = DaemonProcess(config)
        second = DaemonProcess(config)
        try:
            first.wait_event("daemon.started")
            second.wait_event("daemon.started")
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                skipped = [
                    e for p in (first, second) for e in p.events() if e["event"] == "sync.skipped_locked"
                ]
                finished = [e for p in (first, second) for e in p.events() if e["event"] == "sync.finish"]
                if len(skipped) >= 2 and len(finished) >= 3:
                    break
                time.sleep(0.2)
        finally:
            codes = [first.stop(), second.stop()]
    assert codes == [0, 0]
    assert len(skipped) >= 2
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT node, status, started_at, finished_at FROM syncd_runs ORDER BY started_at")
        ).all()
    engine.dispose()
    assert len({r.node for r in runs}) >= 1 and len(runs) >= 3
    assert all(r.status in ("success", "interrupted") for r in runs), runs  # no "abandoned" overlap
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at <= later.started_at, (earlier, later)
