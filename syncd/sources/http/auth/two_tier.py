"""The ``two_tier_secret`` scheme (Zhejiang IRS style): a refresh secret and a request secret.

1. ``refreshTokenByKey?appKey=…&requestTime=<ms>&sign=md5(appKey + appSecret + requestTime)``
   returns, under ``payload_path`` (possibly a JSON string to decode), ``refreshSecret`` and
   ``refreshSecretEndTime`` (~48 h) and ``requestSecret`` and ``requestSecretEndTime`` (~15 min).
2. Data calls are signed by ``recipe`` with ``{secret}`` (and ``{token}``) = the request secret;
   ``appKey`` is sent beside the signature unless the recipe's ``extra`` names it already.
3. ``refresh_before`` ahead of the request secret's end, or when a data call gets an expired
   code, ``refreshTokenBySec`` (signed the same way with the refresh secret) renews it. When
   the refresh secret is itself expired or refused, syncd falls back to ``refreshTokenByKey``.

The secrets are shared by every source of the process using the same app_key (see
:func:`~syncd.sources.http.auth.base.shared_state`). A read worker gets the run process's
request secret (never the refresh secret) and asks the run's process for a new one: the secret
endpoints are called by one process only, so the request secret one process renewed is never
retired under another's feet.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import structlog

from syncd.config.docpath import Path, format_path
from syncd.config.model import TwoTierSecretAuth
from syncd.errors import PermanentUpstreamError
from syncd.paths import compile_path
from syncd.sources.http.auth.base import (
    AuthScheme,
    CredentialState,
    SharedCredential,
    fingerprint,
    shared_state,
)
from syncd.sources.http.auth.signing import Signer
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope, describe_shape, parse_instant

__all__ = ["TwoTierSecretScheme"]

log = structlog.get_logger(__name__)

_REQUEST_DEFAULT = 15 * 60.0  # seconds, when the gateway sends no requestSecretEndTime
_REFRESH_DEFAULT = 48 * 3600.0


@dataclass(slots=True)
class _Secrets:
    lock: threading.Lock = field(default_factory=threading.Lock)
    request: str | None = None
    request_renew_at: float = 0.0  # epoch seconds (the gateway's end times are wall-clock)
    refresh: str | None = None
    refresh_usable_until: float = 0.0
    # endpoints a request with a secret of it succeeded on (SharedCredential.accepted_at)
    accepted: set[str] = field(default_factory=set)


class _RefreshRejected(PermanentUpstreamError):
    """refreshTokenBySec refused the refresh secret: fall back to refreshTokenByKey."""


class TwoTierSecretScheme(SharedCredential, AuthScheme[TwoTierSecretAuth]):
    """Zhejiang IRS two-tier secrets with md5-signed calls."""

    type_name = "two_tier_secret"
    refreshable = True

    def __init__(
        self,
        cfg: TwoTierSecretAuth,
        *,
        client: HttpClient,
        envelope: Envelope,
        config_file: str = "",
        config_path: Path = ("auth",),
    ) -> None:
        super().__init__(
            cfg, client=client, envelope=envelope, config_file=config_file, config_path=config_path
        )
        app_secret = cfg.app_secret.get_secret_value()
        self._signer = Signer(cfg.recipe, config_file=config_file, config_path=(*config_path, "recipe"))
        self._send_app_key = "appKey" not in cfg.recipe.extra
        self._by_key_url = client.resolve(cfg.refresh_by_key_url)
        self._by_secret_url = client.resolve(cfg.refresh_by_secret_url)
        self._payload_at = compile_path(cfg.payload_path)
        self._state: _Secrets = shared_state(
            ("two_tier", self._by_key_url, cfg.app_key, fingerprint(app_secret)), _Secrets
        )
        self._used: str | None = None

    def secret_values(self) -> tuple[str, ...]:
        return (self.cfg.app_secret.get_secret_value(),)

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        secret = self._current()
        values = self._signer.sign(secret=secret, app_key=self.cfg.app_key, url=url, body=body)
        if self._send_app_key:
            values = {"appKey": self.cfg.app_key, **values}
        self._signer.place(values, params, headers)

    def refresh(self) -> bool:
        state = self._state
        with state.lock:
            if self._replaced_locked():
                return False  # another source renewed it already
            return self._obtain_locked()

    def _issued_locked(self) -> str | None:
        return self._state.request

    def _renew_delegate_locked(self, renewed: bool) -> None:
        state = self._state
        if state.request is None:
            self._by_key_locked()
        elif time.time() >= state.request_renew_at or renewed:
            self._renew_locked()

    # ------------------------------------------------------------------ internals

    def _current(self) -> str:
        state = self._state
        with state.lock:
            if state.request is None or time.time() >= state.request_renew_at:
                self._obtain_locked()
            secret = state.request
            refresh = state.refresh
        if secret is None:  # pragma: no cover - _store always sets it or raises
            raise PermanentUpstreamError("no request secret after renewing it")
        self._used = secret
        self._client.redactor.add(secret)
        self._client.redactor.add(refresh)
        return secret

    def _obtain_locked(self) -> bool:
        """A request secret: from the secret endpoints, or (the read worker) from the run's process.
        Whether it was issued for the one held (False: the run's process had replaced that one)."""
        state = self._state
        ask = self._delegate
        if ask is not None:
            answer = ask(fingerprint(state.request) if state.request is not None else None)
            if not answer:  # pragma: no cover - the run's process answers with a secret or raises
                raise PermanentUpstreamError("the run's process had no request secret for the read worker")
            self._adopt_locked(answer)
            return bool(answer.get("renewed"))
        if state.request is None:
            self._by_key_locked()
        else:
            self._renew_locked()
        return True

    def _export_locked(self) -> CredentialState | None:
        state = self._state
        if state.request is None:
            return None
        return {"request": state.request, "renew_in": state.request_renew_at - time.time()}

    def _adopt_locked(self, exported: CredentialState) -> None:
        state = self._state
        state.request = str(exported["request"])
        state.request_renew_at = time.time() + float(exported["renew_in"])
        self._client.redactor.add(state.request)

    def _renew_locked(self) -> None:
        state = self._state
        if state.refresh is not None and time.time() < state.refresh_usable_until:
            try:
                self._call_locked(self._by_secret_url, state.refresh, by_secret=True)
            except _RefreshRejected as exc:
                log.warning("http.refresh_secret_rejected", connection=self._client.name, error=str(exc))
            else:
                return
        self._by_key_locked()

    def _by_key_locked(self) -> None:
        self._call_locked(self._by_key_url, self.cfg.app_secret.get_secret_value(), by_secret=False)

    def _call_locked(self, url: str, secret: str, *, by_secret: bool) -> None:
        payload = self._client.fetch(
            "GET",
            url,
            auth=_RenewalSignature(self.cfg.app_key, secret),
            parse=lambda body: self._parse(body, by_secret=by_secret),
        )
        self._store(payload)
        log.info("http.secret_renewed", connection=self._client.name, via="secret" if by_secret else "key")

    def _parse(self, body: Any, *, by_secret: bool) -> dict[str, Any]:
        outcome = self._envelope.classify(body)
        if outcome.kind == "transient":
            raise self._envelope.error(outcome, body)
        if outcome.kind != "success":
            said = f" (business code {outcome.code}: {outcome.message})" if outcome.code else ""
            if by_secret:
                raise _RefreshRejected(f"the gateway refused the refresh secret{said}", code=outcome.code)
            raise PermanentUpstreamError(
                f"the gateway rejected app_key/app_secret at refreshTokenByKey{said}: check "
                f"{format_path(self._config_path)}.app_key and app_secret{self._envelope.clock_note(body)}",
                code=outcome.code,
            )
        payload = self._payload_at(body)
        if isinstance(payload, str | bytes):
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError:
                payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("requestSecret"), str):
            raise PermanentUpstreamError(
                f"the secret endpoint's answer has no requestSecret under {self.cfg.payload_path!r} "
                f"({format_path(self._config_path)}.payload_path); it has {describe_shape(body)}"
            )
        return payload

    def _store(self, payload: dict[str, Any]) -> None:
        state = self._state
        now = time.time()
        margin = self.cfg.refresh_before.total_seconds()
        state.request = payload["requestSecret"]
        end = self._end(payload.get("requestSecretEndTime"), now + _REQUEST_DEFAULT)
        state.request_renew_at = end - min(margin, max(0.0, end - now) / 2)
        refresh = payload.get("refreshSecret")
        if isinstance(refresh, str) and refresh:
            state.refresh = refresh
            end = self._end(payload.get("refreshSecretEndTime"), now + _REFRESH_DEFAULT)
            state.refresh_usable_until = end - min(margin, max(0.0, end - now) / 2)
        self._client.redactor.add(state.request)
        self._client.redactor.add(state.refresh)

    def _end(self, value: Any, default: float) -> float:
        when = parse_instant(value, self._envelope.tz)
        return when.timestamp() if when is not None else default


class _RenewalSignature:
    """A renewal call's ``appKey``, ``requestTime`` and ``sign``, computed afresh for each attempt
    (the client applies an auth per attempt): a retry that resent the first attempt's requestTime
    is refused by a gateway that rejects stale or repeated request times."""

    refreshable: ClassVar[bool] = False

    def __init__(self, app_key: str, secret: str) -> None:
        self._app_key = app_key
        self._secret = secret

    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        request_time = str(int(time.time() * 1000))
        text = f"{self._app_key}{self._secret}{request_time}".encode()
        params["appKey"] = self._app_key
        params["requestTime"] = request_time
        params["sign"] = hashlib.md5(text, usedforsecurity=False).hexdigest()  # the gateway protocol's

    def refresh(self) -> bool:  # pragma: no cover - not refreshable: the client never calls it
        return False

    def replaced(self) -> bool:  # pragma: no cover - not refreshable: never asked
        return False

    def accepted_at(self, endpoint: str) -> bool:  # pragma: no cover - not refreshable: never asked
        return False

    def note_accepted(self, endpoint: str) -> None:  # pragma: no cover - not refreshable: never called
        pass
