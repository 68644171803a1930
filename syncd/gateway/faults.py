"""Fault injection for the simulated gateway: what can go wrong between syncd and a province.

A :class:`FaultPlan` decides, per data request, whether to misbehave and how. Faults come from
an exact queue (:meth:`FaultPlan.fail_next`, for tests) first, then at random with probability
``rate`` among ``kinds`` (seeded, so a run is reproducible for a given request order).
Token endpoints are spared unless ``on_auth=True``.

Kinds and what the client sees:

==============  ==================================================================================
http_502        HTTP 502 with an HTML body (a proxy in front of the gateway failed)
http_429        HTTP 429 with ``Retry-After: <retry_after>``
busy            HTTP 200 ``{"code": "50001", "msg": "系统繁忙，请稍后再试"}``
truncated       full ``Content-Length``, half the body, then the connection closes
invalid_json    a complete response whose body is not valid JSON
slow            the answer comes after ``slow_seconds`` (client read timeouts)
reset           the socket is closed with SO_LINGER 0 (TCP RST), no response at all
token_expire    the credential is treated as expired once (40101 / code 11) and revoked
total_drift     the reported total differs from the real one by ``drift`` on this page
==============  ==================================================================================
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Iterable
from typing import Final

__all__ = ["ALL_KINDS", "AUTH_KINDS", "DEFAULT_KINDS", "FaultPlan"]

ALL_KINDS: Final = (
    "http_502",
    "http_429",
    "busy",
    "truncated",
    "invalid_json",
    "slow",
    "reset",
    "token_expire",
    "total_drift",
)
DEFAULT_KINDS: Final = ("http_502", "http_429", "busy", "truncated", "reset", "token_expire")
"""Random faults a well-behaved client must ride out by retrying (the default ``kinds``)."""

AUTH_KINDS: Final = frozenset({"http_502", "http_429", "busy", "truncated", "invalid_json", "slow", "reset"})
"""Kinds that make sense on a token endpoint (``on_auth=True``)."""


class FaultPlan:
    """Which faults to inject, and counters of those injected (:attr:`injected`)."""

    def __init__(
        self,
        rate: float = 0.0,
        kinds: Iterable[str] = DEFAULT_KINDS,
        *,
        seed: int = 0,
        retry_after: int = 1,
        slow_seconds: float = 3.0,
        drift: int = 7,
        on_auth: bool = False,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate is a probability between 0.0 and 1.0")
        self.kinds: tuple[str, ...] = tuple(kinds)
        for kind in self.kinds:
            _check_kind(kind)
        if rate > 0 and not self.kinds:
            raise ValueError("a fault rate above 0 needs at least one fault kind")
        if retry_after < 0 or slow_seconds < 0:
            raise ValueError("retry_after and slow_seconds cannot be negative")
        if drift == 0:
            raise ValueError("drift must be non-zero, or total_drift would change nothing")
        self.rate = rate
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.drift = drift
        self.on_auth = on_auth
        self._rng = random.Random(seed)
        self._queue: deque[str] = deque()
        self._injected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultPlan(rate={self.rate}, kinds={self.kinds!r}, queued={list(self._queue)!r})"

    def fail_next(self, kind: str, n: int = 1) -> None:
        """Inject ``kind`` on the next ``n`` requests where it applies (before any random fault)."""
        _check_kind(kind)
        if n < 0:
            raise ValueError("n cannot be negative")
        with self._lock:
            self._queue.extend([kind] * n)

    def clear(self) -> None:
        """Drop queued faults and stop random ones (counters are kept)."""
        with self._lock:
            self._queue.clear()
            self.rate = 0.0

    @property
    def pending(self) -> int:
        """Number of faults still queued by :meth:`fail_next`."""
        return len(self._queue)

    @property
    def injected(self) -> dict[str, int]:
        """How many faults of each kind were injected so far."""
        with self._lock:
            return dict(self._injected)

    @property
    def total_injected(self) -> int:
        with self._lock:
            return sum(self._injected.values())

    def draw(self, applicable: frozenset[str], *, auth: bool = False) -> str | None:
        """The fault to inject on this request, or None. Counts it as injected.

        ``applicable`` is what the endpoint can express (a signed gateway has no token to
        expire); a queued kind that does not apply waits for a request where it does.
        """
        if auth:
            if not self.on_auth:
                return None
            applicable = applicable & AUTH_KINDS
        with self._lock:
            kind: str | None = None
            if self._queue and self._queue[0] in applicable:
                kind = self._queue.popleft()
            elif self.rate > 0 and self._rng.random() < self.rate:
                candidates = [k for k in self.kinds if k in applicable]
                kind = self._rng.choice(candidates) if candidates else None
            if kind is not None:
                self._injected[kind] += 1
            return kind


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known kinds: {', '.join(ALL_KINDS)}")
