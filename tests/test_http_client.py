"""HttpClient and Envelope against a real loopback server: retries, limits, decoding, codes, secrets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
from http_server import LoopbackServer, Recorded, Reply, connection, envelope, serve
from structlog.testing import capture_logs

from syncd.config.model import EnvelopeConfig, HttpConnection
from syncd.errors import PermanentUpstreamError, StopRequested
from syncd.sources.base import StopSignal
from syncd.sources.http.client import HttpClient
from syncd.sources.http.diagnose import parse_retry_after
from syncd.sources.http.envelope import Envelope, ParsedPage
from syncd.sources.http.redact import sanitize_url


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


def make_client(server: LoopbackServer, **overrides: Any) -> HttpClient:
    return HttpClient(HttpConnection.model_validate(connection(server.url, **overrides)), name="gw")


def fetch(client: HttpClient, envelope_cfg: dict[str, Any] | None = None, path: str = "/api/q") -> ParsedPage:
    env = Envelope(EnvelopeConfig.model_validate(envelope_cfg or {}))
    return client.fetch("GET", path, params={"pageNo": 1}, parse=env.parse)


def retries(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "http.retry"]


# --------------------------------------------------------------------------- retries


def test_5xx_is_retried_then_succeeds(server: LoopbackServer) -> None:
    server.queue(Reply(status=502), Reply(status=503, body=b"busy"), envelope([{"id": 1}], total=1))
    with make_client(server) as client, capture_logs() as logs:
        page = fetch(client)
    assert page.records == [{"id": 1}]
    assert page.total == 1
    assert (client.stats.requests, client.stats.retries) == (3, 2)
    events = retries(logs)
    assert [e["status"] for e in events] == [502, 503]
    assert [e["attempt"] for e in events] == [1, 2]
    assert all(e["log_level"] == "warning" and e["wait_seconds"] >= 0 for e in events)
    assert events[0]["reason"] == "HTTP 502"
    assert events[0]["url"].endswith("/api/q?pageNo=1")


def test_429_retry_after_seconds_is_honoured(server: LoopbackServer) -> None:
    server.queue(Reply(status=429, headers={"Retry-After": "1"}), envelope([{"id": 1}]))
    with make_client(server) as client, capture_logs() as logs:
        fetch(client)
    first, second = server.requests
    assert second.at - first.at >= 1.0
    assert retries(logs)[0]["wait_seconds"] == 1.0


def test_retry_after_http_date() -> None:
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_is_capped_at_the_deadline(server: LoopbackServer) -> None:
    server.handler = lambda req: Reply(status=503, headers={"Retry-After": "30"})
    retry = {"attempts": 10, "backoff_initial": "10ms", "backoff_max": "50ms", "deadline": "600ms"}
    started = time.monotonic()
    with make_client(server, retry=retry) as client, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    assert time.monotonic() - started < 2.0
    assert info.value.status == 503
    assert "gave up after" in str(info.value)


def test_deadline_bounds_total_retry_time(server: LoopbackServer) -> None:
    server.handler = lambda req: Reply(status=500)
    retry = {"attempts": 100, "backoff_initial": "50ms", "backoff_max": "100ms", "deadline": "700ms"}
    started = time.monotonic()
    with make_client(server, retry=retry) as client, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 1.6
    assert 3 <= len(server.requests) < 100
    assert "retry.deadline" in str(info.value)


@pytest.mark.parametrize(
    ("status", "hint"),
    [(400, "source.params"), (403, "授权"), (404, "source.path"), (405, "source.method")],
)
def test_other_4xx_are_not_retried(server: LoopbackServer, status: int, hint: str) -> None:
    server.queue(Reply(status=status, body=b'{"error": "nope"}'))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    assert len(server.requests) == 1
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value)
    assert hint in str(info.value)
    assert "nope" in str(info.value)


def test_408_is_retried(server: LoopbackServer) -> None:
    server.queue(Reply(status=408), envelope([]))
    with make_client(server) as client:
        assert fetch(client).records == []
    assert len(server.requests) == 2


def test_truncated_body_is_retried(server: LoopbackServer) -> None:
    full = envelope([{"id": i} for i in range(50)])
    server.queue(Reply(json=full.json, truncate=40), full)
    with make_client(server) as client, capture_logs() as logs:
        assert len(fetch(client).records) == 50
    assert [e["reason"] for e in retries(logs)] == ["truncated body"]


def test_broken_chunked_stream_is_retried(server: LoopbackServer) -> None:
    full = envelope([{"id": i, "name": "x" * 100} for i in range(50)])
    server.queue(Reply(json=full.json, break_chunked=True), Reply(json=full.json, chunked=True))
    with make_client(server) as client, capture_logs() as logs:
        assert len(fetch(client).records) == 50
    assert [e["reason"] for e in retries(logs)] == ["truncated body"]


def test_invalid_json_is_retried_then_permanent(server: LoopbackServer) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx proxy</body></html>"
    server.handler = lambda req: Reply(body=html, headers={"Content-Type": "text/html"})
    retry = {"attempts": 3, "backoff_initial": "10ms", "backoff_max": "20ms", "deadline": "5s"}
    with (
        make_client(server, retry=retry) as client,
        capture_logs() as logs,
        pytest.raises(PermanentUpstreamError) as info,
    ):
        fetch(client)
    assert len(server.requests) == 3
    message = str(info.value)
    assert "not valid JSON" in message
    assert "502 Bad Gateway" in message
    assert "gave up after 3 attempt(s)" in message
    assert [e["reason"] for e in retries(logs)] == ["invalid JSON", "invalid JSON"]


def test_read_timeout_is_retried(server: LoopbackServer) -> None:
    server.queue(Reply(delay=1.0, json={"late": True}), envelope([{"id": 1}]))
    timeout = {"connect": "1s", "read": "200ms"}
    started = time.monotonic()
    with make_client(server, timeout=timeout) as client, capture_logs() as logs:
        assert fetch(client).records == [{"id": 1}]
    assert time.monotonic() - started < 0.9
    assert [e["reason"] for e in retries(logs)] == ["read timeout"]


def test_connection_reset_is_retried(server: LoopbackServer) -> None:
    server.queue(Reply(reset=True), envelope([{"id": 1}]))
    with make_client(server) as client, capture_logs() as logs:
        assert fetch(client).records == [{"id": 1}]
    assert retries(logs)[0]["reason"] in ("connection reset", "disconnected")


def test_connection_refused_gives_up_with_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = connection(f"http://127.0.0.1:{port}")
    cfg["retry"] = {"attempts": 2, "backoff_initial": "10ms", "backoff_max": "10ms", "deadline": "2s"}
    with HttpClient(HttpConnection.model_validate(cfg), name="gw") as client:
        with pytest.raises(PermanentUpstreamError, match="connection refused"):
            client.fetch("GET", "/x", parse=lambda body: body)
        assert client.stats.requests == 2


# --------------------------------------------------------------------------- stop requests


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_a_stop_ends_the_backoff_and_no_attempt_follows(server: LoopbackServer, kind: str) -> None:
    """The daemon's stop reaches a request being retried: its backoff ends at once, and the run's
    StopRequested (not the upstream error) ends the fetch, before the retry budget is spent."""
    server.handler = lambda req: Reply(status=503, headers={"Retry-After": "20"})
    retry = {"attempts": 5, "backoff_initial": "10ms", "backoff_max": "50ms", "deadline": "20m"}
    event = threading.Event()
    stop = StopSignal(event if kind == "event" else event.is_set)

    def stop_after_the_first_request() -> None:
        while not server.requests:
            time.sleep(0.01)
        event.set()

    helper = threading.Thread(target=stop_after_the_first_request)
    with make_client(server, retry=retry) as client, capture_logs() as logs:
        client.stop = stop
        helper.start()
        with pytest.raises(StopRequested, match="the service is stopping"):
            fetch(client)
    helper.join()
    assert len(server.requests) == 1
    assert [e["wait_seconds"] for e in retries(logs)] == [20.0]  # it was waiting for the retry


def test_a_stop_requested_before_a_request_sends_nothing(server: LoopbackServer) -> None:
    server.queue(envelope([{"id": 1}]))
    event = threading.Event()
    event.set()
    with make_client(server) as client:
        client.stop = StopSignal(event)
        with pytest.raises(StopRequested):
            fetch(client)
    assert server.requests == []


# --------------------------------------------------------------------------- size limit, decoding


def test_max_response_bytes_on_a_declared_large_body(server: LoopbackServer) -> None:
    server.queue(Reply(body=b"[" + b"1," * 5000 + b"1]"))
    with (
        make_client(server, max_response_bytes=4096) as client,
        pytest.raises(PermanentUpstreamError) as info,
    ):
        fetch(client)
    message = str(info.value)
    assert "4096 bytes" in message
    assert "connections.gw.max_response_bytes" in message
    assert len(server.requests) == 1
    assert client.stats.bytes == 0  # refused on the Content-Length alone


def test_max_response_bytes_on_an_endless_chunked_body(server: LoopbackServer) -> None:
    limit = 1024 * 1024
    server.queue(Reply(endless=True))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with (
            make_client(server, max_response_bytes=limit) as client,
            pytest.raises(PermanentUpstreamError) as info,
        ):
            fetch(client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert "max_response_bytes" in str(info.value)
    assert limit < client.stats.bytes <= limit + 64 * 1024
    assert peak < 6 * limit
    assert len(server.requests) == 1


def test_declared_gbk_charset_is_decoded(server: LoopbackServer) -> None:
    body = '{"code": "0", "msg": "成功", "data": {"list": [{"XM": "张三"}]}}'.encode("gbk")
    server.queue(Reply(body=body, headers={"Content-Type": "application/json; charset=GBK"}))
    with make_client(server) as client:
        assert fetch(client).records == [{"XM": "张三"}]


def test_utf8_byte_order_mark_is_accepted(server: LoopbackServer) -> None:
    server.queue(Reply(body=b"\xef\xbb\xbf" + b'{"code": "0", "data": {"list": [{"id": 1}]}}'))
    with make_client(server) as client:
        assert fetch(client).records == [{"id": 1}]


def test_static_headers_and_user_agent_are_sent(server: LoopbackServer) -> None:
    server.queue(envelope([]))
    with make_client(server, headers={"X-Region": "330100"}) as client:
        fetch(client)
    assert server.requests[0].header("X-Region") == "330100"
    assert (server.requests[0].header("User-Agent") or "").startswith("syncd/")


# --------------------------------------------------------------------------- envelope


@pytest.mark.parametrize(("code", "success"), [(0, ["0"]), ("00", ["00"]), (200, ["200"]), ("200", [200])])
def test_success_codes_compare_as_strings(server: LoopbackServer, code: Any, success: list[Any]) -> None:
    server.queue(envelope([{"id": 1}], code=code))
    with make_client(server) as client:
        assert fetch(client, {"success_codes": success}).records == [{"id": 1}]


def test_transient_business_code_is_retried(server: LoopbackServer) -> None:
    server.queue(envelope(code="50001", msg="系统繁忙"), envelope([{"id": 1}]))
    with make_client(server) as client, capture_logs() as logs:
        assert fetch(client, {"transient_codes": ["50001"]}).records == [{"id": 1}]
    (event,) = retries(logs)
    assert event["code"] == "50001"
    assert event["reason"] == "business code 50001"


def test_permanent_business_code_explains_itself(server: LoopbackServer) -> None:
    server.queue(envelope(code=40403, msg="无权访问该资源"))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    assert len(server.requests) == 1
    assert info.value.code == "40403"
    message = str(info.value)
    assert "40403" in message
    assert "无权访问该资源" in message
    assert "check the approval (授权) and the path" in message


def test_auth_expired_code_without_auth_is_permanent(server: LoopbackServer) -> None:
    server.queue(envelope(code="40101", msg="token expired"))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError, match="no auth that could"):
        fetch(client, {"auth_expired_codes": ["40101"]})


def test_double_encoded_payload_is_decoded(server: LoopbackServer) -> None:
    inner = '{"total": 2, "list": [{"XM": "张三"}, {"XM": "𠮷野"}]}'
    server.queue(Reply(json={"code": "0", "msg": "ok", "data": inner}))
    with make_client(server) as client:
        page = fetch(client, {"decode_strings": ["data"]})
    assert page.records == [{"XM": "张三"}, {"XM": "𠮷野"}]
    assert page.total == 2


def test_undecodable_string_payload_is_permanent(server: LoopbackServer) -> None:
    server.queue(Reply(json={"code": "0", "data": "{not json"}))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError, match="decode_strings"):
        fetch(client, {"decode_strings": ["data"]})


def test_missing_records_path_names_the_keys_found(server: LoopbackServer) -> None:
    server.queue(Reply(json={"code": "0", "msg": "ok", "data": {"total": 3, "rows": []}}))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    assert "'data.list'" in str(info.value)
    assert "data{total, rows}" in str(info.value)


def test_records_given_as_a_string_suggest_decode_strings(server: LoopbackServer) -> None:
    server.queue(Reply(json={"code": "0", "data": {"list": "[]"}}))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError, match="decode_strings"):
        fetch(client)


def test_null_records_are_an_empty_page(server: LoopbackServer) -> None:
    server.queue(Reply(json={"code": "0", "data": {"total": 0, "list": None}}))
    with make_client(server) as client:
        assert fetch(client).records == []


def test_missing_code_is_permanent(server: LoopbackServer) -> None:
    server.queue(Reply(json={"status": "ok", "data": {"list": []}}))
    with make_client(server) as client, pytest.raises(PermanentUpstreamError, match=r"envelope\.code_path"):
        fetch(client)


def test_body_is_the_list_when_records_path_is_empty(server: LoopbackServer) -> None:
    server.queue(Reply(json=[{"id": 1}, {"id": 2}]))
    with make_client(server) as client:
        assert len(fetch(client, {"code_path": None, "records_path": "", "total_path": None}).records) == 2


def test_clock_skew_reported_by_the_gateway_is_logged_and_explained(server: LoopbackServer) -> None:
    ahead = int(time.time() * 1000) + 15 * 60 * 1000
    server.queue(
        envelope([{"id": 1}], serverTime=ahead),
        envelope(code="40010", msg="时间戳无效", serverTime=ahead),
    )
    with make_client(server) as client, capture_logs() as logs:
        fetch(client, {"server_time_path": "serverTime"})
        with pytest.raises(PermanentUpstreamError) as info:
            fetch(client, {"server_time_path": "serverTime"})
    skews = [e for e in logs if e["event"] == "http.clock_skew"]
    assert skews and 890 <= skews[0]["skew_seconds"] <= 910
    assert "+900 s" in str(info.value) or "+899 s" in str(info.value)
    assert "NTP" in str(info.value)


def test_clock_skew_from_the_date_header(server: LoopbackServer) -> None:
    server.queue(Reply(status=400, body=b"bad request", date=formatdate(time.time() - 3600, usegmt=True)))
    with make_client(server) as client, capture_logs() as logs, pytest.raises(PermanentUpstreamError) as info:
        fetch(client)
    assert "clock" in str(info.value)
    assert any(e["event"] == "http.clock_skew" and e["source"] == "Date header" for e in logs)


def test_401_refreshes_only_refreshable_auth(server: LoopbackServer) -> None:
    class Counting:
        refreshable = True
        refreshed = 0

        def replaced(self) -> bool:
            return False

        def accepted_at(self, endpoint: str) -> bool:
            return False

        def note_accepted(self, endpoint: str) -> None:
            pass

        def apply(
            self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
        ) -> None:
            headers["Authorization"] = f"Bearer t{self.refreshed}"

        def refresh(self) -> None:
            self.refreshed += 1

    auth = Counting()
    server.handler = lambda req: (
        envelope([{"ok": 1}]) if req.header("Authorization") == "Bearer t1" else Reply(status=401)
    )
    env = Envelope(EnvelopeConfig())
    with make_client(server) as client:
        page = client.fetch("GET", "/x", parse=env.parse, auth=auth)
    assert page.records == [{"ok": 1}]
    assert auth.refreshed == 1


# --------------------------------------------------------------------------- secrets


SECRET = "S3cretV4lue-do-not-show"


def test_secrets_never_reach_messages_tracebacks_or_logs(server: LoopbackServer) -> None:
    def echo(req: Recorded) -> Reply:
        # a hostile gateway echoing everything it received, in an error page
        return Reply(
            status=503 if len(server.requests) < 2 else 400,
            body=str(req.query).encode() + b"|" + str(req.headers).encode(),
        )

    server.handler = echo

    class KeyAuth:
        refreshable = False

        def apply(
            self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
        ) -> None:
            params["appCode"] = SECRET  # a name that does not look secret
            params["sign"] = "abcdef0123456789"
            headers["X-Custom-Auth"] = f"Bearer {SECRET}"

        def refresh(self) -> None:
            return None

    env = Envelope(EnvelopeConfig())
    with make_client(server) as client, capture_logs() as logs, pytest.raises(PermanentUpstreamError) as info:
        client.fetch("GET", "/x", params={"pageNo": 3}, parse=env.parse, auth=KeyAuth())
    shown = [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value)), repr(logs)]
    shown += [repr(e) for e in exception_chain(info.value)]
    for text in shown:
        assert SECRET not in text
        assert "abcdef0123456789" not in text
    assert "pageNo=3" in str(info.value)
    assert len(retries(logs)) == 1


def exception_chain(exc: BaseException) -> list[BaseException]:
    """Every exception reachable from ``exc`` (cause and context, suppressed or not)."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is not None and cur not in found:
            found.append(cur)
            todo += [cur.__cause__, cur.__context__]
    return found


def test_network_errors_do_not_carry_the_signed_url_along(server: LoopbackServer) -> None:
    # four transient failures: the retry budget (4 attempts) is spent on network errors
    server.queue(Reply(reset=True), Reply(json={"a": 1}, truncate=3), Reply(reset=True), Reply(reset=True))

    class Signing:
        refreshable = False

        def apply(
            self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
        ) -> None:
            params["signature"] = "0123456789abcdef-signature"

        def refresh(self) -> None:
            return None

    with make_client(server) as client, pytest.raises(PermanentUpstreamError) as info:
        client.fetch("GET", "/x", parse=lambda body: body, auth=Signing())
    chain = exception_chain(info.value)
    assert len(chain) == 2  # the permanent error and the last transient one, both syncd's own
    for exc in chain:
        assert "0123456789abcdef" not in repr(exc)
        assert not isinstance(exc, OSError)


def test_sanitize_url_masks_secret_query_values_and_userinfo() -> None:
    url = "https://user:pw@gw.example.gov.cn/api?appKey=k1&sign=abc&access_token=t&pageNo=2&appSecret=s"
    assert (
        sanitize_url(url)
        == "https://gw.example.gov.cn/api?appKey=***&sign=***&access_token=***&pageNo=2&appSecret=***"
    )


def test_client_repr_shows_no_secret() -> None:
    cfg = connection("https://gw.example.gov.cn", auth={"type": "static_key", "name": "k", "value": SECRET})
    with HttpClient(HttpConnection.model_validate(cfg), name="gw") as client:
        assert SECRET not in repr(client)


# --------------------------------------------------------------------------- credentials


def test_a_netrc_file_adds_no_credentials(
    server: LoopbackServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncd's secrets come only from the environment or credential files: a ``~/.netrc`` (or
    ``$NETRC``) naming the gateway's host must not put a Basic Authorization header on requests,
    as requests does by default for a request without an auth of its own."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-Secret-1\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    server.queue(envelope([{"id": 1}], total=1))
    with make_client(server) as client:
        assert fetch(client).records == [{"id": 1}]
    (request,) = server.requests
    assert request.header("Authorization") is None


# --------------------------------------------------------------------------- proxies


def test_environment_proxies_apply_per_origin(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and NO_PROXY from the environment (a 前置机 proxy) decide for each origin: the
    client reads them once per origin, so a bypassed origin after a proxied one goes direct."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, server.url)  # the loopback server plays the proxy
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")
    server.queue(envelope([{"id": 1}], total=1), envelope([{"id": 2}], total=1))
    with serve_direct() as direct, make_client(server) as client:
        direct.queue(envelope([{"id": 3}], total=1))
        env = Envelope(EnvelopeConfig.model_validate({}))
        far = "http://gateway.invalid:8080/api/q"
        proxied = [client.fetch("GET", far, parse=env.parse) for _ in range(2)]
        bypassed = client.fetch("GET", f"{direct.url}/api/q", parse=env.parse)
    assert [p.records for p in proxied] == [[{"id": 1}], [{"id": 2}]]
    assert [r.header("Host") for r in server.to("/api/q")] == ["gateway.invalid:8080"] * 2
    assert bypassed.records == [{"id": 3}]
    assert len(direct.to("/api/q")) == 1


@contextlib.contextmanager
def serve_direct() -> Iterator[LoopbackServer]:
    yield from serve()


# --------------------------------------------------------------------------- credentials stay home


@pytest.fixture
def elsewhere() -> Iterator[LoopbackServer]:
    yield from serve()


def _auth_client(server: LoopbackServer, auth: dict[str, Any]) -> tuple[HttpClient, Any, Envelope]:
    from syncd.sources.http.auth import build_auth

    cfg = HttpConnection.model_validate(connection(server.url, auth=auth))
    client = HttpClient(cfg, name="gw")
    env = Envelope(cfg.envelope)
    return client, build_auth(cfg.auth, client=client, envelope=env), env


TOKEN = {"code": "0", "data": {"accessToken": "tok-abcdef", "expiresIn": 7200}}


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "static_key", "name": "X-API-Key", "value": "static-SECRET-1"},
        {"type": "token", "url": "/auth/token", "app_key": "k1", "app_secret": "s3cret-xx",
         "header": "X-Access-Token", "header_prefix": ""},
        {"type": "hmac_headers", "client_id": "c1", "secret": "hmac-SECRET-1"},
    ],
    ids=["static-key", "token-header", "hmac"],
)
def test_a_redirect_elsewhere_is_an_error_and_carries_no_credential(
    server: LoopbackServer, elsewhere: LoopbackServer, auth: dict[str, Any]
) -> None:
    """requests drops only an Authorization header when a redirect changes host: an API key, a token
    in another header or HMAC headers went to whatever host Location named. syncd follows no
    redirect and says where it pointed."""
    other = elsewhere.url.replace("127.0.0.1", "localhost")
    server.route("/auth/token", lambda r: Reply(json=TOKEN))
    server.handler = lambda r: Reply(status=302, headers={"Location": other + "/steal?token=abc123secret"})
    elsewhere.handler = lambda r: envelope([{"id": 1}], total=1)
    client, request_auth, env = _auth_client(server, auth)
    with pytest.raises(PermanentUpstreamError) as info:
        client.fetch("GET", "/api/q", auth=request_auth, parse=env.parse)
    assert elsewhere.requests == []
    message = str(info.value)
    assert f"redirects to {other}/steal" in message and "base_url" in message
    assert "abc123secret" not in message


def test_a_token_endpoint_redirect_does_not_resend_the_app_secret(
    server: LoopbackServer, elsewhere: LoopbackServer
) -> None:
    """A 307 from the token endpoint made requests POST the same body, appKey and appSecret, to the
    host Location named."""
    other = elsewhere.url.replace("127.0.0.1", "localhost")
    server.route("/auth/token", lambda r: Reply(status=307, headers={"Location": other + "/steal"}))
    elsewhere.handler = lambda r: Reply(json=TOKEN)
    server.handler = lambda r: envelope([{"id": 1}], total=1)
    client, request_auth, env = _auth_client(
        server, {"type": "token", "url": "/auth/token", "app_key": "k1", "app_secret": "TOP-SECRET-xyz"}
    )
    with pytest.raises(PermanentUpstreamError, match="redirects to"):
        client.fetch("GET", "/api/q", auth=request_auth, parse=env.parse)
    assert elsewhere.requests == []


def test_a_header_value_with_a_line_break_fails_without_showing_it(server: LoopbackServer) -> None:
    """A key read from a credential file ending in a blank line, or a token wrapped in lines: requests
    refuses the header and its message holds the whole value, which reached the run's error."""
    server.handler = lambda r: envelope([{"id": 1}], total=1)
    client, request_auth, env = _auth_client(
        server, {"type": "static_key", "name": "X-API-Key", "value": "static-SECRET-1\n"}
    )
    with pytest.raises(PermanentUpstreamError) as info:
        client.fetch("GET", "/api/q", auth=request_auth, parse=env.parse)
    assert "static-SECRET-1" not in str(info.value) and "'X-API-Key'" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert server.requests == []
