"""The benchmark's tables: per-scenario figures, the ratios the goals speak of, the machine.

:func:`markdown_table` turns the measurements of one run into a Markdown table plus a ratio
table (syncd/dlt and syncd/ceiling rows/s; initial-load time over re-sync time);
:func:`write_results` rewrites ``bench/RESULTS.md`` from every ``results-*.json`` in the output
directory, headed by the machine the figures came from.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diskio import page_cache_reclaim  # sibling module: bench/ is on sys.path wherever report is imported

__all__ = ["machine_info", "markdown_table", "write_results"]


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    return found.group(1).strip() if found else "unknown"


def _ram_gb() -> float:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    found = re.search(r"^MemTotal:\s*(\d+) kB", text, flags=re.M)
    return int(found.group(1)) / 1024 / 1024 if found else 0.0


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_info() -> dict[str, str]:
    import sqlite3

    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_ram_gb():.1f} GB",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _version(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"]),
        "mariadb": _version(["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-e", "SELECT VERSION()"]),
    }
    info["orjson decode"] = f"{_decode_rate():,.0f} records/s"
    # idle page cache reclaimed: a measurement may read its database back from disk (bench/diskio.py)
    info["page cache"] = page_cache_reclaim() or "kept while memory lasts"
    try:
        from importlib.metadata import version

        info["dlt"] = version("dlt")
    except Exception:  # noqa: BLE001 - dlt is optional here
        info["dlt"] = "not installed"
    return info


def _decode_rate() -> float:
    """orjson.loads of the benchmark's own records, records/s (best of 5): the machine's speed in
    the unit the goals of issue #7 were set in (880,000 records/s on the machine they came from)."""
    import time
    from datetime import datetime

    import orjson

    from syncd.gateway.data import generate_records

    pages = [orjson.dumps(generate_records(1000, seed=s, start_time=datetime(2026, 1, 1))) for s in range(5)]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for page in pages:
            orjson.loads(page)
        best = min(best, time.perf_counter() - started)
    return 5000 / best


def _fmt(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    """``a[key] / b[key]``; a timed-out ``a`` (its wall time is the timeout) gives a lower bound, and
    so does a timed-out ``b`` in rows/s (it did not load its N rows in the timeout: fewer rows/s)."""
    # a lower bound is rounded down, never up past what was measured (8.64 is "> 8×", not "> 9×")
    if a and b and b["status"] == "timeout" and key == "rows_per_s" and a["status"] == "success":
        if not (b["wall_s"] and b["n"]):
            return "–"
        return f"> {math.floor(a[key] * b['wall_s'] / b['n'] * 100) / 100:.2f}×"
    if not (a and b and b[key]) or b["status"] != "success":
        return "–"
    if a["status"] == "timeout":  # its true time is longer still: a lower bound
        return f"> {math.floor(a[key] / b[key])}×" if key == "wall_s" else "–"
    return f"{a[key] / b[key]:.2f}×"


def _ratios(rows: Sequence[dict[str, Any]]) -> list[str]:
    # a timed-out comparison side still bounds the ratio: its wall time is the timeout
    kept = ("success", "timeout")
    by = {(r["n"], r["db"], r["scenario"], r["side"]): r for r in rows if r["status"] in kept}
    lines = [
        "| N | db | syncd/dlt initial (rows/s) | syncd/ceiling initial | initial ÷ incremental (time) "
        "| snapshot: dlt ÷ syncd (time) | snapshot scan rows/s | snapshot-del: dlt ÷ syncd "
        "| snapshot-gone: dlt ÷ syncd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, db in sorted({(r["n"], r["db"]) for r in rows}):
        def get(scenario: str, side: str, n: int = n, db: str = db) -> dict[str, Any] | None:
            return by.get((n, db, scenario, side))

        s_init, s_snap = get("initial", "syncd"), get("snapshot", "syncd")
        lines.append(
            f"| {n:,} | {db} | {_ratio(s_init, get('initial', 'dlt'), 'rows_per_s')} "
            f"| {_ratio(s_init, get('initial', 'ceiling'), 'rows_per_s')} "
            f"| {_ratio(s_init, get('incremental', 'syncd'), 'wall_s')} "
            f"| {_ratio(get('snapshot', 'dlt'), s_snap, 'wall_s')} "
            f"| {_fmt(s_snap['rows_per_s']) if s_snap else '–'} "
            f"| {_ratio(get('snapshot-del', 'dlt'), get('snapshot-del', 'syncd'), 'wall_s')} "
            f"| {_ratio(get('snapshot-gone', 'dlt'), get('snapshot-gone', 'syncd'), 'wall_s')} |"
        )
    return lines


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| N | db | scenario | side | status | rows | wall s | rows/s | peak RSS MB | detail |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['db']} | {r['scenario']} | {r['side']} | {r['status']} | {r['rows']:,} "
            f"| {r['wall_s']:.2f} | {_fmt(r['rows_per_s'])} | {r['peak_rss_mb']:.0f} | {r['detail']} |"
        )
    return "\n".join([*lines, "", *_ratios(rows)])


def write_results(path: Path, out: Path) -> None:
    """Rewrite RESULTS.md from every ``results-*.json`` under ``out`` (smallest N first)."""
    runs = []
    for file in sorted(out.glob("results-*.json"), key=lambda f: int(f.stem.split("-")[1])):
        runs.append(json.loads(file.read_text(encoding="utf-8")))
    if not runs:
        return
    machine = runs[-1]["machine"]
    rows = [r for run in runs for r in run["results"]]
    head = [
        "# Benchmark results (latest)",
        "",
        "Written by `make bench N=… WRITE=1` (`bench/harness.py --write-results`); see `bench/README.md`.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
    ]
    path.write_text("\n".join([*head, markdown_table(rows), ""]), encoding="utf-8")
