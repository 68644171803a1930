"""Paginators: parameters per page, every stop condition, the loop guards, and page-size caps."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, get_args

import pytest
from http_server import (
    LoopbackServer,
    Recorded,
    Reply,
    app_config,
    connection,
    dataset_config,
    envelope,
    serve,
)

from syncd.config.model import CursorPagination, OffsetPagination, PageNumberPagination
from syncd.errors import PermanentUpstreamError
from syncd.sources.base import Window
from syncd.sources.http.envelope import ParsedPage
from syncd.sources.http.paging import PAGINATORS, Paginator, build_paginator
from syncd.sources.http.source import HttpSource


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


def paginator(**cfg: Any) -> Paginator:
    model = {"page_number": PageNumberPagination, "offset": OffsetPagination, "cursor": CursorPagination}
    return build_paginator(model[cfg["type"]].model_validate(cfg))


def page(ids: range | list[int], total: int | None = None, cursor: str | None = None) -> ParsedPage:
    return ParsedPage(records=[{"id": i} for i in ids], total=total, cursor=cursor)


def test_registry_covers_every_configurable_type() -> None:
    models = (PageNumberPagination, OffsetPagination, CursorPagination)
    assert set(PAGINATORS) == {get_args(m.model_fields["type"].annotation)[0] for m in models}


def test_unknown_type_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known types: cursor, offset, page_number"):
        build_paginator(SimpleNamespace(type="scroll"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- page_number


def test_page_number_params_and_short_page_stop() -> None:
    p = paginator(type="page_number", page_size=2)
    assert p.first() == {"pageNo": 1, "pageSize": 2}
    assert p.next(page([1, 2])) == {"pageNo": 2, "pageSize": 2}
    assert p.next(page([3, 4])) == {"pageNo": 3, "pageSize": 2}
    assert p.next(page([5])) is None  # short page
    assert p.seen == 5


def test_page_number_stops_on_an_empty_page() -> None:
    p = paginator(type="page_number", page_size=2, page_param="page", size_param="rows", first_page=0)
    assert p.first() == {"page": 0, "rows": 2}
    assert p.next(page([1, 2])) == {"page": 1, "rows": 2}
    assert p.next(page([])) is None


def test_page_number_stops_when_the_total_is_reached() -> None:
    p = paginator(type="page_number", page_size=2)
    p.first()
    assert p.next(page([1, 2], total=4)) is not None
    assert p.next(page([3, 4], total=4)) is None  # full page, but nothing more to ask for


def test_a_total_below_what_was_read_is_not_trusted() -> None:
    p = paginator(type="page_number", page_size=2)
    p.first()
    assert p.next(page([1, 2], total=0)) == {"pageNo": 2, "pageSize": 2}  # a gateway that always says 0
    assert p.next(page([3], total=0)) is None


def test_silently_capped_page_size_is_an_error() -> None:
    p = paginator(type="page_number", page_size=1000)
    p.first()
    with pytest.raises(PermanentUpstreamError, match=r"lower pagination\.page_size to 100"):
        p.next(page(range(100), total=12345))


def test_a_repeated_page_is_an_error_not_an_endless_loop() -> None:
    p = paginator(type="page_number", page_size=2)
    p.first()
    p.next(page([1, 2]))
    with pytest.raises(PermanentUpstreamError, match="ignore the paging parameters"):
        p.next(page([1, 2]))


# --------------------------------------------------------------------------- offset


def test_offset_one_based_like_shandong() -> None:
    p = paginator(type="offset", offset_param="STARTNUM", limit_param="PAGENUM", page_size=3, first_offset=1)
    assert p.first() == {"STARTNUM": 1, "PAGENUM": 3}
    assert p.next(page([1, 2, 3])) == {"STARTNUM": 4, "PAGENUM": 3}
    assert p.next(page([4, 5, 6])) == {"STARTNUM": 7, "PAGENUM": 3}
    assert p.next(page([7])) is None


def test_offset_stops_on_total_and_empty() -> None:
    p = paginator(type="offset", page_size=2)
    assert p.first() == {"offset": 0, "limit": 2}
    assert p.next(page([1, 2], total=3)) == {"offset": 2, "limit": 2}
    p2 = paginator(type="offset", page_size=2)
    p2.first()
    assert p2.next(page([])) is None


# --------------------------------------------------------------------------- cursor


def test_cursor_follows_until_no_cursor() -> None:
    p = paginator(type="cursor", page_size=2)
    assert p.first() == {"pageSize": 2}
    assert p.next(page([1, 2], cursor="c1")) == {"cursor": "c1", "pageSize": 2}
    assert p.next(page([3], cursor="c2")) == {"cursor": "c2", "pageSize": 2}  # a short page does not end it
    assert p.next(page([4, 5], cursor=None)) is None


def test_cursor_without_size_param() -> None:
    p = paginator(type="cursor", cursor_param="scrollId", size_param=None)
    assert p.first() == {}
    assert p.next(page([1], cursor="s1")) == {"scrollId": "s1"}


def test_same_cursor_twice_is_an_error() -> None:
    p = paginator(type="cursor", page_size=2)
    p.first()
    p.next(page([1, 2], cursor="c1"))
    with pytest.raises(PermanentUpstreamError, match="same next cursor twice"):
        p.next(page([3, 4], cursor="c1"))


def test_cursor_stops_on_empty_page_and_total() -> None:
    p = paginator(type="cursor", page_size=2)
    p.first()
    assert p.next(page([], cursor="c9")) is None
    p = paginator(type="cursor", page_size=2)
    p.first()
    assert p.next(page([1, 2], total=2, cursor="c1")) is None


# --------------------------------------------------------------------------- against a gateway


def capped_gateway(cap: int, total: int, *, size_param: str, message: str) -> Any:
    def handle(req: Recorded) -> Reply:
        size = int(req.query[size_param])
        if size > cap:
            return envelope(code="40000", msg=message)
        start = (int(req.query.get("pageNo", 1)) - 1) * size
        return envelope([{"id": i} for i in range(start, min(start + size, total))], total=total)

    return handle


@pytest.mark.parametrize(
    ("message", "size_param"),
    [("pageSize不能大于100", "pageSize"), ("每页条数超过上限", "pageSize"), ("rows must be <= 100", "rows")],
)
def test_page_size_over_the_cap_says_what_to_change(
    server: LoopbackServer, message: str, size_param: str
) -> None:
    server.handler = capped_gateway(100, 250, size_param=size_param, message=message)
    source = HttpSource.from_config(
        app_config(connection(server.url)),
        dataset_config(
            {"path": "/q", "pagination": {"type": "page_number", "size_param": size_param, "page_size": 1000}}
        ),
    )
    with pytest.raises(PermanentUpstreamError) as info:
        list(source.read(Window(None, None)))
    source.close()
    assert "lower pagination.page_size" in str(info.value)
    assert message in str(info.value)
    assert len(server.requests) == 1  # a business error, not retried


def test_unrelated_errors_get_no_page_size_hint(server: LoopbackServer) -> None:
    # the size parameter appears in the URL of every error; only the gateway's message counts
    server.queue(envelope(code="40403", msg="无权访问该资源"))
    source = HttpSource.from_config(app_config(connection(server.url)), dataset_config({"path": "/q"}))
    with pytest.raises(PermanentUpstreamError) as info:
        list(source.read(Window(None, None)))
    source.close()
    assert "pageSize=100" in str(info.value)
    assert "page_size" not in str(info.value)


def test_reading_every_page_of_a_gateway(server: LoopbackServer) -> None:
    server.handler = capped_gateway(100, 250, size_param="pageSize", message="too big")
    source = HttpSource.from_config(app_config(connection(server.url)), dataset_config({"path": "/q"}))
    pages = list(source.read(Window(None, None)))
    source.close()
    assert [len(p.records) for p in pages] == [100, 100, 50]
    assert [r.query["pageNo"] for r in server.requests] == ["1", "2", "3"]
    assert source.stats.complete
