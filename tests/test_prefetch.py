"""The page read-ahead thread (syncd.sources.prefetch): order, errors, bounds, cleanup, context."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator

import pytest

from syncd.sources.prefetch import Prefetcher

RUN = contextvars.ContextVar("RUN", default="none")


class Pages:
    """A page generator that records what happened to it, and in which thread."""

    def __init__(self, n: int, *, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.produced = 0
        self.closed_in: str | None = None
        self.ran_in: set[str] = set()
        self.context: list[str] = []

    def __call__(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                self.ran_in.add(threading.current_thread().name)
                self.context.append(RUN.get())
                if i == self.fail_at:
                    raise ValueError(f"page {i} is broken")
                self.produced += 1
                yield i
        finally:
            self.closed_in = threading.current_thread().name


def test_items_arrive_in_order_from_another_thread_with_the_callers_context() -> None:
    pages = Pages(50)
    token = RUN.set("run-42")
    try:
        got = list(Prefetcher(pages(), name="reader"))
    finally:
        RUN.reset(token)
    assert got == list(range(50))
    assert pages.ran_in == {"reader"} and pages.closed_in == "reader"
    assert set(pages.context) == {"run-42"}  # the run's log fields reach the reading thread


def test_an_error_comes_after_the_pages_read_before_it() -> None:
    reader = Prefetcher(Pages(10, fail_at=3)())
    assert [next(reader), next(reader), next(reader)] == [0, 1, 2]
    with pytest.raises(ValueError, match="page 3 is broken"):
        next(reader)
    with pytest.raises(StopIteration):  # and the reader is finished
        next(reader)


def test_reading_ahead_is_bounded() -> None:
    pages = Pages(1000)
    reader = Prefetcher(pages(), depth=2)
    try:
        time.sleep(0.3)  # the consumer takes nothing
        # `depth` pages wait in the queue, one more is held by the thread waiting to put it
        assert pages.produced <= 3
        assert next(reader) == 0
    finally:
        reader.close()


def test_close_stops_the_thread_and_closes_the_iterator_in_it() -> None:
    pages = Pages(1000)
    reader = Prefetcher(pages(), name="reader")
    assert next(reader) == 0
    reader.close()
    assert not reader._thread.is_alive()
    assert pages.closed_in == "reader"  # a server-side cursor is released by the thread that used it
    assert pages.produced < 10
    reader.close()  # idempotent
    with pytest.raises(StopIteration):
        next(reader)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(iter([1]), depth=0)
