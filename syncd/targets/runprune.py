"""Pruning the runs table: the records of old runs deleted in bounded batches (the daemon's
retention, ``runs.retention_days``).

What goes: the runs of one dataset that started before ``before`` and have ended, **except what the
daemon and the commands read back**. Of every status (success, failed, refused, interrupted,
abandoned) the dataset keeps, however old they are:

* its run of that status that started last (among those not stamped after now), and
* its run of that status that finished last (among those neither started nor finished after now),

and a run is deleted only when it started earlier *and* finished earlier than both (strictly: runs
tied with them stay too). So the latest success, the latest run, the latest start that
:func:`syncd.targets.history.read_run_times` reads (and with it the schedule after a restart and the
``syncd_last_success_timestamp_seconds`` gauge a stale-data alert watches), ``last_started`` and the
latest run ``syncd status`` shows are the same before and after a prune, and stay so as time goes on:
each of those is the latest of some status among the runs up to now, and a deleted run is older
than a kept one of its own status on both counts. A run stamped after now (a clock that was ahead)
never goes: ``before`` lies in the past. Runs still running (``finished_at`` NULL) never go. A run
that ends while the prune goes on finishes later than what the prune keeps, so it stays too.

How: along the (dataset, started_at) index in start order, at most ``batch_size`` runs a range and
one transaction each, like the change feed's prune (:mod:`syncd.targets.prune`): each range reads the
``started_at`` of the next ``batch_size`` runs that started before ``before``, and deletes, within
that range, the runs the rule above lets go. So no lock is held for long (a first prune of years of
runs deletes millions of rows, ten thousand a transaction), and an interrupted prune keeps what it
committed: running it again carries on.

Beside syncs: a run's own writes (its row inserted with a start of now, updated by its run_id when it
ends) never touch the rows a prune deletes, which started before ``before`` and have ended.
PostgreSQL locks only the deleted rows. MariaDB runs syncd's sessions at READ COMMITTED: the DELETE's
range scan takes no gap locks, and a run's start, which marks the dataset's older ``running`` rows
abandoned, does not wait for rows locked by the prune (InnoDB's semi-consistent read: a locked row
whose last committed version does not match the UPDATE's WHERE is skipped; tests/test_prune_runs.py
starts and ends a run while a prune's transaction is open). Unlike the change feed's prune this
relies on READ COMMITTED: at REPEATABLE READ the scan would keep its locks on the old rows it does
not delete (a dead ``running`` row a run's start updates) and, when all of a dataset's runs are old,
on the gap where its next run is inserted. The prune runs in syncd's own sessions only. SQLite has
one writer at a time: after each batch the pruner pauses as long as the batch took (at most
:data:`~syncd.targets.prune.SQLITE_PAUSE_MAX`).

The command and the daemon take the prune lock (:data:`~syncd.targets.prune.PRUNE_LOCK`) first, the
one the change feed's prune takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.errors import TargetError
from syncd.targets.engine import describe_url, dialect_family, write_engine
from syncd.targets.history import FUTURE_TOLERANCE
from syncd.targets.prune import PRUNE_BATCH, delete_in_batches, prune_failure
from syncd.targets.sqltypes import UtcDateTime
from syncd.targets.state import StateStore

__all__ = ["RunPruneResult", "RunPruner", "Survivors"]

log = structlog.get_logger(__name__)

RUNNING = "running"


@dataclass(frozen=True, slots=True)
class Survivors:
    """Of one status of one dataset: the latest start and the latest end among the runs up to now
    (aware UTC). A run of that status may go only when it started before ``started`` and finished
    before ``finished``; None (no such run) keeps every run of the status."""

    started: datetime | None
    finished: datetime | None


@dataclass(slots=True)
class RunPruneResult:
    """One dataset's prune. ``deleted`` counts what a dry run would delete."""

    dataset: str
    dry_run: bool = False
    deleted: int = 0
    batches: int = 0
    stopped: bool = False  # should_stop ended it between two batches
    seconds: float = 0.0


class RunPruner:
    """Deletes the records of old runs of one dataset at a time (see the module docstring)."""

    def __init__(self, store: StateStore, *, batch_size: int = PRUNE_BATCH) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self._engine = store.engine
        self._writes = write_engine(store.engine)
        self._runs = store.tables.runs
        self._sqlite = dialect_family(store.engine) == "sqlite"
        self._where = describe_url(store.engine.url)

    def _fail(self, doing: str, exc: sa.exc.SQLAlchemyError) -> TargetError:
        return prune_failure(doing, self._where, exc)

    # ------------------------------------------------------------------ reading

    def survivors(self, conn: sa.Connection, dataset: str, now: datetime) -> dict[str, Survivors]:
        """Status → :class:`Survivors` of the dataset's runs, in one ``GROUP BY status`` query; runs
        stamped after ``now`` (+ :data:`~syncd.targets.history.FUTURE_TOLERANCE`) do not count, as
        in :func:`~syncd.targets.history.read_run_times`."""
        bound = now + FUTURE_TOLERANCE
        c = self._runs.c

        def latest(column: sa.Column[datetime], when: sa.ColumnElement[bool]) -> sa.ColumnElement[datetime]:
            return sa.type_coerce(sa.func.max(sa.case((when, column))), UtcDateTime())

        query = (
            sa.select(
                c.status,
                latest(c.started_at, c.started_at <= bound).label("started"),
                latest(c.finished_at, sa.and_(c.started_at <= bound, c.finished_at <= bound)).label(
                    "finished"
                ),
            )
            .where(c.dataset == dataset)
            .group_by(c.status)
        )
        return {str(r.status): Survivors(r.started, r.finished) for r in conn.execute(query)}

    def _deletable(self, survivors: dict[str, Survivors]) -> sa.ColumnElement[bool] | None:
        """The runs the survivors let go (module docstring); None: none."""
        c = self._runs.c
        each = [
            sa.and_(c.status == status, c.started_at < keep.started, c.finished_at < keep.finished)
            for status, keep in sorted(survivors.items())
            if status != RUNNING and keep.started is not None and keep.finished is not None
        ]
        return sa.or_(*each) if each else None

    def _conditions(
        self,
        dataset: str,
        before: datetime,
        deletable: sa.ColumnElement[bool],
        after: datetime | None,
        upto: datetime | None,
    ) -> list[Any]:
        """The runs of a range (``after`` < started_at ≤ ``upto``; None: open) that may go."""
        c = self._runs.c
        conditions: list[Any] = [
            c.dataset == dataset,
            c.started_at < before,
            c.finished_at.is_not(None),
            c.status != RUNNING,
            deletable,
        ]
        if after is not None:
            conditions.append(c.started_at > after)
        if upto is not None:
            conditions.append(c.started_at <= upto)
        return conditions

    def _next_range(
        self, conn: sa.Connection, dataset: str, before: datetime, after: datetime | None
    ) -> tuple[datetime | None, bool]:
        """The upper end of the next range above ``after`` (None: the range is open up to ``before``),
        and whether the walk ends with it: the ``started_at`` of the ``batch_size``-th run that started
        after ``after`` and before ``before``. Runs tied with it at that start all fall in the range
        (a few more than ``batch_size``, at most)."""
        c = self._runs.c
        query = sa.select(c.started_at).where(c.dataset == dataset, c.started_at < before)
        if after is not None:
            query = query.where(c.started_at > after)
        starts = conn.execute(query.order_by(c.started_at).limit(self.batch_size)).scalars().all()
        if len(starts) < self.batch_size:
            return None, True
        return starts[-1], False

    # ------------------------------------------------------------------ deleting

    def prune(
        self,
        dataset: str,
        before: datetime,
        *,
        now: datetime | None = None,
        dry_run: bool = False,
        should_stop: Callable[[], bool] | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> RunPruneResult:
        """Delete the dataset's runs that started before ``before`` (aware) and may go (module
        docstring), ``batch_size`` a transaction; ``now`` (default: this process's clock) is what
        "stamped after now" means. ``should_stop`` is asked between batches, ``on_batch(dataset,
        deleted)`` hears of each committed one. ``dry_run`` counts only. TargetError on a database
        error (the batches committed before it stay deleted)."""
        if before.tzinfo is None:
            raise ValueError("before must be an aware datetime")
        started = time.monotonic()
        moment = datetime.now(UTC) if now is None else now
        result = RunPruneResult(dataset, dry_run=dry_run)
        doing = f"pruning the runs of dataset {dataset} in {self._runs.name}"
        try:
            with self._engine.connect() as conn:
                deletable = self._deletable(self.survivors(conn, dataset, moment))
                if deletable is not None and dry_run:
                    where = self._conditions(dataset, before, deletable, None, None)
                    result.deleted = int(conn.execute(sa.select(sa.func.count()).where(*where)).scalar() or 0)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(doing, exc) from exc
        if deletable is None or dry_run:
            result.seconds = time.monotonic() - started
            return result
        after: datetime | None = None

        def step() -> tuple[int, bool]:
            nonlocal after
            after, done, deleted = self.delete_batch(dataset, before, deletable, after)
            return deleted, done

        delete_in_batches(
            dataset,
            result,
            step,
            sqlite=self._sqlite,
            fail=partial(self._fail, doing),
            should_stop=should_stop,
            on_batch=on_batch,
        )
        result.seconds = time.monotonic() - started
        if result.deleted or result.stopped:
            log.info(
                "runs.pruned",
                dataset=dataset,
                deleted=result.deleted,
                batches=result.batches,
                before=before.isoformat(),
                stopped=result.stopped,
                duration_s=round(result.seconds, 3),
            )
        return result

    def deletable(self, dataset: str, now: datetime) -> sa.ColumnElement[bool] | None:
        """The condition of the dataset's runs that may go as of ``now`` (None: none); for
        :meth:`delete_batch`."""
        try:
            with self._engine.connect() as conn:
                return self._deletable(self.survivors(conn, dataset, now))
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading the runs of dataset {dataset} in {self._runs.name}", exc) from exc

    def delete_batch(
        self,
        dataset: str,
        before: datetime,
        deletable: sa.ColumnElement[bool],
        after: datetime | None,
        *,
        conn: sa.Connection | None = None,
    ) -> tuple[datetime | None, bool, int]:
        """Delete the runs that may go in the next range above ``after`` (None: from the first), in
        one transaction (``conn``'s, when given: the caller commits). Returns (where the next range
        starts, whether the walk is over, runs deleted)."""
        if conn is None:
            with self._writes.begin() as own:
                return self.delete_batch(dataset, before, deletable, after, conn=own)
        upto, done = self._next_range(conn, dataset, before, after)
        where = self._conditions(dataset, before, deletable, after, upto)
        deleted = int(conn.execute(sa.delete(self._runs).where(*where)).rowcount)
        return upto, done, deleted
