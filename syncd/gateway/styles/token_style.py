"""Style 1: appKey/appSecret for a bearer token, page-number paging, camelCase records.

``POST /auth/token`` with ``{"appKey", "appSecret"}`` (JSON, form or query) answers
``{"code": "0", "data": {"accessToken", "expiresIn"}}``. ``GET /api/residents/query`` with
``Authorization: Bearer <token>`` (or ``X-Access-Token``, or ``?access_token=``) and
``pageNo``/``pageSize``/``updateTimeStart``/``updateTimeEnd`` answers
``{"code": "0", "data": {"total", "pageNo", "pageSize", "list"}}``. Business errors come with
HTTP 200: 40001 bad credentials, 40101 token expired or invalid, 40403 resource not
authorized, 40000 parameter error.

``revoke_on_issue``: issuing a token revokes every token issued before it (many provincial
gateways do: one valid token per appKey), so two clients fetching their own tokens keep
evicting each other. :attr:`TokenStyle.issued` counts the tokens issued (gateways often cap
token issuance per day).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import Final
from urllib.parse import parse_qsl

import orjson

from syncd.gateway.faults import ALL_KINDS
from syncd.gateway.protocol import (
    Context,
    ParamError,
    Request,
    Response,
    int_param,
    json_response,
    time_param,
)

__all__ = ["DATA_PATH", "TOKEN_PATH", "TokenStyle"]

TOKEN_PATH: Final = "/auth/token"  # noqa: S105 - a path, not a password
DATA_PATH: Final = "/api/residents/query"
_FAULTS: Final = frozenset(ALL_KINDS)


def _expired() -> Response:
    return json_response({"code": "40101", "msg": "token 已过期或无效"})


def _bad_param(message: str) -> Response:
    return json_response({"code": "40000", "msg": message})


class TokenStyle:
    """The token-and-page-number gateway (the demo's style)."""

    prefixes: Final = ("/auth/", "/api/")

    def __init__(
        self, ctx: Context, *, app_key: str, app_secret: str, token_ttl: int, revoke_on_issue: bool = False
    ) -> None:
        self._ctx = ctx
        self._app_key = app_key
        self._app_secret = app_secret.encode()
        self._ttl = token_ttl
        self.revoke_on_issue = revoke_on_issue
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._issued = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenStyle(app_key={self._app_key!r}, tokens={len(self._tokens)})"

    @property
    def issued(self) -> int:
        """How many tokens the token endpoint issued so far."""
        with self._lock:
            return self._issued

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._tokens.clear()

    def handle(self, req: Request) -> Response:
        if req.path == TOKEN_PATH:
            return self._issue(req)
        if req.path.startswith("/api/"):
            return self._data(req)
        return json_response({"code": "404", "msg": "接口不存在"}, status=404)

    # ------------------------------------------------------------------ token endpoint

    def _issue(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response({"code": "405", "msg": "请使用 POST 获取 token"}, status=405)
        fault = self._ctx.draw_fault(_FAULTS, auth=True)
        canned = self._ctx.fault_response(fault)
        if canned is not None:
            return canned
        try:
            creds = self._credentials(req)
        except ParamError as exc:
            return _bad_param(str(exc))
        key, secret = creds.get("appKey", ""), creds.get("appSecret", "")
        if key != self._app_key or not hmac.compare_digest(secret.encode(), self._app_secret):
            return json_response({"code": "40001", "msg": "appKey 或 appSecret 错误"})
        token = secrets.token_urlsafe(24)
        with self._lock:
            if self.revoke_on_issue:
                self._tokens.clear()  # the previous tokens are invalid from now on (40101)
            self._tokens[token] = time.monotonic() + self._ttl
            self._issued += 1
        payload = {"code": "0", "msg": "success", "data": {"accessToken": token, "expiresIn": self._ttl}}
        return self._ctx.transport(json_response(payload), fault)

    @staticmethod
    def _credentials(req: Request) -> dict[str, str]:
        kind = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if req.body and kind == "application/x-www-form-urlencoded":
            return dict(parse_qsl(req.body.decode("utf-8", "replace")))
        if req.body:
            try:
                body = orjson.loads(req.body)
            except orjson.JSONDecodeError:
                raise ParamError("请求体不是合法的 JSON") from None
            if not isinstance(body, dict):
                raise ParamError("请求体必须是 JSON 对象")
            return {str(k): str(v) for k, v in body.items() if v is not None}
        return dict(req.params)

    def _bearer(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return req.headers.get("x-access-token") or req.params.get("access_token")

    def _valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
            if expiry is None:
                return False
            if expiry <= time.monotonic():
                del self._tokens[token]
                return False
            return True

    # ------------------------------------------------------------------ data endpoint

    def _data(self, req: Request) -> Response:  # noqa: PLR0911 - one answer per business error
        ctx = self._ctx
        ctx.log(req)
        token = self._bearer(req)
        if not self._valid(token):
            return _expired()
        if req.path != DATA_PATH:
            return json_response({"code": "40403", "msg": "无权访问该资源"})
        if req.method != "GET":
            return json_response({"code": "405", "msg": "请使用 GET 查询"}, status=405)
        try:
            page_no = int_param(req.params, "pageNo", 1)
            page_size = int_param(req.params, "pageSize", 100)
            start = time_param(req.params, "updateTimeStart")
            end = time_param(req.params, "updateTimeEnd")
        except ParamError as exc:
            return _bad_param(str(exc))
        if page_size > ctx.page_size_cap:
            return _bad_param(f"pageSize 超过上限 {ctx.page_size_cap}")

        fault = ctx.draw_fault(_FAULTS)
        if fault == "token_expire":
            with self._lock:
                self._tokens.pop(token or "", None)  # the token really is gone now
            return _expired()
        canned = ctx.fault_response(fault)
        if canned is not None:
            return canned
        drift = ctx.faults.drift if fault == "total_drift" else 0

        def render() -> bytes:
            page = ctx.store.query(start, end, (page_no - 1) * page_size, page_size)
            head = (
                b'{"code":"0","msg":"success","data":{"total":%d,"pageNo":%d,"pageSize":%d,"list":['
                % (page.total + drift, page_no, page_size)
            )
            return head + b",".join(page.rows) + b"]}}"

        body = render() if drift else ctx.page(("style1", page_no, page_size), (start, end), render)
        return ctx.transport(Response(body=body), fault)
