"""Hostile answers end to end: huge, endless and pathologically nested bodies (DESIGN §4.5).

A full run of the demo dataset against a loopback server that answers the data request with
a body declared as 400 MB (and streamed until the client hangs up), an endless chunked body, or
JSON nested a million levels deep. The run fails with a clear message naming the limit
(``max_response_bytes``) or the bad JSON, memory stays bounded (tracemalloc peak), never a crash.
"""

from __future__ import annotations

import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.runner import RunResult, run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET, SECRET_ENV, write_config

TOKEN = b'{"code": "0", "data": {"accessToken": "t", "expiresIn": 7200}}'
LIMIT = 4 * 1024 * 1024


class RawServer:
    """Answers /auth/token properly and every other request with ``mode``'s hostile body."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    if b"/auth/token" in head.split(b"\r\n", 1)[0]:
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                            + str(len(TOKEN)).encode()
                            + b"\r\n\r\n"
                            + TOKEN
                        )
                        continue
                    self._hostile(conn)
                    return
        except OSError:
            return

    def _hostile(self, conn: socket.socket) -> None:
        block = b" " * 65536
        if self.mode == "huge":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400000000\r\n\r\n"
            )
            conn.sendall(b'{"code": "0", "data": {"list": [')
            for _ in range(400_000_000 // len(block)):
                conn.sendall(block)
        elif self.mode == "endless":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            conn.sendall(b"21\r\n" + b'{"code": "0", "data": {"list": [ ' + b"\r\n")
            while True:
                conn.sendall(b"10000\r\n" + block + b"\r\n")
        else:  # nested: a million '[' — small on the wire, deadly for a recursive parser
            body = b'{"code": "0", "data": {"list": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}}"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["huge", "endless", "nested"])
def hostile(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    server = RawServer(request.param)
    yield server
    server.close()


def run_against(server: RawServer, tmp_path: Path, sqlite_url: str) -> RunResult:
    cfg = write_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=server.url,
        retry="{attempts: 2, backoff_initial: 5ms, backoff_max: 10ms, deadline: 20s}",
    )
    text = cfg.read_text(encoding="utf-8").replace(
        "    timeout:", f"    max_response_bytes: {LIMIT}\n    timeout:"
    )
    cfg.write_text(text, encoding="utf-8")
    app = load_config(cfg)
    engine = create_target_engine(sqlite_url)
    try:
        return run_dataset(app, app.datasets["residents"], StateStore(engine))
    finally:
        engine.dispose()


def test_hostile_body_fails_clearly_with_bounded_memory(
    hostile: RawServer, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    tracemalloc.start()
    try:
        result = run_against(hostile, tmp_path, sqlite_url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "failed", result
    assert result.error
    if hostile.mode == "nested":
        assert "JSON" in result.error or "json" in result.error or "nest" in result.error, result.error
    else:
        assert "max_response_bytes" in result.error, result.error
    assert peak < 8 * LIMIT, f"memory peaked at {peak / 2**20:.0f} MiB for a {LIMIT / 2**20:.0f} MiB limit"
