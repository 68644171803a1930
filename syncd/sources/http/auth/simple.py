"""Schemes without a fetched credential: ``none``, ``static_key`` and ``hmac_headers`` (Shandong).

``hmac_headers`` sends, with every request::

    X-Client-Id: <client_id>
    X-Timestamp: <epoch ms (or s)>
    X-Nonce:     <uuid4 hex>
    X-Signature: Base64(HmacSHA256(secret, client_id + timestamp + nonce))   (or hex)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from syncd.config.model import HmacHeadersAuth, NoAuth, StaticKeyAuth
from syncd.sources.http.auth.base import AuthScheme, new_nonce, now_stamp

__all__ = ["HmacHeadersScheme", "NoAuthScheme", "StaticKeyScheme"]


class NoAuthScheme(AuthScheme[NoAuth]):
    """No credentials (a gateway reachable only from the intranet, or a 前置机 proxy that adds them)."""

    type_name = "none"

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        return None


class StaticKeyScheme(AuthScheme[StaticKeyAuth]):
    """A fixed key in a header (``X-API-Key: …``) or query parameter, with an optional prefix."""

    type_name = "static_key"

    def secret_values(self) -> tuple[str, ...]:
        return (self.cfg.value.get_secret_value(),)

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        value = f"{self.cfg.prefix}{self.cfg.value.get_secret_value()}"
        if self.cfg.placement == "header":
            headers[self.cfg.name] = value
        else:
            params[self.cfg.name] = value


class HmacHeadersScheme(AuthScheme[HmacHeadersAuth]):
    """Shandong style HMAC-SHA256 over client id + timestamp + nonce, in four headers."""

    type_name = "hmac_headers"

    def secret_values(self) -> tuple[str, ...]:
        return (self.cfg.secret.get_secret_value(),)

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        cfg = self.cfg
        timestamp = now_stamp(cfg.timestamp_unit)
        nonce = new_nonce()
        message = f"{cfg.client_id}{timestamp}{nonce}".encode()
        raw = hmac.new(cfg.secret.get_secret_value().encode("utf-8"), message, hashlib.sha256).digest()
        headers[cfg.client_id_header] = cfg.client_id
        headers[cfg.timestamp_header] = timestamp
        headers[cfg.nonce_header] = nonce
        headers[cfg.signature_header] = (
            base64.b64encode(raw).decode("ascii") if cfg.encoding == "base64" else raw.hex()
        )
