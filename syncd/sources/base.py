"""What every source kind provides: pages of raw records, read from a window.

A source is built from its dataset's config by a factory registered in
:data:`syncd.sources.SOURCES` under the YAML ``type``. It only reads; it never writes state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from syncd.errors import StopRequested

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "Checkpoint",
    "Page",
    "ReadStats",
    "ResumePoint",
    "Source",
    "StopSignal",
    "Window",
    "digest_texts",
    "watch_stop",
]

STOP_MESSAGE = (
    "the service is stopping; committed batches are kept and the next run resumes "
    "from the unchanged watermark"
)
_POLL_S = 0.1  # how often StopSignal.sleep asks a should_stop callable (an Event is waited on instead)


@dataclass(frozen=True, slots=True)
class Window:
    """The part of the dataset one run reads.

    ``since`` is None for a full read (first run, or a source without incremental support);
    ``until`` is the run's start minus the safety lag: rows newer than that are left for the
    next run, so a row committed late upstream within the lag is never skipped.
    """

    since: datetime | None
    until: datetime | None


Checkpoint = Callable[["sa.Connection"], None]
"""What a source records once the records up to the end of a page are committed (the file source:
a file read to its end goes into its ledger). The runner calls it on the connection of the batch
that commits the page's last record, inside that batch's transaction (:attr:`Page.checkpoint`)."""


@dataclass(slots=True)
class Page:
    """One page of raw upstream records, as decoded (dicts, nested as upstream sent them).

    ``digests``: each record's digest, where the source took it (an http source asked to, see
    :meth:`HttpSource.digest_texts`: over the record's JSON text). ``heads``: the source was asked
    for records by their heads (:meth:`HttpSource.read_heads`): ``records`` is empty, and each
    record is its text (``texts``, minified JSON) plus a dict of the top-level fields asked for.
    """

    records: list[dict[str, Any]]
    number: int  # 1-based sequence number of this page in the run
    reported_total: int | None = None  # the upstream's own count of matching records, if given
    # where the read stands after this page, when the source was asked for it (HttpSource's
    # offer_resume) and another page follows: another process can read on from there
    resume: ResumePoint | None = None
    digests: list[str] | None = None
    texts: list[bytes] | None = None
    heads: list[dict[str, Any]] | None = None
    # the records up to this page's last one are a whole (a file): the runner writes them at once,
    # and commits this with them, when the run's error limit would hold if it ended there
    checkpoint: Checkpoint | None = None


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


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a read stands after one of its pages, so that another reader (the read worker) can
    read on from the next page instead of from the first: the source's own paging state after the
    page, the next page's request parameters, and the read's statistics so far (requests, retries
    and bytes are left out: they count what each reader itself sent and received)."""

    paging: Any  # the source's own state (the http source: a copy of its paginator)
    params: dict[str, Any]  # the next page's request parameters
    stats: ReadStats
    last_total: int | None  # the total the last page reported (a change on the next is a warning)


class StopSignal:
    """A run's stop request (the daemon's SIGTERM) as its source sees it: asked before each request
    and each retry, and waited on instead of sleeping through a backoff, so that a source stuck
    retrying an upstream ends the run at once instead of after its whole retry budget.

    Built from a :class:`threading.Event` (the daemon's: a sleep wakes the moment it is set) or a
    ``should_stop`` callable (asked every 0.1 s while sleeping); without either it never stops."""

    __slots__ = ("_check", "_event")

    def __init__(self, stop: threading.Event | Callable[[], bool] | None = None) -> None:
        self._event = stop if isinstance(stop, threading.Event) else None
        self._check: Callable[[], bool] | None = None if isinstance(stop, threading.Event) else stop

    def requested(self) -> bool:
        if self._event is not None:
            return self._event.is_set()
        return self._check is not None and self._check()

    def check(self) -> None:
        """Raise :class:`~syncd.errors.StopRequested` when the stop was requested."""
        if self.requested():
            raise StopRequested(STOP_MESSAGE)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`~syncd.errors.StopRequested` as soon as the stop is
        requested (before, or while sleeping)."""
        if self._event is not None:
            if self._event.wait(max(0.0, seconds)):
                raise StopRequested(STOP_MESSAGE)
            return
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_POLL_S, left))


NEVER = StopSignal()
"""The stop signal of a source nobody asked to watch one (``syncd sync``, tests): never stops."""


def watch_stop(source: object, stop: StopSignal) -> None:
    """Give ``source`` the run's stop signal, where it takes one (``watch_stop``: the http source,
    the read worker); a source without it is stopped by the runner between its pages."""
    watch = getattr(source, "watch_stop", None)
    if watch is not None:
        watch(stop)


class Source(Protocol):
    """A readable upstream. ``read`` yields pages in order and sets ``stats.complete`` at the end."""

    stats: ReadStats

    def read(self, window: Window) -> Iterator[Page]: ...

    def update_time(self, record: dict[str, Any]) -> datetime | None:
        """The record's update time (for the watermark), or None when the source is not incremental."""
        ...

    def close(self) -> None: ...


def digest_texts(source: Source, key: bytes | None) -> bool:
    """Ask ``source`` to give each page's record digests, taken over the records' texts with
    ``key`` (an http source: :meth:`HttpSource.digest_texts`); False where it gives none and its
    reader digests the records by their values, and when ``key`` is None (no record digests)."""
    if key is None:
        return False
    ask = getattr(source, "digest_texts", None)
    return bool(ask(key)) if ask is not None else False
