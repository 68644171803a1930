"""Every writer of a dataset holds its run lock: the daemon, ``syncd sync`` and ``syncd quarantine
replay`` (syncd.daemon.locks). Two runs of one dataset at once write the same keys from two
snapshots of the data (in earlier versions two full-snapshot runs also overwrote each other's ``seen_run``
marks and the one that ended first deleted live rows: 1,302 of 2,002, two ``syncd sync`` 0.2 s apart
on SQLite); a second run is refused instead.

The CLI runs as a real process while this test process holds the lock, on all three databases
(SQLite: an ``flock`` beside the database file; PostgreSQL: a transaction-scoped advisory lock;
MariaDB: ``GET_LOCK``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncd.daemon.locks import DatasetLocker, sqlite_lock_dir
from syncd.errors import TargetError
from syncd.gateway import Gateway
from syncd.targets import StateStore, create_target_engine
from tests.e2e import ROOT, change_log, demo_gateway, syncd_cli, upstream_active, write_config


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=200, seed=17) as gw:
        yield gw


def test_a_manual_sync_waits_for_no_one_and_writes_nothing_while_the_dataset_runs(
    tmp_path: Path, gateway: Gateway, db_url: str
) -> None:
    cfg = str(write_config(tmp_path, db_url=db_url, gateway_url=gateway.url))
    locker = DatasetLocker(db_url)  # what a daemon running the dataset holds
    try:
        with locker.hold("residents") as held:
            assert held
            refused = syncd_cli("-c", cfg, "sync", "residents")
            replay = syncd_cli("-c", cfg, "quarantine", "replay", "residents")
        assert refused.returncode == 1, refused.stderr
        assert refused.stdout.startswith("residents: skipped  another syncd process is running this dataset")
        assert "syncd runs residents" in refused.stdout
        assert replay.returncode == 1, replay.stderr
        assert "residents: skipped" in replay.stdout and "syncd quarantine replay" in replay.stdout

        done = syncd_cli("-c", cfg, "sync", "residents")  # the lock is free again
    finally:
        locker.close()
    assert done.returncode == 0, done.stdout + done.stderr
    # the refused run read and wrote nothing: this one inserted everything, once
    active = len(upstream_active(gateway.store))
    assert f"inserted={active}" in done.stdout
    assert [e["op"] for e in change_log(db_url)].count("insert") == active
    engine = create_target_engine(db_url)
    try:
        runs = StateStore(engine).last_runs("residents")
    finally:
        engine.dispose()
    assert [r["status"] for r in runs] == ["success"]


def test_sqlite_lock_files_exclude_each_other_and_go_with_the_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    a, b = DatasetLocker(url), DatasetLocker(url)
    assert a.enabled
    with a.hold("residents") as first:
        assert first
        with b.hold("residents") as second, b.hold("households") as other:
            assert not second and other
    with b.hold("residents") as again:
        assert again
    assert sorted(p.name for p in (tmp_path / "target.db.syncd-locks").iterdir()) == [
        "households.lock",
        "residents.lock",
    ]

    # a holder that dies (kill -9 included) leaves no lock behind: the kernel drops it
    holder_code = (
        "import sys\nfrom syncd.daemon.locks import DatasetLocker\n"
        f"with DatasetLocker({url!r}).hold('residents') as held:\n"
        "    print(held, flush=True)\n    sys.stdin.read()\n"
    )
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with subprocess.Popen([sys.executable, "-c", holder_code], **pipes, text=True, cwd=ROOT) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
            with a.hold("residents") as while_held:
                assert not while_held
        finally:
            holder.kill()
            holder.wait(timeout=10)
    with a.hold("residents") as after:
        assert after


def test_sqlite_lock_places(tmp_path: Path) -> None:
    assert sqlite_lock_dir(sa.make_url("sqlite://")) is None
    assert sqlite_lock_dir(sa.make_url("sqlite:///:memory:")) is None
    assert sqlite_lock_dir(sa.make_url("sqlite:///file:x?mode=memory&cache=shared&uri=true")) is None
    assert not DatasetLocker("sqlite://").enabled
    uri = sa.make_url(f"sqlite:///file:{tmp_path}/t.db?mode=rwc&uri=true")
    assert sqlite_lock_dir(uri) == tmp_path / "t.db.syncd-locks"
    relative = sqlite_lock_dir(sa.make_url("sqlite:///data/t.db"))
    assert relative == Path.cwd() / "data" / "t.db.syncd-locks"


def test_one_database_reached_by_two_paths_has_one_set_of_locks(tmp_path: Path) -> None:
    # a daemon configured with /var/lib/syncd/target.db and a manual run with the linked-to path
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    direct = DatasetLocker(f"sqlite:///{tmp_path / 'data' / 'target.db'}")
    linked = DatasetLocker(f"sqlite:///{tmp_path / 'link' / 'target.db'}")
    with direct.hold("residents") as held:
        assert held
        with linked.hold("residents") as also:
            assert not also


def test_a_lock_that_cannot_be_taken_says_where_and_why(tmp_path: Path) -> None:
    (tmp_path / "target.db.syncd-locks").write_text("not a directory", encoding="utf-8")
    locker = DatasetLocker(f"sqlite:///{tmp_path / 'target.db'}")
    where = r"run lock of dataset residents: .*target\.db\.syncd-locks"
    with pytest.raises(TargetError, match=where), locker.hold("residents"):
        pass
