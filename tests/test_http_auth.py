"""Auth schemes against a loopback gateway that recomputes every signature independently."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
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
from structlog.testing import capture_logs

from syncd.config.model import (
    HmacHeadersAuth,
    HttpConnection,
    NoAuth,
    SignedAuth,
    StaticKeyAuth,
    TokenAuth,
    TwoTierSecretAuth,
)
from syncd.errors import ConfigError, PermanentUpstreamError
from syncd.sources.base import Window
from syncd.sources.http.auth import AUTH, AuthScheme, Signer, build_auth
from syncd.sources.http.auth.base import forget_shared_state
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope, ParsedPage
from syncd.sources.http.source import HttpSource
from tests.conftest import remove_sm3

APP_KEY = "app-330100"
APP_SECRET = "app-secret-Zx9!q"
SECRET = "hmac-secret-7Kd2"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


def setup(
    server: LoopbackServer, auth: dict[str, Any], **conn: Any
) -> tuple[HttpClient, AuthScheme, Envelope]:
    cfg = HttpConnection.model_validate(connection(server.url, auth=auth, **conn))
    client = HttpClient(cfg, name="gw")
    env = Envelope(cfg.envelope)
    return client, build_auth(cfg.auth, client=client, envelope=env), env


def call(parts: tuple[HttpClient, AuthScheme, Envelope], method: str = "GET", **kw: Any) -> ParsedPage:
    client, auth, env = parts
    return client.fetch(method, kw.pop("path", "/api/q"), auth=auth, parse=env.parse, **kw)


def now_ms() -> int:
    return int(time.time() * 1000)


def digest(algorithm: str, text: str, secret: str, encoding: str) -> str:
    """The server's own signature computation (independent of syncd's Signer)."""
    if algorithm == "hmac-sha256":
        raw = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    else:
        raw = hashlib.new(algorithm, text.encode()).digest()
    if encoding == "base64":
        return base64.b64encode(raw).decode()
    return raw.hex().upper() if encoding == "hex-upper" else raw.hex()


# --------------------------------------------------------------------------- registry


def test_registry_covers_every_configurable_type() -> None:
    models = (NoAuth, StaticKeyAuth, TokenAuth, HmacHeadersAuth, SignedAuth, TwoTierSecretAuth)
    assert set(AUTH) == {get_args(m.model_fields["type"].annotation)[0] for m in models}


def test_unknown_type_lists_known_ones(server: LoopbackServer) -> None:
    client, _, env = setup(server, {"type": "none"})
    with client, pytest.raises(ValueError, match="known types: hmac_headers, none, signed"):
        build_auth(SimpleNamespace(type="kerberos"), client=client, envelope=env)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- static key


@pytest.mark.parametrize("placement", ["header", "query"])
def test_static_key(server: LoopbackServer, placement: str) -> None:
    server.queue(envelope([{"id": 1}]))
    auth = {
        "type": "static_key",
        "name": "X-Api-Key",
        "value": SECRET,
        "placement": placement,
        "prefix": "Key ",
    }
    parts = setup(server, auth)
    with parts[0]:
        call(parts)
    req = server.requests[0]
    sent = req.header("X-Api-Key") if placement == "header" else req.query.get("X-Api-Key")
    assert sent == f"Key {SECRET}"


# --------------------------------------------------------------------------- hmac headers (Shandong)


def shandong(req: Recorded, *, unit: str = "ms", encoding: str = "base64") -> Reply:
    client_id, stamp = req.header("X-Client-Id") or "", req.header("X-Timestamp") or "0"
    nonce, signature = req.header("X-Nonce") or "", req.header("X-Signature")
    now = now_ms() if unit == "ms" else int(time.time())
    window = 600_000 if unit == "ms" else 600
    if abs(now - int(stamp)) > window:
        return envelope(code="401", msg="时间戳超出范围")
    if signature != digest("hmac-sha256", client_id + stamp + nonce, SECRET, encoding):
        return envelope(code="401", msg="签名错误")
    return envelope([{"nonce": nonce}])


@pytest.mark.parametrize(("unit", "encoding"), [("ms", "base64"), ("s", "hex")])
def test_hmac_headers_are_verified_by_the_server(server: LoopbackServer, unit: str, encoding: str) -> None:
    server.handler = lambda req: shandong(req, unit=unit, encoding=encoding)
    auth = {
        "type": "hmac_headers",
        "client_id": "sd-client",
        "secret": SECRET,
        "timestamp_unit": unit,
        "encoding": encoding,
    }
    parts = setup(server, auth)
    with parts[0]:
        first = call(parts).records[0]["nonce"]
        second = call(parts).records[0]["nonce"]
    assert first != second  # a fresh nonce per request
    assert len(server.requests[0].header("X-Timestamp") or "") == (13 if unit == "ms" else 10)


def test_hmac_wrong_secret_is_a_permanent_signature_error(server: LoopbackServer) -> None:
    server.handler = shandong
    parts = setup(server, {"type": "hmac_headers", "client_id": "sd-client", "secret": "wrong-secret"})
    with parts[0], pytest.raises(PermanentUpstreamError) as info:
        call(parts)
    assert "签名错误" in str(info.value)
    assert "signature" in str(info.value)
    assert "wrong-secret" not in str(info.value)


# --------------------------------------------------------------------------- signed recipes


@pytest.mark.parametrize(
    ("algorithm", "encoding"),
    [("md5", "hex"), ("sha1", "hex-upper"), ("sha256", "base64"), ("hmac-sha256", "hex"), ("sm3", "hex")],
)
def test_signed_recipe_in_query(server: LoopbackServer, algorithm: str, encoding: str) -> None:
    def verify(req: Recorded) -> Reply:
        q = req.query
        text = "|".join([APP_KEY, q["ts"], q["nonce"], SECRET])
        ok = q["signature"] == digest(algorithm, text, SECRET, encoding) and q["appKey"] == APP_KEY
        return envelope([{"id": 1}]) if ok else envelope(code="14", msg="签名错误")

    server.handler = verify
    recipe = {
        "algorithm": algorithm,
        "parts": ["{app_key}", "{timestamp}", "{nonce}", "{secret}"],
        "separator": "|",
        "encoding": encoding,
        "placement": "query",
        "signature_name": "signature",
        "timestamp_name": "ts",
        "nonce_name": "nonce",
        "extra": {"appKey": "{app_key}"},
    }
    parts = setup(server, {"type": "signed", "app_key": APP_KEY, "secret": SECRET, "recipe": recipe})
    with parts[0]:
        assert call(parts).records == [{"id": 1}]


def test_guangdong_tif_headers(server: LoopbackServer) -> None:
    def verify(req: Recorded) -> Reply:
        ts, nonce = req.header("x-tif-timestamp") or "", req.header("x-tif-nonce") or ""
        expected = hashlib.sha256((ts + SECRET + nonce + ts).encode()).hexdigest()
        ok = req.header("x-tif-signature") == expected and req.header("x-tif-paasid") == "gd-paas"
        ok = ok and len(ts) == 10 and req.json() == {"idCard": "440101199001011234"}
        return envelope([{"ok": True}]) if ok else envelope(code="401", msg="signature invalid")

    server.handler = verify
    recipe = {
        "algorithm": "sha256",
        "parts": ["{timestamp}", "{token}", "{nonce}", "{timestamp}"],
        "timestamp_unit": "s",
        "signature_name": "x-tif-signature",
        "timestamp_name": "x-tif-timestamp",
        "nonce_name": "x-tif-nonce",
        "extra": {"x-tif-paasid": "{app_key}"},
    }
    parts = setup(server, {"type": "signed", "app_key": "gd-paas", "secret": SECRET, "recipe": recipe})
    with parts[0]:
        assert call(parts, "POST", json_body={"idCard": "440101199001011234"}).records == [{"ok": True}]


def test_signed_over_path_and_body(server: LoopbackServer) -> None:
    def verify(req: Recorded) -> Reply:
        text = req.path + req.body.decode() + req.header("X-Ts") + SECRET  # type: ignore[operator]
        ok = req.header("X-Sign") == hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
        return envelope([{"id": 1}]) if ok else envelope(code="14", msg="bad sign")

    server.handler = verify
    recipe = {
        "algorithm": "md5",
        "parts": ["{path}", "{body}", "{timestamp}", "{secret}"],
        "signature_name": "X-Sign",
        "timestamp_name": "X-Ts",
    }
    parts = setup(server, {"type": "signed", "secret": SECRET, "recipe": recipe})
    with parts[0]:
        assert call(parts, "POST", path="/api/v1/query", json_body={"page": 1, "名称": "值"}).records == [
            {"id": 1}
        ]


def test_sm3_matches_the_standard_test_vector() -> None:
    from syncd.config.model import SignatureRecipe

    signer = Signer(SignatureRecipe(algorithm="sm3", parts=("abc",), timestamp_name=None))
    assert (
        signer.sign(secret="")["sign"] == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )


def test_missing_sm3_support_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.config.model import SignatureRecipe

    remove_sm3(monkeypatch)  # an OpenSSL built without SM3
    with pytest.raises(ConfigError, match="no SM3"):
        Signer(SignatureRecipe(algorithm="sm3", parts=("{secret}",)), config_path=("gw", "auth"))


def test_unknown_placeholder_is_a_config_error() -> None:
    from syncd.config.model import SignatureRecipe

    recipe = SignatureRecipe(algorithm="md5", parts=("{app_key}", "{appSecret}"))
    with pytest.raises(ConfigError, match=r"unknown placeholder \{appSecret\}") as info:
        Signer(recipe, config_path=("auth", "recipe"))
    assert info.value.issues[0].path == "auth.recipe.parts[1]"


# --------------------------------------------------------------------------- token endpoint


class TokenGateway:
    """Style 1: POST /auth/token → accessToken; data calls need ``Authorization: Bearer``."""

    def __init__(self, server: LoopbackServer, *, expires_in: float = 7200, fmt: str = "json") -> None:
        self.issued: dict[str, float] = {}  # token -> expiry (monotonic)
        self.revoked: set[str] = set()
        self.expires_in = expires_in
        self.fmt = fmt
        self.total = 250
        server.route("/auth/token", self.token)
        server.handler = self.data

    def token(self, req: Recorded) -> Reply:
        creds = {"json": req.json, "form": req.form, "query": lambda: req.query}[self.fmt]()
        if creds != {"appKey": APP_KEY, "appSecret": APP_SECRET}:
            return Reply(json={"code": "40001", "msg": "appKey或appSecret错误"})
        token = f"tok-{len(self.issued) + 1}-{'k' * 24}"
        self.issued[token] = time.monotonic() + self.expires_in
        return Reply(
            json={"code": "0", "msg": "success", "data": {"accessToken": token, "expiresIn": self.expires_in}}
        )

    def data(self, req: Recorded) -> Reply:
        token = (req.header("Authorization") or "").removeprefix("Bearer ") or req.query.get(
            "access_token", ""
        )
        if token not in self.issued or token in self.revoked or time.monotonic() > self.issued[token]:
            return envelope(code="40101", msg="token已过期")
        page, size = int(req.query.get("pageNo", 1)), int(req.query.get("pageSize", 100))
        ids = range((page - 1) * size, min(page * size, self.total))
        return envelope([{"id": i} for i in ids], total=self.total)


def token_auth(**extra: Any) -> dict[str, Any]:
    return {"type": "token", "url": "/auth/token", "app_key": APP_KEY, "app_secret": APP_SECRET, **extra}


def test_token_is_fetched_once_and_cached_across_pages(server: LoopbackServer) -> None:
    gateway = TokenGateway(server)
    conn = connection(server.url, auth=token_auth(), envelope={"auth_expired_codes": ["40101"]})
    source = HttpSource.from_config(app_config(conn), dataset_config({"path": "/api/residents"}))
    with capture_logs() as logs:
        pages = list(source.read(Window(None, None)))
    source.close()
    assert sum(len(p.records) for p in pages) == 250
    assert len(server.to("/auth/token")) == 1
    assert {r.header("Authorization") for r in server.to("/api/residents")} == {
        f"Bearer {next(iter(gateway.issued))}"
    }
    assert source.stats.requests == 4  # the token call is counted too
    assert not any(e["event"] == "http.auth_refresh" for e in logs)


@pytest.mark.parametrize(("fmt", "method"), [("json", "POST"), ("form", "POST"), ("query", "GET")])
def test_token_request_formats(server: LoopbackServer, fmt: str, method: str) -> None:
    TokenGateway(server, fmt=fmt)
    parts = setup(server, token_auth(body_format=fmt, method=method))
    with parts[0]:
        assert len(call(parts).records) == 100
    assert server.to("/auth/token")[0].method == method


def test_token_in_query_placement(server: LoopbackServer) -> None:
    TokenGateway(server)
    parts = setup(server, token_auth(placement="query"))
    with parts[0]:
        call(parts)
    assert server.to("/api/q")[0].query["access_token"].startswith("tok-1-")


def test_token_is_refreshed_before_it_expires(server: LoopbackServer) -> None:
    TokenGateway(server, expires_in=1)
    parts = setup(server, token_auth(refresh_before="500ms"), envelope={"auth_expired_codes": ["40101"]})
    with parts[0]:
        call(parts)
        call(parts)  # still fresh: cached
        time.sleep(0.6)
        call(parts)  # inside refresh_before: fetched again before the call
    assert len(server.to("/auth/token")) == 2
    assert len(server.to("/api/q")) == 3  # no call was refused


def test_expired_code_refreshes_exactly_once_then_succeeds(server: LoopbackServer) -> None:
    gateway = TokenGateway(server)
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]})
    with parts[0], capture_logs() as logs:
        call(parts)
        gateway.revoked.update(gateway.issued)  # the gateway invalidates the token early
        assert len(call(parts).records) == 100
    assert len(server.to("/auth/token")) == 2
    assert len(server.to("/api/q")) == 3
    assert [e["event"] for e in logs if e["event"] == "http.auth_refresh"] == ["http.auth_refresh"]


def test_second_expiry_is_permanent(server: LoopbackServer) -> None:
    gateway = TokenGateway(server)
    gateway.data = lambda req: envelope(code="40101", msg="token无效")  # type: ignore[method-assign]
    server.handler = gateway.data
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]})
    with parts[0], pytest.raises(PermanentUpstreamError, match="rejected again right after it was refreshed"):
        call(parts)
    assert len(server.to("/auth/token")) == 2
    assert len(server.to("/api/q")) == 2


class AnotherHolder:
    """Another process with the same app_key on a gateway keeping one valid token per app_key:
    it fetches a token right after each of the next ``times`` tokens ``gateway`` issues to us, which
    revokes ours before we use it."""

    def __init__(self, server: LoopbackServer, gateway: TokenGateway, times: int) -> None:
        self.left = times
        self._gateway = gateway
        server.route("/auth/token", self.token)

    def token(self, req: Recorded) -> Reply:
        reply = self._gateway.token(req)
        if self.left > 0:
            self.left -= 1
            self._gateway.revoked.update(self._gateway.issued)
        return reply


def test_a_token_revoked_right_after_issue_is_retried_with_backoff_and_warned_once(
    server: LoopbackServer,
) -> None:
    """Another process using the same app_key: our tokens are revoked right after they are issued.
    The request is repeated with new tokens (backoff and jitter between them) until one sticks, and
    the operator is told once what is going on and what to do."""
    gateway = TokenGateway(server)
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]})
    with parts[0], capture_logs() as logs:
        call(parts)  # the credentials work
        gateway.revoked.update(gateway.issued)  # the other process fetched its token
        other = AnotherHolder(server, gateway, times=2)
        assert len(call(parts).records) == 100
        other.left = 3
        gateway.revoked.update(gateway.issued)
        assert len(call(parts).records) == 100
    assert len(server.to("/auth/token")) == 1 + 3 + 4
    warnings = [e for e in logs if e["event"] == "auth.token_revoked_early"]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning["log_level"] == "warning" and warning["connection"] == "gw"
    assert "another process appears to use the same app_key" in warning["message"]
    assert "connections.gw.auth.app_key" in warning["message"] and "multi-token" in warning["message"]


@pytest.mark.parametrize(("attempts", "rounds"), [(4, 3), (2, 2)])
def test_tokens_revoked_right_after_issue_fail_after_the_retry_budget(
    server: LoopbackServer, attempts: int, rounds: int
) -> None:
    """Bounded: min(retry.attempts, 3) more tokens, then the request fails, saying why (each token
    issued revokes the one every other dataset of the process uses)."""
    gateway = TokenGateway(server)
    retry = {"attempts": attempts, "backoff_initial": "10ms", "backoff_max": "50ms", "deadline": "5s"}
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]}, retry=retry)
    with parts[0]:
        call(parts)
        gateway.revoked.update(gateway.issued)
        AnotherHolder(server, gateway, times=1000)
        with pytest.raises(PermanentUpstreamError, match="another process appears to use the same app_key"):
            call(parts)
    assert len(server.to("/auth/token")) == 1 + 1 + rounds


def test_an_endpoint_refusing_every_token_fails_at_once_though_another_accepts_them(
    server: LoopbackServer,
) -> None:
    """One process, one app_key: /api/q works, /api/other answers 40101 whatever the token (an API
    the app_key is not approved for, or a code in auth_expired_codes that is no expiry there). That
    is no token revoked by another process: one refresh, then a clear error at once, as for a
    credential that never worked; no backoff rounds, no warning blaming another process, and no
    more tokens issued (each would revoke the one the other datasets use)."""
    TokenGateway(server)
    server.route("/api/other", lambda req: envelope(code="40101", msg="token无效"))
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]})
    with parts[0], capture_logs() as logs:
        call(parts)  # the credentials work: /api/q accepted a token
        for _ in range(2):
            with pytest.raises(PermanentUpstreamError) as info:
                call(parts, path="/api/other", params={"pageNo": 1})
            message = str(info.value)
            assert "rejected again right after it was refreshed" in message
            assert "connections.gw.envelope.auth_expired_codes" in message
            assert "approved for this API" in message
            assert "another process appears to use the same app_key" in message  # the other lead
        assert len(call(parts).records) == 100  # the other endpoint's token is the last one issued
    assert len(server.to("/auth/token")) == 1 + 2  # one refresh per failed request
    assert len(server.to("/api/other")) == 2 * 2
    assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]


def test_a_token_revoked_soon_after_a_refresh_is_refreshed_after_a_pause_and_warned(
    server: LoopbackServer,
) -> None:
    """Another process with the same app_key that refreshes the moment its own token is revoked:
    ours, fetched moments ago and accepted, is refused before we use it again. Refreshing at once
    would revoke the other's before its request lands, and it would do the same to us; the client
    pauses first (so one of the two gets through each time) and tells the operator, once."""
    gateway = TokenGateway(server)
    parts = setup(server, token_auth(), envelope={"auth_expired_codes": ["40101"]})
    with parts[0], capture_logs() as logs:
        call(parts)
        gateway.revoked.update(gateway.issued)
        call(parts)  # refused once: refreshed at once, as for any expiry
        assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]
        for _ in range(2):
            gateway.revoked.update(gateway.issued)  # the other process fetched its token
            assert len(call(parts).records) == 100
    assert len(server.to("/auth/token")) == 1 + 3
    warnings = [e for e in logs if e["event"] == "auth.token_revoked_early"]
    assert len(warnings) == 1, warnings
    assert "another process appears to use the same app_key" in warnings[0]["message"]


EXPIRED = {"auth_expired_codes": ["40101"]}


def token_source(server: LoopbackServer, source: dict[str, Any], **conn: Any) -> HttpSource:
    """A dataset reading ``source`` through a token connection whose 40101 means expired."""
    cfg = connection(server.url, auth=token_auth(), envelope=EXPIRED, **conn)
    return HttpSource.from_config(app_config(cfg), dataset_config(source))


def read_all(source: HttpSource, window: Window | None = None) -> int:
    return sum(len(p.records) for p in source.read(window or Window(None, None)))


def test_an_endpoint_accepted_by_another_source_of_the_process_retries_revoked_tokens(
    server: LoopbackServer,
) -> None:
    """The endpoints that accepted a credential are the credential's, process-wide: a dataset
    whose API another source (an earlier run of the daemon) read with the same credential retries
    a token revoked right after issue; the paging and window parameters are no part of the endpoint."""
    gateway = TokenGateway(server)
    dataset = {"path": "/api/residents", "params": {"regionCode": "330102"}, "incremental": {"field": "t"}}
    first = token_source(server, dataset)
    try:
        assert read_all(first, Window(datetime(2026, 1, 1), datetime(2026, 1, 2))) == 250  # pages 1-3
    finally:
        first.close()
    second = token_source(server, dataset)
    try:
        with capture_logs() as logs:
            gateway.revoked.update(gateway.issued)
            AnotherHolder(server, gateway, times=1)
            assert read_all(second, Window(datetime(2026, 1, 2), datetime(2026, 1, 3))) == 250
    finally:
        second.close()
    assert len(server.to("/auth/token")) == 1 + 2
    assert [e["event"] for e in logs if e["event"] == "auth.token_revoked_early"] == [
        "auth.token_revoked_early"
    ]


class ApiByParameter:
    """A gateway that picks the API by a parameter of one URL (``/api/q?api=…``, or ``api`` in a
    POST body): ``ok`` answers with the token ``gateway`` issued, ``denied`` (an API the app_key is
    not approved for) answers 40101 to every token."""

    def __init__(self, server: LoopbackServer, gateway: TokenGateway) -> None:
        self.gateway = gateway
        server.handler = self.data

    def data(self, req: Recorded) -> Reply:
        api = (req.json() or {}).get("api") if req.method == "POST" else req.query.get("api")
        if api == "denied":
            return envelope(code="40101", msg="token无效")
        token = (req.header("Authorization") or "").removeprefix("Bearer ")
        gw = self.gateway
        if token not in gw.issued or token in gw.revoked:
            return envelope(code="40101", msg="token已过期")
        return envelope([{"id": 1}], total=1)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_api_chosen_by_a_parameter_refusing_every_token_fails_at_once(
    server: LoopbackServer, method: str
) -> None:
    """One URL, the API chosen by a query parameter (GET) or a body field (POST): ``api=ok`` works,
    ``api=denied`` refuses every token. The denied API is another endpoint than the accepted one,
    so, as for a separate path: one refresh, then a clear error at once; no revocation rounds
    (each would re-issue the token every other dataset uses), no warning blaming another process."""
    ApiByParameter(server, TokenGateway(server))
    retry = {"attempts": 5, "backoff_initial": "100ms", "backoff_max": "1s", "deadline": "30s"}

    def dataset(api: str) -> dict[str, Any]:
        if method == "GET":
            return {"path": "/api/q", "params": {"api": api}}
        return {"path": "/api/q", "method": "POST", "body": {"api": api}}

    ok = token_source(server, dataset("ok"), retry=retry)
    denied = token_source(server, dataset("denied"), retry=retry)
    try:
        with capture_logs() as logs:
            assert read_all(ok) == 1
            with pytest.raises(PermanentUpstreamError, match="never accepted one in this process"):
                read_all(denied)
    finally:
        ok.close()
        denied.close()
    assert len(server.to("/auth/token")) == 1 + 1
    assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]


class OneTokenGateway:
    """One valid token per app_key (issuing one revokes the previous one); tokens live ``ttl`` s and
    the token answer says so, so the client renews them ahead of expiry (at ttl/2 here). ``race``,
    when set, is called once while a request to /api/b is being answered."""

    def __init__(self, server: LoopbackServer, ttl: float) -> None:
        self.ttl = ttl
        self.valid: dict[str, float] = {}
        self.issued = 0
        self.race: Callable[[], None] | None = None
        server.route("/auth/token", self.token)
        server.route("/api/a", self.data)
        server.route("/api/b", self.data_b)

    def token(self, req: Recorded) -> Reply:
        self.issued += 1
        token = f"tok-{self.issued}-{'k' * 24}"
        self.valid = {token: time.monotonic() + self.ttl}
        return Reply(json={"code": "0", "msg": "ok", "data": {"accessToken": token, "expiresIn": self.ttl}})

    def data(self, req: Recorded) -> Reply:
        token = (req.header("Authorization") or "").removeprefix("Bearer ")
        if token in self.valid and time.monotonic() < self.valid[token]:
            return envelope([{"id": 1}], total=1)
        return envelope(code="40101", msg="token已过期")

    def data_b(self, req: Recorded) -> Reply:
        race, self.race = self.race, None
        if race is not None:
            race()
        return self.data(req)


def _two_datasets(
    server: LoopbackServer, *, worker: bool = False
) -> tuple[Any, Any, Any, Callable[[], None]]:
    """A gateway of one 1-s token per app_key and two datasets A and B on it (B in a state of its own
    when it stands for a read worker, another process), renewing 0.5 s ahead; and ``a_renews``, for
    the gateway's race: once the token is due, dataset A's next request renews it."""
    gateway = OneTokenGateway(server, ttl=1.0)
    retry = {"attempts": 5, "backoff_initial": "500ms", "backoff_max": "30s", "deadline": "5m"}
    a = setup(server, token_auth(refresh_before="500ms"), envelope=EXPIRED, retry=retry)
    if worker:
        forget_shared_state()  # another process: a state of its own
    b = setup(server, token_auth(refresh_before="500ms"), envelope=EXPIRED, retry=retry)

    def a_renews() -> None:
        time.sleep(0.55)
        call(a, path="/api/a")

    return gateway, a, b, a_renews


@pytest.mark.parametrize("worker", [False, True], ids=["same_process", "read_worker"])
def test_short_lived_tokens_renewed_by_another_dataset_are_no_revocation(
    server: LoopbackServer, worker: bool
) -> None:
    """One process, one app_key, two datasets, 1-s tokens renewed 0.5 s ahead. Twice, dataset A
    renews the shared token while B's request is in flight: B is refused and goes on with A's token
    (its refresh fetches none). That is an ordinary expiry, however soon it happens again: no
    pause and no warning that another process uses the app_key (a pause let A's token come due
    and re-issued it, revoking the one A reads with). The same when B is a read worker, which gets
    its tokens from the run's process (A)."""
    gateway, a, b, a_renews = _two_datasets(server, worker=worker)
    with a[0], b[0], capture_logs() as logs:
        call(a, path="/api/a")
        if worker:
            b[1].adopt_state(a[1].export_state())
            b[1].delegate_renewal(a[1].renew_for_delegate)
        assert (a[1]._state is b[1]._state) is not worker  # type: ignore[attr-defined]
        call(b, path="/api/b")  # both endpoints accepted the token
        for _ in range(2):
            gateway.race = a_renews
            assert call(b, path="/api/b").records == [{"id": 1}]
    assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]
    assert [e["event"] for e in logs if e["event"] == "http.auth_refresh"] == ["http.auth_refresh"] * 2
    assert gateway.issued == 1 + 2  # A's two renewals, nothing re-issued after a pause


def test_a_token_replaced_in_the_process_after_an_own_recent_fetch_is_no_revocation(
    server: LoopbackServer,
) -> None:
    """B fetched the token itself moments ago (an ordinary expiry); then dataset A renews the shared
    token while B's request is in flight. The refused token was replaced in this process already:
    B goes on with A's at once. No pause (during which A's token came due and B fetched another,
    revoking A's), no warning that another process uses the app_key."""
    gateway, a, b, a_renews = _two_datasets(server)
    with a[0], b[0], capture_logs() as logs:
        call(a, path="/api/a")
        call(b, path="/api/b")  # both endpoints accepted the token
        gateway.valid.clear()  # the gateway drops it (a restart): B's next request fetches one
        assert call(b, path="/api/b").records == [{"id": 1}]
        assert b[0]._refreshed_at is not None  # B's own refresh fetched it: a pause would be armed
        gateway.race = a_renews
        assert call(b, path="/api/b").records == [{"id": 1}]
    assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]
    assert gateway.issued == 1 + 1 + 1  # A's first, B's after the drop, A's renewal: nothing re-issued


def test_a_token_replaced_in_the_process_during_the_retry_is_no_revoked_round(server: LoopbackServer) -> None:
    """The same check in the retry after a refresh: B's token is refused (an ordinary expiry), B
    fetches a new one, and dataset A renews it while B's retry is in flight. That second refusal is
    of a token the process replaced already: B goes on with A's at once, without counting a
    revoked round, pausing or warning."""
    gateway, a, b, a_renews = _two_datasets(server)  # a_renews: when B's fresh token is due
    def on_the_retry() -> None:
        gateway.race = a_renews  # not on B's first request: on its retry after the refresh

    with a[0], b[0], capture_logs() as logs:
        call(a, path="/api/a")
        call(b, path="/api/b")  # both endpoints accepted the token
        gateway.valid.clear()  # the gateway drops it: B's next request is refused and B fetches one
        gateway.race = on_the_retry
        assert call(b, path="/api/b").records == [{"id": 1}]
    assert not [e for e in logs if e["event"] == "auth.token_revoked_early"]
    refreshes = [e for e in logs if e["event"] == "http.auth_refresh"]
    assert len(refreshes) == 2 and not [e for e in refreshes if e.get("again")]
    assert gateway.issued == 1 + 1 + 1  # A's first, B's after the drop, A's renewal: nothing re-issued


def test_the_read_worker_knows_the_endpoints_that_accepted_the_credential(server: LoopbackServer) -> None:
    """The read worker adopts the run process's credential with the endpoints it was accepted at:
    a token revoked right after issue on the worker's first page of a dataset the run's process
    read before is retried as revoked (with a warning), instead of failing at once."""
    gateway = TokenGateway(server)
    dataset = {"path": "/api/residents"}
    run = token_source(server, dataset)
    forget_shared_state()  # the worker is another process: a state of its own
    child = token_source(server, dataset)
    try:
        assert read_all(run) == 250
        child.share_credentials(run.credential_state(), run.renew_credential)
        with capture_logs() as logs:
            gateway.revoked.update(gateway.issued)
            AnotherHolder(server, gateway, times=1)
            assert read_all(child) == 250
    finally:
        run.close()
        child.close()
    assert len(server.to("/auth/token")) == 1 + 2
    assert [e["event"] for e in logs if e["event"] == "auth.token_revoked_early"] == [
        "auth.token_revoked_early"
    ]


def test_bad_credentials_are_permanent_and_not_retried(server: LoopbackServer) -> None:
    TokenGateway(server)
    parts = setup(server, {**token_auth(), "app_secret": "not-the-secret"})
    with parts[0], pytest.raises(PermanentUpstreamError) as info:
        call(parts)
    message = str(info.value)
    assert "rejected app_key/app_secret" in message
    assert "40001" in message
    assert "not-the-secret" not in message
    assert len(server.requests) == 1
    assert info.value.code == "40001"


def test_token_endpoint_gets_the_same_retries(server: LoopbackServer) -> None:
    gateway = TokenGateway(server)

    def busy_once(req: Recorded) -> Reply:
        return Reply(status=503) if len(server.to("/auth/token")) == 1 else gateway.token(req)

    server.route("/auth/token", busy_once)
    parts = setup(server, token_auth())
    with parts[0]:
        assert len(call(parts).records) == 100
    assert len(server.to("/auth/token")) == 2
    assert parts[0].stats.retries == 1


def test_sources_of_one_connection_share_the_token(server: LoopbackServer) -> None:
    TokenGateway(server)
    first, second = setup(server, token_auth()), setup(server, token_auth())
    with first[0], second[0]:
        call(first)
        call(second)
    assert len(server.to("/auth/token")) == 1


def test_token_secrets_never_shown(server: LoopbackServer) -> None:
    gateway = TokenGateway(server)

    def hostile(req: Recorded) -> Reply:  # error pages echoing the credentials first, then a refusal
        echoed = f"{req.header('Authorization')} {APP_SECRET} {json.dumps(req.headers)}".encode()
        return Reply(status=500 if len(server.to("/api/q")) == 1 else 400, body=echoed)

    server.handler = hostile
    parts = setup(server, token_auth())
    with parts[0], capture_logs() as logs, pytest.raises(PermanentUpstreamError) as info:
        call(parts)
    (token,) = gateway.issued
    texts = [
        str(info.value),
        repr(info.value),
        "".join(traceback.format_exception(info.value)),
        repr(logs),
        repr(parts[1]),
        repr(parts[0]),
    ]
    for text in texts:
        assert token not in text
        assert APP_SECRET not in text
    assert "HTTP 400" in str(info.value)


# --------------------------------------------------------------------------- two-tier secrets (Zhejiang)


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class ZhejiangGateway:
    """Style 3: refreshTokenByKey / refreshTokenBySec and md5-signed data calls; payloads as JSON strings."""

    def __init__(
        self, server: LoopbackServer, *, request_ttl: float = 900, refresh_ttl: float = 172800
    ) -> None:
        self.request_ttl, self.refresh_ttl = request_ttl, refresh_ttl
        self.request: dict[str, float] = {}  # secret -> end (epoch s)
        self.refresh: dict[str, float] = {}
        self.refuse_refresh = False
        server.route("/refreshTokenByKey", self.by_key)
        server.route("/refreshTokenBySec", self.by_secret)
        server.handler = self.data

    @staticmethod
    def signed_with(req: Recorded, secret: str) -> bool:
        q = req.query
        fresh = abs(now_ms() - int(q.get("requestTime", "0"))) < 600_000
        return (
            fresh and q.get("appKey") == APP_KEY and q.get("sign") == md5(APP_KEY + secret + q["requestTime"])
        )

    def issue(self, *, with_refresh: bool) -> dict[str, Any]:
        n = len(self.request) + 1
        payload: dict[str, Any] = {
            "requestSecret": f"req-{n}-{'r' * 20}",
            "requestSecretEndTime": int((time.time() + self.request_ttl) * 1000),
        }
        self.request[payload["requestSecret"]] = time.time() + self.request_ttl
        if with_refresh:
            payload["refreshSecret"] = f"ref-{n}-{'f' * 20}"
            payload["refreshSecretEndTime"] = int((time.time() + self.refresh_ttl) * 1000)
            self.refresh[payload["refreshSecret"]] = time.time() + self.refresh_ttl
        return payload

    def by_key(self, req: Recorded) -> Reply:
        if not self.signed_with(req, APP_SECRET):
            return Reply(json={"code": "14", "msg": "签名错误"})
        return Reply(json={"code": "00", "msg": "成功", "datas": json.dumps(self.issue(with_refresh=True))})

    def by_secret(self, req: Recorded) -> Reply:
        for secret, end in self.refresh.items():
            if self.signed_with(req, secret):
                if self.refuse_refresh or time.time() > end:
                    return Reply(json={"code": "13", "msg": "refreshSecret已过期"})
                return Reply(json={"code": "00", "msg": "成功", "datas": self.issue(with_refresh=False)})
        return Reply(json={"code": "14", "msg": "签名错误"})

    def data(self, req: Recorded) -> Reply:
        for secret, end in self.request.items():
            if self.signed_with(req, secret):
                if time.time() > end:
                    return Reply(json={"code": "11", "msg": "requestSecret已过期"})
                datas = json.dumps({"total": 1, "list": [{"id": 1, "secret_no": secret[:5]}]})
                return Reply(json={"code": "00", "msg": "成功", "datas": datas})
        return Reply(json={"code": "14", "msg": "签名错误"})

    def expire_requests(self) -> None:
        self.request = dict.fromkeys(self.request, 0.0)


def zhejiang(server: LoopbackServer, **auth: Any) -> tuple[HttpClient, AuthScheme, Envelope]:
    cfg = {"type": "two_tier_secret", "app_key": APP_KEY, "app_secret": APP_SECRET, **auth}
    env = {
        "records_path": "datas.list",
        "total_path": "datas.total",
        "decode_strings": ["datas"],
        "auth_expired_codes": ["11"],
    }
    return setup(server, cfg, envelope=env)


def test_two_tier_first_call_fetches_secrets_by_key(server: LoopbackServer) -> None:
    ZhejiangGateway(server)
    parts = zhejiang(server)
    with parts[0]:
        assert call(parts).records == [{"id": 1, "secret_no": "req-1"}]
        call(parts)
    assert (len(server.to("/refreshTokenByKey")), len(server.to("/refreshTokenBySec"))) == (1, 0)


def test_two_tier_signs_each_attempt_of_a_renewal_afresh(server: LoopbackServer) -> None:
    """A renewal retried after a 503 is signed again with a new requestTime: resending the first
    attempt's is refused by a gateway that rejects repeated or stale request times."""
    gateway = ZhejiangGateway(server)
    seen: list[str] = []

    def by_key(req: Recorded) -> Reply:
        time_sent = req.query["requestTime"]
        if time_sent in seen:
            return Reply(json={"code": "15", "msg": "请求时间重复"})
        seen.append(time_sent)
        if len(seen) == 1:
            return Reply(status=503)
        return gateway.by_key(req)

    server.route("/refreshTokenByKey", by_key)
    parts = zhejiang(server)  # the test connection retries 503s after 10 ms
    with parts[0]:
        assert call(parts).records == [{"id": 1, "secret_no": "req-1"}]
    assert len(seen) == 2


def test_two_tier_renews_the_request_secret_before_it_ends(server: LoopbackServer) -> None:
    ZhejiangGateway(server, request_ttl=1)
    parts = zhejiang(server)
    with parts[0]:
        call(parts)
        time.sleep(0.6)  # past half the request secret's life: renewed ahead of its end
        assert call(parts).records[0]["secret_no"] == "req-2"
    assert (len(server.to("/refreshTokenByKey")), len(server.to("/refreshTokenBySec"))) == (1, 1)
    assert len(server.to("/api/q")) == 2


def test_two_tier_expired_code_renews_with_the_refresh_secret(server: LoopbackServer) -> None:
    gateway = ZhejiangGateway(server)
    parts = zhejiang(server)
    with parts[0]:
        call(parts)
        gateway.expire_requests()
        assert call(parts).records[0]["secret_no"] == "req-2"
    assert (len(server.to("/refreshTokenByKey")), len(server.to("/refreshTokenBySec"))) == (1, 1)
    assert len(server.to("/api/q")) == 3


def test_two_tier_falls_back_to_the_app_secret_when_the_refresh_secret_is_refused(
    server: LoopbackServer,
) -> None:
    gateway = ZhejiangGateway(server)
    parts = zhejiang(server)
    with parts[0], capture_logs() as logs:
        call(parts)
        gateway.expire_requests()
        gateway.refuse_refresh = True
        assert call(parts).records[0]["secret_no"] == "req-2"
    assert (len(server.to("/refreshTokenByKey")), len(server.to("/refreshTokenBySec"))) == (2, 1)
    assert any(e["event"] == "http.refresh_secret_rejected" for e in logs)


def test_two_tier_bad_app_secret_is_permanent(server: LoopbackServer) -> None:
    ZhejiangGateway(server)
    parts = zhejiang(server, app_secret="wrong-app-secret")
    with parts[0], pytest.raises(PermanentUpstreamError) as info:
        call(parts)
    assert "rejected app_key/app_secret at refreshTokenByKey" in str(info.value)
    assert "wrong-app-secret" not in str(info.value)
    assert server.to("/api/q") == []


def test_two_tier_secrets_never_shown(server: LoopbackServer) -> None:
    gateway = ZhejiangGateway(server)
    parts = zhejiang(server)
    with parts[0], capture_logs() as logs:
        call(parts)
        gateway.expire_requests()
        # a gateway that names the secret it refuses and echoes the request
        gateway.data = lambda req: Reply(  # type: ignore[method-assign]
            status=400, body=f"{next(iter(gateway.request))} {json.dumps(req.query)}".encode()
        )
        server.handler = gateway.data
        with pytest.raises(PermanentUpstreamError) as info:
            call(parts)
    shown = str(info.value) + repr(logs) + "".join(traceback.format_exception(info.value))
    signs = [r.query["sign"] for r in server.requests]
    for secret in [*gateway.request, *gateway.refresh, APP_SECRET, *signs]:
        assert secret not in shown
    assert "sign=***" in str(info.value)
