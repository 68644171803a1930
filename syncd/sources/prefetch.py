"""Read a source's pages one page ahead, in a background thread.

While the runner maps and writes page N, page N+1 is already being requested, received and
decoded: the wait for the upstream (a provincial gateway answers a page in 0.1-2 s) and the
database's own work overlap instead of adding up. The page iterator runs entirely in the
thread (so a server-side cursor is opened, used and closed by one thread) with a copy of the
caller's context variables (the run's ``dataset``/``run_id`` log fields). At most ``depth``
pages wait in memory.

An exception raised while reading is re-raised by ``__next__`` in the caller, after the
pages read before it. ``close()`` stops the thread at its next page boundary, closes the page
iterator there (releasing its cursor or connection), and waits for it: a request in flight is
finished or times out first, as it would without the thread.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")

_POLL_S = 0.1  # how often a thread blocked on a full queue looks for close()


class Prefetcher(Generic[T]):
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer."""

    def __init__(self, items: Iterator[T], *, depth: int = 1, name: str = "syncd-prefetch") -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._items = items
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._done = False
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._work,), name=name, daemon=True)
        self._thread.start()

    def _put(self, kind: str, value: object) -> bool:
        while not self._closing.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._put("item", item) or self._closing.is_set():
                    return
            self._put("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
            self._put("error", exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        self._done = True
        self._thread.join()
        if isinstance(value, BaseException):  # kind == "error"
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead, release the iterator and wait for the thread (idempotent)."""
        self._done = True
        self._closing.set()
        while True:  # unblock a thread waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
