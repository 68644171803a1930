"""The `syncd` command as operators run it: a real process, real exit codes, real output."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.gateway import Gateway
from tests.e2e import (
    ROOT,
    SECRET,
    SECRET_ENV,
    change_log,
    demo_gateway,
    target_rows,
    upstream_active,
    write_config,
)
from tests.e2e import syncd_cli as syncd


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=300, seed=11) as gw:
        yield gw


ENV = {SECRET_ENV: SECRET}


def test_check_ok_and_exit_codes(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
    ok = syncd("-c", str(cfg), "check", env=ENV)
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    assert "residents" in ok.stdout


def test_check_reports_positioned_errors_with_exit_2(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    cfg = write_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=gateway.url,
        replace=[("    type: date\n", "    type: dat\n")],
    )
    bad = syncd("-c", str(cfg), "check", env=ENV)
    assert bad.returncode == 2
    assert f"{tmp_path / 'datasets' / 'residents.yaml'}:" in bad.stderr
    assert "columns.birth_date.type" in bad.stderr


def test_example_config_is_valid(tmp_path: Path) -> None:
    """The commented example operators copy to /etc/syncd must always load."""
    env = {"SYNCD_TARGET_URL": f"sqlite:///{tmp_path / 'example.db'}"}
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "gateway_app_secret").write_text("example-secret\n")
    (creds / "gateway_app_secret").chmod(0o600)
    result = syncd(
        "-c", str(ROOT / "config" / "syncd.yaml"), "check", env={**env, "CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert result.returncode == 0, result.stderr


def test_example_dataset_matches_demo_dataset() -> None:
    """config/datasets/residents.yaml is the demo's dataset; they must not drift apart."""
    demo = (
        (ROOT / "syncd" / "demo" / "datasets" / "residents.yaml").read_text(encoding="utf-8").splitlines()[1:]
    )
    example = (ROOT / "config" / "datasets" / "residents.yaml").read_text(encoding="utf-8").splitlines()[1:]
    assert demo == example


def test_sync_success_failure_and_usage(tmp_path: Path, gateway: Gateway, sqlite_url: str) -> None:
    cfg = write_config(tmp_path, db_url=sqlite_url, gateway_url=gateway.url)
    ok = syncd("-c", str(cfg), "sync", "residents", env=ENV)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("residents: success")
    assert f"inserted={len(upstream_active(gateway.store))}" in ok.stdout
    assert SECRET not in ok.stdout + ok.stderr

    unknown = syncd("-c", str(cfg), "sync", "nope", env=ENV)
    assert unknown.returncode == 2
    assert "unknown dataset" in unknown.stderr

    neither = syncd("-c", str(cfg), "sync", env=ENV)
    assert neither.returncode == 2

    down = write_config(
        tmp_path / "down",
        db_url=sqlite_url,
        gateway_url="http://127.0.0.1:9",
        retry="{attempts: 2, backoff_initial: 10ms, backoff_max: 20ms, deadline: 2s}",
    )
    failed = syncd("-c", str(down), "sync", "--all", env=ENV)
    assert failed.returncode == 1
    assert "residents: failed" in failed.stdout
    assert SECRET not in failed.stdout + failed.stderr


def test_demo_runs(tmp_path: Path) -> None:
    result = syncd("demo", "--workdir", str(tmp_path / "demo"), "--records", "200")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "first sync" in out
    assert "inserted=3 updated=7 deleted=2" in out
    assert "inserted=0 updated=0 deleted=0" in out
    assert (tmp_path / "demo" / "demo.db").exists()


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_converges(tmp_path: Path, db_url: str) -> None:
    """kill -9 at random moments of a sync; re-running converges with an exact change log."""
    rng = random.Random(2026)
    gw = Gateway(records=6000, seed=3, app_key="demo-app", app_secret=SECRET)
    gw.start()
    try:
        cfg = write_config(tmp_path, db_url=db_url, gateway_url=gw.url, page_size=200, batch_size=200)
        pages = 6000 // 200
        for _trial in range(3):
            start_requests = len(gw.request_log)
            kill_after = rng.randint(1, pages - 2)
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
                env={**os.environ, **ENV},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while len(gw.request_log) - start_requests < kill_after and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        final = syncd("-c", str(cfg), "sync", "residents", env=ENV)
        assert final.returncode == 0, final.stdout + final.stderr
        rows = target_rows(db_url)
        assert set(rows) == set(upstream_active(gw.store))
        log = change_log(db_url)
        assert Counter(e["op"] for e in log) == {"insert": len(rows)}
        assert len({e["row_key"] for e in log}) == len(log), "a change entry was repeated"
    finally:
        gw.stop()
