"""Deleting old change entries: ``syncd changes prune`` and the daemon's daily retention.

:func:`prune_datasets` prunes several datasets one after the other under the prune lock
(:data:`~syncd.targets.prune.PRUNE_LOCK`): a second prune started meanwhile (the daemon on another
node, or the command by hand) does nothing and says so. A dataset whose prune fails is logged
(``changes.prune_failed``) and the next one goes on. :func:`retention_bounds` is what the daemon
prunes: every configured dataset whose entries are not kept for good
(:meth:`syncd.config.model.AppConfig.retention_days`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from syncd.config.model import AppConfig
from syncd.daemon.locks import DatasetLocker
from syncd.errors import TargetError
from syncd.targets import StateStore
from syncd.targets.prune import PRUNE_BATCH, PRUNE_LOCK, FeedPruner, PruneBound, PruneResult

__all__ = ["PruneOutcome", "prune_datasets", "retention_bounds"]

log = structlog.get_logger(__name__)


@dataclass
class PruneOutcome:
    """What :func:`prune_datasets` did: ``locked`` when another prune held the lock (nothing done)."""

    locked: bool = False
    results: list[PruneResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # dataset -> error
    stopped: bool = False

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.results)


def retention_bounds(app: AppConfig, now: datetime) -> dict[str, PruneBound]:
    """Each configured dataset whose change entries expire → entries older than its retention."""
    bounds = {}
    for name, dataset in sorted(app.datasets.items()):
        days = app.retention_days(dataset)
        if days is not None:
            bounds[name] = PruneBound(before=now - timedelta(days=days))
    return bounds


def prune_datasets(
    store: StateStore,
    locker: DatasetLocker,
    bounds: Mapping[str, PruneBound],
    *,
    batch_size: int = PRUNE_BATCH,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    on_result: Callable[[PruneResult], None] | None = None,
) -> PruneOutcome:
    """Prune each dataset of ``bounds`` in turn (see the module docstring); ``on_batch(dataset,
    deleted)`` hears of every committed batch, ``on_result`` of every dataset done. TargetError only
    when the lock cannot be taken (the database is unreachable)."""
    started = time.monotonic()
    outcome = PruneOutcome()
    pruner = FeedPruner(store, batch_size=batch_size)
    with locker.hold(PRUNE_LOCK) as acquired:
        if not acquired:
            outcome.locked = True
            log.info(
                "changes.prune_skipped_locked",
                hint="another syncd process is pruning the change feed now (the daemon, or "
                "`syncd changes prune`); nothing was deleted by this one",
            )
            return outcome
        for name, bound in bounds.items():
            if should_stop is not None and should_stop():
                outcome.stopped = True
                break
            try:
                result = pruner.prune(
                    name, bound, dry_run=dry_run, should_stop=should_stop, on_batch=on_batch
                )
            except TargetError as exc:
                outcome.failures[name] = str(exc)
                log.error("changes.prune_failed", dataset=name, error=str(exc))
                continue
            outcome.results.append(result)
            if on_result is not None:
                on_result(result)
            if result.stopped:
                outcome.stopped = True
                break
    log.info(
        "changes.prune_finished",
        datasets=len(outcome.results),
        deleted=outcome.deleted,
        dry_run=dry_run,
        failed=sorted(outcome.failures),
        stopped=outcome.stopped,
        duration_s=round(time.monotonic() - started, 3),
    )
    return outcome
