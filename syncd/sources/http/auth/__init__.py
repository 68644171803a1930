"""Auth schemes, registered by the YAML ``type`` of a connection's ``auth:`` block.

=================  ==========================================================================
``none``           nothing added
``static_key``     a fixed key in a header or query parameter
``token``          appKey/appSecret → bearer token, cached and refreshed before expiry
``hmac_headers``   Shandong: X-Client-Id, X-Timestamp, X-Nonce, X-Signature (HMAC-SHA256)
``signed``         a :class:`~syncd.config.model.SignatureRecipe` over a static secret
``two_tier_secret`` Zhejiang IRS: refresh secret + request secret, md5-signed calls
=================  ==========================================================================

Adding a scheme is adding a module with an :class:`AuthScheme` subclass and one line here.
"""

from __future__ import annotations

from typing import Any

from syncd.config.docpath import Path, format_path
from syncd.sources.http.auth.base import AnyAuthConfig, AuthScheme
from syncd.sources.http.auth.signing import SignedScheme, Signer
from syncd.sources.http.auth.simple import HmacHeadersScheme, NoAuthScheme, StaticKeyScheme
from syncd.sources.http.auth.token import TokenScheme
from syncd.sources.http.auth.two_tier import TwoTierSecretScheme
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope

__all__ = [
    "AUTH",
    "AuthScheme",
    "HmacHeadersScheme",
    "NoAuthScheme",
    "SignedScheme",
    "Signer",
    "StaticKeyScheme",
    "TokenScheme",
    "TwoTierSecretScheme",
    "build_auth",
]

AUTH: dict[str, type[AuthScheme[Any]]] = {
    cls.type_name: cls
    for cls in (
        NoAuthScheme,
        StaticKeyScheme,
        TokenScheme,
        HmacHeadersScheme,
        SignedScheme,
        TwoTierSecretScheme,
    )
}


def build_auth(
    cfg: AnyAuthConfig,
    *,
    client: HttpClient,
    envelope: Envelope,
    config_file: str = "",
    config_path: Path = ("auth",),
) -> AuthScheme[Any]:
    """The scheme for ``cfg``; an unknown ``type`` names the known ones."""
    try:
        cls = AUTH[cfg.type]
    except KeyError:
        known = ", ".join(sorted(AUTH))
        raise ValueError(
            f"unknown auth type {cfg.type!r} at {format_path(config_path)}.type; known types: {known}"
        ) from None
    return cls(cfg, client=client, envelope=envelope, config_file=config_file, config_path=config_path)
