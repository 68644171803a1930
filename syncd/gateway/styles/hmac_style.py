"""Style 2 (Shandong-like): HMAC-signed headers, 1-based offset paging, data as a JSON string.

Every request carries ``X-Client-Id``, ``X-Timestamp`` (epoch ms), ``X-Nonce`` and
``X-Signature = Base64(HmacSHA256(secret, clientId + timestamp + nonce))``. A timestamp more
than 10 minutes off the server clock is refused with the server's time (``serverTime``), a
reused nonce is refused as a replay.

``GET /sd/rkxx?STARTNUM=1&PAGENUM=100&GXSJ_START=..&GXSJ_END=..`` (times as
``yyyyMMddHHmmss`` or ``yyyy-MM-dd HH:mm:ss``, both inclusive) answers
``{"code": "200", "msg": "成功", "data": "{\\"total\\": N, \\"rows\\": [...]}"}`` with rows in
upper-case pinyin initials: ID, XM, SFZH, XB, CSRQ, LXDH, HJDZ (division code), SCBZ
(deleted flag), GXSJ (``yyyyMMddHHmmss``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import deque
from typing import Any, Final

import orjson

from syncd.gateway.data import TIME_FORMAT
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

__all__ = ["DATA_PATH", "HmacStyle", "sign", "to_pinyin_fields"]

DATA_PATH: Final = "/sd/rkxx"
SKEW_MS: Final = 10 * 60 * 1000
_FAULTS: Final = frozenset(ALL_KINDS) - {"token_expire"}  # no token to expire here
_TIME_FORMATS: Final = ("%Y%m%d%H%M%S", TIME_FORMAT)
_HEADERS: Final = ("x-client-id", "x-timestamp", "x-nonce", "x-signature")


def sign(secret: str, client_id: str, timestamp: str, nonce: str) -> str:
    """``Base64(HmacSHA256(secret, clientId + timestamp + nonce))`` (what clients must send)."""
    digest = hmac.new(secret.encode(), (client_id + timestamp + nonce).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def to_pinyin_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A Style 1 record in Style 2's upper-case pinyin-initial fields."""
    address = record.get("address")
    update_time = record.get("updateTime")
    return {
        "ID": record.get("id"),
        "XM": record.get("name"),
        "SFZH": record.get("idCard"),
        "XB": record.get("gender"),
        "CSRQ": record.get("birthDate"),
        "LXDH": record.get("phone"),
        "HJDZ": address.get("divisionCode") if isinstance(address, dict) else None,
        "SCBZ": record.get("isDeleted"),
        "GXSJ": update_time.replace("-", "").replace(" ", "").replace(":", "")
        if isinstance(update_time, str) else update_time,
    }


def _refused(message: str, **extra: Any) -> Response:
    return json_response({"code": "401", "msg": message, **extra})


class HmacStyle:
    """The HMAC-signed, offset-paged gateway."""

    prefixes: Final = ("/sd/",)

    def __init__(self, ctx: Context, *, client_id: str, secret: str, page_cap: int = 100) -> None:
        self._ctx = ctx
        self._client_id = client_id
        self._secret = secret
        self._page_cap = page_cap
        self._nonces: set[str] = set()
        self._nonce_expiry: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HmacStyle(client_id={self._client_id!r})"

    def handle(self, req: Request) -> Response:
        if req.path != DATA_PATH:
            return json_response({"code": "404", "msg": "接口不存在"}, status=404)
        ctx = self._ctx
        ctx.log(req)
        refused = self._authenticate(req)
        if refused is not None:
            return refused
        try:
            start_num = int_param(req.params, "STARTNUM", 1)
            page_num = int_param(req.params, "PAGENUM", self._page_cap)
            start = time_param(req.params, "GXSJ_START", _TIME_FORMATS)
            end = time_param(req.params, "GXSJ_END", _TIME_FORMATS)
        except ParamError as exc:
            return json_response({"code": "400", "msg": str(exc)})
        if page_num > self._page_cap:
            return json_response({"code": "400", "msg": f"PAGENUM 不能超过 {self._page_cap}"})

        fault = ctx.draw_fault(_FAULTS)
        canned = ctx.fault_response(fault)
        if canned is not None:
            return canned
        drift = ctx.faults.drift if fault == "total_drift" else 0

        def render() -> bytes:
            page = ctx.store.query(start, end, start_num - 1, page_num)
            rows = [to_pinyin_fields(orjson.loads(raw)) for raw in page.rows]
            data = orjson.dumps({"total": page.total + drift, "rows": rows}).decode()
            return orjson.dumps({"code": "200", "msg": "成功", "data": data})

        body = render() if drift else ctx.page(("style2", start_num, page_num), (start, end), render)
        return ctx.transport(Response(body=body), fault)

    def _authenticate(self, req: Request) -> Response | None:  # noqa: PLR0911 - one answer per refusal
        client_id, timestamp, nonce, signature = (req.headers.get(h, "") for h in _HEADERS)
        if not (client_id and timestamp and nonce and signature):
            return _refused("缺少签名头 X-Client-Id / X-Timestamp / X-Nonce / X-Signature")
        if client_id != self._client_id:
            return _refused("客户端不存在")
        if not timestamp.isdigit():
            return _refused("时间戳格式错误，应为毫秒数")
        server_ms = self._ctx.now_ms()
        if abs(int(timestamp) - server_ms) > SKEW_MS:
            return _refused("时间戳超出允许范围", serverTime=server_ms)
        expected = sign(self._secret, client_id, timestamp, nonce)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return _refused("签名错误")
        if not self._fresh_nonce(nonce):
            return _refused("nonce 已使用（重放请求）")
        return None

    def _fresh_nonce(self, nonce: str) -> bool:
        """Remember a nonce for the length of the timestamp window; False when already seen."""
        now = time.monotonic()
        with self._lock:
            expiry = self._nonce_expiry
            while expiry and expiry[0][0] <= now:
                self._nonces.discard(expiry.popleft()[1])
            if nonce in self._nonces:
                return False
            self._nonces.add(nonce)
            expiry.append((now + 2 * SKEW_MS / 1000, nonce))
            return True
