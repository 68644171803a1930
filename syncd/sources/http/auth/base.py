"""The auth scheme interface, and helpers the schemes share.

An :class:`AuthScheme` is built once per source from the connection's ``auth:`` block. The
client calls ``apply`` before *every* attempt (so timestamps, nonces and signatures are
fresh) and ``refresh`` once when the gateway says the credential expired. Schemes register
their secret values with the client's redactor so that no message or log line shows them.

A credential the gateway issues (a token, a request secret) is shared by every source of the
process (:func:`shared_state`), and with the read worker (:mod:`syncd.sources.worker`), another
process: the run's process hands its credential over (:meth:`AuthScheme.export_state`, adopted
by the worker with :meth:`AuthScheme.adopt_state`), and the worker gets every new one from the
run's process (:meth:`AuthScheme.delegate_renewal`, answered there by
:meth:`AuthScheme.renew_for_delegate`) instead of from the gateway: one process issues, so a
gateway that revokes the previous credential when it issues one never sees two processes
evicting each other. Schemes without such a credential keep the defaults, which do nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from syncd.config.docpath import Path
from syncd.config.model import (
    HmacHeadersAuth,
    NoAuth,
    SignedAuth,
    StaticKeyAuth,
    TokenAuth,
    TwoTierSecretAuth,
)
from syncd.errors import ConfigError
from syncd.sources.http.client import HttpClient
from syncd.sources.http.envelope import Envelope

__all__ = [
    "AnyAuthConfig",
    "AuthScheme",
    "CredentialState",
    "Renewal",
    "SharedCredential",
    "config_error",
    "fingerprint",
    "forget_shared_state",
    "new_nonce",
    "now_stamp",
    "shared_state",
]

AnyAuthConfig = NoAuth | StaticKeyAuth | TokenAuth | HmacHeadersAuth | SignedAuth | TwoTierSecretAuth

S = TypeVar("S")

CredentialState = dict[str, Any]
"""A scheme's credential as it crosses to another process (plain values, times relative to now)."""
Renewal = Callable[[str | None], CredentialState | None]
"""Asks the run's process for a credential; the argument is the :func:`fingerprint` of the one the
asker holds (refused by the gateway, or due), or None when it holds none."""

_SHARED: dict[tuple[str, ...], Any] = {}
_SHARED_LOCK = threading.Lock()


C = TypeVar("C", NoAuth, StaticKeyAuth, TokenAuth, HmacHeadersAuth, SignedAuth, TwoTierSecretAuth)


class AuthScheme(ABC, Generic[C]):
    """Puts credentials into a request; refreshes them when the gateway says they expired.

    A scheme names its secret values in :meth:`secret_values`; the base class hands them to the
    client's redactor, so no message or log line can carry them.
    """

    type_name: ClassVar[str]
    refreshable: ClassVar[bool] = False  # True when refresh() fetches a new credential

    def __init__(
        self,
        cfg: C,
        *,
        client: HttpClient,
        envelope: Envelope,
        config_file: str = "",
        config_path: Path = ("auth",),
    ) -> None:
        self.cfg: C = cfg
        self._client = client
        self._envelope = envelope
        self._config_file = config_file
        self._config_path = config_path
        self._delegate: Renewal | None = None
        self._accepted: set[str] = set()
        for value in self.secret_values():
            client.redactor.add(value)

    def secret_values(self) -> tuple[str, ...]:
        """The secret values this scheme sends or signs with (redacted from every message)."""
        return ()

    @abstractmethod
    def apply(
        self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], body: bytes | None
    ) -> None:
        """Add the credentials to the request parts (``params`` and ``headers`` are mutated)."""

    def refresh(self) -> bool:
        """Fetch a new credential (called once after the gateway said the current one expired).
        True when this call got a new one for the refused credential; False when another source of
        the process had replaced it already (or the scheme has none to fetch)."""
        return False

    def replaced(self) -> bool:
        """Whether the credential the last request used (the one the gateway just refused) was
        replaced in this process meanwhile (another source renewed it): :meth:`refresh` would adopt
        the new one without fetching, so the refusal is an ordinary expiry, no revocation. Asked
        before the client pauses for a revoked credential. A read worker answers from what it holds
        (not asking the run's process): see :mod:`syncd.sources.http.client`."""
        return False

    def accepted_at(self, endpoint: str) -> bool:
        """Whether a request to ``endpoint`` (:func:`~syncd.sources.http.client.endpoint_id`) with this
        scheme's credential
        succeeded (the client notes it): then a fresh credential refused there at once was revoked,
        not misconfigured (:mod:`syncd.sources.http.client`)."""
        return endpoint in self._accepted

    def note_accepted(self, endpoint: str) -> None:
        self._accepted.add(endpoint)

    # ------------------------------------------------------------------ sharing with the read worker

    def export_state(self) -> CredentialState | None:
        """The credential this process holds now, for a read worker to use (None: none to share)."""
        return None

    def adopt_state(self, state: CredentialState | None) -> None:
        """Use ``state`` (:meth:`export_state` or :meth:`renew_for_delegate` of the run's process) as
        this process's credential; None changes nothing."""

    def renew_for_delegate(self, held: str | None) -> CredentialState | None:
        """The run's process: the credential a read worker asks for. ``held`` is the fingerprint of
        the one the worker holds (refused or due), None when it holds none. A new one is fetched
        only when this process holds none, or the same one, or its own is due; else the worker gets
        the one this process holds (another dataset, or this process, renewed it meanwhile). The
        answer's ``renewed`` is True when the worker's was this process's current credential and a
        new one was fetched for it (what :meth:`refresh` returns in the worker)."""
        return None

    def delegate_renewal(self, renew: Renewal) -> None:
        """The read worker: get every new credential from ``renew`` (the run's process), never from
        the gateway itself."""
        self._delegate = renew

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class SharedCredential:
    """:meth:`AuthScheme.export_state`/:meth:`AuthScheme.adopt_state` of a scheme whose issued
    credential lives in process-wide state with a ``lock`` (``_state``): mixed in before
    AuthScheme; the scheme writes ``_export_locked``/``_adopt_locked``, called under the lock."""

    _state: Any  # with an ``accepted`` set: the endpoints the credential worked on in this process

    # The accepted endpoints travel with the credential to the read worker (export_state, adopt_state):
    # a credential revoked on the worker's first page of a dataset the run's process read before is
    # then retried as revoked there too, instead of failing at once. A few short hashes.

    def accepted_at(self, endpoint: str) -> bool:
        return endpoint in self._state.accepted

    def note_accepted(self, endpoint: str) -> None:
        self._state.accepted.add(endpoint)  # one per dataset path: a few, kept for the process's life

    _used: str | None  # the credential this scheme's last request went out with

    def replaced(self) -> bool:
        """Whether the credential of the last request was replaced in this process meanwhile."""
        with self._state.lock:
            return self._replaced_locked()

    def _replaced_locked(self) -> bool:
        issued = self._issued_locked()
        return issued is not None and issued != self._used

    def renew_for_delegate(self, held: str | None) -> CredentialState | None:
        """:meth:`AuthScheme.renew_for_delegate`: ``renewed`` when the worker held this process's
        current credential (the scheme's ``_renew_delegate_locked`` then fetches a new one)."""
        with self._state.lock:
            issued = self._issued_locked()
            renewed = issued is not None and fingerprint(issued) == held
            self._renew_delegate_locked(renewed)
            exported = self._export_locked()
            if exported is not None:
                exported["renewed"] = renewed
            return exported

    def export_state(self) -> CredentialState | None:
        with self._state.lock:
            exported = self._export_locked()
            if exported is not None:
                exported["accepted"] = sorted(self._state.accepted)
            return exported

    def adopt_state(self, state: CredentialState | None) -> None:
        if state:
            with self._state.lock:
                self._adopt_locked(state)
                self._state.accepted.update(state.get("accepted", ()))

    def _issued_locked(self) -> str | None:
        """The credential this process holds now (None: none yet)."""
        raise NotImplementedError

    def _renew_delegate_locked(self, renewed: bool) -> None:
        """Fetch a new credential for a read worker when this process holds none, its own is due,
        or ``renewed`` (the worker's refused one is this process's current one)."""
        raise NotImplementedError

    def _export_locked(self) -> CredentialState | None:
        raise NotImplementedError

    def _adopt_locked(self, exported: CredentialState) -> object:
        raise NotImplementedError


def now_stamp(unit: str) -> str:
    """The current time as epoch seconds or milliseconds (``unit`` is ``s`` or ``ms``)."""
    now = time.time()
    return str(int(now * 1000)) if unit == "ms" else str(int(now))


def new_nonce() -> str:
    return uuid.uuid4().hex


def fingerprint(secret: str) -> str:
    """A short one-way tag of a secret, to key shared state without keeping the secret in the key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def shared_state(key: tuple[str, ...], factory: Callable[[], S]) -> S:
    """Process-wide state for one credential (token, secrets), shared by every source using it.

    Many gateways invalidate the previous token when a new one is issued, so datasets on the
    same connection must share one token instead of fetching their own and evicting each other.
    """
    with _SHARED_LOCK:
        state = _SHARED.get(key)
        if state is None:
            state = _SHARED[key] = factory()
        return state


def forget_shared_state() -> None:
    """Drop every cached credential (tests: a new gateway on a reused port must not see old tokens)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def config_error(file: str, problems: list[tuple[Path, str]]) -> ConfigError:
    """The configuration errors a scheme found when it was built: each ``(path, message)`` at the
    line of ``file`` (the main file, where ``connections:`` is written) that ``path`` is on."""
    from syncd.config.loader import config_issue  # only on this path: the read worker never loads YAML

    return ConfigError([config_issue(file, at, message, unnamed="syncd.yaml") for at, message in problems])
