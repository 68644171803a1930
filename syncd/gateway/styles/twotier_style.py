"""Style 3 (Zhejiang IRS-like): two-tier secrets, MD5-signed query parameters.

``GET /zj/refreshTokenByKey?appKey&requestTime&sign=md5(appKey+appSecret+requestTime)`` issues
a refresh secret (48 h) and a request secret (15 min); ``GET /zj/refreshTokenBySec`` with
``sign=md5(appKey+refreshSecret+requestTime)`` issues a new request secret. Data calls
``GET /zj/api/residents?appKey&requestTime&sign=md5(appKey+requestSecret+requestTime)&pageNo&
pageSize&updateTimeStart&updateTimeEnd`` answer ``{"code": "00", "msg": "成功",
"datas": "<JSON string of the record list>", "dataCount": N}``.

Codes: ``00`` success, ``10`` parameter error, ``11`` request secret expired (renew and retry),
``12`` unknown appKey, ``14`` bad signature, ``15`` refresh secret expired (start again with
refreshTokenByKey), ``18`` daily quota exceeded, ``403`` resource not authorized.

There is one request secret at a time: issuing one (by key or by refresh secret) retires the
previous one, which answers code 11 from then on; a new refresh secret (by key) replaces the
previous one, which answers code 14. :attr:`TwoTierStyle.issued` counts request secrets issued.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

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

__all__ = ["DATA_PATH", "TwoTierStyle", "md5_sign"]

BY_KEY_PATH: Final = "/zj/refreshTokenByKey"
BY_SECRET_PATH: Final = "/zj/refreshTokenBySec"  # noqa: S105 - a path
DATA_PATH: Final = "/zj/api/residents"
_FAULTS: Final = frozenset(ALL_KINDS)
_SHANGHAI: Final = ZoneInfo("Asia/Shanghai")


def md5_sign(app_key: str, secret: str, request_time: str) -> str:
    """``md5(appKey + secret + requestTime)`` as lower-case hex (what clients must send)."""
    return hashlib.md5((app_key + secret + request_time).encode(), usedforsecurity=False).hexdigest()


def _answer(code: str, msg: str) -> Response:
    return json_response({"code": code, "msg": msg})


@dataclass(slots=True)
class _Secrets:
    refresh: str = ""
    refresh_end_ms: int = 0
    request: str = ""
    request_end_ms: int = 0
    retired: deque[str] = field(default_factory=lambda: deque(maxlen=8))  # superseded request secrets
    quota_day: str = ""
    calls_today: int = 0


class TwoTierStyle:
    """The refresh-secret / request-secret gateway."""

    prefixes: Final = ("/zj/",)

    def __init__(
        self,
        ctx: Context,
        *,
        app_key: str,
        app_secret: str,
        request_ttl: float = 900.0,
        refresh_ttl: float = 48 * 3600.0,
        daily_quota: int | None = None,
    ) -> None:
        self._ctx = ctx
        self._app_key = app_key
        self._app_secret = app_secret
        self._request_ttl_ms = int(request_ttl * 1000)
        self._refresh_ttl_ms = int(refresh_ttl * 1000)
        self._quota = daily_quota
        self._state = _Secrets()
        self._issued = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TwoTierStyle(app_key={self._app_key!r})"

    @property
    def issued(self) -> int:
        """How many request secrets were issued so far (refreshTokenByKey and refreshTokenBySec)."""
        with self._lock:
            return self._issued

    def expire_request_secrets(self) -> None:
        """Make the current request secret expire now (the next data call answers code 11)."""
        with self._lock:
            self._state.request_end_ms = 0

    def handle(self, req: Request) -> Response:
        if req.path in (BY_KEY_PATH, BY_SECRET_PATH):
            return self._refresh(req)
        if req.path.startswith("/zj/api/"):
            return self._data(req)
        return json_response({"code": "404", "msg": "接口不存在"}, status=404)

    def _signed(self, req: Request) -> tuple[str, str] | Response:
        """(requestTime, sign) of a request for our app key, or the error answer."""
        app_key, request_time, sign = (req.params.get(k, "") for k in ("appKey", "requestTime", "sign"))
        if not (app_key and request_time and sign):
            return _answer("10", "缺少参数 appKey / requestTime / sign")
        if app_key != self._app_key:
            return _answer("12", "appKey 不存在")
        return request_time, sign.lower()

    def _matches(self, secret: str, request_time: str, sign: str) -> bool:
        return bool(secret) and hmac.compare_digest(md5_sign(self._app_key, secret, request_time), sign)

    # ------------------------------------------------------------------ secrets

    def _refresh(self, req: Request) -> Response:
        fault = self._ctx.draw_fault(_FAULTS, auth=True)
        canned = self._ctx.fault_response(fault)
        if canned is not None:
            return canned
        signed = self._signed(req)
        if isinstance(signed, Response):
            return signed
        request_time, sign = signed
        now = self._ctx.now_ms()
        state = self._state
        with self._lock:
            if req.path == BY_KEY_PATH:
                if not self._matches(self._app_secret, request_time, sign):
                    return _answer("14", "签名错误")
                state.refresh = secrets.token_hex(16)
                state.refresh_end_ms = now + self._refresh_ttl_ms
            else:
                if not self._matches(state.refresh, request_time, sign):
                    return _answer("14", "签名错误")
                if state.refresh_end_ms <= now:
                    return _answer("15", "refreshSecret 已过期，请用 refreshTokenByKey 重新获取")
            if state.request:
                state.retired.append(state.request)
            state.request = secrets.token_hex(16)
            state.request_end_ms = now + self._request_ttl_ms
            self._issued += 1
            datas = {
                "refreshSecret": state.refresh,
                "refreshSecretEndTime": state.refresh_end_ms,
                "requestSecret": state.request,
                "requestSecretEndTime": state.request_end_ms,
            }
        return self._ctx.transport(json_response({"code": "00", "msg": "成功", "datas": datas}), fault)

    def _authorize(self, request_time: str, sign: str) -> Response | None:
        state = self._state
        now = self._ctx.now_ms()
        with self._lock:
            if self._matches(state.request, request_time, sign):
                if state.request_end_ms <= now:
                    return _answer("11", "requestSecret 已过期")
            elif any(self._matches(old, request_time, sign) for old in state.retired):
                return _answer("11", "requestSecret 已过期")
            else:
                return _answer("14", "签名错误")
            if self._quota is not None:
                today = datetime.fromtimestamp(now / 1000, _SHANGHAI).strftime("%Y%m%d")
                if state.quota_day != today:
                    state.quota_day, state.calls_today = today, 0
                if state.calls_today >= self._quota:
                    return _answer("18", f"今日调用次数已超过限额 {self._quota}")
                state.calls_today += 1
        return None

    # ------------------------------------------------------------------ data

    def _data(self, req: Request) -> Response:  # noqa: PLR0911 - one answer per business error
        ctx = self._ctx
        ctx.log(req)
        signed = self._signed(req)
        if isinstance(signed, Response):
            return signed
        refused = self._authorize(*signed)
        if refused is not None:
            return refused
        if req.path != DATA_PATH:
            return _answer("403", "无权访问该资源")
        try:
            page_no = int_param(req.params, "pageNo", 1)
            page_size = int_param(req.params, "pageSize", 100)
            start = time_param(req.params, "updateTimeStart")
            end = time_param(req.params, "updateTimeEnd")
        except ParamError as exc:
            return _answer("10", str(exc))
        if page_size > ctx.page_size_cap:
            return _answer("10", f"pageSize 超过上限 {ctx.page_size_cap}")

        fault = ctx.draw_fault(_FAULTS)
        if fault == "token_expire":
            self.expire_request_secrets()
            return _answer("11", "requestSecret 已过期")
        canned = ctx.fault_response(fault)
        if canned is not None:
            return canned
        drift = ctx.faults.drift if fault == "total_drift" else 0

        def render() -> bytes:
            page = ctx.store.query(start, end, (page_no - 1) * page_size, page_size)
            datas = orjson.dumps((b"[" + b",".join(page.rows) + b"]").decode())
            return b'{"code":"00","msg":"%s","datas":%s,"dataCount":%d}' % (
                "成功".encode(), datas, page.total + drift,
            )

        body = render() if drift else ctx.page(("style3", page_no, page_size), (start, end), render)
        return ctx.transport(Response(body=body), fault)
