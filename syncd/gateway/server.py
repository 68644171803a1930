"""The simulated provincial gateway: a real HTTP/1.1 server on loopback, in-process.

One :class:`Gateway` serves three wire styles over one :class:`ResidentStore`:

- Style 1 (``/auth/token``, ``/api/residents/query``): token, page numbers — the demo's style
- Style 2 (``/sd/rkxx``): HMAC-signed headers, offset paging, ``data`` as a JSON string
- Style 3 (``/zj/refreshTokenByKey``, ``/zj/refreshTokenBySec``, ``/zj/api/residents``):
  two-tier secrets, MD5-signed query parameters

It is stdlib ``ThreadingHTTPServer`` (daemon threads, keep-alive, Content-Length on every
answer, Nagle off) with faults injected on data requests by :attr:`Gateway.faults`.
``GET /health`` answers ``{"status": "ok", "records": N}``.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlsplit

import structlog

from syncd.gateway.faults import FaultPlan
from syncd.gateway.protocol import Context, Request, RequestLogEntry, Response, json_response
from syncd.gateway.store import ResidentStore
from syncd.gateway.styles import HmacStyle, Style, TokenStyle, TwoTierStyle

__all__ = ["Gateway"]

log = structlog.get_logger(__name__)

_MAX_BODY: Final = 1 << 20  # request bodies are tiny (credentials); refuse anything larger


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        self.gateway = gateway
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall on
        # machines without DNS; loopback needs none of it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up early (timeouts, resets) is routine here, not worth a traceback
        log.debug("gateway connection error", client=str(client_address), exc_info=True)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "syncd-gateway/0.1"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request access log: the benchmark must not pay for it."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_BODY:
            self.close_connection = True
            self._write(json_response({"code": "400", "msg": "Content-Length 无效"}, status=400))
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        params: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            params.setdefault(key, value)
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, split.path, params, headers, body)
        try:
            response = self.server.gateway.dispatch(request)
        except Exception:  # any bug must still answer, as a real gateway would
            log.exception("gateway failed to answer", method=self.command, path=split.path)
            response = json_response({"code": "500", "msg": "服务器内部错误"}, status=500)
        self._write(response)

    def _write(self, response: Response) -> None:
        delay = response.delay + self.server.gateway.latency
        if delay:
            time.sleep(delay)
        if response.fault == "reset":
            self._reset()
            return
        body = response.body
        if response.fault == "invalid_json":
            body = body[: max(len(body) // 2, 1)]
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in response.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.fault == "truncated":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)
        except OSError:  # the client went away (e.g. its read timeout fired first)
            self.close_connection = True

    def _reset(self) -> None:
        """Close the connection abruptly: SO_LINGER 0 makes close() send a TCP RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()


class Gateway:
    """The simulated gateway. ``start()`` returns the base URL; use as a context manager.

    ``records`` generated records (seeded by ``seed``) are added to ``store`` (a new one when
    None), with update times ending before now. Credentials: Style 1 ``app_key``/``app_secret``,
    Style 2 ``sd_client_id``/``sd_secret``, Style 3 ``zj_app_key``/``zj_app_secret``.
    ``revoke_on_issue``: a new Style 1 token revokes the earlier ones (Style 3 always keeps one
    request secret at a time). :attr:`credentials_issued` counts what the gateway issued.
    """

    def __init__(
        self,
        store: ResidentStore | None = None,
        *,
        records: int = 0,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size_cap: int = 1000,
        token_ttl: int = 7200,
        revoke_on_issue: bool = False,
        app_key: str = "demo-app",
        app_secret: str = "demo-secret",  # noqa: S107 - the demo's published credentials
        sd_client_id: str = "sd-client",
        sd_secret: str = "sd-secret",  # noqa: S107
        sd_page_cap: int = 100,
        zj_app_key: str = "zj-app",
        zj_app_secret: str = "zj-secret",  # noqa: S107
        zj_request_ttl: float = 900.0,
        zj_refresh_ttl: float = 48 * 3600.0,
        zj_daily_quota: int | None = None,
        faults: FaultPlan | None = None,
        prerender: bool = False,
        prerender_max_bytes: int = 1 << 30,
        bad_ratio: float = 0.0,
        start_time: datetime | None = None,
        server_time_offset: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.store = store if store is not None else ResidentStore(seed=seed)
        if records:
            # at most 2 s per record: starting 2n s back keeps every update time in the past
            first = start_time or (self.store.clock() - timedelta(seconds=2 * records + 60))
            self.store.generate(records, first, bad_ratio=bad_ratio)
        self._host = host
        self._port = port
        if latency < 0:
            raise ValueError("latency cannot be negative")
        self.latency = latency  # seconds added to every answer: a gateway far away or busy
        self._ctx = Context(
            self.store,
            faults or FaultPlan(),
            page_size_cap=page_size_cap,
            prerender=prerender,
            prerender_max_bytes=prerender_max_bytes,
            server_time_offset=server_time_offset,
        )
        self.token_style = TokenStyle(
            self._ctx,
            app_key=app_key,
            app_secret=app_secret,
            token_ttl=token_ttl,
            revoke_on_issue=revoke_on_issue,
        )
        self.hmac_style = HmacStyle(self._ctx, client_id=sd_client_id, secret=sd_secret, page_cap=sd_page_cap)
        self.twotier_style = TwoTierStyle(
            self._ctx,
            app_key=zj_app_key,
            app_secret=zj_app_secret,
            request_ttl=zj_request_ttl,
            refresh_ttl=zj_refresh_ttl,
            daily_quota=zj_daily_quota,
        )
        self._routes: list[tuple[str, Style]] = [
            (prefix, style)
            for style in (self.token_style, self.hmac_style, self.twotier_style)
            for prefix in style.prefixes
        ]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server else "not started"
        return f"Gateway({where}, records={len(self.store)})"

    # ------------------------------------------------------------------ shared state

    @property
    def faults(self) -> FaultPlan:
        return self._ctx.faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._ctx.faults = plan

    @property
    def request_log(self) -> list[RequestLogEntry]:
        """Data requests seen so far: (method, path, params), credentials and signatures left out."""
        return self._ctx.request_log

    @property
    def credentials_issued(self) -> dict[str, int]:
        """Credentials issued so far: Style 1 tokens (``token``), Style 3 request secrets (``two_tier``)."""
        return {"token": self.token_style.issued, "two_tier": self.twotier_style.issued}

    def expire_tokens(self) -> None:
        """Every issued credential becomes invalid: Style 1 tokens (40101), Style 3 request secrets (11)."""
        self.token_style.expire_tokens()
        self.twotier_style.expire_request_secrets()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (Style 2 lives under /sd, Style 3 under /zj)."""
        if self._server is None:
            raise RuntimeError("the gateway is not started: call start() first")
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = _Server((self._host, self._port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="syncd-gateway", daemon=True
        )
        self._thread.start()
        log.info("gateway started", url=self.url, records=len(self.store))
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None
        log.info("gateway stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ routing

    def dispatch(self, request: Request) -> Response:
        """Answer one request (the HTTP handler calls this from its thread)."""
        path = request.path
        for prefix, style in self._routes:
            if path.startswith(prefix):
                return style.handle(request)
        if path == "/health":
            return json_response({"status": "ok", "records": len(self.store)})
        return json_response({"code": "404", "msg": "接口不存在"}, status=404)
