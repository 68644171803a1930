"""Deleting old change entries (``syncd changes prune`` and the daemon's daily retention) and the
records of old runs (the daemon's daily retention, ``runs.retention_days``).

:func:`prune_datasets` prunes several datasets one after the other under the prune lock
(:data:`~syncd.targets.prune.PRUNE_LOCK`): a second prune started meanwhile (the daemon on another
node, or the command by hand) does nothing and says so. A dataset whose prune fails is logged
(``changes.prune_failed``) and the next one goes on. :func:`retention_bounds` is what the daemon
prunes: every configured dataset whose entries are not kept for good
(:meth:`syncd.config.model.AppConfig.retention_days`).

A prune by time trusts this machine's clock twice: its cut-off comes from it, and syncd stamped the
entries with it. So before it takes the lock it reads the database server's clock (one query;
not for SQLite, a file on this machine) and refuses when the two are more than
:data:`CLOCK_TOLERANCE` apart (``changes.prune_skipped``, ``reason="clock_mismatch"``), saying
which clock is ahead: one of them is wrong, and pruning waits until it is set right. A refusing
process does not hold the lock, so another node whose clock agrees prunes meanwhile.

:func:`prune_runs` does the same for the runs table (:mod:`syncd.targets.runprune`), under the same
lock and clock check, with its own events (``runs.pruned``, ``runs.prune_finished``,
``runs.prune_failed``, ``runs.prune_skipped``, ``runs.prune_skipped_locked``); :func:`runs_before`
is the cut-off the daemon prunes runs at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import structlog

from syncd.config.model import AppConfig
from syncd.daemon.locks import DatasetLocker
from syncd.errors import TargetError
from syncd.targets import StateStore
from syncd.targets.engine import describe_url
from syncd.targets.prune import PRUNE_BATCH, PRUNE_LOCK, FeedPruner, PruneBound, PruneResult
from syncd.targets.runprune import RunPruner, RunPruneResult

__all__ = [
    "CLOCK_TOLERANCE",
    "PruneOutcome",
    "RunPruneOutcome",
    "clock_mismatch",
    "prune_datasets",
    "prune_runs",
    "retention_bounds",
    "runs_before",
]

log = structlog.get_logger(__name__)

CLOCK_TOLERANCE = timedelta(minutes=5)
"""How far this machine's clock and the database server's may be apart for a prune by time."""


R = TypeVar("R", PruneResult, RunPruneResult)


@dataclass
class _Outcome(Generic[R]):
    """What a prune of several datasets did: ``locked`` when another prune held the lock, ``refused``
    (why) when the clocks disagree (nothing done either way)."""

    locked: bool = False
    refused: str | None = None
    results: list[R] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # dataset -> error
    stopped: bool = False

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.results)


class PruneOutcome(_Outcome[PruneResult]):
    """What :func:`prune_datasets` did (change entries)."""


class RunPruneOutcome(_Outcome[RunPruneResult]):
    """What :func:`prune_runs` did (runs)."""


def _prune_each(
    outcome: _Outcome[R],
    locker: DatasetLocker,
    jobs: Iterable[tuple[str, Callable[[], R]]],
    *,
    log_locked: Callable[[], None],
    log_failed: Callable[[str, TargetError], None],
    should_stop: Callable[[], bool] | None,
    on_result: Callable[[R], None] | None = None,
) -> None:
    """Run the ``(dataset, prune)`` jobs one after the other under the prune lock, into ``outcome``.
    Another prune holding the lock: nothing is done (``log_locked()``). A dataset whose prune fails
    is logged (``log_failed(dataset, error)``) and the next one goes on; a stop request between two
    datasets, or a prune that stopped, ends the walk. (The callers log, so that every event name
    stands in a logging call, where tests/test_logging_doc.py finds it.)"""
    with locker.hold(PRUNE_LOCK) as acquired:
        if not acquired:
            outcome.locked = True
            log_locked()
            return
        for name, prune in jobs:
            if should_stop is not None and should_stop():
                outcome.stopped = True
                break
            try:
                result = prune()
            except TargetError as exc:
                outcome.failures[name] = str(exc)
                log_failed(name, exc)
                continue
            outcome.results.append(result)
            if on_result is not None:
                on_result(result)
            if result.stopped:
                outcome.stopped = True
                break


def retention_bounds(app: AppConfig, now: datetime) -> dict[str, PruneBound]:
    """Each configured dataset whose change entries expire → entries older than its retention."""
    bounds = {}
    for name, dataset in sorted(app.datasets.items()):
        days = app.retention_days(dataset)
        if days is not None:
            bounds[name] = PruneBound(before=now - timedelta(days=days))
    return bounds


def runs_before(app: AppConfig, now: datetime) -> datetime | None:
    """The daemon's cut-off for the runs table: runs that started before it may go
    (``runs.retention_days``); None: every run is kept."""
    days = app.run_retention_days()
    return None if days is None else now - timedelta(days=days)


def clock_mismatch(
    store: StateStore,
    zone: ZoneInfo | None = None,
    *,
    event: str = "changes.prune_skipped",
    what: str = "change entries",
) -> str | None:
    """Why a prune by time must not run now: this machine's clock and the database server's are more
    than :data:`CLOCK_TOLERANCE` apart (logged as ``event``; ``what`` the clock stamped, that the
    prune deletes); None when they agree, or the target is SQLite. Times are shown in ``zone`` (default
    UTC). TargetError when the database's clock cannot be read."""
    clocks = FeedPruner(store).clocks()
    if clocks is None:
        return None
    ours, theirs = clocks
    apart = (ours - theirs).total_seconds()
    if abs(apart) <= CLOCK_TOLERANCE.total_seconds():
        return None
    shown = zone or ZoneInfo("UTC")
    ahead = "ahead of" if apart > 0 else "behind"
    where = describe_url(store.engine.url)
    problem = (
        f"this machine's clock ({ours.astimezone(shown):%Y-%m-%d %H:%M:%S}) is {abs(round(apart))} s "
        f"{ahead} the database server's ({theirs.astimezone(shown):%Y-%m-%d %H:%M:%S} {shown.key}, "
        f"{where}), more than the {round(CLOCK_TOLERANCE.total_seconds())} s a prune allows: its cut-off "
        f"comes from this machine's clock and the {what} were stamped by it, so one wrong clock "
        f"could delete {what} that are not old. Nothing was deleted. Find the clock that is wrong "
        "(`timedatectl` on this machine and on the database server, against a trusted time), set it "
        "right through its time synchronisation (chrony / NTP), then prune again"
    )
    log.warning(
        event,
        reason="clock_mismatch",
        ours=ours.isoformat(),
        database=theirs.isoformat(),
        apart_s=round(apart, 1),
        hint=problem,
    )
    return problem


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
    zone: ZoneInfo | None = None,
) -> PruneOutcome:
    """Prune each dataset of ``bounds`` in turn (see the module docstring); ``on_batch(dataset,
    deleted)`` hears of every committed batch, ``on_result`` of every dataset done. ``zone``: the
    time zone of a refusal's times. TargetError only when the database's clock cannot be read or
    the lock cannot be taken (the database is unreachable)."""
    started = time.monotonic()
    outcome = PruneOutcome()
    if any(bound.before is not None for bound in bounds.values()):
        outcome.refused = clock_mismatch(store, zone)
        if outcome.refused is not None:
            return outcome
    pruner = FeedPruner(store, batch_size=batch_size)
    prune = partial(pruner.prune, dry_run=dry_run, should_stop=should_stop, on_batch=on_batch)
    jobs = ((name, partial(prune, name, bound)) for name, bound in bounds.items())
    _prune_each(
        outcome,
        locker,
        jobs,
        log_locked=lambda: log.info(
            "changes.prune_skipped_locked",
            hint="another syncd process is pruning the change feed now (the daemon, or `syncd changes "
            "prune`); nothing was deleted by this one",
        ),
        log_failed=lambda name, exc: log.error("changes.prune_failed", dataset=name, error=str(exc)),
        should_stop=should_stop,
        on_result=on_result,
    )
    if outcome.locked:
        return outcome
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


def prune_runs(
    store: StateStore,
    locker: DatasetLocker,
    datasets: Iterable[str],
    before: datetime,
    *,
    batch_size: int = PRUNE_BATCH,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    zone: ZoneInfo | None = None,
) -> RunPruneOutcome:
    """Delete the records of the runs of ``datasets`` that started before ``before`` (aware), each
    dataset's latest of every status and its running ones excepted (:mod:`syncd.targets.runprune`),
    one dataset after the other under the prune lock, after the clock check (module docstring). A
    dataset whose prune fails is logged (``runs.prune_failed``) and the next one goes on. TargetError
    only when the database's clock cannot be read or the lock cannot be taken."""
    started = time.monotonic()
    outcome = RunPruneOutcome()
    outcome.refused = clock_mismatch(store, zone, event="runs.prune_skipped", what="runs")
    if outcome.refused is not None:
        return outcome
    pruner = RunPruner(store, batch_size=batch_size)
    prune = partial(pruner.prune, dry_run=dry_run, should_stop=should_stop, on_batch=on_batch)
    jobs = ((name, partial(prune, name, before)) for name in datasets)
    _prune_each(
        outcome,
        locker,
        jobs,
        log_locked=lambda: log.info(
            "runs.prune_skipped_locked",
            hint="another syncd process is pruning now (the daemon on another node, or `syncd changes "
            "prune`); no run was deleted by this one",
        ),
        log_failed=lambda name, exc: log.error("runs.prune_failed", dataset=name, error=str(exc)),
        should_stop=should_stop,
    )
    if outcome.locked:
        return outcome
    log.info(
        "runs.prune_finished",
        datasets=len(outcome.results),
        deleted=outcome.deleted,
        before=before.isoformat(),
        dry_run=dry_run,
        failed=sorted(outcome.failures),
        stopped=outcome.stopped,
        duration_s=round(time.monotonic() - started, 3),
    )
    return outcome
