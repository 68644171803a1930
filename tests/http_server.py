"""A scriptable HTTP server on 127.0.0.1 for the HTTP source's tests (real sockets, no mocks).

A test queues canned :class:`Reply` objects (served in order), routes a path to a handler
function (``server.route("/auth/token", fn)``), or installs a default handler; every received
request is recorded in ``server.requests``. Replies can misbehave the way networks and
gateways do: delay (read timeouts), truncate a body under its Content-Length, break a chunked
stream, stream an endless chunked body, reset the TCP connection, or lie about the Date.

A handler that raises is answered with HTTP 599 and its error is kept in ``server.errors``;
the fixtures assert that list is empty, so a broken test handler cannot pass silently.

``connection``, ``app_config`` and ``dataset_config`` build the configuration the way an
operator's YAML does (plain mappings validated by the config model).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from syncd.config.model import AppConfig, DatasetConfig

__all__ = [
    "LoopbackServer",
    "Recorded",
    "Reply",
    "ScriptedResidents",
    "app_config",
    "connection",
    "dataset_config",
    "envelope",
    "serve",
]


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    truncate: int | None = None  # send only this many body bytes under the full Content-Length
    chunked: bool = False  # Transfer-Encoding: chunked (in 1 KiB chunks)
    break_chunked: bool = False  # chunked, but the stream stops before its final chunk
    endless: bool = False  # an endless chunked body (until the client hangs up)
    reset: bool = False  # reset the connection (RST) instead of answering
    date: str | None = None  # a Date header other than now

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        if self.json is not None:
            return json.dumps(self.json, ensure_ascii=False).encode("utf-8")
        return b""


def envelope(
    records: list[dict[str, Any]] | None = None,
    *,
    total: int | None = None,
    code: Any = "0",
    msg: str = "success",
    **extra: Any,
) -> Reply:
    """A ``{code, msg, data: {total, list}}`` reply (style 1 of GATEWAYS.md)."""
    data: dict[str, Any] = {"list": records or []}
    if total is not None:
        data["total"] = total
    return Reply(json={"code": code, "msg": msg, "data": data, **extra})


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    at: float  # time.monotonic() on arrival

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


Handler = Callable[[Recorded], Reply]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        recorded = Recorded(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        owner = self.server.owner
        try:
            reply = owner.reply_for(recorded)
        except Exception as exc:  # noqa: BLE001 - reported through owner.errors and checked by the fixture
            owner.errors.append(f"{recorded.method} {recorded.path}: {type(exc).__name__}: {exc}")
            reply = Reply(status=599, body=b"test handler failed")
        self.close_connection = True
        # the client may go away (timeouts, aborted reads): expected in these tests
        with contextlib.suppress(OSError):
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        payload = reply.payload()
        self.send_response_only(reply.status)
        self.send_header("Date", reply.date or formatdate(usegmt=True))
        self.send_header("Connection", "close")
        headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        if reply.chunked or reply.break_chunked or reply.endless:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._send_chunked(payload, reply)
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload if reply.truncate is None else payload[: reply.truncate])
        self.wfile.flush()

    def _send_chunked(self, payload: bytes, reply: Reply) -> None:
        if reply.endless:
            chunk = b"x" * 65536
            stop = time.monotonic() + 20
            while time.monotonic() < stop:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            return
        for i in range(0, len(payload), 1024):
            piece = payload[i : i + 1024]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if reply.break_chunked:
                self.wfile.flush()
                return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # broken pipes from aborted clients are part of the tests


class LoopbackServer:
    """A real HTTP server on 127.0.0.1:<free port>, scripted by the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._routes: dict[str, Handler] = {}
        self.handler: Handler | None = None
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.owner = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # scripting -------------------------------------------------------------

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def route(self, path: str, handler: Handler) -> None:
        self._routes[path] = handler

    def reply_for(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            route = self._routes.get(request.path)
            queued = self._queue.popleft() if route is None and self._queue else None
        if route is not None:
            return route(request)
        if queued is not None:
            return queued
        if self.handler is not None:
            return self.handler(request)
        raise AssertionError("no reply queued and no handler installed")

    def to(self, path: str) -> list[Recorded]:
        """The requests received for ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # lifecycle -------------------------------------------------------------

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ScriptedResidents:
    """A loopback gateway in the demo dataset's wire format (token auth, ``/api/residents/query``
    paged by ``pageNo``) serving the pages a test sets, whatever the window asked for."""

    def __init__(self) -> None:
        self.server = LoopbackServer().start()
        self.pages: list[list[dict[str, Any]]] = []
        self.server.route(
            "/auth/token",
            lambda _r: Reply(json={"code": "0", "data": {"accessToken": "t", "expiresIn": 7200}}),
        )
        self.server.route("/api/residents/query", self._page)

    def _page(self, request: Recorded) -> Reply:
        number = int(request.query.get("pageNo", "1"))
        page = self.pages[number - 1] if number <= len(self.pages) else []
        return envelope(page, total=sum(len(p) for p in self.pages))


def serve() -> Iterator[LoopbackServer]:
    """Body of a pytest fixture: a started server, stopped afterwards, with no handler errors."""
    with LoopbackServer() as server:
        yield server
    assert not server.errors, f"the test server's handler failed: {server.errors}"


def connection(url: str, **overrides: Any) -> dict[str, Any]:
    """A connection block as an operator would write it in YAML, with test-sized retries and timeouts."""
    cfg: dict[str, Any] = {
        "type": "http",
        "base_url": url,
        "retry": {"attempts": 4, "backoff_initial": "10ms", "backoff_max": "50ms", "deadline": "5s"},
        "timeout": {"connect": "1s", "read": "2s"},
    }
    cfg.update(overrides)
    return cfg


def app_config(conn: dict[str, Any], *, name: str = "gw", timezone: str = "Asia/Shanghai") -> AppConfig:
    return AppConfig.model_validate(
        {"target": {"url": "sqlite://"}, "connections": {name: conn}, "timezone": timezone}
    )


def dataset_config(source: dict[str, Any], *, connection_name: str = "gw") -> DatasetConfig:
    """A dataset reading ``source`` (the keys under ``source:`` besides type and connection)."""
    return DatasetConfig.model_validate(
        {
            "name": "residents",
            "source": {"type": "http", "connection": connection_name, **source},
            "authorization": {
                "approval_code": "SP-2026-001",
                "fields": ["id"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-12-31",
            },
            "target": {"table": "residents", "key": ["id"]},
            "columns": {"id": {"source": "id"}},
        }
    )
