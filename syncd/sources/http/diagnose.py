"""Turning what went wrong on the wire into a short reason and an operator-facing message.

- :func:`network_failure` sorts a ``requests`` exception: truncated body, timeouts, resets,
  refused connections and DNS failures are transient; an untrusted TLS certificate, an
  invalid URL or a redirect loop are permanent. The text never includes the exception's own
  message, which carries the full URL with its query string (signatures, tokens).
- :func:`status_failure` does the same for an HTTP status (408/429/5xx transient, other 4xx
  permanent with a hint), honouring ``Retry-After``.
- :func:`skew_note` explains a clock difference with the gateway.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import requests

__all__ = [
    "Failure",
    "network_failure",
    "parse_http_date",
    "parse_retry_after",
    "skew_note",
    "status_failure",
]

_STATUS_HINTS = {
    400: "the gateway rejected the request parameters: check source.params, pagination and incremental",
    401: "the gateway rejected the credentials: check the connection's auth settings",
    403: "the gateway refuses this app: check the approval (授权) for this resource and the path",
    404: "no such resource: check source.path and the connection's base_url",
    405: "check source.method (GET or POST)",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """A sorted failure: ``reason`` for the ``http.retry`` log, ``detail`` for the message."""

    reason: str
    detail: str
    transient: bool
    retry_after: float | None = None


def parse_http_date(value: str) -> float | None:
    """Epoch seconds of an HTTP date (``Date``, ``Retry-After``), or None."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = parse_http_date(value)
    if when is None:
        return None
    return max(0.0, when - (time.time() if now is None else now))


def skew_note(seconds: float) -> str:
    return (
        f"the gateway's clock is {seconds:+.0f} s off this server's clock; signed timestamps are "
        "rejected when clocks drift: fix this server's time sync (NTP, 时钟同步)"
    )


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """The exception and those nested in it (cause, context, urllib3 reasons and arguments)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 20:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]
        todo.extend(e for e in nested if isinstance(e, BaseException))


def network_failure(exc: requests.RequestException, *, connect: float, read: float) -> Failure:  # noqa: PLR0911
    """Sort a ``requests`` exception raised while sending or reading."""
    names = {type(e).__name__ for e in _chain(exc)}
    if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return Failure(
            "TLS certificate not trusted",
            "the gateway's TLS certificate is not trusted: set ca_bundle to the PEM file of the intranet "
            "CA (政务外网 CA); do not turn off verify_tls outside a test",
            transient=False,
        )
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return Failure("invalid URL", "the URL is not valid: check base_url and path", transient=False)
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return Failure("redirect loop", "the gateway redirects in a loop: check base_url", transient=False)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        detail = "truncated body: the connection closed before the whole response arrived"
        return Failure("truncated body", detail, transient=True)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Failure(
            "connect timeout", f"no connection within {connect:g} s (timeout.connect)", transient=True
        )
    if isinstance(exc, requests.exceptions.ReadTimeout) or "ReadTimeoutError" in names:
        return Failure("read timeout", f"no data within {read:g} s (timeout.read)", transient=True)
    for name, reason, detail in (
        ("ConnectionResetError", "connection reset", "the connection was reset by the peer"),
        (
            "ConnectionRefusedError",
            "connection refused",
            "connection refused: is the gateway (or the 前置机 proxy) up, and is base_url right?",
        ),
        (
            "gaierror",
            "name resolution",
            "the host name cannot be resolved: check base_url and this server's DNS",
        ),
        (
            "NameResolutionError",
            "name resolution",
            "the host name cannot be resolved: check base_url and DNS",
        ),
        ("RemoteDisconnected", "disconnected", "the gateway closed the connection without answering"),
    ):
        if name in names:
            return Failure(reason, detail, transient=True)
    kind = type(exc).__name__
    return Failure(kind, f"network error ({kind})", transient=True)


def status_failure(status: int, reason: str, body_start: str, retry_after: str | None) -> Failure:
    """Sort an HTTP error status; ``body_start`` is an already sanitized snippet of the body."""
    detail = f"HTTP {status} {reason}".rstrip() + (f": {body_start!r}" if body_start else "")
    if status in (408, 429) or status >= 500:
        return Failure(f"HTTP {status}", detail, transient=True, retry_after=parse_retry_after(retry_after))
    hint = _STATUS_HINTS.get(status, "retrying cannot help: check the request configuration")
    return Failure(f"HTTP {status}", f"{detail}; {hint}", transient=False)
