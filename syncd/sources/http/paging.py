"""Pagination styles, registered by their YAML ``type``: page_number, offset, cursor.

A :class:`Paginator` is made fresh for each read. ``first()`` gives the parameters of the
first page; ``next(page)`` gives those of the following page, or None when the read is over:

- an empty page ends the read;
- the reported total, reached exactly, ends it (no extra request for an empty page);
- a short page (fewer records than ``page_size``) ends page_number and offset reads;
- a cursor read ends when the gateway sends no next cursor.

Guards turn silent loss and endless loops into clear errors: the same cursor twice, the same
page twice (a gateway ignoring the page parameter), or a first page shorter than the page
size while the total says more exist (a gateway silently capping the page size).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from syncd.config.model import CursorPagination, OffsetPagination, PageNumberPagination, PaginationConfig
from syncd.errors import PermanentUpstreamError
from syncd.sources.http.envelope import ParsedPage
from syncd.sources.http.texts import RecordTexts

__all__ = [
    "PAGINATORS",
    "CursorPaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "Paginator",
    "build_paginator",
]

# words with which gateways complain about the page size (besides the size parameter's own name)
_SIZE_WORDS = ("page size", "pagesize", "page_size", "每页", "页大小", "条数", "最大记录")


class Paginator(ABC):
    """Parameters for each page of one read, and the decision to stop."""

    type_name: ClassVar[str]
    size_param: str | None

    def __init__(self, cfg: PageNumberPagination | OffsetPagination | CursorPagination) -> None:
        self.page_size = cfg.page_size
        self.pages = 0
        self.seen = 0
        self._edges: tuple[Any, Any] | None = None

    @abstractmethod
    def first(self) -> dict[str, Any]:
        """The parameters of the first page."""

    def snapshot(self) -> Paginator:
        """A copy that goes on from this paginator's state, independent of it (a read worker
        reads on from a page this one stopped at: :class:`~syncd.sources.base.ResumePoint`)."""
        return copy.copy(self)  # its state is ints and a tuple replaced, never changed, per page

    def next(self, page: ParsedPage) -> dict[str, Any] | None:
        """The parameters of the page after ``page``, or None when ``page`` was the last."""
        count = len(page.records)
        self.pages += 1
        self.seen += count
        if count == 0:
            return None
        self._guard_repeat(page.records)
        # stop when the total is reached exactly; having read *more* than reported means the total
        # is wrong (some gateways always send 0), and trusting it would silently drop pages
        if page.total is not None and self.seen == page.total:
            return None
        if count < self.page_size and self._short_page_ends():
            if self.pages == 1 and page.total is not None and page.total > count:
                raise PermanentUpstreamError(
                    f"the gateway returned {count} records for a page size of {self.page_size} while "
                    f"reporting {page.total} in total: it probably caps the page size silently; "
                    f"lower pagination.page_size to {count}"
                )
            return None
        return self._advance(page)

    def size_hint(self, message: str) -> str | None:
        """The operator's fix when an error message is about the page size, else None."""
        text = message.lower()
        words = (*_SIZE_WORDS, self.size_param.lower()) if self.size_param else _SIZE_WORDS
        if not any(w in text for w in words):
            return None
        sent = f", sent as {self.size_param!r}" if self.size_param else ""
        return f"if the gateway caps the page size, lower pagination.page_size (now {self.page_size}{sent})"

    @abstractmethod
    def _advance(self, page: ParsedPage) -> dict[str, Any] | None: ...

    def _short_page_ends(self) -> bool:
        return True

    def _guard_repeat(self, records: list[dict[str, Any]] | RecordTexts) -> None:
        edges = (records[0], records[-1])
        if self._edges is not None and edges == self._edges:
            raise PermanentUpstreamError(
                f"page {self.pages} repeats page {self.pages - 1}: the gateway seems to ignore the "
                f"paging parameters ({self._param_names()}); check the pagination settings"
            )
        self._edges = edges

    @abstractmethod
    def _param_names(self) -> str: ...


class PageNumberPaginator(Paginator):
    type_name = "page_number"

    def __init__(self, cfg: PageNumberPagination) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.size_param = cfg.size_param
        self._page = cfg.first_page

    def first(self) -> dict[str, Any]:
        self._page = self.cfg.first_page
        return {self.cfg.page_param: self._page, self.cfg.size_param: self.page_size}

    def _advance(self, page: ParsedPage) -> dict[str, Any]:
        self._page += 1
        return {self.cfg.page_param: self._page, self.cfg.size_param: self.page_size}

    def _param_names(self) -> str:
        return f"pagination.page_param {self.cfg.page_param!r}"


class OffsetPaginator(Paginator):
    type_name = "offset"

    def __init__(self, cfg: OffsetPagination) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.size_param = cfg.limit_param

    def first(self) -> dict[str, Any]:
        return {self.cfg.offset_param: self.cfg.first_offset, self.cfg.limit_param: self.page_size}

    def _advance(self, page: ParsedPage) -> dict[str, Any]:
        return {
            self.cfg.offset_param: self.cfg.first_offset + self.seen,
            self.cfg.limit_param: self.page_size,
        }

    def _param_names(self) -> str:
        return f"pagination.offset_param {self.cfg.offset_param!r}"


class CursorPaginator(Paginator):
    """Follows the envelope's ``cursor_path``; a short page with a next cursor does not end the read."""

    type_name = "cursor"

    def __init__(self, cfg: CursorPagination) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        self.size_param = cfg.size_param
        self._cursors: set[str] = set()

    def first(self) -> dict[str, Any]:
        self._cursors.clear()
        return {self.cfg.size_param: self.page_size} if self.cfg.size_param else {}

    def snapshot(self) -> Paginator:
        other = copy.copy(self)
        other._cursors = set(self._cursors)  # the one state changed in place
        return other

    def _short_page_ends(self) -> bool:
        return False

    def _advance(self, page: ParsedPage) -> dict[str, Any] | None:
        cursor = page.cursor
        if cursor is None:
            return None
        if cursor in self._cursors:
            raise PermanentUpstreamError(
                f"the gateway sent the same next cursor twice (after page {self.pages}): reading on would "
                "loop forever; check envelope.cursor_path and pagination.cursor_param"
            )
        self._cursors.add(cursor)
        params: dict[str, Any] = {self.cfg.cursor_param: cursor}
        if self.cfg.size_param:
            params[self.cfg.size_param] = self.page_size
        return params

    def _param_names(self) -> str:
        return f"pagination.cursor_param {self.cfg.cursor_param!r}"


PAGINATORS: dict[str, type[Paginator]] = {
    "page_number": PageNumberPaginator,
    "offset": OffsetPaginator,
    "cursor": CursorPaginator,
}


def build_paginator(cfg: PaginationConfig) -> Paginator:
    """A fresh paginator for one read; an unknown type names the known ones."""
    try:
        cls = PAGINATORS[cfg.type]
    except KeyError:
        known = ", ".join(sorted(PAGINATORS))
        raise ValueError(f"unknown pagination type {cfg.type!r}; known types: {known}") from None
    return cls(cfg)
