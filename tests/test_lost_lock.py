"""A run lock lost in the middle of a run stops the run (syncd.daemon.locks.HeldLock).

The lock's database session can end while its run goes on: a DBA's ``pg_terminate_backend`` or
``KILL``, a failover, a network drop. The lock goes with it, and another node or a ``syncd sync`` by
hand can take it and run the dataset at the same time. The run used to go on to the end, advance
the watermark and run the snapshot deletes, noticing the loss (if at all) only when it released
the lock. Here a real run on PostgreSQL and MariaDB has its lock's session ended from another
connection, as a DBA would, and must stop: failed, with the lock-lost error, the watermark unmoved,
no snapshot deletes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.daemon.locks import DatasetLocker, HeldLock, lock_key, mysql_lock_name
from syncd.daemon.notify import SystemdNotifier
from syncd.daemon.service import Daemon
from syncd.errors import RunLockLost
from syncd.gateway import FaultPlan, Gateway
from syncd.ops.quarantine import list_entries, replay_quarantine
from syncd.runner import Progress, RunResult, run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.daemon_proc import daemon_config
from tests.e2e import (
    ROOT,
    SECRET,
    SECRET_ENV,
    change_log,
    read_whole_with_snapshot_deletes,
    target_rows,
    upstream_active,
    write_config,
)

NAME = "residents_lostlock"  # MariaDB's GET_LOCK names are server-wide: one no other test takes

DATABASES = [
    pytest.param("pg_url", marks=pytest.mark.postgres, id="postgresql"),
    pytest.param("mariadb_url", marks=pytest.mark.mariadb, id="mariadb"),
]


@pytest.fixture(params=DATABASES)
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The simulated gateway; each page answers after 0.25 s while ``faults.rate`` is 1 (slow)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    faults = FaultPlan(rate=0.0, kinds=("slow",), slow_seconds=0.25)
    with Gateway(records=1000, seed=23, app_key="demo-app", app_secret=SECRET, faults=faults) as gw:
        yield gw


def end_lock_session(url: str, dataset: str) -> None:
    """From another connection, end the session that holds ``dataset``'s run lock, as a DBA would,
    and wait until that session let the lock go: both servers end the session asynchronously
    (``pg_terminate_backend`` signals the backend, MariaDB's ``KILL`` flags the thread), and a
    test taking the lock right after the kill failed now and then when the server was busy."""
    if sa.make_url(url).get_backend_name() == "postgresql":
        key = lock_key(dataset) & 0xFFFFFFFFFFFFFFFF
        holders = (
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = :hi AND objid = :lo AND objsubid = 1"
        )
        params = {"hi": key >> 32, "lo": key & 0xFFFFFFFF}
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                (pid,) = conn.execute(sa.text(holders), params).scalars().all()
                ended = conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
                assert ended is True
                _wait_until(lambda: pid not in conn.execute(sa.text(holders), params).scalars().all())
        finally:
            admin.dispose()
        return
    admin = sa.create_engine(url)
    try:
        with admin.connect() as conn:
            query = sa.text("SELECT IS_USED_LOCK(:n)")
            name = mysql_lock_name(dataset, sa.make_url(url).database)
            holder = conn.execute(query, {"n": name}).scalar()
            assert holder is not None, "nobody holds the lock"
            conn.execute(sa.text(f"KILL {int(holder)}"))
            _wait_until(lambda: conn.execute(query, {"n": name}).scalar() != holder)
    finally:
        admin.dispose()


def _wait_until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the killed session still holds the lock"
        time.sleep(0.02)


def lock_holder(url: str, dataset: str) -> bool:
    """Whether some session holds ``dataset``'s run lock now."""
    if sa.make_url(url).get_backend_name() == "postgresql":
        key = lock_key(dataset) & 0xFFFFFFFFFFFFFFFF
        query = sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = :hi AND objid = :lo AND objsubid = 1"
        )
        params = {"hi": key >> 32, "lo": key & 0xFFFFFFFF}
    else:
        name = mysql_lock_name(dataset, sa.make_url(url).database)
        query, params = sa.text("SELECT IS_USED_LOCK(:n) IS NOT NULL"), {"n": name}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(query, params).scalar())
    finally:
        engine.dispose()


class Runs:
    """Runs of the dataset under its real run lock, as the daemon and ``syncd sync`` run them."""

    def __init__(self, config: Path) -> None:
        self.app = load_config(config)
        self.url = self.app.target.url.get_secret_value()
        self.engine = create_target_engine(self.url)
        self.store = StateStore(self.engine, self.app.target.table_prefix)
        self.locker = DatasetLocker(self.url)

    def run(self, on_progress: Callable[[Progress], None] | None = None) -> RunResult:
        with self.locker.take(NAME) as held:
            assert held is not None
            ds = self.app.datasets[NAME]
            return run_dataset(self.app, ds, self.store, on_progress=on_progress, lock=held)

    def watermark(self) -> str | None:
        return self.store.get_watermark(NAME)

    def statuses(self) -> list[tuple[str, str | None]]:
        return [(r["status"], r["error"]) for r in reversed(self.store.last_runs(NAME))]

    def close(self) -> None:
        self.locker.close()
        self.engine.dispose()


def config(
    root: Path, url: str, gateway: Gateway, *, replace_extra: tuple[str, str] | None = None, **kw: Any
) -> Path:
    """The demo dataset, named :data:`NAME`, against ``gateway`` and the target ``url``."""
    replace = [("name: residents", f"name: {NAME}")] + ([replace_extra] if replace_extra else [])
    return write_config(root, db_url=url, gateway_url=gateway.url, replace=replace, **kw)


def test_a_run_whose_lock_session_ends_stops_without_moving_the_watermark(
    tmp_path: Path, url: str, gateway: Gateway
) -> None:
    """The lock's session is ended after the second of 20 slow pages: the run stops within the
    check interval (2 s; the whole read takes 5 s), fails with the lock-lost error and keeps the
    watermark; the next run writes the rest, each key inserted once."""
    runs = Runs(config(tmp_path, url, gateway, page_size=50, batch_size=50))
    gateway.faults.rate = 1.0  # every page takes 0.25 s

    def end_it(progress: Progress) -> None:
        if progress.pages == 2:
            end_lock_session(url, NAME)

    try:
        with capture_logs() as logs:
            lost = runs.run(end_it)
        assert lost.status == "failed", lost.summary()
        assert lost.error is not None
        assert f"the run lock of dataset {NAME} was lost during the run" in lost.error
        assert "session ended" in lost.error and "watermark was not advanced" in lost.error
        events = [e for e in logs if e["event"] == "sync.lock_lost"]
        assert len(events) == 1 and events[0]["log_level"] == "error"
        assert "session ended" in events[0]["reason"]
        assert "sync.failed" not in [e["event"] for e in logs]
        assert [e for e in logs if e["log_level"] == "warning"] == []  # no lock.release_failed
        # stopped early: not every page was read, and what it wrote is what it counted
        assert 100 <= lost.counts.fetched < 1000, lost.summary()
        assert len(target_rows(url)) == lost.counts.inserted < 1000
        assert lost.watermark_after is None and runs.watermark() is None
        assert runs.statuses() == [("failed", lost.error)]

        gateway.faults.rate = 0.0
        again = runs.run()
        assert again.ok, again.summary()
        assert again.counts.inserted == 1000 - lost.counts.inserted
        assert again.watermark_after is not None and runs.watermark() == again.watermark_after
        assert set(target_rows(url)) == set(upstream_active(gateway.store))
        inserts = Counter(e["row_key"] for e in change_log(url, NAME) if e["op"] == "insert")
        assert len(inserts) == len(upstream_active(gateway.store)) and set(inserts.values()) == {1}
    finally:
        runs.close()


def test_a_snapshot_run_that_lost_its_lock_deletes_nothing(
    tmp_path: Path, url: str, gateway: Gateway
) -> None:
    """The lock goes after the last page, before the deletes of the keys this complete read did
    not see: beside another run of the dataset, those deletes take live rows for gone. They do
    not run, nor does the watermark move; the next run with its lock deletes them."""
    cfg = config(tmp_path, url, gateway, page_size=200, batch_size=200)
    read_whole_with_snapshot_deletes(tmp_path)
    runs = Runs(cfg)
    try:
        first = runs.run()
        assert first.ok, first.summary()
        gone = sorted(upstream_active(gateway.store))[:5]
        gateway.store.hard_delete(gone)

        def end_it_after_the_last_page(progress: Progress) -> None:
            if progress.reported_total is not None and progress.records >= progress.reported_total:
                end_lock_session(url, NAME)

        with capture_logs() as logs:
            lost = runs.run(end_it_after_the_last_page)
        assert lost.status == "failed", lost.summary()
        assert lost.error is not None and "was lost during the run" in lost.error
        assert lost.counts.deleted == 0
        events = [e["event"] for e in logs]
        assert "sync.lock_lost" in events and "snapshot.deletes" not in events
        assert set(gone) <= set(target_rows(url))  # nothing deleted
        assert [e for e in change_log(url, NAME) if e["op"] == "delete"] == []

        deleting = runs.run()
        assert deleting.ok and deleting.counts.deleted == 5, deleting.summary()
        assert set(target_rows(url)) == set(upstream_active(gateway.store))
    finally:
        runs.close()


@pytest.mark.postgres
def test_the_daemon_fails_a_run_whose_lock_session_ended(
    tmp_path: Path, pg_url: str, gateway: Gateway
) -> None:
    """The daemon hands its lock to the run: a run job whose lock session a DBA ends fails, and
    counts as failed in the metrics and the health book."""
    cfg = daemon_config(tmp_path, db_url=pg_url, gateway_url=gateway.url, every="1h", page_size=50)
    gateway.faults.rate = 1.0
    daemon = Daemon(cfg, load_config(cfg), notifier=SystemdNotifier(environ={}))
    daemon.store.ensure_schema()
    daemon._adopt(daemon.app)
    job = threading.Thread(target=daemon.run_job, args=("residents",))
    try:
        with capture_logs() as logs:
            job.start()
            deadline = time.monotonic() + 10
            while not (lock_holder(pg_url, "residents") and gateway.request_log):
                assert time.monotonic() < deadline, "the run did not start"
                time.sleep(0.05)
            end_lock_session(pg_url, "residents")
            job.join(60)
    finally:
        daemon.engine.dispose()
        daemon.locker.close()
    finish = [e for e in logs if e["event"] == "sync.finish"]
    assert [e["status"] for e in finish] == ["failed"]
    assert "run lock of dataset residents was lost" in finish[0]["error"]
    assert finish[0]["fetched"] < 1000
    assert 'syncd_runs_total{dataset="residents",outcome="failed"} 1.0' in daemon.metrics.render().decode()
    assert daemon.book.snapshot()["residents"].last_status == "failed"


@pytest.mark.mariadb
def test_syncd_sync_fails_when_its_lock_session_is_killed(
    tmp_path: Path, mariadb_url: str, gateway: Gateway
) -> None:
    """``syncd sync`` hands its lock to the run too: KILL of its lock connection fails the run."""
    cfg = config(tmp_path, mariadb_url, gateway, page_size=50, batch_size=50)
    gateway.faults.rate = 1.0
    env = {**os.environ, SECRET_ENV: SECRET}
    with subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", NAME],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        try:
            deadline = time.monotonic() + 20
            while not (lock_holder(mariadb_url, NAME) and len(gateway.request_log) >= 2):
                assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
                time.sleep(0.05)
            end_lock_session(mariadb_url, NAME)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert out.startswith(f"{NAME}: failed"), out
    assert f"the run lock of dataset {NAME} was lost during the run" in out
    assert '"sync.lock_lost"' in err


def test_a_lock_is_asked_at_most_every_interval_and_once_lost_stays_lost() -> None:
    """The check costs one query every few seconds whatever the batch rate, and every check
    before the steps that must not overlap another run (force)."""
    answers: list[str | None] = [None, None, "its session ended (test)"]
    asked: list[float] = []

    def probe() -> str | None:
        asked.append(time.monotonic())
        return answers.pop(0)

    held = HeldLock("residents", probe, interval=0.2)
    for _ in range(100):  # a hundred small batches within the interval: no query
        held.check()
    assert asked == []
    held.check(force=True)
    assert len(asked) == 1
    held.check()  # just asked
    assert len(asked) == 1
    time.sleep(0.25)
    held.check()
    assert len(asked) == 2
    time.sleep(0.25)
    with pytest.raises(RunLockLost, match="was lost during the run: its session ended") as lost:
        held.check()
    assert lost.value.reason == "its session ended (test)" and held.lost == lost.value.reason
    with pytest.raises(RunLockLost):  # lost for good, without asking again
        held.check()
    assert len(asked) == 3

    HeldLock("residents", None, interval=0).check(force=True)  # an flock: nothing to ask


def test_a_sqlite_run_lock_is_never_lost(tmp_path: Path) -> None:
    with DatasetLocker(f"sqlite:///{tmp_path / 'target.db'}").take(NAME) as held:
        assert held is not None
        held.check(force=True)


@pytest.mark.mariadb
def test_a_killed_mariadb_lock_session_does_not_fail_leaving_the_hold(mariadb_url: str) -> None:
    """KILL of the lock's session: leaving the hold logs lock.release_failed instead of raising;
    once the run saw the loss (sync.lock_lost), leaving it says nothing more."""
    locker = DatasetLocker(mariadb_url)
    try:
        with capture_logs() as logs, locker.take(NAME) as held:
            assert held is not None
            end_lock_session(mariadb_url, NAME)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["lock.release_failed"]

        with capture_logs() as logs, locker.take(NAME) as held:
            assert held is not None
            held.check(force=True)
            end_lock_session(mariadb_url, NAME)
            with pytest.raises(RunLockLost, match="MariaDB/MySQL session ended"):
                held.check(force=True)
        assert [e for e in logs if e["log_level"] == "warning"] == []
        with locker.hold(NAME) as again:  # free again
            assert again
    finally:
        locker.close()


@pytest.mark.postgres
def test_a_quarantine_replay_that_lost_its_lock_writes_nothing_more(
    tmp_path: Path, pg_url: str, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``syncd quarantine replay`` checks its lock before each page it writes (here at every check:
    the interval is 0); a lost lock fails the replay, recorded as failed, the records still held."""
    household = "    source: householdSize\n    type: int\n    transforms: [null_if]\n"
    strict = household + "    validators: [{range: {max: 3}}]\n"
    cfg = config(tmp_path, pg_url, gateway, replace_extra=(household, strict))
    runs = Runs(cfg)
    try:
        first = runs.run()
        assert first.ok and first.counts.quarantined >= 5, first.summary()
        dataset_file = tmp_path / "datasets" / "residents.yaml"
        dataset_file.write_text(dataset_file.read_text(encoding="utf-8").replace(strict, household), "utf-8")
        relaxed = load_config(cfg)
        monkeypatch.setattr("syncd.daemon.locks.LOCK_CHECK_INTERVAL_S", 0.0)
        with runs.locker.take(NAME) as held:
            assert held is not None
            end_lock_session(pg_url, NAME)
            with pytest.raises(RunLockLost, match=f"run lock of dataset {NAME} was lost"):
                replay_quarantine(relaxed, relaxed.datasets[NAME], runs.store, lock=held)
        assert len(list_entries(runs.store, NAME, limit=1000)) == first.counts.quarantined
        assert len(target_rows(pg_url)) == first.counts.inserted
        replay = runs.store.last_runs(NAME)[0]
        assert replay["trigger"] == "replay" and replay["status"] == "failed"
        assert "was lost during the run" in replay["error"]
    finally:
        runs.close()
