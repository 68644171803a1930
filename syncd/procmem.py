"""The peak resident memory of this process, as the kernel counts it (no dependencies)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

__all__ = ["peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """This process's high-water mark of resident memory, in bytes.

    ``VmHWM`` of ``/proc/self/status`` on Linux, not ``ru_maxrss``: Linux carries the spawning
    process's high-water mark over ``execve`` into the new program's ``ru_maxrss``, so a small
    process started by a large one (the read worker by the run, a benchmark run by its harness)
    reports the large one's figure. Elsewhere ``ru_maxrss`` is what there is."""
    try:
        with Path("/proc/self/status").open(encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
