"""One measured syncd run, in its own process: ``python bench/run_syncd.py CONFIG DATASET``.

Loads the configuration, runs the dataset once with :func:`syncd.runner.run_dataset` (exactly
what ``syncd sync DATASET`` does) and prints one JSON line: status, counts, wall seconds of the
run and its peak RSS (``VmHWM``, :func:`syncd.procmem.peak_rss_bytes`; every scenario is a fresh
process, so each is measured alone): the process's own plus, when the run used the read worker
(a first load), the worker's own as it reported it — the sum of the two peaks, an upper bound of
what both held at once. Not ``ru_maxrss``: Linux carries the spawning process's high-water mark
into it (the harness's 82 MB floored every figure; the worker's, the run's size when it started).
``disk_read_mb``: what the whole machine read from disk while the clock ran (``diskio.py``), or null.
``cpu_s``: the CPU seconds of the run's process (all its threads) while the clock ran, and
``worker_cpu_s`` the read worker's (null without one): against ``wall_s`` they tell whether the run
waited (for the worker, the database, the gateway) or computed.
``--profile FILE`` writes a cProfile of the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from diskio import disk_read_mb, paged_in_bytes  # sibling module: the script's directory is on sys.path

from syncd.procmem import peak_rss_bytes

__all__ = ["main"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", type=Path)
    p.add_argument("dataset")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of the run here")
    args = p.parse_args()

    from syncd.config import load_config
    from syncd.runner import run_dataset
    from syncd.sources import load_builtin_sources
    from syncd.targets import StateStore, create_target_engine

    # imports before the clock, as for dlt (run_dlt.py): the run is measured, not the
    # interpreter's start; the source kinds would otherwise be imported by the first run
    load_builtin_sources()

    app = load_config(args.config)
    engine = create_target_engine(app.target.url.get_secret_value())
    store = StateStore(engine, app.target.table_prefix)
    profiler = None
    if args.profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    paged_in = paged_in_bytes()
    cpu_before, children_before = _cpu_s(), _cpu_s(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = run_dataset(app, app.datasets[args.dataset], store, trigger="bench")
    wall = time.perf_counter() - started
    cpu, children_cpu = _cpu_s() - cpu_before, _cpu_s(resource.RUSAGE_CHILDREN) - children_before
    read_mb = disk_read_mb(paged_in, paged_in_bytes())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(args.profile))
    engine.dispose()
    c = result.counts
    print(
        json.dumps(
            {
                "status": result.status,
                "error": result.error,
                "wall_s": wall,
                "rows": c.fetched,
                "inserted": c.inserted,
                "updated": c.updated,
                "deleted": c.deleted,
                "unchanged": c.unchanged,
                "quarantined": c.quarantined,
                "peak_rss_mb": (peak_rss_bytes() + (result.worker_peak_rss_bytes or 0)) / 2**20,
                "run_peak_rss_mb": peak_rss_bytes() / 2**20,
                "worker_peak_rss_mb": (
                    None if result.worker_peak_rss_bytes is None else result.worker_peak_rss_bytes / 2**20
                ),
                "disk_read_mb": read_mb,
                "cpu_s": cpu,
                "worker_cpu_s": children_cpu if result.worker_peak_rss_bytes is not None else None,
            }
        ),
        flush=True,
    )
    return 0 if result.ok else 1


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process and all its threads, or (``RUSAGE_CHILDREN``)
    of its children that ended: the read worker, which has ended when the run returns."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
