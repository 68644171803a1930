"""What the gateway styles share: request/response values, parameter parsing, the page cache.

A style (``styles/*.py``) turns a :class:`Request` into a :class:`Response`; the HTTP handler in
:mod:`syncd.gateway.server` does the socket work, including the transport-level faults that a
response carries (``truncated``, ``invalid_json``, ``slow``, ``reset``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import orjson

from syncd.gateway.data import TIME_FORMAT, format_time
from syncd.gateway.faults import FaultPlan
from syncd.gateway.store import ResidentStore

__all__ = [
    "JSON_TYPE",
    "TRANSPORT_FAULTS",
    "Context",
    "ParamError",
    "Request",
    "RequestLogEntry",
    "Response",
    "int_param",
    "json_response",
    "time_param",
]

JSON_TYPE: Final = "application/json;charset=UTF-8"
TRANSPORT_FAULTS: Final = frozenset({"truncated", "invalid_json", "slow", "reset"})
# query parameters never written to the request log (credentials and what is derived from them)
_UNLOGGED: Final = frozenset({"sign", "appSecret", "accessToken", "access_token", "token", "secret"})


class ParamError(ValueError):
    """A request parameter is missing or malformed; the message is shown to the client."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    params: dict[str, str]  # query parameters, first value of each
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    fault: str | None = None  # a transport fault for the HTTP handler to apply
    delay: float = 0.0  # seconds to wait before answering ("slow")


class RequestLogEntry(NamedTuple):
    """One data request as the gateway saw it (credentials and signatures left out)."""

    method: str
    path: str
    params: dict[str, str]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status=status, body=orjson.dumps(payload))


def int_param(params: dict[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(f"{name} 必须是整数") from None
    if value < minimum:
        raise ParamError(f"{name} 不能小于 {minimum}")
    return value


def time_param(params: dict[str, str], name: str, formats: tuple[str, ...] = (TIME_FORMAT,)) -> str | None:
    """A time-range parameter as a canonical ``YYYY-MM-DD HH:MM:SS`` string (None when absent)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    for fmt in formats:
        try:
            return format_time(datetime.strptime(raw, fmt))
        except ValueError:
            continue
    shown = " 或 ".join(f.replace("%Y", "yyyy").replace("%m", "MM").replace("%d", "dd")
                       .replace("%H", "HH").replace("%M", "mm").replace("%S", "ss") for f in formats)
    raise ParamError(f"{name} 格式错误，应为 {shown}")


class Context:
    """State every style shares: the store, the fault plan, the request log and the page cache."""

    def __init__(
        self,
        store: ResidentStore,
        faults: FaultPlan,
        *,
        page_size_cap: int,
        prerender: bool,
        prerender_max_bytes: int,
        server_time_offset: float,
    ) -> None:
        self.store = store
        self.faults = faults
        self.page_size_cap = page_size_cap
        self.prerender = prerender
        self.prerender_max_bytes = prerender_max_bytes
        self.server_time_offset = server_time_offset
        self.request_log: list[RequestLogEntry] = []
        self._cache: dict[Hashable, bytes] = {}
        self._cache_bytes = 0
        self._cache_version = -1
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        """The gateway's wall clock in epoch milliseconds (shifted by ``server_time_offset``)."""
        return int((time.time() + self.server_time_offset) * 1000)

    def log(self, request: Request) -> None:
        params = {k: v for k, v in request.params.items() if k not in _UNLOGGED}
        self.request_log.append(RequestLogEntry(request.method, request.path, params))

    def draw_fault(self, applicable: frozenset[str], *, auth: bool = False) -> str | None:
        return self.faults.draw(applicable, auth=auth)

    def fault_response(self, kind: str | None) -> Response | None:
        """The canned answer of a protocol-independent fault, or None for the other kinds."""
        if kind == "http_502":
            body = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
            return Response(status=502, body=body.encode(), content_type="text/html;charset=UTF-8")
        if kind == "http_429":
            response = json_response({"code": "429", "msg": "请求过于频繁，请稍后再试"}, status=429)
            response.headers.append(("Retry-After", str(self.faults.retry_after)))
            return response
        if kind == "busy":
            return json_response({"code": "50001", "msg": "系统繁忙，请稍后再试"})
        return None

    def transport(self, response: Response, kind: str | None) -> Response:
        """Attach a transport fault (applied by the HTTP handler) to a normal response."""
        if kind in TRANSPORT_FAULTS:
            response.fault = kind
            if kind == "slow":
                response.delay = self.faults.slow_seconds
        return response

    def page(
        self, key: tuple[Hashable, ...], window: tuple[str | None, str | None], render: Callable[[], bytes]
    ) -> bytes:
        """A rendered page body, from the cache in ``prerender`` mode (cleared on any mutation).

        ``key`` names the page within a window (style, page number, size); the window enters the
        cache key as the span of records it selects (:meth:`ResidentStore.span`), not as its text:
        a first load's window ending "now" and no window at all share pages while they select the
        same records."""
        if not self.prerender:
            return render()
        span = self.store.span(*window)  # (version, first, end), read together
        key, version = (*key, *span), span[0]
        with self._lock:
            if self._cache_version != version:
                self._cache.clear()
                self._cache_bytes = 0
                self._cache_version = version
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        body = render()
        with self._lock:
            if self._cache_version == version and self._cache_bytes + len(body) <= self.prerender_max_bytes:
                self._cache[key] = body
                self._cache_bytes += len(body)
        return body
