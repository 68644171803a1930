"""Signatures computed from a :class:`~syncd.config.model.SignatureRecipe`, and the ``signed`` scheme.

A recipe names the ordered ``parts`` (literal text with placeholders ``{app_key}``,
``{secret}``, ``{timestamp}``, ``{nonce}``, ``{token}``, ``{client_id}``, ``{path}``,
``{body}``), the separator, the algorithm (md5, sha1, sha256, hmac-sha256 keyed by the
secret, sm3) and the encoding (hex, hex-upper, base64). :class:`Signer` compiles it once;
placeholder names and SM3 support are checked when the configuration is loaded
(:func:`recipe_problems`, positioned by ``syncd check``) and again when the source is built,
never per request.

Guangdong TIF style, for example::

    recipe: {algorithm: sha256, parts: ["{timestamp}", "{token}", "{nonce}", "{timestamp}"],
             timestamp_unit: s, signature_name: x-tif-signature, timestamp_name: x-tif-timestamp,
             nonce_name: x-tif-nonce, extra: {x-tif-paasid: "{app_key}"}}

``{token}`` is the scheme's current credential (the static secret for ``signed``, the
request secret for ``two_tier_secret``). ``extra`` values may use the same placeholders.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from syncd.config.docpath import Path
from syncd.config.model import SignatureRecipe, SignedAuth
from syncd.sources.http.auth.base import AuthScheme, config_error, new_nonce, now_stamp
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope

__all__ = ["PLACEHOLDERS", "SignedScheme", "Signer", "digest_function", "recipe_problems"]

PLACEHOLDERS = ("app_key", "secret", "timestamp", "nonce", "token", "client_id", "path", "body")

Digest = Callable[[bytes, bytes], bytes]  # (key, message) -> raw digest


def digest_function(algorithm: str) -> Digest:
    """The raw digest function of a recipe algorithm; raises ValueError when unavailable (SM3)."""
    if algorithm == "hmac-sha256":
        return lambda key, msg: hmac.new(key, msg, hashlib.sha256).digest()
    if algorithm == "sm3":
        hashlib.new("sm3")  # raises ValueError when OpenSSL lacks SM3
        return lambda key, msg: hashlib.new("sm3", msg).digest()
    if algorithm in ("md5", "sha1", "sha256"):
        # the gateway's protocol fixes the algorithm; usedforsecurity=False keeps md5/sha1 usable on
        # FIPS-hardened hosts, where they would otherwise be refused
        return lambda key, msg: hashlib.new(algorithm, msg, usedforsecurity=False).digest()
    raise ValueError(f"unknown signature algorithm {algorithm!r}")


_ENCODERS: dict[str, Callable[[bytes], str]] = {
    "hex": bytes.hex,
    "hex-upper": lambda raw: raw.hex().upper(),
    "base64": lambda raw: base64.b64encode(raw).decode("ascii"),
}


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def recipe_problems(recipe: SignatureRecipe) -> list[tuple[Path, str]]:
    """What keeps ``recipe`` from signing on this host, each problem with its path under the recipe
    (``("parts", 1)``): a template that does not parse, an unknown placeholder, an algorithm this
    Python's OpenSSL lacks (SM3). ``syncd check`` reports them (:mod:`syncd.config.crosscheck`),
    so a run never meets them."""
    problems: list[tuple[Path, str]] = []
    templates: list[tuple[Path, str]] = [
        *((("parts", i), p) for i, p in enumerate(recipe.parts)),
        *((("extra", k), v) for k, v in recipe.extra.items()),
    ]
    for where, template in templates:
        try:
            names = _fields(template)
        except ValueError as exc:
            problems.append((where, (
                f"{template!r} is not a valid template ({exc}): a placeholder is written {{name}}, "
                "a literal brace as {{ or }}")))
            continue
        unknown = [n for n in names if n not in PLACEHOLDERS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], PLACEHOLDERS, n=1, cutoff=0.6)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            problems.append((where, (
                f"unknown placeholder {{{unknown[0]}}}: {hint}the placeholders are "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + "; write a literal brace as {{ or }}")))
    try:
        digest_function(recipe.algorithm)
    except ValueError:
        problems.append((("algorithm",), (
            "this Python's OpenSSL has no SM3 (国密) support: use an OpenSSL build with SM3 "
            "(OpenSSL 1.1.1 or later, as shipped by Debian and the 信创 distributions)")))
    return problems


class Signer:
    """A compiled signature recipe: ``sign(...)`` returns the parameters to send, ``place`` puts them."""

    def __init__(
        self, recipe: SignatureRecipe, *, config_file: str = "", config_path: Path = ("auth", "recipe")
    ) -> None:
        self.recipe = recipe
        problems = recipe_problems(recipe)
        if problems:  # checked by the load already; this is the last line of defence
            raise config_error(config_file, [((*config_path, *at), message) for at, message in problems])
        self._digest = digest_function(recipe.algorithm)
        self._encode = _ENCODERS[recipe.encoding]
        used = {n for p in recipe.parts for n in _fields(p)} | {
            n for v in recipe.extra.values() for n in _fields(v)
        }
        self._needs_nonce = recipe.nonce_name is not None or "nonce" in used
        self._key_is_secret = recipe.algorithm == "hmac-sha256"

    def sign(
        self,
        *,
        secret: str,
        app_key: str = "",
        client_id: str = "",
        token: str | None = None,
        url: str = "",
        body: bytes | None = None,
    ) -> dict[str, str]:
        """The signature, timestamp, nonce and extra parameters for one request."""
        recipe = self.recipe
        timestamp = now_stamp(recipe.timestamp_unit)
        nonce = new_nonce() if self._needs_nonce else ""
        values = {
            "app_key": app_key,
            "secret": secret,
            "timestamp": timestamp,
            "nonce": nonce,
            "token": secret if token is None else token,
            "client_id": client_id,
            "path": urlsplit(url).path if url else "",
            "body": body.decode("utf-8") if body else "",
        }
        text = recipe.separator.join(part.format_map(values) for part in recipe.parts)
        key = secret.encode("utf-8") if self._key_is_secret else b""
        out = {name: value.format_map(values) for name, value in recipe.extra.items()}
        if recipe.timestamp_name:
            out[recipe.timestamp_name] = timestamp
        if recipe.nonce_name:
            out[recipe.nonce_name] = nonce
        out[recipe.signature_name] = self._encode(self._digest(key, text.encode("utf-8")))
        return out

    def place(self, values: dict[str, str], params: dict[str, Any], headers: dict[str, str]) -> None:
        (headers if self.recipe.placement == "header" else params).update(values)


class SignedScheme(AuthScheme[SignedAuth]):
    """A static secret and a signature recipe (e.g. Guangdong TIF sha256, SM3 where 国密 is required)."""

    type_name = "signed"

    def __init__(
        self,
        cfg: SignedAuth,
        *,
        client: HttpClient,
        envelope: Envelope,
        config_file: str = "",
        config_path: Path = ("auth",),
    ) -> None:
        super().__init__(
            cfg, client=client, envelope=envelope, config_file=config_file, config_path=config_path
        )
        self._signer = Signer(cfg.recipe, config_file=config_file, config_path=(*config_path, "recipe"))

    def secret_values(self) -> tuple[str, ...]:
        return (self.cfg.secret.get_secret_value(),)

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        secret = self.cfg.secret.get_secret_value()
        values = self._signer.sign(
            secret=secret, app_key=self.cfg.app_key, client_id=self.cfg.client_id, url=url, body=body
        )
        self._signer.place(values, params, headers)
