"""Reads from disk during a measurement, and whether the machine drops idle page cache.

The benchmark's machines are virtual machines whose kernel runs DAMON with a ``pageout`` scheme:
pages nobody touched for about a minute are reclaimed, clean file pages included, although most
of the memory is free. A database file left idle while another side runs (dlt's first load of
10⁶ records takes two minutes) is then read back from the virtual disk by the next measurement:
the SQLite incremental re-sync of 10⁶ took 3.6-7.9 s after dlt's load and 1.2-1.9 s with its file
in the page cache (fourteenth and fifteenth sessions, bench/RESULTS.md). So every measurement
reports how much the whole machine read from disk while it ran, and the machine line says whether
idle pages are reclaimed.

``pgpgin`` of ``/proc/vmstat`` counts the machine's reads from block devices, every process's:
the database servers' reads (PostgreSQL, MariaDB) are counted beside the measured process's own
(SQLite). Nothing else runs during a measurement, so the difference over its interval is its reads.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["disk_read_mb", "page_cache_reclaim", "paged_in_bytes"]

_VMSTAT = Path("/proc/vmstat")
_DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


def paged_in_bytes(vmstat: Path = _VMSTAT) -> int | None:
    """Bytes the machine has read from block devices since it booted; None where unknown."""
    try:
        for line in vmstat.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == "pgpgin":
                return int(value) * 1024  # the kernel counts KiB
    except (OSError, ValueError):
        pass
    return None


def disk_read_mb(before: int | None, after: int | None) -> float | None:
    """MiB read between two :func:`paged_in_bytes` readings; None when either is unknown."""
    if before is None or after is None:
        return None
    return max(0, after - before) / 2**20


def page_cache_reclaim(root: Path = _DAMON) -> str | None:
    """How DAMON reclaims idle pages here (``"DAMON pageout of pages idle ≥ 60 s"``), or None
    when no running DAMON context has a ``pageout`` scheme (page cache kept until memory is short).
    The minimum age is counted in aggregation intervals; both are read from the scheme's context."""
    found: list[str] = []
    try:
        kdamonds = sorted(p for p in root.iterdir() if p.name.isdigit())
    except OSError:
        return None
    for kdamond in kdamonds:
        try:
            if (kdamond / "state").read_text(encoding="ascii").strip() != "on":
                continue
            for context in sorted((kdamond / "contexts").iterdir()):
                if not context.name.isdigit():
                    continue
                aggr_us = int((context / "monitoring_attrs/intervals/aggr_us").read_text(encoding="ascii"))
                for scheme in sorted((context / "schemes").iterdir()):
                    if not scheme.name.isdigit():
                        continue
                    if (scheme / "action").read_text(encoding="ascii").strip() != "pageout":
                        continue
                    age = int((scheme / "access_pattern/age/min").read_text(encoding="ascii"))
                    found.append(f"DAMON pageout of pages idle ≥ {age * aggr_us / 1e6:.0f} s")
        except (OSError, ValueError):
            continue
    return "; ".join(dict.fromkeys(found)) or None
