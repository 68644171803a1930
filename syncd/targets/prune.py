"""Pruning the change feed: old entries deleted in bounded batches (``syncd changes prune``, and the
daemon's retention, ``changes.retention_days``).

What goes: the entries of one dataset within every bound given — ``id`` at most ``upto_id``, and,
for a time bound, the entries **before the first one (in id order) written at or after ``before``**
— except the dataset's newest entry, which always stays:

* SQLite gives an ``INTEGER PRIMARY KEY`` without AUTOINCREMENT (syncd's ``changes.id``) the
  largest id + 1, so deleting the table's newest entry would hand its id out a second time, and a
  reader that had processed the old entry would never see the new one. MySQL before 8.0 (and some
  servers speaking its protocol) resets AUTO_INCREMENT to the largest id + 1 when it restarts: the
  same. Every dataset keeping its newest entry keeps the table's newest, and ids are never reused.
* After a long quiet period a reader still sees where the dataset's feed stands.
* MariaDB at REPEATABLE READ (a server's default; syncd's own sessions use READ COMMITTED, but a
  DBA's tool may not): a DELETE's range scan locks the gap after the last row it reads. Deleting up
  to the newest entry, the last of the dataset in the index, locks the gap where new entries go
  until the prune commits; the newest entry staying, the scan stops at it.

A time bound cuts the feed where it first reaches ``before`` (a prefix, in id order), never entry by
entry: ``changed_at`` is the writing process's wall clock, ids are the order entries were written
in. An entry that looks old after a young one was written while a clock was behind (a server whose
RTC lost its time booted before NTP set it): it stays, however old it looks, with everything after
it, until the young entries before it have expired too.

How: along the (dataset, id) index in id order, at most ``batch_size`` entries a range and one
transaction each (PostgreSQL has no ``DELETE … LIMIT``): each range reads the ``id`` and
``changed_at`` of the next ``batch_size`` entries, ends before the first one at or after
``before``, and deletes that id range. So no lock is held for long on a live table, at most one
batch of the entries after the cut is read (a daily prune costs what it deletes, whatever the
feed's size), and an interrupted prune keeps what it committed: running it again carries on.

Each range's transaction also raises the dataset's row in ``changes_pruned`` to the highest ``id``
and latest ``changed_at`` it deleted (never lowers them). A reader whose position is below that id
has missed entries: ``syncd changes --after-id`` says so (:meth:`FeedPruner.pruned`).

Beside syncs: deleting old ids does not hold up new entries. PostgreSQL locks only the deleted
rows. MariaDB runs syncd's sessions at READ COMMITTED, where InnoDB's range scan for a DELETE
takes no gap locks, so an insert at the end of the index never waits for a prune (nor at
REPEATABLE READ, see above; tests/test_prune.py writes a sync's batch while a prune's transaction
is open, at both levels, and it waits at REPEATABLE READ once the newest entry goes). SQLite has one
writer at a time: after each batch the pruner pauses as long as the batch took (at most
:data:`SQLITE_PAUSE_MAX`), so a sync waiting for the database gets its turn.

Two prunes at once are harmless (the second deletes what the first left, the mark only rises), but
pointless: the command and the daemon take the lock :data:`PRUNE_LOCK` first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from syncd.errors import TargetError
from syncd.targets.dialects import upsert_statement
from syncd.targets.engine import describe_url, dialect_family, write_engine
from syncd.targets.state import StateStore
from syncd.targets.writer import failure_reason

__all__ = [
    "PRUNE_BATCH",
    "PRUNE_LOCK",
    "FeedPruner",
    "PruneBound",
    "PruneResult",
    "PrunedMark",
    "delete_in_batches",
    "prune_failure",
]

log = structlog.get_logger(__name__)

PRUNE_BATCH = 10_000
"""Entries deleted per transaction, by default."""
PRUNE_LOCK = "changes:prune"
"""The name a prune locks (:class:`syncd.daemon.locks.DatasetLocker`): never a dataset's, as a
dataset name cannot hold a colon."""
SQLITE_PAUSE_MAX = 1.0
"""SQLite: the longest pause (seconds) between two batches, for the writers waiting meanwhile."""


def prune_failure(doing: str, where: str, exc: sa.exc.SQLAlchemyError) -> TargetError:
    """A prune's database error, as the pruners report it."""
    return TargetError(f"{doing} in {where} failed: {failure_reason(exc)[:500]}")


class _Tally(Protocol):
    deleted: int
    batches: int
    stopped: bool


def delete_in_batches(
    dataset: str,
    result: _Tally,
    step: Callable[[], tuple[int, bool]],
    *,
    sqlite: bool,
    fail: Callable[[sa.exc.SQLAlchemyError], TargetError],
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> None:
    """Call ``step`` (one batch deleted in one transaction: how many, whether it was the last) until
    it says the walk is over or ``should_stop`` says stop, counting into ``result``. On SQLite,
    pause after each batch as long as it took (at most :data:`SQLITE_PAUSE_MAX`), for the writers
    waiting for the database. A database error is raised as ``fail(exc)``."""
    done = False
    while not done:
        if should_stop is not None and should_stop():
            result.stopped = True
            break
        batch_started = time.monotonic()
        try:
            deleted, done = step()
        except sa.exc.SQLAlchemyError as exc:
            raise fail(exc) from exc
        result.batches += 1
        if deleted:
            result.deleted += deleted
            if on_batch is not None:
                on_batch(dataset, deleted)
        if sqlite and not done:
            time.sleep(min(time.monotonic() - batch_started, SQLITE_PAUSE_MAX))


@dataclass(frozen=True, slots=True)
class PruneBound:
    """What may go: entries earlier than ``before`` (aware) and/or with an id of at most ``upto_id``."""

    before: datetime | None = None
    upto_id: int | None = None

    def __post_init__(self) -> None:
        if self.before is None and self.upto_id is None:
            raise ValueError("a prune needs a bound: before, upto_id or both")
        if self.before is not None and self.before.tzinfo is None:
            raise ValueError("before must be an aware datetime")


@dataclass(slots=True)
class PruneResult:
    """One dataset's prune. ``deleted`` counts what a dry run would delete."""

    dataset: str
    dry_run: bool = False
    deleted: int = 0
    batches: int = 0
    last_deleted_id: int | None = None  # the highest id deleted now (None: nothing)
    newest_id: int | None = None  # the dataset's newest entry, kept (None: the feed has none)
    stopped: bool = False  # should_stop ended it between two batches
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class PrunedMark:
    """A dataset's row in ``changes_pruned``: entries up to ``upto_id`` may be gone."""

    upto_id: int
    upto_changed_at: datetime
    deleted: int
    pruned_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class FeedPruner:
    """Deletes old change entries of one dataset at a time (see the module docstring)."""

    def __init__(self, store: StateStore, *, batch_size: int = PRUNE_BATCH) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self._engine = store.engine
        self._writes = write_engine(store.engine)
        self._changes = store.tables.changes
        self._marks = store.tables.changes_pruned
        self._sqlite = dialect_family(store.engine) == "sqlite"
        self._where = describe_url(store.engine.url)

    def _fail(self, doing: str, exc: sa.exc.SQLAlchemyError) -> TargetError:
        return prune_failure(doing, self._where, exc)

    # ------------------------------------------------------------------ reading

    def pruned(self, dataset: str) -> PrunedMark | None:
        """How far the dataset's feed has been pruned; None when nothing of it ever was."""
        m = self._marks
        query = sa.select(m.c.upto_id, m.c.upto_changed_at, m.c.deleted, m.c.pruned_at).where(
            m.c.dataset == dataset
        )
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"reading how far the change feed of dataset {dataset} was pruned", exc) from exc
        if row is None:
            return None
        return PrunedMark(int(row[0]), _utc(row[1]), int(row[2]), _utc(row[3]))

    def clocks(self) -> tuple[datetime, datetime] | None:
        """(this process's clock, the database server's) read at the same moment, both UTC; None for
        SQLite, a file on this machine with no clock of its own. One query. TargetError when the
        database cannot be read."""
        if self._sqlite:
            return None
        family = dialect_family(self._engine)
        query = "SELECT CURRENT_TIMESTAMP" if family == "postgresql" else "SELECT UTC_TIMESTAMP(6)"
        try:
            with self._engine.connect() as conn:
                before = datetime.now(UTC)
                theirs = conn.execute(sa.text(query)).scalar_one()
                after = datetime.now(UTC)
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail("reading the database server's clock", exc) from exc
        return before + (after - before) / 2, _utc(theirs)

    def _span(self, conn: sa.Connection, dataset: str, bound: PruneBound) -> tuple[int, int, int] | None:
        """(lowest id, highest id that may go, newest id) of the dataset's entries; None: no entries.
        A time bound does not narrow it: the walk (:meth:`_next_range`) stops where it begins."""
        ch = self._changes
        ids = sa.select(ch.c.id).where(ch.c.dataset == dataset).limit(1)
        newest = conn.execute(ids.order_by(ch.c.id.desc())).scalar()
        if newest is None:
            return None
        lowest = conn.execute(ids.order_by(ch.c.id)).scalar_one()
        upper = int(newest) - 1  # the newest entry always stays (module docstring)
        if bound.upto_id is not None:
            upper = min(upper, bound.upto_id)
        return int(lowest), upper, int(newest)

    def _next_range(
        self, conn: sa.Connection, dataset: str, bound: PruneBound, after: int, upper: int
    ) -> tuple[int, bool, list[tuple[int, datetime]]]:
        """The next range of the walk: (its upper end, whether the walk ends with it, its entries as
        (id, changed_at) in id order). At most ``batch_size`` entries above ``after`` and none above
        ``upper``; with a time bound it ends before the first entry written at or after ``before``,
        and so does the walk (module docstring)."""
        ch = self._changes
        rows = conn.execute(
            sa.select(ch.c.id, ch.c.changed_at)
            .where(ch.c.dataset == dataset, ch.c.id > after, ch.c.id <= upper)
            .order_by(ch.c.id)
            .limit(self.batch_size)
        ).all()
        entries = [(int(i), _utc(at)) for i, at in rows]
        if bound.before is not None:
            for n, (entry_id, at) in enumerate(entries):
                if at >= bound.before:  # the first entry to keep: the walk ends before it
                    return entry_id - 1, True, entries[:n]
        if len(entries) < self.batch_size:  # nothing more up to upper
            return upper, True, entries
        return entries[-1][0], entries[-1][0] >= upper, entries

    def _conditions(self, dataset: str, bound: PruneBound, after: int, upto: int) -> list[Any]:
        """The DELETE of a range: its ids (the time condition too, though the range's entries were
        read older: a second guard that costs nothing)."""
        ch = self._changes
        conditions = [ch.c.dataset == dataset, ch.c.id > after, ch.c.id <= upto]
        if bound.before is not None:
            conditions.append(ch.c.changed_at < bound.before)
        return conditions

    def _count(self, conn: sa.Connection, dataset: str, bound: PruneBound, lowest: int, upper: int) -> int:
        """What a prune would delete (a dry run): the walk's entries, read as the prune reads them;
        without a time bound one count."""
        if bound.before is None:
            ch = self._changes
            where = [ch.c.dataset == dataset, ch.c.id >= lowest, ch.c.id <= upper]
            return int(conn.execute(sa.select(sa.func.count()).where(*where)).scalar() or 0)
        count, after, done = 0, lowest - 1, upper < lowest
        while not done:
            after, done, entries = self._next_range(conn, dataset, bound, after, upper)
            count += len(entries)
        return count

    # ------------------------------------------------------------------ deleting

    def prune(
        self,
        dataset: str,
        bound: PruneBound,
        *,
        dry_run: bool = False,
        should_stop: Callable[[], bool] | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> PruneResult:
        """Delete the dataset's entries within ``bound`` (its newest excepted), ``batch_size`` a
        transaction; ``should_stop`` is asked between batches, ``on_batch(dataset, deleted)`` hears
        of each committed one. ``dry_run`` counts only. TargetError on a database error (the
        batches committed before it stay deleted)."""
        started = time.monotonic()
        result = PruneResult(dataset, dry_run=dry_run)
        doing = f"pruning the change feed of dataset {dataset}"
        try:
            with self._engine.connect() as conn:
                span = self._span(conn, dataset, bound)
                if span is not None and dry_run:
                    result.deleted = self._count(conn, dataset, bound, *span[:2])
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(doing, exc) from exc
        if span is None or dry_run:
            result.newest_id = None if span is None else span[2]
            result.seconds = time.monotonic() - started
            return result
        lowest, upper, result.newest_id = span
        after = lowest - 1

        def step() -> tuple[int, bool]:
            nonlocal after
            after, deleted, last = self.delete_batch(dataset, bound, after, upper)
            if deleted:
                result.last_deleted_id = last
            return deleted, after >= upper

        if after < upper:
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
                "changes.pruned",
                dataset=dataset,
                deleted=result.deleted,
                batches=result.batches,
                before=None if bound.before is None else bound.before.isoformat(),
                upto_id=bound.upto_id,
                last_deleted_id=result.last_deleted_id,
                stopped=result.stopped,
                duration_s=round(result.seconds, 3),
            )
        return result

    def delete_batch(
        self, dataset: str, bound: PruneBound, after: int, upper: int, *, conn: sa.Connection | None = None
    ) -> tuple[int, int, int | None]:
        """Delete the next range of the walk (:meth:`_next_range`) and raise the dataset's mark, in
        one transaction (``conn``'s, when given: the caller commits). Returns (where the next range
        starts: ``upper`` once the walk is over, entries deleted, the highest id deleted or None)."""
        if conn is None:
            with self._writes.begin() as own:
                return self.delete_batch(dataset, bound, after, upper, conn=own)
        end, done, entries = self._next_range(conn, dataset, bound, after, upper)
        goes_on = upper if done else end
        if not entries:
            return goes_on, 0, None
        last_id = entries[-1][0]
        last_at = max(at for _, at in entries)
        where = self._conditions(dataset, bound, after, end)
        deleted = int(conn.execute(sa.delete(self._changes).where(*where)).rowcount)
        marks = self._marks

        def raised(incoming: Any) -> list[tuple[str, Any]]:
            def higher(name: str) -> Any:
                return sa.case((incoming[name] > marks.c[name], incoming[name]), else_=marks.c[name])

            return [
                ("upto_id", higher("upto_id")),
                ("upto_changed_at", higher("upto_changed_at")),
                ("deleted", marks.c.deleted + incoming["deleted"]),
                ("pruned_at", incoming["pruned_at"]),
            ]

        mark = {
            "dataset": dataset,
            "upto_id": last_id,
            "upto_changed_at": last_at,
            "deleted": deleted,
            "pruned_at": datetime.now(UTC),
        }
        conn.execute(upsert_statement(conn, marks, ("dataset",), raised), [mark])
        return goes_on, deleted, last_id
