"""The gateway styles served side by side, each under its own path prefix.

- :mod:`.token_style` — Style 1: bearer token, page numbers (``/auth/``, ``/api/``)
- :mod:`.hmac_style` — Style 2: HMAC-signed headers, offset paging (``/sd/``)
- :mod:`.twotier_style` — Style 3: two-tier secrets, MD5 signatures (``/zj/``)
"""

from __future__ import annotations

from typing import Protocol

from syncd.gateway.protocol import Request, Response
from syncd.gateway.styles.hmac_style import HmacStyle
from syncd.gateway.styles.token_style import TokenStyle
from syncd.gateway.styles.twotier_style import TwoTierStyle

__all__ = ["HmacStyle", "Style", "TokenStyle", "TwoTierStyle"]


class Style(Protocol):
    """One gateway style: the path prefixes it owns and how it answers a request there."""

    @property
    def prefixes(self) -> tuple[str, ...]: ...

    def handle(self, req: Request) -> Response: ...
