"""What the daemon knows about its datasets' latest runs: the status line and the health rule.

Health rule (``GET /healthz``, documented in docs/daemon.md): the daemon is healthy when the
scheduler's heartbeat is fresh (younger than ``daemon.heartbeat_timeout``) and no scheduled
dataset's last ``daemon.unhealthy_after_failures`` runs in a row failed (``failed`` or
``refused``). The book tracks the scheduled datasets only (:meth:`RunBook.track`): one taken out of
service (``enabled: false``, no ``schedule``, removed) is forgotten, failures included, as it will
not run again; scheduled again, it starts from a clean record. Stale data
(no success for a long time) is an alert on ``syncd_last_success_timestamp_seconds``, not a
health failure: a restart would not fix it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DatasetRecord", "RunBook"]

_FAILED = frozenset({"failed", "refused"})


@dataclass
class DatasetRecord:
    """The latest known facts about one dataset on this node."""

    last_status: str | None = None
    last_finished: float | None = None  # time.time()
    last_success: float | None = None
    failures_in_a_row: int = 0


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


class RunBook:
    """Thread-safe record of the latest outcome of every dataset (fed by the job wrapper)."""

    def __init__(self, unhealthy_after_failures: int = 3) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, DatasetRecord] = {}
        self._last: tuple[str, str, float] | None = None
        self.unhealthy_after = unhealthy_after_failures
        self.reload_problem: str | None = None

    def track(self, names: Iterable[str]) -> None:
        """Keep exactly these datasets, the scheduled ones (after a (re)load): the records of the others
        are dropped."""
        with self._lock:
            keep = set(names)
            for name in list(self._records):
                if name not in keep:
                    del self._records[name]
            for name in keep:
                self._records.setdefault(name, DatasetRecord())

    def record(self, dataset: str, status: str, *, now: float | None = None) -> None:
        """A run of ``dataset`` ended with ``status``. skipped_locked and interrupted runs (counted in
        the metrics) say nothing of the dataset's health: they change neither the last status nor the
        failures in a row. Nor does a run of a dataset not tracked (a reload took it out of service
        while it ran)."""
        if status in ("skipped_locked", "interrupted"):
            return
        t = time.time() if now is None else now
        with self._lock:
            rec = self._records.get(dataset)
            if rec is None:
                return
            rec.last_status, rec.last_finished = status, t
            if status == "success":
                rec.last_success, rec.failures_in_a_row = t, 0
            elif status in _FAILED:
                rec.failures_in_a_row += 1
            self._last = (dataset, status, t)

    def snapshot(self) -> dict[str, DatasetRecord]:
        with self._lock:
            return {k: DatasetRecord(**vars(v)) for k, v in self._records.items()}

    def failing(self) -> list[str]:
        """Datasets whose last run failed (or was refused)."""
        with self._lock:
            return sorted(n for n, r in self._records.items() if r.last_status in _FAILED)

    def status_line(self, scheduled: int, *, now: float | None = None) -> str:
        """One line for ``systemctl status``, e.g. ``12 datasets scheduled, last: residents success 3s ago,
        0 failing``."""
        t = time.time() if now is None else now
        with self._lock:
            last = self._last
        parts = [f"{scheduled} datasets scheduled"]
        parts.append(f"last: {last[0]} {last[1]} {_ago(t - last[2])}" if last else "no run yet")
        parts.append(f"{len(self.failing())} failing")
        text = ", ".join(parts)
        if self.reload_problem:
            text += f"; {self.reload_problem}"
        return text

    def health(self, heartbeat_age: float, heartbeat_timeout: float) -> tuple[bool, Mapping[str, Any]]:
        """``(healthy, details)`` for ``/healthz`` (see the module docstring for the rule)."""
        reasons: list[str] = []
        if heartbeat_age > heartbeat_timeout:
            reasons.append(
                f"scheduler heartbeat is {heartbeat_age:.0f}s old (limit {heartbeat_timeout:.0f}s)"
            )
        with self._lock:
            bad = sorted(
                (n, r.failures_in_a_row)
                for n, r in self._records.items()
                if r.failures_in_a_row >= self.unhealthy_after
            )
        reasons += [f"dataset {n}: last {k} runs failed" for n, k in bad]
        details: dict[str, Any] = {
            "heartbeat_age_s": round(heartbeat_age, 1),
            "failing": self.failing(),
        }
        if self.reload_problem:
            details["config"] = self.reload_problem
        if reasons:
            details["reasons"] = reasons
        return not reasons, details
