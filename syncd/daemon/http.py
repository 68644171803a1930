"""The daemon's monitoring endpoint: ``GET /metrics`` and ``GET /healthz`` on loopback.

A stdlib :class:`~http.server.ThreadingHTTPServer` in a daemon thread. It is deliberately not
``prometheus_client.start_http_server``, which binds 0.0.0.0 and answers on any path (DESIGN §6).

=================  ==============================================================================
``GET /metrics``   200, Prometheus text format 0.0.4 (:meth:`syncd.metrics.Metrics.render`)
``GET /healthz``   200 ``{"status": "ok", ...details}`` or
                   503 ``{"status": "unhealthy", "reasons": [...], ...details}``
other paths        404
other methods      405 with ``Allow: GET`` (unknown, non-standard methods get 501)
=================  ==============================================================================

``health_fn() -> tuple[bool, Mapping[str, Any]]`` is called on every ``/healthz`` request, in the
server's thread, so it must be quick and thread-safe (e.g. compare the last heartbeat with the
clock). Its mapping is merged into the JSON body (values that JSON cannot encode are rendered
with ``str``); put human-readable problems under ``"reasons"`` (a list of strings). A health
function that raises yields a 503. Never put secrets into the details: the body is not redacted.

Usage by the daemon main loop::

    server = HealthServer(metrics, health_fn, host="127.0.0.1", port=9464)
    server.start()        # binds now: raises OSError with a clear message if the port is taken
    ...
    server.stop()         # idempotent; also usable as ``with HealthServer(...) as server:``

Binding another address than loopback exposes the endpoint to the network; put it behind a
firewall. Requests are logged through structlog at debug level only (``http.request``), never to
stderr.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import structlog

from syncd.metrics import CONTENT_TYPE, Metrics

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HealthFn", "HealthServer"]

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464  # the port registered for exporters of this kind in Prometheus' port list

HealthFn = Callable[[], tuple[bool, Mapping[str, Any]]]

_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_PATHS = ("/metrics", "/healthz")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    health_fn: HealthFn

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn(), which can hang for
        # seconds on an intranet without working reverse DNS; we do not need the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # the default prints a traceback to stderr; a client that hangs up is not our problem
        log.debug("http.connection_error", client=str(client_address[0]), exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "syncd"
    sys_version = ""
    timeout = 10  # seconds: a client that stalls must not hold a thread forever

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._health()
        else:
            self._reply(404, _TEXT, f"not found: this server answers only {' and '.join(_PATHS)}\n".encode())

    def _metrics(self) -> None:
        try:
            body = self.server.metrics.render()
        except Exception:  # a broken collector must not kill the endpoint
            log.error("http.metrics_render_failed", exc_info=True)
            self._reply(500, _TEXT, b"metrics could not be rendered; see the syncd log\n")
            return
        self._reply(200, CONTENT_TYPE, body)

    def _health(self) -> None:
        try:
            ok, details = self.server.health_fn()
            body: dict[str, Any] = {"status": "ok" if ok else "unhealthy"}
            body.update((k, v) for k, v in details.items() if k != "status")
        except Exception as exc:  # report unhealthy instead of failing the request
            log.error("http.health_check_failed", exc_info=True)
            ok = False
            body = {"status": "unhealthy", "reasons": [f"health check failed ({type(exc).__name__})"]}
        if not ok:
            body.setdefault("reasons", [])
        payload = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
        self._reply(200 if ok else 503, _JSON, payload)

    def _not_allowed(self) -> None:
        self._reply(405, _TEXT, b"method not allowed: only GET\n", extra={"Allow": "GET"})

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _reply(
        self, code: int, content_type: str, body: bytes, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        log.debug("http.request", client=self.client_address[0], message=format % args)


class HealthServer:
    """Serve ``/metrics`` and ``/healthz`` from a background daemon thread."""

    def __init__(
        self,
        metrics: Metrics,
        health_fn: HealthFn,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
    ) -> None:
        self._metrics = metrics
        self._health_fn = health_fn
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``)."""
        return self._server.server_port if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind and start serving; raise OSError (with the address in the message) if binding fails."""
        if self._server is not None:
            return
        server_cls = _Server6 if ":" in self._host else _Server
        try:
            server = server_cls((self._host, self._port), _Handler)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen on {self._host}:{self._port} for /metrics and /healthz: "
                f"{exc.strerror or exc}",
            ) from exc
        server.metrics = self._metrics
        server.health_fn = self._health_fn
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="syncd-http", daemon=True
        )
        self._thread.start()
        log.info("http.listening", host=self._host, port=server.server_port, paths=list(_PATHS))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
