"""The benchmark: syncd beside dlt and beside the raw database ceiling, one command.

    make bench N=100000 [DBS=sqlite,postgresql,mariadb] [SIDES=syncd,dlt,ceiling]
    .venv-bench/bin/python bench/harness.py --records 100000 --dbs sqlite,postgresql

One simulated gateway (its own process, pages of 1,000 pre-rendered) serves N seeded resident
records over loopback HTTP. Every measurement is a fresh process (``run_syncd.py``,
``run_dlt.py``, ``run_ceiling.py``) that reports its own wall time and peak RSS, and what the
machine read from disk meanwhile (``diskio.py``: idle page cache may have been reclaimed). Scenarios, in
order, each on every database before the next:

1. ``initial``       a full load into empty tables (syncd, dlt, ceiling);
2. ``incremental``   1% of the records changed upstream; syncd reads by update time, dlt reads the
                     records updated since just before the change;
3. ``snapshot``      another 1% changed; syncd with the dataset WITHOUT ``incremental`` (every
                     row read and compared, 1% written), dlt reloads everything with merge;
4. ``snapshot-del``  1% logically deleted (``isDeleted = "1"``); the same full snapshot (syncd
                     deletes those rows; so does dlt's merge, through its ``hard_delete`` hint);
5. ``snapshot-gone`` 1% of the live records removed upstream; the full snapshot with
                     ``target.snapshot_delete`` (syncd deletes the rows it did not see); dlt
                     reloads the live records with ``replace`` (merge cannot tell one that vanished).

Results go to ``bench/out/results-<N>.json`` and a Markdown table on stdout; ``--write-results``
also rewrites ``bench/RESULTS.md`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from report import machine_info, markdown_table, write_results

# sibling modules: the harness runs as a script, so its directory is on sys.path
from config import APP_SECRET, SECRET_ENV, write_config

__all__ = ["Measurement", "combine", "main"]

HERE = Path(__file__).resolve().parent
DB_URLS = {
    "sqlite": "sqlite:///{dir}/{name}.db",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/{name}",
}
SCENARIOS = ("initial", "incremental", "snapshot", "snapshot-del", "snapshot-gone")
# dlt loads with merge (flagged records deleted through its hard_delete hint), except where records
# vanish upstream: a merge cannot tell, dlt's answer is a replace load (run_dlt.py)
DLT_REPLACE = ("snapshot-gone",)
# dlt's merges that change the table its first load filled: after a first load that did not finish
# they would merge into a table without those records, a measurement of something else (not run)
DLT_AFTER_LOAD = ("incremental", "snapshot", "snapshot-del")
DLT_STATE = "dlt-pipelines"  # dlt's local pipeline state, in each database's work folder
SYNCD_CONFIG = {"initial": "inc", "incremental": "inc", "snapshot-gone": "gone"}  # else "snap" (_configs)


@dataclass
class Measurement:
    n: int
    db: str
    scenario: str
    side: str
    status: str
    wall_s: float = 0.0
    rows: int = 0
    peak_rss_mb: float = 0.0
    detail: str = ""
    disk_read_mb: float | None = None  # the whole machine's reads from disk meanwhile (bench/diskio.py)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


class GatewayProcess:
    """The gateway child (``gateway_proc.py``): one command line in, one JSON line out."""

    def __init__(self, records: int, seed: int, latency_ms: float = 0.0) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "gateway_proc.py"),
                *("--records", str(records), "--seed", str(seed), "--latency-ms", str(latency_ms)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url: str = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self._proc.stdout
        line = out.readline() if out is not None else ""
        if not line:
            raise RuntimeError("the gateway process ended unexpectedly")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        if self._proc.stdin is None:  # pragma: no cover - always a pipe
            raise RuntimeError("the gateway process has no stdin")
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._proc.poll() is None and self._proc.stdin is not None:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.close()
        self._proc.wait(timeout=60)


DB_NAMES = {"syncd": "bench_syncd", "dlt": "bench_dlt", "ceiling": "bench_ceiling"}
# dlt's dataset and its staging dataset: schemas inside bench_dlt on PostgreSQL, but databases of
# their own on MariaDB, which dropping bench_dlt does not remove
DLT_MARIADB_DATABASES = ("dlt_bench", "dlt_bench_staging")


def _admin_engine(db: str) -> Any:
    import sqlalchemy as sa

    admin = DB_URLS[db].format(dir="", name="postgres" if db == "postgresql" else "mysql")
    return sa.create_engine(admin, isolation_level="AUTOCOMMIT")


IDLE_WAIT_S = 900.0
"""How long :func:`_stop_sessions` waits for the server to finish the sessions it ended."""


def _sessions(conn: Any, db: str, names: list[str]) -> list[int]:
    """Server sessions (other than this one) on the benchmark's databases."""
    if db == "postgresql":
        query = (
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%(names)s) AND pid <> pg_backend_pid()"
        )
        return list(conn.exec_driver_sql(query, {"names": names}).scalars().all())
    query = "SELECT id FROM information_schema.processlist WHERE db IN %(names)s AND id <> CONNECTION_ID()"
    return list(conn.exec_driver_sql(query, {"names": tuple(names)}).scalars().all())


MARIADB_UNKNOWN_THREAD = 1094


def _kill_mariadb(conn: Any, session: int) -> None:
    """KILL one MariaDB session; one that ended since it was listed is no error (1094)."""
    import sqlalchemy as sa

    try:
        conn.exec_driver_sql(f"KILL {int(session)}")
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "args", (None,))[0] != MARIADB_UNKNOWN_THREAD:
            raise


def _stop_sessions(db: str) -> int:
    """End every server session on the benchmark's databases and wait until the server has
    finished them; returns how many were ended.

    A measurement killed at its timeout leaves its last statement running in the server (dlt's
    merge DELETE on MariaDB ran on for 15 minutes): it would take a core from every later
    measurement and hold locks on tables the next run drops. Ending it is not enough either:
    MariaDB rolls a killed statement's transaction back in the background (the session stays in
    the process list as ``Killed``), and that took the CPU of the next measurement (SQLite's
    snapshot-del after dlt's MariaDB snapshot: 4.9 s instead of 1.1 s)."""
    if db == "sqlite":
        return 0
    names = [*DB_NAMES.values(), *DLT_MARIADB_DATABASES]
    engine = _admin_engine(db)
    try:
        with engine.connect() as conn:
            ids = _sessions(conn, db, names)
            for session in ids:
                if db == "postgresql":
                    conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": session})
                else:
                    _kill_mariadb(conn, session)
            started = time.monotonic()
            while ids and _sessions(conn, db, names) and time.monotonic() - started < IDLE_WAIT_S:
                time.sleep(0.5)
            if ids:
                waited = time.monotonic() - started
                print(f"  {db:<10} {len(ids)} ended session(s) finished in the server after {waited:.1f} s")
            return len(ids)
    finally:
        engine.dispose()


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one measurement in a process group of its own; at the timeout the whole group is
    killed (a side's own child processes too, which would otherwise run on beside the next)."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _reset_databases(db: str, workdir: Path) -> dict[str, str]:
    """Fresh, empty databases for the syncd, dlt and ceiling sides; returns their URLs."""
    urls = {side: DB_URLS[db].format(dir=workdir, name=name) for side, name in DB_NAMES.items()}
    shutil.rmtree(workdir / DLT_STATE, ignore_errors=True)  # dlt's local state of an earlier run
    if db == "sqlite":
        for path in workdir.glob("bench_*.db*"):
            path.unlink()
        return urls
    _stop_sessions(db)
    engine = _admin_engine(db)
    with engine.connect() as conn:
        if db == "mariadb":
            for name in DLT_MARIADB_DATABASES:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        for name in DB_NAMES.values():
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return urls


def _measure(cmd: list[str], n: int, db: str, scenario: str, side: str, *, timeout: float) -> Measurement:
    try:
        done = _run(cmd, timeout)
    except subprocess.TimeoutExpired:
        ended = _stop_sessions(db)  # the killed process's statement would run on in the server
        print(f"  {db:<10} {scenario:<12} {side:<7} timeout (server sessions ended: {ended})", flush=True)
        return Measurement(n, db, scenario, side, "timeout", wall_s=timeout, detail=f"over {timeout:.0f} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[:300]
        print(f"  {db:<10} {scenario:<12} {side:<7} error    {tail}", flush=True)
        return Measurement(n, db, scenario, side, "error", detail=tail)
    data = json.loads(lines[-1])
    detail = ""
    if side == "syncd":
        detail = (
            f"ins {data['inserted']} upd {data['updated']} del {data['deleted']} "
            f"same {data['unchanged']} quar {data['quarantined']}"
        )
        if data.get("cpu_s") is not None:
            detail += f"; CPU run {data['cpu_s']:.2f}"
            if data.get("worker_cpu_s") is not None:
                detail += f" + worker {data['worker_cpu_s']:.2f}"
            detail += " s"
        if data.get("worker_peak_rss_mb") is not None:  # the two peaks the RSS column adds up
            detail += f"; RSS run {data['run_peak_rss_mb']:.0f} + worker {data['worker_peak_rss_mb']:.0f} MB"
        if data.get("error"):
            detail += f" error: {data['error'][:200]}"
    elif data.get("table_rows") is not None:  # dlt: what its table holds after the load
        detail = f"table rows {data['table_rows']}"
    read_mb = data.get("disk_read_mb")
    if read_mb is not None:
        read = f"read {read_mb:,.0f} MB from disk"
        detail = f"{detail}; {read}" if detail else read
    m = Measurement(
        n,
        db,
        scenario,
        side,
        data["status"],
        data["wall_s"],
        data["rows"],
        data["peak_rss_mb"],
        detail,
        read_mb,
    )
    print(
        f"  {db:<10} {scenario:<12} {side:<7} {m.status:<8} {m.rows:>8} rows {m.wall_s:8.2f} s "
        f"{m.rows_per_s:>10,.0f} rows/s {m.peak_rss_mb:7.1f} MB  {detail}",
        flush=True,
    )
    return m


def run(args: argparse.Namespace) -> list[Measurement]:
    """Every measurement ``args.repeat`` times; one median measurement each (see :func:`combine`).

    Each round starts from nothing: a fresh gateway process (the same seed: the same records and
    the same 1% changed), empty databases. A measurement that timed out is not run again in the
    later rounds (dlt's merge re-loads on SQLite and MariaDB: each would take the timeout again)."""
    rounds: list[list[Measurement]] = []
    timed_out: dict[tuple[str, str, str], Measurement] = {}
    for number in range(args.repeat):
        if args.repeat > 1:
            print(f"round {number + 1} of {args.repeat}", flush=True)
        rounds.append(_round(args, timed_out))
    return combine(rounds)


def combine(rounds: list[list[Measurement]]) -> list[Measurement]:
    """One measurement per (N, db, scenario, side) from the rounds' samples of it.

    All successful: the sample of the median wall time (the lower middle one of an even count),
    with the highest peak RSS of all samples (the memory goal is about the worst case) and the
    samples' wall times in ``detail``. Otherwise the first sample that did not succeed (a timeout,
    an error): one failure is the result, never hidden behind a median."""
    samples: dict[tuple[int, str, str, str], list[Measurement]] = {}
    for measurements in rounds:
        for m in measurements:
            samples.setdefault((m.n, m.db, m.scenario, m.side), []).append(m)
    combined: list[Measurement] = []
    for runs in samples.values():
        failed = [m for m in runs if m.status != "success"]
        if failed:
            combined.append(failed[0])
            continue
        if len(runs) == 1:
            combined.append(runs[0])
            continue
        ordered = sorted(runs, key=lambda m: m.wall_s)
        middle = ordered[(len(ordered) - 1) // 2]
        walls = " / ".join(f"{m.wall_s:.2f}" for m in runs)
        detail = f"{middle.detail}; " if middle.detail else ""
        combined.append(
            replace(
                middle,
                peak_rss_mb=max(m.peak_rss_mb for m in runs),
                detail=f"{detail}median of {len(runs)}: {walls} s",
            )
        )
    return combined


def _configs(work: Path, urls: dict[str, str], gateway_url: str, batch_size: int) -> dict[str, Path]:
    """The syncd configurations of one database: ``inc`` (first load and incremental re-sync),
    ``snap`` (full snapshot), ``gone`` (full snapshot with ``snapshot_delete``), ``ceil``."""
    def syncd(name: str, *, incremental: bool = True, snapshot_delete: bool = False) -> Path:
        return write_config(
            work / name,
            db_url=urls["syncd"],
            gateway_url=gateway_url,
            incremental=incremental,
            batch_size=batch_size,
            snapshot_delete=snapshot_delete,
        )

    return {
        "inc": syncd("incremental"),
        "snap": syncd("snapshot", incremental=False),
        "gone": syncd("snapshot-gone", incremental=False, snapshot_delete=True),
        "ceil": write_config(work / "ceiling", db_url=urls["ceiling"], gateway_url=gateway_url),
    }


def _workdir(out: Path, db: str, n: int) -> Path:
    """One database's folder of a run: its SQLite files, configurations and dlt's local state."""
    return out / f"{db}-{n}"


def _dlt_command(gateway_url: str, setup: dict[str, Any], scenario: str, since: str | None) -> list[str]:
    """run_dlt.py's command line for one scenario on one database (``setup``: see ``_round``)."""
    cmd = [
        sys.executable,
        str(HERE / "run_dlt.py"),
        *("--gateway", gateway_url),
        *("--db", setup["urls"]["dlt"]),
        *("--workdir", str(setup["work"] / DLT_STATE)),
    ]
    if since:
        cmd += ["--since", since]
    if scenario in DLT_REPLACE:
        cmd.append("--replace")
    return cmd


def _timeout(args: argparse.Namespace, scenario: str) -> float:
    """Seconds allowed to one measurement of ``scenario`` (``--initial-timeout`` for first loads)."""
    initial: float | None = args.initial_timeout
    return initial if scenario == "initial" and initial is not None else float(args.timeout)


def _dlt_skipped(first_load: Measurement | None, scenario: str) -> Measurement | None:
    """What dlt's ``scenario`` gives without being run when its ``first_load`` (on that database)
    did not finish (``DLT_AFTER_LOAD``); None: run it."""
    if scenario not in DLT_AFTER_LOAD or first_load is None or first_load.status == "success":
        return None
    m = first_load
    why = f"not run: dlt's first load on this database ended in {m.status}, its table lacks the records"
    print(f"  {m.db:<10} {scenario:<12} {'dlt':<7} skipped  ({why})", flush=True)
    return Measurement(m.n, m.db, scenario, "dlt", "skipped", detail=why)


def _round(args: argparse.Namespace, timed_out: dict[tuple[str, str, str], Measurement]) -> list[Measurement]:
    """One run of every scenario on every database and side, from empty databases."""
    n, dbs, sides = args.records, args.dbs, args.sides
    out = Path(args.out).resolve()
    results: list[Measurement] = []

    def measure(cmd: list[str], db: str, scenario: str, side: str) -> Measurement:
        earlier = timed_out.get((db, scenario, side))
        if earlier is not None:
            print(f"  {db:<10} {scenario:<12} {side:<7} timed out in an earlier round", flush=True)
            return earlier
        m = _measure(cmd, n, db, scenario, side, timeout=_timeout(args, scenario))
        if m.status == "timeout":
            timed_out[db, scenario, side] = m
            if side == "dlt":
                # the killed load stays pending in dlt's local pipeline state, and dlt's next run()
                # would load that package and exit without extracting its own data: start the
                # next dlt measurement without it (dlt restores the schema from the database)
                shutil.rmtree(_workdir(out, db, n) / DLT_STATE, ignore_errors=True)
        return m

    dlt_first: dict[str, Measurement] = {}  # dlt's first load on each database

    gateway = GatewayProcess(n, args.seed, args.latency_ms)
    py = sys.executable
    try:
        setup: dict[str, dict[str, Any]] = {}
        for db in dbs:
            work = _workdir(out, db, n)
            work.mkdir(parents=True, exist_ok=True)
            urls = _reset_databases(db, work)
            setup[db] = {"work": work, "urls": urls, **_configs(work, urls, gateway.url, args.batch_size)}
        since: str | None = None
        for scenario in SCENARIOS[: args.scenarios]:
            if scenario == "incremental":
                since = gateway.ask("now")["now"]
                gateway.ask("update 0.01")
            elif scenario == "snapshot":
                gateway.ask("update 0.01")
            elif scenario == "snapshot-del":
                gateway.ask("delete 0.01")
            elif scenario == "snapshot-gone":
                gateway.ask("remove 0.01")
            print(f"{scenario} (N={n:,})", flush=True)
            for db in dbs:
                s = setup[db]
                if "syncd" in sides:
                    cfg = s[SYNCD_CONFIG.get(scenario, "snap")]
                    results.append(measure(_syncd_command(args, cfg, db, scenario), db, scenario, "syncd"))
                if "dlt" in sides:
                    window = since if scenario == "incremental" else None
                    results.append(
                        _dlt_skipped(dlt_first.get(db), scenario)
                        or measure(_dlt_command(gateway.url, s, scenario, window), db, scenario, "dlt")
                    )
                    dlt_first.setdefault(db, results[-1])  # scenarios run in order: the first is initial
                if "ceiling" in sides and scenario == "initial":
                    cmd = [
                        py,
                        str(HERE / "run_ceiling.py"),
                        str(s["ceil"]),
                        "residents",
                        "--records",
                        str(n),
                        "--seed",
                        str(args.seed),
                    ]
                    results.append(measure(cmd, db, scenario, "ceiling"))
    finally:
        gateway.close()
    return results


def _syncd_command(args: argparse.Namespace, config: Path, db: str, scenario: str) -> list[str]:
    """The command of one syncd measurement (with ``--profile`` under ``--profile-dir``)."""
    cmd = [args.syncd_python, str(HERE / "run_syncd.py"), str(config), "residents"]
    if args.profile_dir is not None:  # one cProfile per measurement: a later round's replaces it
        profile = Path(args.profile_dir).resolve() / f"{db}-{scenario}-{args.records}.prof"
        profile.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--profile", str(profile)]
    return cmd


def _interpreter_label(python: str) -> str:
    """Which environment ran the syncd side, for the results' machine line."""
    # absolute, not resolved: every venv's python is a link to the same base interpreter
    if Path(python).absolute() == Path(sys.executable).absolute():
        return "the harness's venv (with dlt)"
    return f"{Path(python).parent.parent.name} (syncd's runtime dependencies only)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", "-n", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dbs", type=lambda s: s.split(","), default=["sqlite", "postgresql", "mariadb"])
    p.add_argument("--sides", type=lambda s: s.split(","), default=["syncd", "dlt", "ceiling"])
    p.add_argument("--scenarios", type=int, default=len(SCENARIOS), help="run only the first K scenarios")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds the gateway waits before every answer (0: loopback as is; 50: a distant gateway)",
    )
    p.add_argument("--batch-size", type=int, default=1000, help="defaults.batch_size of the syncd side")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per measurement")
    p.add_argument(
        "--initial-timeout",
        type=float,
        default=None,
        help="seconds allowed per first load (every side; default: --timeout): dlt's first load of 10⁶ "
        "needs more than its merges are worth waiting for",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every measurement, each from empty databases; the table keeps each one's median",
    )
    p.add_argument(
        "--syncd-python",
        default=sys.executable,
        help="the interpreter of the syncd side: `make bench` passes a venv holding syncd's runtime "
        "dependencies only, as deployed, so that dlt's own (rich, pygments, ...) are not imported by "
        "syncd's libraries and counted in its time and memory",
    )
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument(
        "--profile-dir",
        default=None,
        help="write a cProfile of each syncd run (the run's process, not the read worker) here, as "
        "DB-SCENARIO-N.prof, the last round's kept; the profiler's own cost is in that run's figures",
    )
    p.add_argument("--write-results", action="store_true", help="rewrite bench/RESULTS.md")
    args = p.parse_args(argv)
    if "dlt" in args.sides:
        try:
            import dlt  # noqa: F401
        except ImportError:
            print("dlt is not installed here: the dlt side is skipped (make bench installs it)", flush=True)
            args.sides = [s for s in args.sides if s != "dlt"]
    os.environ.setdefault(SECRET_ENV, APP_SECRET)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(m) | {"rows_per_s": m.rows_per_s} for m in results]
    machine = machine_info()
    machine["syncd side"] = _interpreter_label(args.syncd_python)
    payload: dict[str, Any] = {"machine": machine, "results": rows}
    (out / f"results-{args.records}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(markdown_table(payload["results"]))
    if args.write_results:
        write_results(HERE / "RESULTS.md", HERE / "out")
    return exit_status(results)


def exit_status(results: list[Measurement]) -> int:
    """1 when a syncd or ceiling measurement did not succeed; dlt's timeouts (its merge re-loads
    on SQLite and MariaDB take far longer than syncd's) are results, shown in the table, and so are
    the merges skipped after them (``DLT_AFTER_LOAD``)."""
    shown = ("timeout", "skipped")
    failed = [m for m in results if m.status != "success" and not (m.side == "dlt" and m.status in shown)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
