"""What every source kind provides: pages of raw records, read from a window.

A source is built from its dataset's config by a factory registered in
:data:`syncd.sources.SOURCES` under the YAML ``type``. It only reads; it never writes state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = ["Page", "ReadStats", "Source", "Window"]


@dataclass(frozen=True, slots=True)
class Window:
    """The part of the dataset one run reads.

    ``since`` is None for a full read (first run, or a source without incremental support);
    ``until`` is the run's start minus the safety lag: rows newer than that are left for the
    next run, so a row committed late upstream within the lag is never skipped.
    """

    since: datetime | None
    until: datetime | None


@dataclass(slots=True)
class Page:
    """One page of raw upstream records, as decoded (dicts, nested as upstream sent them)."""

    records: list[dict[str, Any]]
    number: int  # 1-based sequence number of this page in the run
    reported_total: int | None = None  # the upstream's own count of matching records, if given


@dataclass(slots=True)
class ReadStats:
    """Counters a source keeps while reading; the runner records them on the run."""

    requests: int = 0
    retries: int = 0
    pages: int = 0
    records: int = 0
    bytes: int = 0
    reported_total: int | None = None
    complete: bool = False  # True once the source has read to the end of the window
    # the reported total differed between two pages: records entered or left the result while it
    # was paged, so a page-number or offset read may have skipped one (the run reads it again)
    total_changed: bool = False
    warnings: list[str] = field(default_factory=list)


class Source(Protocol):
    """A readable upstream. ``read`` yields pages in order and sets ``stats.complete`` at the end."""

    stats: ReadStats

    def read(self, window: Window) -> Iterator[Page]: ...

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        """The record's update time (for the watermark), or None when the source is not incremental."""
        ...

    def close(self) -> None: ...
