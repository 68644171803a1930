"""The daemon under stress (DESIGN §4): SIGTERM at random moments, a target outage, a long run.

Everything here runs a real ``syncd run`` subprocess (``tests/daemon_proc.py``) on a 1-second interval
schedule against the simulated gateway, served from this test process:

* **SIGTERM trials** — every trial churns the upstream, starts the daemon, sends SIGTERM at a random
  moment (just after start-up, at a random page of a run, or between runs), restarts it, lets one run
  finish and stops it again. Every process must exit 0 within ``stop_timeout``; a stopped run is
  recorded ``interrupted`` with its watermark unmoved, what it committed is whole (each target row
  has its change entry); after each trial the target equals the upstream and the change log holds
  exactly one entry per real change. Default suite: 3 trials x 20,000 rows on SQLite;
  ``SYNCD_RELIABILITY=1``: 20 trials x 50,000 rows on SQLite, PostgreSQL and MariaDB
  (``SYNCD_REL_TRIALS`` / ``SYNCD_REL_ROWS`` override).
* **Database outage** — a PRIVATE PostgreSQL / MariaDB (``tests/dbserver.py``; never the shared
  servers) is stopped in the middle of a scheduled run and started again: the daemon stays up,
  ``/healthz`` and the log show the failure, the message names host:port/database and never the
  password, and a later scheduled run converges.
* **Long run** — ``SYNCD_LONG_RUN_MINUTES=30``: two datasets every 2 s under a 10% fault rate of every
  kind and a churning upstream; RSS and open fds are sampled every 30 s and must stay flat; at the end
  no change is lost or duplicated. Skipped unless the variable is set.

With ``SYNCD_REL_REPORT=<file>`` every test appends its figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.gateway import FaultPlan, Gateway
from syncd.gateway.faults import ALL_KINDS
from tests.daemon_proc import DaemonProcess, daemon_config
from tests.dbserver import (
    PrivateMariaDB,
    PrivatePostgres,
    add_password_user,
    free_port,
    mariadb_available,
    postgres_available,
    require_binaries,
    server_root,
)
from tests.e2e import SECRET, SECRET_ENV, change_log, target_rows, upstream_active
from tests.reliability_kit import (
    FULL,
    active,
    assert_converged,
    databases,
    real_changes,
    report,
    target_state,
)

TRIALS = int(os.environ.get("SYNCD_REL_TRIALS", "20" if FULL else "3"))
ROWS = int(os.environ.get("SYNCD_REL_ROWS", "50000" if FULL else "20000"))
DBS = databases(1)
PAGE = 500
STOP_TIMEOUT = 20.0  # daemon_config() sets daemon.stop_timeout: 20s
LONG_RUN_MINUTES = float(os.environ.get("SYNCD_LONG_RUN_MINUTES", "0"))
SAMPLE_EVERY = float(os.environ.get("SYNCD_LONG_RUN_SAMPLE_S", "30"))
WARM_UP_S = 60.0
DB_PASSWORD = "Db-pw-4Kd-never-shown"
DB_PASSWORD_ENV = "SYNCD_TEST_DB_PASSWORD"


# --------------------------------------------------------------------------- helpers


def stop_daemon(daemon: DaemonProcess) -> tuple[int, float]:
    """SIGTERM and wait; returns ``(exit code, seconds to exit)``."""
    started = time.monotonic()
    code = daemon.stop(timeout=STOP_TIMEOUT + 10)
    return code, time.monotonic() - started


def finishes(daemon: DaemonProcess, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()
        if e["event"] == "sync.finish" and all(e.get(k) == v for k, v in match.items())
    ]


def runs_table(db_url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT run_id, status, inserted, updated, deleted, watermark_before, watermark_after"
                " FROM syncd_runs"
            )
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def assert_whole(db_url: str, trial: int) -> None:
    """What a stopped daemon committed is whole: every row has its insert, run counters match the log."""
    rows = target_state(db_url)
    log = change_log(db_url)
    alive: set[str] = set()
    for e in log:
        if e["op"] == "delete":
            alive.discard(e["row_key"])
        else:
            alive.add(e["row_key"])
    assert rows.keys() == alive, f"trial {trial}: target rows and change log disagree after SIGTERM"
    per_run = Counter((e["run_id"], e["op"]) for e in log)
    for run in runs_table(db_url):
        counted = (per_run[(run["run_id"], "insert")], per_run[(run["run_id"], "update")])
        assert counted == (run["inserted"], run["updated"]), f"trial {trial}: run {run} vs log {counted}"
        assert per_run[(run["run_id"], "delete")] == run["deleted"], f"trial {trial}: {run}"
        assert run["status"] in {"success", "interrupted"}, f"trial {trial}: {run}"
        if run["status"] == "interrupted":
            # watermark_after is the watermark in force after the run: unmoved
            assert run["watermark_after"] == run["watermark_before"], f"trial {trial}: watermark moved: {run}"


def sigterm_at_random(daemon: DaemonProcess, gw: Gateway, rng: random.Random, pages: int) -> str:
    """Send SIGTERM at a random moment of a running daemon; returns where."""
    daemon.wait_event("daemon.started")
    pick = rng.random()
    if pick < 0.2:
        time.sleep(rng.uniform(0.0, 0.5))  # start-up: the first job being dispatched
        where = "start-up"
    elif pick < 0.35:
        daemon.wait_event("sync.finish", timeout=120)
        time.sleep(rng.uniform(0.0, 1.0))  # between runs (or inside the next one)
        where = "after a run"
    else:
        base = len(gw.request_log)
        target = rng.randint(1, max(pages, 1))
        deadline = time.monotonic() + 120
        while len(gw.request_log) - base < target and daemon.proc.poll() is None:
            assert time.monotonic() < deadline, "the daemon stalled"
            time.sleep(0.002)
        where = "page"
    daemon.signal(signal.SIGTERM)
    return where


# --------------------------------------------------------------------------- 1. SIGTERM trials


@pytest.mark.slow
@pytest.mark.parametrize("db_url", DBS, indirect=True)
def test_sigterm_at_random_moments_converges_exactly(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    rng = random.Random(20260502)
    gw = Gateway(records=ROWS, seed=8, app_key="demo-app", app_secret=SECRET)
    gw.start()
    started = time.monotonic()
    where: Counter[str] = Counter()
    exits: list[float] = []
    statuses: Counter[str] = Counter()
    try:
        cfg = daemon_config(tmp_path, db_url=db_url, gateway_url=gw.url, page_size=PAGE, batch_size=PAGE)
        before: dict[str, dict[str, Any]] = {}
        expected: Counter[tuple[str, str]] = Counter()
        for trial in range(TRIALS):
            if trial:
                gw.store.churn(max(ROWS // 20, 10), rng)
            after = active(gw.store.records())
            expected += real_changes(before, after)
            pages = len(gw.store) // PAGE + 1 if trial == 0 else ROWS // 10 // PAGE + 1

            daemon = DaemonProcess(cfg)
            try:
                where[sigterm_at_random(daemon, gw, rng, pages)] += 1
            finally:
                code, took = stop_daemon(daemon)
            assert code == 0 and took < STOP_TIMEOUT, (code, took, daemon.stderr_text())
            exits.append(took)
            assert_whole(db_url, trial)

            daemon = DaemonProcess(cfg)  # restart: one run finishes, then a stop at a random moment
            try:
                daemon.wait_event("sync.finish", status="success", timeout=300)
                time.sleep(rng.uniform(0.0, 1.5))
                where["after a successful run"] += 1
            finally:
                code, took = stop_daemon(daemon)
            assert code == 0 and took < STOP_TIMEOUT, (code, took, daemon.stderr_text())
            exits.append(took)
            assert SECRET not in "".join(daemon.lines) + daemon.stderr_text()

            assert_converged(trial, db_url, after, expected)
            assert_whole(db_url, trial)
            before = after
        statuses.update(r["status"] for r in runs_table(db_url))
        assert statuses["interrupted"] >= 1, f"no run was ever interrupted: {statuses}"
        report(
            {
                "test": "daemon_sigterm",
                "db": db_url.split(":", maxsplit=1)[0].split("+", maxsplit=1)[0],
                "trials": TRIALS,
                "rows": ROWS,
                "sigterms": len(exits),
                "sigterm_points": dict(where),
                "runs": dict(statuses),
                "max_exit_s": round(max(exits), 2),
                "change_entries": sum(expected.values()),
                "seconds": round(time.monotonic() - started, 1),
                "held": True,
            }
        )
    finally:
        gw.stop()


# --------------------------------------------------------------------------- 2. database outage


@pytest.fixture(scope="module")
def daemon_pg() -> Iterator[PrivatePostgres]:
    require_binaries(postgres_available(), "PostgreSQL")
    with PrivatePostgres(server_root("syncd-dpg-")) as server:
        yield server


@pytest.fixture(scope="module")
def daemon_mariadb() -> Iterator[PrivateMariaDB]:
    require_binaries(mariadb_available(), "MariaDB")
    with PrivateMariaDB(server_root("syncd-dmariadb-")) as server:
        add_password_user(server, DB_PASSWORD)
        yield server


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _daemon_outage(  # noqa: PLR0917 - a test helper: each caller passes all six
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    where: str,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> dict[str, Any]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(DB_PASSWORD_ENV, DB_PASSWORD)
    port = free_port()
    gw = Gateway(records=3000, seed=29, app_key="demo-app", app_secret=SECRET)
    gw.start()
    cfg = daemon_config(
        tmp_path, db_url=url, gateway_url=gw.url, metrics_port=port, page_size=100, batch_size=100
    )
    plain_url = url.replace(f"${{{DB_PASSWORD_ENV}}}", DB_PASSWORD)  # the tests' own queries
    daemon = DaemonProcess(cfg)
    try:
        gw.faults.fail_next("slow", 1000)  # 50 ms per page: the outage lands inside a run
        gw.faults.slow_seconds = 0.05
        daemon.wait_event("sync.start")
        base = len(gw.request_log)
        deadline = time.monotonic() + 60
        while len(gw.request_log) - base < 8 and time.monotonic() < deadline:
            time.sleep(0.002)
        stop()
        outage = time.monotonic()
        failed = daemon.wait_event("sync.finish", status="failed", timeout=60)
        error = str(failed.get("error"))
        assert where in error, f"the message does not name the database: {error}"
        assert daemon.proc.poll() is None, "the daemon exited during the outage"
        # the schedule keeps firing into the outage: the dataset turns unhealthy, the process lives on
        deadline = time.monotonic() + 60
        status, body = healthz(port)
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = healthz(port)
        assert status == 503 and any("residents" in r for r in body["reasons"]), body
        failures = len(finishes(daemon, status="failed")) + len(
            [e for e in daemon.events() if e["event"] == "daemon.job_failed"]
        )
        down_s = time.monotonic() - outage

        gw.faults = FaultPlan()
        start()
        seen = len(finishes(daemon, status="success"))
        daemon.wait_event("sync.finish", count=seen + 1, status="success", timeout=90)
        recovered_s = time.monotonic() - outage - down_s
        deadline = time.monotonic() + 10
        while healthz(port)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert healthz(port)[0] == 200, healthz(port)
        rows = target_rows(plain_url)
        upstream = upstream_active(gw.store)
        assert rows.keys() == upstream.keys()
        log = change_log(plain_url)
        assert Counter((e["row_key"], e["op"]) for e in log) == Counter((k, "insert") for k in upstream), (
            "the change log is not exactly one insert per upstream row"
        )
    finally:
        code, took = stop_daemon(daemon)
        gw.stop()
    assert code == 0 and took < STOP_TIMEOUT, (code, took, daemon.stderr_text())
    text = "".join(daemon.lines) + daemon.stderr_text()
    assert DB_PASSWORD not in text and SECRET not in text, "a secret reached the daemon's output"
    return {
        "error": error,
        "failed_runs_during_outage": failures,
        "outage_s": round(down_s, 1),
        "converged_s_after_restart": round(recovered_s, 1),
        "rows": len(rows),
    }


@pytest.mark.slow
@pytest.mark.postgres
def test_daemon_survives_postgres_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon_pg: PrivatePostgres
) -> None:
    daemon_pg.create_database("doutage")  # trust auth: the password is accepted and ignored
    url = f"postgresql+psycopg://postgres:${{{DB_PASSWORD_ENV}}}@127.0.0.1:{daemon_pg.port}/doutage"
    figures = _daemon_outage(
        tmp_path, monkeypatch, url, f"127.0.0.1:{daemon_pg.port}/doutage", daemon_pg.stop, daemon_pg.start
    )
    report({"test": "daemon_database_outage", "db": "postgresql", **figures, "held": True})


@pytest.mark.slow
@pytest.mark.mariadb
def test_daemon_survives_mariadb_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon_mariadb: PrivateMariaDB
) -> None:
    daemon_mariadb.create_database("doutage")
    url = (
        f"mysql+pymysql://syncd:${{{DB_PASSWORD_ENV}}}@127.0.0.1:{daemon_mariadb.port}/doutage"
        "?charset=utf8mb4"
    )
    figures = _daemon_outage(
        tmp_path,
        monkeypatch,
        url,
        f"127.0.0.1:{daemon_mariadb.port}/doutage",
        daemon_mariadb.stop,
        daemon_mariadb.start,
    )
    report({"test": "daemon_database_outage", "db": "mariadb", **figures, "held": True})


# --------------------------------------------------------------------------- 3. long run


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def log_is_consistent(log: list[dict[str, Any]], bound: Counter[tuple[str, str]]) -> None:
    """Per row: insert, updates, delete, insert … in order; no entry beyond a real upstream change."""
    alive: dict[str, bool] = {}
    for e in log:
        key, op = e["row_key"], e["op"]
        was = alive.get(key, False)
        assert (op == "insert") != was, f"{op} of {key} while it {'exists' if was else 'does not exist'}"
        if op == "update":
            assert was
        alive[key] = op != "delete"
    extra = Counter((e["row_key"], e["op"]) for e in log) - bound
    assert not extra, (
        f"{sum(extra.values())} change entries without a real upstream change: {list(extra)[:3]}"
    )


class MemoryGrowthError(AssertionError):
    """The daemon's RSS or open-fd count kept growing during the long run."""


@pytest.mark.slow
@pytest.mark.skipif(
    LONG_RUN_MINUTES <= 0,
    reason="long run is off; enable it with SYNCD_LONG_RUN_MINUTES=30 (minutes to run the daemon)",
)
def test_long_run_memory_and_fds_flat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    rng = random.Random(20260506)
    faults = FaultPlan(rate=0.1, kinds=ALL_KINDS, seed=6, retry_after=0)
    gw = Gateway(records=5000, seed=11, app_key="demo-app", app_secret=SECRET, faults=faults)
    gw.start()
    cfg = daemon_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=gw.url,
        every="2s",
        page_size=200,
        batch_size=200,
        read_timeout="2s",
        # a short lookback: each run's work is steady after 20 s (a 10-minute one would keep growing
        # for 10 minutes, and memory with it — that is warm-up, not a leak)
        replace=[("lookback: 10m ", "lookback: 20s ")],
    )
    residents = tmp_path / "datasets" / "residents.yaml"
    second = residents.read_text(encoding="utf-8")
    second = second.replace("name: residents", "name: residents2").replace(
        "table: resident_info", "table: resident_info2"
    )
    (tmp_path / "datasets" / "residents2.yaml").write_text(second, encoding="utf-8")

    bound: Counter[tuple[str, str]] = Counter()
    before: dict[str, dict[str, Any]] = {}
    bound_lock = threading.Lock()
    stop_churn = threading.Event()

    def churn() -> None:  # the upstream changes every 3 s while the daemon runs
        nonlocal before
        while not stop_churn.wait(3.0):
            gw.store.churn(40, rng)  # ~32 updates, 4 logical deletes, 8 inserts
            after = active(gw.store.records())
            with bound_lock:
                bound.update(real_changes(before, after))
                before = after

    with bound_lock:
        before = active(gw.store.records())
        bound.update(real_changes({}, before))
    churner = threading.Thread(target=churn, daemon=True)
    daemon = DaemonProcess(cfg)
    samples: list[tuple[float, int, int]] = []
    try:
        daemon.wait_event("sync.finish", status="success", timeout=120)
        churner.start()
        pid = daemon.proc.pid
        t0 = time.monotonic()
        end = t0 + LONG_RUN_MINUTES * 60
        while time.monotonic() < end:
            time.sleep(min(SAMPLE_EVERY, max(0.0, end - time.monotonic())))
            assert daemon.proc.poll() is None, daemon.stderr_text()
            samples.append((round(time.monotonic() - t0), rss_kib(pid), open_fds(pid)))
        stop_churn.set()
        churner.join(10)
        injected = dict(gw.faults.injected)
        gw.faults = FaultPlan()  # then converge: one clean run of each dataset after the last change
        for name in ("residents", "residents2"):
            seen = len(finishes(daemon, dataset=name, status="success"))
            daemon.wait_event("sync.finish", count=seen + 2, dataset=name, status="success", timeout=120)
    finally:
        stop_churn.set()
        code, took = stop_daemon(daemon)
        gw.stop()
    assert code == 0 and took < STOP_TIMEOUT, (code, took, daemon.stderr_text())
    assert SECRET not in "".join(daemon.lines) + daemon.stderr_text()

    runs = Counter((e["dataset"], e["status"]) for e in finishes(daemon))
    steady = [s for s in samples if s[0] > WARM_UP_S]  # after warm-up: imports, caches, first runs
    assert len(steady) >= 3, f"too few samples after the {WARM_UP_S:.0f} s warm-up, run longer: {samples}"
    third = max(len(steady) // 3, 1)
    first, last = steady[:third], steady[-third:]
    rss_first, rss_last = max(s[1] for s in first), max(s[1] for s in last)
    fd_first, fd_last = max(s[2] for s in first), max(s[2] for s in last)
    upstream = active(gw.store.records())
    with bound_lock:
        final_bound = bound.copy()
    for table, dataset in (("resident_info", "residents"), ("resident_info2", "residents2")):
        state = {}
        engine = sa.create_engine(sqlite_url)
        with engine.connect() as conn:
            query = sa.text(f"SELECT resident_id, updated_at FROM {table}")  # noqa: S608 - fixed names
            state = {r[0]: str(r[1])[:19] for r in conn.execute(query)}
        engine.dispose()
        assert state.keys() == upstream.keys(), f"{dataset}: target keys differ from upstream"
        stale = [k for k, r in upstream.items() if state[k] != r["updateTime"]]
        assert not stale, f"{dataset}: {len(stale)} stale rows, e.g. {stale[:3]}"
        log_is_consistent(change_log(sqlite_url, dataset), final_bound)
    report(
        {
            "test": "daemon_long_run",
            "minutes": LONG_RUN_MINUTES,
            "warm_up_s": WARM_UP_S,
            "samples": samples,
            "rss_kib_first_third_max": rss_first,
            "rss_kib_last_third_max": rss_last,
            "fds_first_third_max": fd_first,
            "fds_last_third_max": fd_last,
            "runs": {f"{d}:{s}": n for (d, s), n in runs.items()},
            "faults_injected": injected,
            "upstream_rows": len(upstream),
            "held": True,
        }
    )
    if fd_last > fd_first + 5:
        raise MemoryGrowthError(f"open files grew: {samples}")
    if rss_last > rss_first * 1.15:
        raise MemoryGrowthError(f"memory grew: {samples}")
