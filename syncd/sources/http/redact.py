"""Keeping secrets out of every text the HTTP source shows (messages, logs, reprs).

Two layers, because neither alone is enough:

- :func:`sanitize_url` drops user info and the values of query keys whose *names* look
  secret (``sign``, ``token``, ``appSecret``, ``access_token``…);
- a :class:`Redactor` knows the secret *values* (app secrets, static keys, tokens, request
  secrets, and whatever an auth scheme added to a request) and replaces them wherever they
  appear, e.g. in a gateway's error page that echoes the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["Redactor", "is_secret_name", "sanitize_url", "snippet"]

_SECRET_NAME = re.compile(r"sign|secret|token|key|passw|pwd|credential|authorization|ticket|cookie", re.I)


def is_secret_name(name: str) -> bool:
    """True for parameter and header names whose values must never be shown (sign, token, appSecret…)."""
    return bool(_SECRET_NAME.search(name))


def sanitize_url(url: str) -> str:
    """The URL without user info and with the values of secret-looking query keys replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{k}={'***' if is_secret_name(k) else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def snippet(raw: bytes | bytearray, limit: int = 200) -> str:
    """The start of a body as one printable line of at most ``limit`` characters."""
    text = " ".join(bytes(raw[: limit * 4]).decode("utf-8", "replace").split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[:limit] + "…"


class Redactor:
    """Secret values known to one client, scrubbed from every text before it is shown."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str | None) -> None:
        """Remember a secret value (values shorter than 4 characters would mangle ordinary text)."""
        if value and len(value) >= 4:
            self._values.add(value)

    def scrub(self, text: str, extra: Iterable[str] = ()) -> str:
        """``text`` with every known secret (and each of ``extra``) replaced by ``***``."""
        # longest first, so that a secret containing another is replaced whole
        for secret in sorted({*self._values, *extra}, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._values)} secret(s)>"
