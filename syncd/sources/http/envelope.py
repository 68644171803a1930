"""Reading a gateway's JSON envelope: business code, records, total, cursor, server time.

An :class:`Envelope` is compiled once from an :class:`~syncd.config.model.EnvelopeConfig`
(every dotted path becomes a getter) and then parses each decoded page:

- ``decode_strings`` paths holding a JSON *string* are decoded a second time;
- the business code (compared as a string: ``200 == "200"``) decides the outcome: success,
  ``auth_expired_codes`` → :class:`AuthExpiredError`, ``transient_codes`` →
  :class:`TransientUpstreamError`, anything else → :class:`PermanentUpstreamError` with the
  code, the gateway's message and a hint for the operator;
- a missing (or non-list) records path is permanent and names the keys the body does have;
- a reported server time more than 60 s off the local clock is logged (``http.clock_skew``)
  and mentioned in errors, because signed timestamps fail when county clocks drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal

import orjson
import structlog

from syncd.config.model import EnvelopeConfig
from syncd.errors import AuthExpiredError, PermanentUpstreamError, TransientUpstreamError, UpstreamError
from syncd.paths import MISSING, compile_path
from syncd.sources.http.diagnose import skew_note
from syncd.sources.http.texts import RecordTexts

__all__ = ["Envelope", "Outcome", "ParsedPage", "describe_shape", "parse_instant"]

log = structlog.get_logger(__name__)

_SKEW_WARN_SECONDS = 60.0
# where gateways put their clock when no server_time_path is configured (checked on errors only)
_SERVER_TIME_KEYS = ("serverTime", "server_time", "sysTime", "systemTime", "timestamp")

# (keywords in the gateway's message, lower-cased) -> what the operator should do; first match wins
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (
            "无权",
            "未授权",
            "没有权限",
            "无访问权限",
            "not authorized",
            "unauthorized",
            "forbidden",
            "permission",
        ),
        "the gateway says this app is not authorized for this resource: check the approval (授权) "
        "and the path",
    ),
    (
        ("quota", "rate limit", "配额", "限流", "次数", "频率", "too many", "流量"),
        "the gateway's quota or rate limit was hit (配额/限流): run the dataset less often or ask for a "
        "larger quota",
    ),
    (
        ("pagesize", "page size", "page_size", "每页", "页大小", "条数", "pagenum", "最大记录"),
        "the page size is over the gateway's cap: lower pagination.page_size",
    ),
    (
        ("签名", "sign"),
        "the gateway rejected the signature: check the secret, the signature recipe and this server's clock",
    ),
    (
        ("时间戳", "timestamp", "时间差", "请求时间"),
        "the gateway rejected the request time: check this server's clock (NTP, 时钟同步)",
    ),
    (
        ("appkey", "appsecret", "app_key", "凭证", "密钥", "credential", "clientid", "client_id"),
        "the gateway rejected the app credentials: check the connection's auth settings",
    ),
    (
        ("过期", "失效", "expired", "token"),
        "if this code means an expired credential, add it to envelope.auth_expired_codes so that syncd "
        "refreshes it and retries",
    ),
    (
        ("参数", "parameter", "param"),
        "the gateway rejected a parameter: check source.params and the parameter names of pagination "
        "and incremental",
    ),
)

Kind = Literal["success", "transient", "auth_expired", "error", "missing"]


@dataclass(frozen=True, slots=True)
class ParsedPage:
    """The useful part of one decoded response."""

    records: list[dict[str, Any]] | RecordTexts  # RecordTexts: as a TextSplitter left them
    total: int | None = None
    cursor: str | None = None
    server_time: datetime | None = None  # timezone-aware
    digests: list[str] | None = None  # the records' digests, where the source took them


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a response's business code says."""

    kind: Kind
    code: str | None
    message: str


def parse_instant(value: Any, tz: tzinfo | None = None) -> datetime | None:  # noqa: PLR0911
    """An aware datetime from epoch seconds/milliseconds or a date-time string (naive = ``tz``)."""
    if value is None or value is MISSING or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) in (10, 13):
            value = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=tz) if tz is not None else parsed.astimezone()
            return parsed
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def describe_shape(body: Any, limit: int = 300) -> str:
    """A short description of a body's keys (two levels), for "expected X, found Y" messages."""
    if isinstance(body, list):
        return f"a list of {len(body)} item(s)"
    if not isinstance(body, dict):
        return f"a {type(body).__name__}"
    parts = []
    for key, value in list(body.items())[:20]:
        if isinstance(value, dict):
            parts.append(f"{key}{{{', '.join(str(k) for k in list(value)[:10])}}}")
        elif isinstance(value, list):
            parts.append(f"{key}[{len(value)}]")
        else:
            parts.append(str(key))
    text = "keys " + ", ".join(parts) if parts else "no keys"
    return text if len(text) <= limit else text[:limit] + "…"


def _code_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def hint_for(code: str | None, message: str) -> str:
    text = message.lower()
    for keywords, hint in _HINTS:
        if any(k in text for k in keywords):
            return hint
    return f"see the gateway's documentation for code {code}" if code else "see the gateway's documentation"


class Envelope:
    """A compiled :class:`EnvelopeConfig`: ``parse(body) -> ParsedPage``."""

    def __init__(self, cfg: EnvelopeConfig, *, tz: tzinfo | None = None) -> None:
        self.cfg = cfg
        self.tz = tz
        self._code = compile_path(cfg.code_path) if cfg.code_path else None
        self._message = compile_path(cfg.message_path) if cfg.message_path else None
        self._success = frozenset(cfg.success_codes)
        self._transient = frozenset(cfg.transient_codes)
        self._expired = frozenset(cfg.auth_expired_codes)
        self._records = compile_path(cfg.records_path)
        self._total = compile_path(cfg.total_path) if cfg.total_path else None
        self._cursor = compile_path(cfg.cursor_path) if cfg.cursor_path else None
        self._server_time = compile_path(cfg.server_time_path) if cfg.server_time_path else None
        self._decoders = tuple(self._decoder(p) for p in cfg.decode_strings)
        self._skew_warned = False

    # ------------------------------------------------------------------ public

    def parse(self, body: Any) -> ParsedPage:
        """Check the code and extract the page; raises an :class:`UpstreamError` subclass otherwise."""
        failed = [
            path
            for path, decode in zip(self.cfg.decode_strings, self._decoders, strict=True)
            if not decode(body)
        ]
        outcome = self.classify(body)
        if outcome.kind != "success":
            raise self.error(outcome, body)
        if failed:
            raise PermanentUpstreamError(
                f"{failed[0]!r} holds a string that is not valid JSON (envelope.decode_strings); "
                "remove the path from decode_strings if the gateway sends plain text there"
            )
        server_time = None
        if self._server_time is not None:
            server_time = parse_instant(self._server_time(body), self.tz)
            self._skew(server_time)
        return ParsedPage(
            records=self._extract_records(body),
            total=_as_int(self._total(body)) if self._total is not None else None,
            cursor=self._extract_cursor(body),
            server_time=server_time,
        )

    def classify(self, body: Any) -> Outcome:
        """The outcome of a response by its business code (``missing`` when it has none)."""
        message = self._message_of(body)
        if self._code is None:
            return Outcome("success", None, message)
        raw = self._code(body)
        if raw is MISSING or raw is None:
            return Outcome("missing", None, message)
        code = _code_str(raw)
        if code in self._success:
            return Outcome("success", code, message)
        if code in self._expired:
            return Outcome("auth_expired", code, message)
        if code in self._transient:
            return Outcome("transient", code, message)
        return Outcome("error", code, message)

    def error(self, outcome: Outcome, body: Any, *, hint: str | None = None) -> UpstreamError:
        """The exception for a non-success outcome (with a clock-skew note when the gateway reports one)."""
        code = outcome.code
        said = f" ({outcome.message})" if outcome.message else ""
        if outcome.kind == "missing":
            return PermanentUpstreamError(
                f"the response has no business code at {self.cfg.code_path!r} (envelope.code_path){said}; "
                f"it has {describe_shape(body)}: set envelope.code_path to where the gateway puts its code, "
                "or to null if it sends none"
            )
        note = self.clock_note(body)
        if outcome.kind == "auth_expired":
            return AuthExpiredError(f"the credential expired (business code {code}{said}){note}", code=code)
        if outcome.kind == "transient":
            return TransientUpstreamError(
                f"the gateway is busy (business code {code}{said}){note}", code=code
            )
        text = hint or hint_for(code, outcome.message)
        return PermanentUpstreamError(
            f"the gateway answered with business code {code}{said}: {text}{note}", code=code
        )

    # ------------------------------------------------------------------ pieces

    def _message_of(self, body: Any) -> str:
        if self._message is None:
            return ""
        value = self._message(body)
        return "" if value is MISSING or value is None else " ".join(str(value).split())[:300]

    def _extract_records(self, body: Any) -> list[dict[str, Any]] | RecordTexts:
        value = self._records(body)
        if value.__class__ is RecordTexts:  # a list of objects (TextSplitter checked each item)
            return value
        where = f"{self.cfg.records_path or '(the body itself)'!r} (envelope.records_path)"
        if value is None:  # an explicit null: some gateways send it for an empty result
            return []
        if value is MISSING:
            raise PermanentUpstreamError(
                f"expected the records list at {where}, but it is missing; the response has "
                f"{describe_shape(body)}"
            )
        if not isinstance(value, list):
            extra = (
                " (a JSON string: add its path to envelope.decode_strings)" if isinstance(value, str) else ""
            )
            raise PermanentUpstreamError(
                f"expected the records list at {where}, but it is a {type(value).__name__}{extra}; "
                f"the response has {describe_shape(body)}"
            )
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise PermanentUpstreamError(
                    f"the records at {where} must be JSON objects, but item {index} is a "
                    f"{type(item).__name__}: check envelope.records_path and envelope.decode_strings"
                )
        return value

    def _extract_cursor(self, body: Any) -> str | None:
        if self._cursor is None:
            return None
        value = self._cursor(body)
        if value is MISSING or value is None or value == "" or isinstance(value, bool):
            return None
        return str(value)

    def _decoder(self, path: str) -> Callable[[Any], bool]:
        """A function that decodes the JSON string at ``path`` in place; False when it is not JSON."""
        parent_path, _, last = path.rpartition(".")
        parent_get = compile_path(parent_path)
        key: str | int = int(last) if last.lstrip("-").isdigit() else last

        def decode(body: Any) -> bool:
            parent = parent_get(body)
            try:
                value = parent[key]
            except (KeyError, IndexError, TypeError):
                return True
            if not isinstance(value, str | bytes):
                return True
            if not value.strip():
                parent[key] = None
                return True
            try:
                parent[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                return False
            return True

        return decode

    def _skew(self, server_time: datetime | None) -> float | None:
        if server_time is None:
            return None
        skew = server_time.timestamp() - time.time()
        if abs(skew) <= _SKEW_WARN_SECONDS:
            return None
        if not self._skew_warned:
            self._skew_warned = True
            log.warning(
                "http.clock_skew", skew_seconds=round(skew), source="response body", hint=skew_note(skew)
            )
        return skew

    def clock_note(self, body: Any) -> str:
        """'; note: <skew>' when the body reports a server time more than 60 s off ours, else ''."""
        value: Any = MISSING
        if self._server_time is not None:
            value = self._server_time(body)
        elif isinstance(body, dict):
            value = next((body[k] for k in _SERVER_TIME_KEYS if k in body), MISSING)
        skew = self._skew(parse_instant(value, self.tz))
        return f"; note: {skew_note(skew)}" if skew is not None else ""
