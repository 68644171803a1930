"""Progress of long manual runs: a live line on a terminal, plain periodic lines otherwise.

The runner calls the reporter after every page (:class:`syncd.runner.Progress`); the reporter
shows pages, records, the rate and — when the upstream reported a total — an ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from syncd.runner import Progress

__all__ = ["ProgressReporter", "format_progress"]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_progress(p: Progress) -> str:
    rate = p.records / p.elapsed if p.elapsed > 0 else 0.0
    text = f"{p.dataset}: page {p.pages}, {p.records:,} records, {rate:,.0f}/s"
    if p.reported_total:
        share = min(p.records / p.reported_total, 1.0)
        text += f", {share:.0%} of {p.reported_total:,}"
        if rate > 0 and p.records < p.reported_total:
            text += f", ETA {_duration((p.reported_total - p.records) / rate)}"
    return text


class ProgressReporter:
    """``reporter(progress)`` after each page; ``reporter.done()`` after the run."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._live = stream.isatty() if live is None else live
        self._every = every
        self._clock = clock
        self._last_print = clock()
        self._width = 0
        self._shown = False

    def __call__(self, progress: Progress) -> None:
        text = format_progress(progress)
        if self._live:
            pad = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{pad}")
            self._stream.flush()
            self._width = len(text)
            self._shown = True
        elif self._clock() - self._last_print >= self._every:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_print = self._clock()

    def done(self) -> None:
        """End the live line so the summary starts on a line of its own."""
        if self._live and self._shown:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = False
        self._width = 0
