"""The benchmark harness keeps working: a tiny run (SQLite, every scenario) end to end.

A benchmark is not a test: nothing here asserts a time. It checks that every side ran, that
the syncd runs did what each scenario means (a full load, then 1% updates seen incrementally,
1% updates found by the snapshot diff, 1% logical deletes) and that the report is written.
The dlt side runs only where dlt is installed (``make bench`` installs it into .venv-bench).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pstats
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
N = 2000


@pytest.mark.slow
def test_the_harness_runs_every_scenario_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "harness.py"),
            *("-n", str(N), "--dbs", "sqlite", "--out", str(tmp_path), "--latency-ms", "1", "--repeat", "2"),
            *("--profile-dir", str(tmp_path / "profiles")),
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
    # two rounds, each from empty databases and a fresh gateway: the same counts both times
    assert len(results["results"]) == len(by)
    assert all("median of 2: " in r["detail"] for r in by.values())
    measured = [ln for ln in done.stdout.splitlines() if ln.split()[:3] == ["sqlite", "initial", "syncd"]]
    assert len(measured) == 2 and all(f"ins {N} upd 0 del 0" in ln for ln in measured)
    assert "round 2 of 2" in done.stdout
    assert by["initial", "ceiling"]["rows"] == N
    assert " upd 20 " in by["incremental", "syncd"]["detail"]  # 1% changed, seen by update time
    assert by["incremental", "syncd"]["rows"] < N
    assert by["snapshot", "syncd"]["rows"] == N  # every row read and compared
    assert by["snapshot", "syncd"]["detail"].startswith("ins 0 upd 20 del 0")
    assert by["snapshot-del", "syncd"]["detail"].startswith("ins 0 upd 0 del 20")
    # 1% of the live records vanished upstream: found missing by snapshot_delete, and only those
    assert by["snapshot-gone", "syncd"]["detail"].startswith("ins 0 upd 0 del 20 ")
    assert by["snapshot-gone", "syncd"]["rows"] == N - 20  # read: those 20 no longer among them
    assert all(r["peak_rss_mb"] > 0 for r in by.values())
    # the CPU of both processes of a first load (the read worker's only when it ran), and a cProfile
    # of every syncd measurement
    syncd = {scenario: r["detail"] for (scenario, side), r in by.items() if side == "syncd"}
    assert all(re.search(r"; CPU run \d+\.\d\d( \+ worker \d+\.\d\d)? s", d) for d in syncd.values())
    profiles = {p.name for p in (tmp_path / "profiles").iterdir()}
    assert profiles == {f"sqlite-{scenario}-{N}.prof" for scenario in syncd}
    assert pstats.Stats(str(tmp_path / "profiles" / f"sqlite-snapshot-{N}.prof")).total_calls > 0
    assert "| syncd/dlt initial" in done.stdout
    assert results["machine"]["page cache"]  # how this machine reclaims idle page cache
    if Path("/proc/vmstat").exists():  # Linux: every side says what the machine read from disk
        assert all(r["disk_read_mb"] >= 0 and " MB from disk" in r["detail"] for r in by.values())


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """bench/harness.py as a module (with its sibling modules), removed again afterwards."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("harness", "config", "report", "gateway_proc", "diskio")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        yield importlib.import_module("harness")
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_repeated_measurements_keep_the_median_and_the_worst_memory(harness: ModuleType) -> None:
    m = harness.Measurement
    rounds = [
        [m(N, "sqlite", "initial", "syncd", "success", 3.0, N, 140.0, "ins 2000"),
         m(N, "sqlite", "initial", "dlt", "success", 9.0, N, 170.0)],
        [m(N, "sqlite", "initial", "syncd", "success", 5.0, N, 150.0, "ins 2000"),
         m(N, "sqlite", "initial", "dlt", "timeout", 300.0, 0, 0.0, "over 300 s")],
        [m(N, "sqlite", "initial", "syncd", "success", 4.0, N, 130.0, "ins 2000"),
         m(N, "sqlite", "initial", "dlt", "success", 8.0, N, 160.0)],
    ]
    syncd, dlt = harness.combine(rounds)
    assert (syncd.side, syncd.status, syncd.wall_s, syncd.peak_rss_mb) == ("syncd", "success", 4.0, 150.0)
    assert syncd.detail == "ins 2000; median of 3: 3.00 / 5.00 / 4.00 s"
    assert (dlt.status, dlt.wall_s, dlt.detail) == ("timeout", 300.0, "over 300 s")  # never hidden
    two = harness.combine(rounds[:2:])[0]
    assert two.wall_s == 3.0  # the lower middle of an even count
    one = harness.combine(rounds[:1])[0]
    assert one == rounds[0][0]  # a single round: as measured, no "median of 1"


def test_dlt_deletes_by_its_flag_and_replaces_where_records_vanish(harness: ModuleType) -> None:
    # every scenario has a dlt side: a merge (run_dlt.py turns isDeleted into its hard_delete
    # column), a window for the incremental one, a replace load where records vanish upstream
    setup = {"urls": {"dlt": "sqlite:///d.db"}, "work": Path("/w")}
    commands = {sc: harness._dlt_command("http://gw", setup, sc, "T" if sc == "incremental" else None)
                for sc in harness.SCENARIOS}
    assert all(c[1].endswith("run_dlt.py") and "sqlite:///d.db" in c for c in commands.values())
    assert [sc for sc, c in commands.items() if "--replace" in c] == ["snapshot-gone"]
    assert [sc for sc, c in commands.items() if "--since" in c] == ["incremental"]
    assert commands["incremental"][-2:] == ["--since", "T"]


def test_the_ratios_compare_dlt_in_every_snapshot_scenario(harness: ModuleType) -> None:
    report = importlib.import_module("report")
    m = harness.Measurement
    rows = [
        m(N, "sqlite", "initial", "syncd", "success", 2.0, N),
        m(N, "sqlite", "initial", "dlt", "success", 10.0, N),
        m(N, "sqlite", "snapshot", "syncd", "success", 0.5, N),
        m(N, "sqlite", "snapshot", "dlt", "timeout", 300.0),
        m(N, "sqlite", "snapshot-del", "syncd", "success", 0.6, N),
        m(N, "sqlite", "snapshot-del", "dlt", "success", 12.0, N),
        m(N, "sqlite", "snapshot-gone", "syncd", "success", 0.8, N),
        m(N, "sqlite", "snapshot-gone", "dlt", "success", 8.0, N),
    ]
    as_dicts = [dataclasses.asdict(r) | {"rows_per_s": r.rows_per_s} for r in rows]  # as main() writes them
    header, _, line = report._ratios(as_dicts)
    assert header.endswith("| snapshot-del: dlt ÷ syncd | snapshot-gone: dlt ÷ syncd |")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "5.00×" and cells[5] == "> 600×"  # initial; the timed-out snapshot bounds it
    assert cells[-2:] == ["20.00×", "10.00×"]


def test_a_dlt_first_load_past_the_timeout_still_bounds_the_ratio(harness: ModuleType) -> None:
    # dlt did not load its N rows in 300 s: fewer than N/300 rows/s, so syncd's 1,000 rows/s is more
    # than 150 times as fast (before: "–", no figure at all where dlt was slowest)
    report = importlib.import_module("report")
    m = harness.Measurement
    rows = [
        m(N, "sqlite", "initial", "syncd", "success", 2.0, N),
        m(N, "sqlite", "initial", "dlt", "timeout", 300.0),
        m(N, "sqlite", "initial", "ceiling", "success", 0.5, N),
    ]
    as_dicts = [dataclasses.asdict(r) | {"rows_per_s": r.rows_per_s} for r in rows]
    cells = [c.strip() for c in report._ratios(as_dicts)[2].strip("|").split("|")]
    assert cells[2:4] == ["> 150.00×", "0.25×"]
    # rounded down: 8.64 times is "> 8×", never "> 9×" (a bound past what was measured)
    snapshot = [
        m(N, "sqlite", "snapshot", "syncd", "success", 17.36, N),
        m(N, "sqlite", "snapshot", "dlt", "timeout", 150.0),
    ]
    as_dicts = [dataclasses.asdict(r) | {"rows_per_s": r.rows_per_s} for r in rows + snapshot]
    cells = [c.strip() for c in report._ratios(as_dicts)[2].strip("|").split("|")]
    assert cells[5] == "> 8×"


Measured = tuple[str, str, str, float]  # db, scenario, side, timeout


def _fake_round(
    harness: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    slow: set[tuple[str, str, str]],
    **options: Any,
) -> tuple[dict[tuple[str, str, str], Any], list[Measured]]:
    """One ``harness._round`` over SQLite and PostgreSQL with syncd and dlt, where each measurement
    only records itself (what ``slow`` names times out) and the gateway answers without serving."""
    measured: list[Measured] = []

    def fake_measure(cmd: list[str], n: int, db: str, scenario: str, side: str, *, timeout: float) -> Any:
        measured.append((db, scenario, side, timeout))
        status = "timeout" if (db, scenario, side) in slow else "success"
        return harness.Measurement(n, db, scenario, side, status, 1.0, n)

    class FakeGateway:
        url = "http://127.0.0.1:1"

        def __init__(self, *args: Any) -> None:
            pass

        def ask(self, command: str) -> dict[str, Any]:
            return {"now": "2026-12-07 00:00:00"} if command == "now" else {}

        def close(self) -> None:
            pass

    monkeypatch.setattr(harness, "_measure", fake_measure)
    monkeypatch.setattr(harness, "GatewayProcess", FakeGateway)
    monkeypatch.setattr(harness, "_reset_databases", lambda db, work: {"syncd": "", "dlt": "", "ceiling": ""})
    configs = {k: tmp_path / k for k in ("inc", "snap", "gone", "ceil")}
    monkeypatch.setattr(harness, "_configs", lambda *a: configs)
    args = harness.argparse.Namespace(
        records=N, dbs=["sqlite", "postgresql"], sides=["syncd", "dlt"], out=str(tmp_path), seed=1,
        latency_ms=0.0, batch_size=1000, scenarios=len(harness.SCENARIOS), timeout=60.0,
        initial_timeout=None, syncd_python=sys.executable, profile_dir=None,
    )
    for name, value in options.items():
        setattr(args, name, value)
    results = {(r.db, r.scenario, r.side): r for r in harness._round(args, {})}
    return results, measured


def test_dlt_merges_after_its_unfinished_first_load_are_not_run(
    harness: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where dlt's first load timed out, its incremental and snapshot merges would merge into a
    table without the records (the 10⁶ run of 2026-12-07 reported such a merge as a success): they
    are reported as skipped, not run; its replace load needs no earlier load and still runs."""
    results, calls = _fake_round(harness, monkeypatch, tmp_path, {("sqlite", "initial", "dlt")})
    measured = {call[:3] for call in calls}
    skipped = {k for k, r in results.items() if r.status == "skipped"}
    assert skipped == {("sqlite", sc, "dlt") for sc in ("incremental", "snapshot", "snapshot-del")}
    assert not skipped & measured  # not run at all
    assert ("sqlite", "snapshot-gone", "dlt") in measured  # a replace load: runs
    assert all(("postgresql", sc, "dlt") in measured for sc in harness.SCENARIOS)  # its load finished
    assert all(r.side != "syncd" or r.status == "success" for r in results.values())
    assert "first load on this database ended in timeout" in results["sqlite", "snapshot", "dlt"].detail
    assert harness.exit_status(list(results.values())) == 0  # dlt's skips fail nothing


def test_first_loads_can_have_a_timeout_of_their_own(
    harness: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # dlt's first load of 10⁶ took 254-304 s on a slow host, while its merges on SQLite never end:
    # one run can now wait for the first and not for the others
    _, calls = _fake_round(harness, monkeypatch, tmp_path, set(), initial_timeout=900.0)
    timeouts = {(scenario, t) for _db, scenario, _side, t in calls}
    assert timeouts == {("initial", 900.0)} | {(sc, 60.0) for sc in harness.SCENARIOS[1:]}
    _, calls = _fake_round(harness, monkeypatch, tmp_path, set())  # none given: --timeout for all
    assert {t for *_, t in calls} == {60.0}


def test_dlt_timeouts_do_not_fail_the_harness(harness: ModuleType) -> None:
    """make bench must not end in an error because dlt's re-loads ran past the timeout; a syncd
    or ceiling measurement that did not succeed still does."""
    m = harness.Measurement
    ok = m(N, "sqlite", "initial", "syncd", "success", 1.0, N)
    dlt_timeout = m(N, "sqlite", "snapshot", "dlt", "timeout", 300.0)
    assert harness.exit_status([ok, dlt_timeout]) == 0
    assert harness.exit_status([ok, m(N, "sqlite", "snapshot", "dlt", "error")]) == 1
    assert harness.exit_status([ok, m(N, "sqlite", "initial", "syncd", "timeout", 300.0)]) == 1
    assert harness.exit_status([m(N, "sqlite", "initial", "ceiling", "error")]) == 1


def test_the_gateway_warm_up_reads_every_page_once_into_the_cache(
    harness: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/gateway_proc.py renders every page before a measured run (on several connections at
    once): afterwards a run's pages come from the cache, none is rendered again."""
    from syncd.gateway import Gateway
    from syncd.gateway.store import ResidentStore

    gateway_proc = importlib.import_module("gateway_proc")
    store = ResidentStore(seed=3)
    store.generate(2500, datetime(2026, 1, 1))
    rendered: list[int] = []
    query_of = store.query

    def counting(start: str | None, end: str | None, offset: int, limit: int) -> object:
        rendered.append(offset)
        return query_of(start, end, offset, limit)

    monkeypatch.setattr(store, "query", counting)
    with Gateway(
        store, prerender=True, app_key=gateway_proc.APP_KEY, app_secret=gateway_proc.APP_SECRET, latency=0.01
    ) as g:
        assert gateway_proc.warm(g.url, connections=2) == 3
        pages = sorted(e.params["pageNo"] for e in g.request_log if e.path == "/api/residents/query")
        assert pages == ["1", "2", "3"]  # each once
        assert sorted(rendered) == [0, 1000, 2000]
        assert gateway_proc.warm(g.url) == 3
        assert len(rendered) == 3  # the second read came from the cache


def test_disk_reads_and_page_cache_reclaim_are_read_from_the_kernel(
    harness: ModuleType, tmp_path: Path
) -> None:
    """bench/diskio.py: the machine's reads from /proc/vmstat (KiB), DAMON's pageout schemes from
    sysfs (minimum age in aggregation intervals); unknown stays unknown, not 0."""
    diskio = importlib.import_module("diskio")
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 5\npgpgin 2048\npgpgout 7\n", encoding="ascii")
    assert diskio.paged_in_bytes(vmstat) == 2 * 2**20
    assert diskio.paged_in_bytes(tmp_path / "missing") is None
    assert diskio.disk_read_mb(2**20, 3 * 2**20) == 2.0
    assert diskio.disk_read_mb(None, 2**20) is None

    root = tmp_path / "kdamonds"
    context = root / "0" / "contexts" / "0"
    scheme = context / "schemes" / "0"
    (context / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (scheme / "access_pattern" / "age").mkdir(parents=True)
    (root / "0" / "state").write_text("on\n", encoding="ascii")
    (context / "monitoring_attrs" / "intervals" / "aggr_us").write_text("5000000\n", encoding="ascii")
    (scheme / "access_pattern" / "age" / "min").write_text("12\n", encoding="ascii")
    (scheme / "action").write_text("pageout\n", encoding="ascii")
    assert diskio.page_cache_reclaim(root) == "DAMON pageout of pages idle ≥ 60 s"
    (scheme / "action").write_text("stat\n", encoding="ascii")
    assert diskio.page_cache_reclaim(root) is None
    (scheme / "action").write_text("pageout\n", encoding="ascii")
    (root / "0" / "state").write_text("off\n", encoding="ascii")
    assert diskio.page_cache_reclaim(root) is None
    assert diskio.page_cache_reclaim(tmp_path / "no-damon") is None


@pytest.mark.mariadb
def test_ending_a_mariadb_session_that_already_ended_is_no_error(
    harness: ModuleType, mariadb_url: str
) -> None:
    # _stop_sessions lists the sessions, then KILLs each: one may end in between (error 1094)
    import sqlalchemy as sa

    engine = sa.create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            other = sa.create_engine(mariadb_url)
            with other.connect() as gone:
                session = int(gone.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
            other.dispose()  # that session has ended
            harness._kill_mariadb(conn, session)  # no error
            with pytest.raises(sa.exc.OperationalError):
                conn.exec_driver_sql(f"KILL {session}")  # what the harness would have raised
    finally:
        engine.dispose()


def test_the_detail_gives_both_processes_cpu_and_memory(harness: ModuleType) -> None:
    """A first load with the read worker: the run's and the worker's CPU seconds and peaks, each
    named, so that a reader sees which process the wall time waited for."""
    line = {
        "status": "success", "error": None, "wall_s": 3.1, "rows": 100, "inserted": 100, "updated": 0,
        "deleted": 0, "unchanged": 0, "quarantined": 0, "peak_rss_mb": 140.0, "run_peak_rss_mb": 80.0,
        "worker_peak_rss_mb": 60.0, "disk_read_mb": None, "cpu_s": 1.254, "worker_cpu_s": 2.5,
    }
    cmd = [sys.executable, "-c", f"print({json.dumps(json.dumps(line))})"]
    m = harness._measure(cmd, 100, "sqlite", "initial", "syncd", timeout=60)
    assert m.detail == (
        "ins 100 upd 0 del 0 same 0 quar 0; CPU run 1.25 + worker 2.50 s; RSS run 80 + worker 60 MB"
    )
    alone = harness._measure(
        [sys.executable, "-c", f"print({json.dumps(json.dumps(line | {'worker_cpu_s': None}))})"],
        100, "sqlite", "snapshot", "syncd", timeout=60,
    )
    assert "; CPU run 1.25 s;" in alone.detail
