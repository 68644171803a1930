"""The benchmark harness keeps working: a tiny run (SQLite, every scenario) end to end.

A benchmark is not a test: nothing here asserts a time. It checks that every side ran, that
the syncd runs did what each scenario means (a full load, then 1% updates seen incrementally,
1% updates found by the snapshot diff, 1% logical deletes) and that the report is written.
The dlt side runs only where dlt is installed (``make bench`` installs it into .venv-bench).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
N = 2000


@pytest.mark.slow
def test_the_harness_runs_every_scenario_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "harness.py"),
            *("-n", str(N), "--dbs", "sqlite", "--out", str(tmp_path), "--latency-ms", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / f"results-{N}.json").read_text(encoding="utf-8"))
    assert {"cpu", "cores", "python", "sqlite", "syncd side"} <= set(results["machine"])
    by = {(r["scenario"], r["side"]): r for r in results["results"]}
    assert all(r["status"] == "success" for r in by.values())
    assert by["initial", "syncd"]["rows"] == N
    assert by["initial", "syncd"]["detail"].startswith(f"ins {N} upd 0 del 0")
    assert by["initial", "ceiling"]["rows"] == N
    assert " upd 20 " in by["incremental", "syncd"]["detail"]  # 1% changed, seen by update time
    assert by["incremental", "syncd"]["rows"] < N
    assert by["snapshot", "syncd"]["rows"] == N  # every row read and compared
    assert by["snapshot", "syncd"]["detail"].startswith("ins 0 upd 20 del 0")
    assert by["snapshot-del", "syncd"]["detail"].startswith("ins 0 upd 0 del 20")
    assert all(r["peak_rss_mb"] > 0 for r in by.values())
    assert "| syncd/dlt initial" in done.stdout


def test_dlt_timeouts_do_not_fail_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    """make bench must not end in an error because dlt's re-loads ran past the timeout; a syncd
    or ceiling measurement that did not succeed still does."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("harness", "config", "report")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        harness = importlib.import_module("harness")
        m = harness.Measurement
        ok = m(N, "sqlite", "initial", "syncd", "success", 1.0, N)
        dlt_timeout = m(N, "sqlite", "snapshot", "dlt", "timeout", 300.0)
        assert harness.exit_status([ok, dlt_timeout]) == 0
        assert harness.exit_status([ok, m(N, "sqlite", "snapshot", "dlt", "error")]) == 1
        assert harness.exit_status([ok, m(N, "sqlite", "initial", "syncd", "timeout", 300.0)]) == 1
        assert harness.exit_status([m(N, "sqlite", "initial", "ceiling", "error")]) == 1
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
