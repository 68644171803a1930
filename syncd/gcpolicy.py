"""The cyclic garbage collector while a run reads (standard library only).

A run allocates container objects by the million (every decoded record is a dict, often with
lists and dicts inside) and frees nearly all of them by reference counting a page or two later;
cycles are rare. With CPython's default thresholds (a young collection every 700 allocations) a
re-sync of 100,000 records ran 532 collections: the records of the pages in flight, still
referenced, were scanned young, moved up a generation, scanned again and promoted to the old
generation, whose growth then set off full collections over the whole heap (every imported
module, the configuration, SQLAlchemy's metadata). 0.15 s of a 0.9 s snapshot re-sync, 0.10 s of
it in full collections, all of it holding the interpreter lock the read-ahead thread needs too.

:func:`fewer_collections` wraps a run: what the process holds when the run starts is frozen
(``gc.freeze``: left out of every collection until the run ends) and a young collection waits
for :data:`YOUNG_THRESHOLD` allocations. Runs of the daemon overlap in threads and the settings
are the process's: the first run in sets them, the last one out restores them. A threshold of 0
(collection switched off by whoever embeds syncd) is left as it is. Memory does not grow in
practice: the collector only frees reference cycles, which a run hardly makes; a new one now waits
for 10,000 allocations instead of 700, and one among the frozen objects for the end of the run.

The read worker is a process of its own that only reads: :func:`settle_worker` sets the same once.

Both also fix glibc's mmap threshold for the process (:func:`syncd.procmem.fixed_mmap_threshold`:
page-sized blocks would otherwise fragment the heap for good).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from syncd.procmem import fixed_mmap_threshold

__all__ = ["YOUNG_THRESHOLD", "fewer_collections", "settle_worker"]

YOUNG_THRESHOLD = 10_000
"""Allocations between two young collections while a run reads (CPython's default: 700).
10,000 and 50,000 measured the same; 2,000 kept a third of the collector's cost."""


def _collect_less() -> tuple[int, int, int]:
    """Freeze the heap and raise the young threshold (unless collection is off); returns the
    thresholds as they were."""
    threshold = gc.get_threshold()
    if threshold[0] > 0:
        gc.freeze()
        gc.set_threshold(max(threshold[0], YOUNG_THRESHOLD), *threshold[1:])
    return threshold


class _Setting:
    """The process's collector setting, shared by overlapping runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved = (0, 0, 0)

    def enter(self) -> None:
        fixed_mmap_threshold()
        with self._lock:
            if self._runs == 0:
                self._saved = _collect_less()
            self._runs += 1

    def leave(self) -> None:
        with self._lock:
            self._runs -= 1
            if self._runs == 0 and self._saved[0] > 0:
                gc.set_threshold(*self._saved)
                gc.unfreeze()


_SETTING = _Setting()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """During the block: the heap as it is now frozen, young collections every
    :data:`YOUNG_THRESHOLD` allocations; as before once the last overlapping block ends."""
    _SETTING.enter()
    try:
        yield
    finally:
        _SETTING.leave()


def settle_worker() -> None:
    """The read worker's setting, once its imports are done: as :func:`fewer_collections`, for
    the rest of the process."""
    fixed_mmap_threshold()
    _collect_less()
