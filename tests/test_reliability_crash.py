"""Crash safety (DESIGN §4.1): ``kill -9`` of ``syncd sync`` at random moments, with upstream churn.

Every trial changes the upstream (updates, logical deletes, inserts), starts ``syncd sync``, kills it
with SIGKILL at a random moment (sometimes twice in a row), then restarts it and lets it finish.
After every trial:

* the target table holds exactly the upstream's active records, with their current values;
* the change log holds exactly one entry per REAL change — computed from the upstream history
  (snapshot before the churn vs after it), never from what syncd did — none missing, none repeated.

Half the trials use a full-window configuration (the whole dataset is re-read and hash-compared,
so a kill lands in the middle of tens of thousands of rows) and half the normal 10-minute lookback
(a kill lands in the middle of an incremental run). Every other full-window trial reads through the
read worker (``read_worker: always``), so kills also land while a child process reads and maps,
and the recovery runs through it too. All configurations share one target.

A second test does the same with full snapshots and ``target.snapshot_delete`` (deletes inferred
from absence): 1 % of the live records vanish from upstream before each trial, and some kills land
after the last page, in the last batches and the delete phase.

Default suite: 5 trials x 10,000 rows on SQLite and PostgreSQL. The full proof
(``make reliability``, or ``SYNCD_RELIABILITY=1``): 20 trials x 50,000 rows on all three databases;
``SYNCD_REL_TRIALS`` / ``SYNCD_REL_ROWS`` override. With ``SYNCD_REL_REPORT=<file>`` every test
appends its figures as one JSON line.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from syncd.gateway import Gateway
from tests.e2e import SECRET, SECRET_ENV, read_whole_with_snapshot_deletes, write_config
from tests.reliability_kit import FULL, active, assert_converged, databases, real_changes, report

ROOT = Path(__file__).resolve().parent.parent
TRIALS = int(os.environ.get("SYNCD_REL_TRIALS", "20" if FULL else "5"))
ROWS = int(os.environ.get("SYNCD_REL_ROWS", "50000" if FULL else "10000"))
DBS = databases(2)
# the dataset file sets its own 10-minute lookback; a 10-year one re-reads the whole dataset
FULL_WINDOW = ("lookback: 10m ", "lookback: 3650d ")
ENV = {**os.environ, SECRET_ENV: SECRET}
PAGE = 500
SNAPSHOT_TRIALS = max(TRIALS // 2, 3)


def start_sync(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_at_random(cfg: Path, gw: Gateway, rng: random.Random, pages: int, *, tail: float = 0.0) -> str:
    """Start a sync and SIGKILL it at a random moment; returns where it was killed. With
    probability ``tail`` the kill lands 0-0.4 s after the last page was requested: the last
    batches, the snapshot delete phase, the watermark."""
    base = len(gw.request_log)
    proc = start_sync(cfg)
    draw = rng.random()
    if draw < 0.2:  # a random instant: start-up, between pages, commit, watermark, finish
        time.sleep(rng.uniform(0.0, 1.5))
        where = "time"
    else:
        last = draw < 0.2 + tail
        target = max(pages, 1) if last else rng.randint(1, max(pages, 1))
        deadline = time.monotonic() + 120
        while len(gw.request_log) - base < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the sync stalled"
            time.sleep(0.001)
        if last:
            time.sleep(rng.uniform(0.0, 0.4))
        where = "after the last page" if last else f"page {target}"
    done = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "finished before the kill" if done else where


def finish_sync(cfg: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "residents"],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


def kill_and_recover(
    cfg: Path, gw: Gateway, rng: random.Random, pages: int, kills: Counter[str], *, tail: float = 0.0
) -> None:
    """Kill a sync at a random moment (in 30 % of the trials again while it recovers), then let it
    finish; ``kills`` counts where the kills landed."""
    kills[kill_at_random(cfg, gw, rng, pages, tail=tail)] += 1
    if rng.random() < 0.3:  # killed again while recovering
        kills["second kill: " + kill_at_random(cfg, gw, rng, pages, tail=tail)] += 1
    finish_sync(cfg)


def with_read_worker(root: Path, copy: Path) -> Path:
    """A copy of the configuration under ``root`` that reads through the read worker."""
    (copy / "datasets").mkdir(parents=True)
    (copy / "datasets" / "residents.yaml").write_bytes((root / "datasets" / "residents.yaml").read_bytes())
    text = (root / "syncd.yaml").read_text(encoding="utf-8")
    (copy / "syncd.yaml").write_text(text.replace("defaults:\n", "defaults:\n  read_worker: always\n", 1))
    return copy / "syncd.yaml"


def report_crash(
    test: str,
    db_url: str,
    *,
    trials: int,
    kills: Counter[str],
    churned: Counter[str],
    expected: Counter[tuple[str, str]],
    final_rows: int,
    started: float,
) -> None:
    """Append the figures of one crash test to $SYNCD_REL_REPORT (docs/reliability.md)."""
    ops = Counter(op for _, op in expected.elements())
    report(
        {
            "test": test,
            "db": db_url.split(":", maxsplit=1)[0].split("+", maxsplit=1)[0],
            "trials": trials,
            "rows": ROWS,
            "kills": sum(kills.values()),
            "kill_points": dict(kills),
            "upstream_churn": dict(churned),
            "change_entries": sum(expected.values()),
            "ops": dict(ops),
            "final_rows": final_rows,
            "seconds": round(time.monotonic() - started, 1),
            "held": True,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("db_url", DBS, indirect=True)
def test_kill_9_with_upstream_churn_converges_exactly(tmp_path: Path, db_url: str) -> None:
    rng = random.Random(20260501)
    gw = Gateway(records=ROWS, seed=5, app_key="demo-app", app_secret=SECRET)
    gw.start()
    started = time.monotonic()
    kills: Counter[str] = Counter()
    try:
        full = write_config(
            tmp_path / "full",
            db_url=db_url,
            gateway_url=gw.url,
            page_size=PAGE,
            batch_size=PAGE,
            lookback="3650d",
            replace=[FULL_WINDOW],
        )
        through_worker = with_read_worker(tmp_path / "full", tmp_path / "worker")
        incr = write_config(
            tmp_path / "incr",
            db_url=db_url,
            gateway_url=gw.url,
            page_size=PAGE,
            batch_size=PAGE,
            lookback="10m",
        )
        before: dict[str, dict[str, Any]] = {}
        expected: Counter[tuple[str, str]] = Counter()
        churned = Counter[str]()
        for trial in range(TRIALS):
            if trial:
                churned.update(gw.store.churn(max(ROWS // 20, 10), rng))
            after = active(gw.store.records())
            expected += real_changes(before, after)
            cfg = (full if trial % 4 == 0 else through_worker) if trial % 2 == 0 else incr
            pages = (len(gw.store) if cfg is not incr or trial == 0 else ROWS // 10) // PAGE + 1
            kill_and_recover(cfg, gw, rng, pages, kills)
            assert_converged(trial, db_url, after, expected)
            before = after
        report_crash(
            "crash",
            db_url,
            trials=TRIALS,
            kills=kills,
            churned=churned,
            expected=expected,
            final_rows=len(before),
            started=started,
        )
    finally:
        gw.stop()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", DBS, indirect=True)
def test_kill_9_during_snapshot_deletes_converges_exactly(tmp_path: Path, db_url: str) -> None:
    """Full snapshots with ``target.snapshot_delete``, where a delete is inferred from absence:
    before each trial, besides the churn, 1 % of the live records vanish from upstream. Every other
    trial reads through the read worker; 30 % of the kills land after the last page was requested
    (the last batches, the seen-key table's checks, the deletes, the watermark)."""
    rng = random.Random(20261207)
    gw = Gateway(records=ROWS, seed=6, app_key="demo-app", app_secret=SECRET)
    gw.start()
    started = time.monotonic()
    kills: Counter[str] = Counter()
    try:
        root = tmp_path / "snapshot"
        snapshot = write_config(root, db_url=db_url, gateway_url=gw.url, page_size=PAGE, batch_size=PAGE)
        read_whole_with_snapshot_deletes(root)
        through_worker = with_read_worker(root, tmp_path / "worker")
        before: dict[str, dict[str, Any]] = {}
        expected: Counter[tuple[str, str]] = Counter()
        churned = Counter[str]()
        for trial in range(SNAPSHOT_TRIALS):
            if trial:
                churned.update(gw.store.churn(max(ROWS // 20, 10), rng))
                live = sorted(active(gw.store.records()))
                gone = rng.sample(live, max(len(live) // 100, 1))
                gw.store.hard_delete(gone)
                churned["removed"] += len(gone)
            after = active(gw.store.records())
            expected += real_changes(before, after)
            cfg = snapshot if trial % 2 == 0 else through_worker
            pages = len(gw.store) // PAGE + 1
            kill_and_recover(cfg, gw, rng, pages, kills, tail=0.3)
            assert_converged(trial, db_url, after, expected)
            before = after
        report_crash(
            "crash-snapshot-delete",
            db_url,
            trials=SNAPSHOT_TRIALS,
            kills=kills,
            churned=churned,
            expected=expected,
            final_rows=len(before),
            started=started,
        )
    finally:
        gw.stop()
