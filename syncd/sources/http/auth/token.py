"""The ``token`` scheme: appKey/appSecret exchanged for a bearer token (the most common gateway style).

The token is fetched from ``url`` (JSON body, form or query), cached, and fetched again
``refresh_before`` ahead of its expiry (from ``expires_in_path``: seconds to live, or an
absolute epoch in s/ms; else ``default_ttl``). When the gateway still says it expired, the
client calls :meth:`TokenScheme.refresh` once. The token endpoint uses the same client, so
the same timeouts and retries; a rejected app_key/app_secret (e.g. code 40001) is permanent.

The cached token is shared by every source of the process using the same endpoint and
app_key, because gateways often revoke the previous token when they issue a new one. A read
worker uses the run process's token and asks the run's process for a new one (see
:mod:`syncd.sources.http.auth.base`): the token endpoint is called by one process only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd.config.docpath import Path, format_path
from syncd.config.model import TokenAuth
from syncd.errors import PermanentUpstreamError
from syncd.paths import MISSING, compile_path
from syncd.sources.http.auth.base import (
    AuthScheme,
    CredentialState,
    SharedCredential,
    fingerprint,
    shared_state,
)
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope, describe_shape

__all__ = ["TokenScheme"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _TokenState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: str | None = None
    refresh_at: float = 0.0  # time.monotonic() after which the token is fetched again
    # endpoints a request with a token of it succeeded on (SharedCredential.accepted_at)
    accepted: set[str] = field(default_factory=set)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is MISSING or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


class TokenScheme(SharedCredential, AuthScheme[TokenAuth]):
    """Bearer token from a token endpoint, cached until shortly before it expires."""

    type_name = "token"
    refreshable = True

    def __init__(
        self,
        cfg: TokenAuth,
        *,
        client: HttpClient,
        envelope: Envelope,
        config_file: str = "",
        config_path: Path = ("auth",),
    ) -> None:
        super().__init__(
            cfg, client=client, envelope=envelope, config_file=config_file, config_path=config_path
        )
        secret = cfg.app_secret.get_secret_value()
        self._url = client.resolve(cfg.url)
        key = ("token", self._url, cfg.app_key, fingerprint(secret))
        self._state: _TokenState = shared_state(key, _TokenState)
        self._used: str | None = None
        self._token_at = compile_path(cfg.token_path)
        self._ttl_at = compile_path(cfg.expires_in_path) if cfg.expires_in_path else None

    def secret_values(self) -> tuple[str, ...]:
        return (self.cfg.app_secret.get_secret_value(),)

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        token = self._current()
        if self.cfg.placement == "header":
            headers[self.cfg.header] = f"{self.cfg.header_prefix}{token}"
        else:
            params[self.cfg.query_param] = token

    def refresh(self) -> bool:
        state = self._state
        with state.lock:
            if self._replaced_locked():
                return False  # another source already replaced the token we were refused with
            return self._obtain_locked()[1]

    def _issued_locked(self) -> str | None:
        return self._state.token

    def _renew_delegate_locked(self, renewed: bool) -> None:
        state = self._state
        if state.token is None or time.monotonic() >= state.refresh_at or renewed:
            self._fetch_locked()

    # ------------------------------------------------------------------ internals

    def _current(self) -> str:
        state = self._state
        with state.lock:
            token = state.token
            if token is None or time.monotonic() >= state.refresh_at:
                token = self._obtain_locked()[0]
        self._used = token
        self._client.redactor.add(token)
        return token

    def _obtain_locked(self) -> tuple[str, bool]:
        """A new token: from the token endpoint, or (the read worker) from the run's process; and
        whether it was issued for the one held (False: the run's process had replaced that one)."""
        ask = self._delegate
        if ask is None:
            return self._fetch_locked(), True
        held = self._state.token
        answer = ask(fingerprint(held) if held is not None else None)
        if not answer:  # pragma: no cover - the run's process answers with a token or raises
            raise PermanentUpstreamError("the run's process had no token for the read worker")
        return self._adopt_locked(answer), bool(answer.get("renewed"))

    def _export_locked(self) -> CredentialState | None:
        state = self._state
        if state.token is None:
            return None
        return {"token": state.token, "refresh_in": state.refresh_at - time.monotonic()}

    def _adopt_locked(self, exported: CredentialState) -> str:
        token = str(exported["token"])
        self._state.token = token
        self._state.refresh_at = time.monotonic() + float(exported["refresh_in"])
        self._client.redactor.add(token)
        return token

    def _fetch_locked(self) -> str:
        cfg = self.cfg
        creds = {cfg.key_field: cfg.app_key, cfg.secret_field: cfg.app_secret.get_secret_value()}
        started = time.monotonic()
        if cfg.body_format == "json":
            token, ttl = self._client.fetch(cfg.method, self._url, json_body=creds, parse=self._parse)
        elif cfg.body_format == "form":
            token, ttl = self._client.fetch(cfg.method, self._url, form=creds, parse=self._parse)
        else:
            token, ttl = self._client.fetch(cfg.method, self._url, params=creds, parse=self._parse)
        margin = min(cfg.refresh_before.total_seconds(), ttl / 2)
        self._state.token = token
        self._state.refresh_at = started + ttl - margin
        self._client.redactor.add(token)
        log.info("http.token_fetched", connection=self._client.name, ttl_seconds=round(ttl, 1))
        return token

    def _parse(self, body: Any) -> tuple[str, float]:
        outcome = self._envelope.classify(body)
        if outcome.kind == "transient":
            raise self._envelope.error(outcome, body)
        if outcome.kind in ("error", "auth_expired"):
            said = f": {outcome.message}" if outcome.message else ""
            raise PermanentUpstreamError(
                f"the gateway rejected app_key/app_secret at the token endpoint (business code "
                f"{outcome.code}{said}): check {format_path(self._config_path)}.app_key and app_secret"
                f"{self._envelope.clock_note(body)}",
                code=outcome.code,
            )
        token = self._token_at(body)
        if isinstance(token, int):
            token = str(token)
        if not isinstance(token, str) or not token:
            raise PermanentUpstreamError(
                f"the token endpoint's answer has no token at {self.cfg.token_path!r} "
                f"({format_path(self._config_path)}.token_path); it has {describe_shape(body)}"
            )
        return token, self._ttl(body)

    def _ttl(self, body: Any) -> float:
        default = self.cfg.default_ttl.total_seconds()
        number = _number(self._ttl_at(body)) if self._ttl_at is not None else None
        if number is None or number <= 0:
            return default
        if number > 1e11:  # an absolute expiry in epoch milliseconds
            number = number / 1000 - time.time()
        elif number > 1e9:  # an absolute expiry in epoch seconds
            number -= time.time()
        return number if number > 0 else default
