"""This process's memory: its peak as the kernel counts it, and how large blocks are allocated
(no dependencies)."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import threading
from pathlib import Path

__all__ = ["MMAP_THRESHOLD", "fixed_mmap_threshold", "peak_rss_bytes"]

MMAP_THRESHOLD = 128 * 1024
"""Blocks at least this large get pages of their own (glibc's default start value)."""
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_lock = threading.Lock()
_state: dict[str, bool] = {}  # "fixed": whether it was set (once per process)


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


def fixed_mmap_threshold() -> bool:
    """Keep glibc's malloc from raising its mmap threshold (once per process; True if set).

    glibc serves a block of at least 128 KiB with pages of its own and returns them when it is
    freed, but every such free raises the threshold to the freed block's size (up to 32 MiB), so
    from then on blocks of that size come from the heap. A read allocates several blocks of about
    a page's size per page (the response body, the JSON parser's buffers) among the page's small,
    longer-lived objects; carved from the heap they leave holes the heap can never give back:
    reading records by their texts (syncd.sources.http.texts) held 13 MB more at the end of a
    10⁵-record read of 550 KB pages (2026-12-07, `MALLOC_MMAP_THRESHOLD_` showed the same).
    Setting the threshold explicitly switches that adjustment off. A ``MALLOC_MMAP_THRESHOLD_`` in
    the environment is the operator's, and is left alone; without glibc there is nothing to set.
    """
    with _lock:
        if "fixed" not in _state:
            _state["fixed"] = False
            if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
                try:
                    mallopt = ctypes.CDLL(None).mallopt
                except (OSError, AttributeError):
                    return False
                mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                _state["fixed"] = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return _state["fixed"]
