"""One run of one dataset: read pages, map records, write batches, advance the watermark.

The runner only wires the stages (DESIGN §3): the source reads, the compiled mapping maps, the
batch writer detects changes and commits each batch atomically with its change-log and row-state
rows. What the runner owns is the run's policy:

* authorization is checked before anything is read (DESIGN §4.7), and so is the key definition:
  a dataset whose key is made differently from when its rows were synced is refused
  (:mod:`syncd.targets.keydef`);
* the read window: ``since = watermark - lookback`` and ``until = start - safety_lag``;
* the watermark advances only after every batch of the run has committed, to the newest update
  time seen (never past ``until``) — so a crash at any point re-reads from the old watermark and
  the hash comparison makes the overlap free (§4.1, §4.3);
* a record that cannot be mapped is quarantined; past the error limit the run fails (§4.6);
* full-snapshot delete detection (``target.snapshot_delete``): each batch's keys are marked
  seen after it committed; only a run that read the whole dataset deletes the unseen keys, and
  only within the guard (:mod:`syncd.targets.snapshot`);
* a page with a ``checkpoint`` (the file source: the last page of a file) ends a whole: the batch
  is written at once and the checkpoint (the file's ledger entry) commits in its transaction,
  when the error limit would hold if the run ended there; a run that fails or is killed later
  reads that file no more (reading it again would write its rows back to older values);
* a source with a ``finish(success)`` method (the file source) is told how the run ended, after
  every batch committed, so it can move what it read;
* the run's dataset lock (``lock``, :class:`RunLock`), when it has one, is checked between pages
  and batches (the lock does at most one query every few seconds) and always before the snapshot
  deletes and before the run ends well (and advances the watermark): a lock lost mid-run
  (:class:`~syncd.errors.RunLockLost`) fails the run there, since another process may be running
  the dataset by then. A batch being written when the lock went commits (it is whole); nothing
  is written after the check that finds the loss.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import orjson
import structlog

from syncd.changes import record_digester
from syncd.changes.digestkey import record_digest_key
from syncd.changes.keys import ROW_KEY_LENGTH
from syncd.config.model import AppConfig, DatasetConfig, ErrorLimit
from syncd.errors import (
    AuthorizationError,
    ConfigError,
    GuardError,
    RecordError,
    RunLockLost,
    StopRequested,
    SyncdError,
)
from syncd.gcpolicy import fewer_collections
from syncd.mapping import CompiledMapping, compile_mapping
from syncd.mapping.casts import ColumnLimit
from syncd.mapping.records import RecordSorter, Rejected, Row
from syncd.sources import ReadStats, Source, Window, build_source, digest_texts
from syncd.sources.base import NEVER, Checkpoint, Page, ResumePoint, StopSignal, watch_stop
from syncd.sources.prefetch import Prefetcher
from syncd.sources.worker import MappedPage, ReadWorker, ReadWorkerError
from syncd.targets import (
    BatchCounts,
    BatchWriter,
    QuarantineItem,
    RunCounts,
    RunInfo,
    StateStore,
    default_node,
)
from syncd.targets.keydef import KeyDefinitionChanged, check_key_definition
from syncd.targets.snapshot import SnapshotDeletes

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Backfill", "Progress", "RunLock", "RunResult", "check_authorization", "run_dataset"]

log = structlog.get_logger("syncd.runner")

WATERMARK_FORMAT = "%Y-%m-%d %H:%M:%S"
WORKER_MIN_RECORDS = 30_000
"""``read_worker: auto`` hands a first load over to the read worker from this many records on: the
worker's start (~0.35 s) pays for itself from about 25,000 records (bench/RESULTS.md)."""
READY_WAIT_S = 0.0
"""How long the run waits at a page boundary for the held read worker to be ready: not at all (it
reads on in its own process meanwhile). Tests raise it to hand over at a known page."""


class RunLock(Protocol):
    """The dataset's run lock as a run sees it (syncd.daemon.locks.HeldLock)."""

    def check(self, *, force: bool = False) -> None:
        """Raise RunLockLost when the lock is gone. Cheap: it asks the database at most every few
        seconds, unless ``force``."""


@dataclass
class RunResult:
    """What one run did; printed by the CLI and logged as ``sync.finish``."""

    dataset: str
    run_id: str
    status: str  # success | failed | refused | interrupted
    counts: RunCounts
    duration: float
    watermark_before: str | None = None
    watermark_after: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    freshness_lag_s: int | None = None  # seconds between the run's start and the watermark
    worker_peak_rss_bytes: int | None = None  # the read worker's peak memory, when the run had one
    # failed on a configuration error found only as it read (e.g. a SQL source's update column):
    # ``error`` names the file, line and field; the YAML must change, a retry cannot help
    config_error: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def summary(self) -> str:
        c = self.counts
        parts = [
            f"{self.dataset}: {self.status}",
            f"fetched={c.fetched} inserted={c.inserted} updated={c.updated} deleted={c.deleted}",
            f"unchanged={c.unchanged} quarantined={c.quarantined}",
            f"in {self.duration:.1f}s",
        ]
        if c.reported_total is not None:
            parts.append(f"reported_total={c.reported_total}")
        if self.watermark_after:
            parts.append(f"watermark={self.watermark_after}")
        if self.error:
            parts.append(f"error: {self.error}")
        return "  ".join(parts)


@dataclass(frozen=True)
class Backfill:
    """Re-read a window instead of resuming from the watermark (``syncd sync --from/--to/--full``).

    ``full`` re-reads everything up to the run's start minus the safety lag. The usual change
    tracking applies, so re-reading unchanged data writes nothing; the watermark only ever moves
    forward, so re-reading an old window never moves it back.
    """

    since: datetime | None = None
    until: datetime | None = None
    full: bool = False


@dataclass(frozen=True)
class Progress:
    """Handed to ``on_progress`` after every page of a run."""

    dataset: str
    pages: int
    records: int
    reported_total: int | None
    elapsed: float


def check_authorization(dataset: DatasetConfig, today: date) -> int:
    """Raise AuthorizationError when the dataset may not run today; return days left."""
    auth = dataset.authorization
    if today < auth.valid_from:
        raise AuthorizationError(
            f"dataset {dataset.name}: authorization {auth.approval_code} is valid only from "
            f"{auth.valid_from.isoformat()}; it does not run before then"
        )
    if today > auth.valid_until:
        raise AuthorizationError(
            f"dataset {dataset.name}: authorization {auth.approval_code} expired on "
            f"{auth.valid_until.isoformat()}; it no longer runs. Renew the approval with the data bureau "
            "(数据局) and update authorization.valid_until"
        )
    return (auth.valid_until - today).days


@contextmanager
def _bound(**values: Any) -> Iterator[None]:
    """Bind run fields into the log context for the run only (never leaking into the next job)."""
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


class _Run:
    """The mutable state of one run; created and consumed by :func:`run_dataset`."""

    def __init__(
        self,
        app: AppConfig,
        dataset: DatasetConfig,
        store: StateStore,
        now: datetime,
    ) -> None:
        self.app = app
        self.ds = dataset
        self.store = store
        self.zone = ZoneInfo(app.timezone)
        self.started_utc = now.astimezone(UTC)
        self.started_local = now.astimezone(self.zone).replace(tzinfo=None, microsecond=0)
        self.today = self.started_local.date()  # in the configured zone: the mapping's id_number checks
        self.limits: dict[str, ColumnLimit] | None = None  # the target table's (StateStore.column_limits)
        self.run_id = uuid.uuid4().hex
        self.counts = RunCounts()
        self.batch_size = dataset.batch_size or app.defaults.batch_size
        self.error_limit: ErrorLimit = dataset.error_limit or app.defaults.error_limit
        self.max_seen: datetime | None = None
        self.warnings: list[str] = []
        self.stop: StopSignal = NEVER  # run_dataset's should_stop; the source watches it too
        self.lock: RunLock | None = None
        self.backfill: Backfill | None = None
        self.on_progress: Callable[[Progress], None] | None = None
        self.started_mono = time.monotonic()
        self.worker_peak_rss: int | None = None
        self.config_error = False  # the run failed on a ConfigError (RunResult.config_error)

    def took_page(self, reported_total: int | None) -> None:
        self.counts.pages += 1
        if reported_total is not None and self.counts.reported_total is None:
            self.counts.reported_total = reported_total

    def report_progress(self) -> None:
        if self.on_progress is not None:
            c = self.counts
            elapsed = time.monotonic() - self.started_mono
            self.on_progress(Progress(self.ds.name, c.pages, c.fetched, c.reported_total, elapsed))

    def check_stop(self) -> None:
        """Between pages and before each batch: a stop request, or a lost run lock, ends the run."""
        self.stop.check()
        self.check_lock()

    def check_lock(self, force: bool = False) -> None:
        """RunLockLost when the run's lock is gone (``force``: ask the database now)."""
        if self.lock is not None:
            self.lock.check(force=force)

    # ------------------------------------------------------------------ window and watermark

    def window(self, watermark: str | None) -> Window:
        inc = getattr(self.ds.source, "incremental", None)
        if inc is None:
            return Window(since=None, until=None)
        lag = inc.safety_lag if inc.safety_lag is not None else self.app.defaults.safety_lag
        until = self.started_local - lag
        if self.backfill is not None:
            bf = self.backfill
            return Window(since=None if bf.full else bf.since, until=min(bf.until or until, until))
        return Window(since=resume_from(self.app, inc, watermark), until=until)

    def new_watermark(self, window: Window, before: str | None) -> str | None:
        """Newest update time seen, capped at the window's end; None keeps the old watermark.

        A backfill window that starts later than a regular run would (``--from`` after the
        watermark) leaves the records between them unread: it keeps the watermark, or the next
        regular run would resume past them and never read them."""
        if self.max_seen is None or window.until is None:
            return None
        inc = getattr(self.ds.source, "incremental", None)
        if self.backfill is not None and window.since is not None and inc is not None:
            start = resume_from(self.app, inc, before)
            if start is None or window.since > start:
                log.info(
                    "sync.watermark_kept",
                    reason="the backfill window starts after where the next regular run starts",
                    window_since=window.since.isoformat(sep=" "),
                    resume_from=None if start is None else start.isoformat(sep=" "),
                )
                return None
        newest = min(self.max_seen, window.until)
        if before and newest <= datetime.strptime(before, WATERMARK_FORMAT):
            return None
        return newest.strftime(WATERMARK_FORMAT)

    # ------------------------------------------------------------------ guards

    def check_error_limit(self, final: bool) -> None:
        problem = self.over_error_limit(self.counts.quarantined, final=final)
        if problem is not None:
            raise GuardError(problem)

    def over_error_limit(self, quarantined: int, *, final: bool) -> str | None:
        """Why ``quarantined`` records of those fetched so far are over the error limit, or None."""
        q, n = quarantined, self.counts.fetched
        limit = self.error_limit
        if q > limit.count:
            return (
                f"{q} records quarantined, over the error limit of {limit.count} "
                f"(error_limit.count): fix the mapping or the upstream data, then re-run"
            )
        # the ratio is judged once enough records were seen to make it meaningful
        if n and (final or n >= 10 * self.batch_size) and q / n > limit.ratio:
            return (
                f"{q} of {n} records quarantined ({q / n:.1%}), over the error limit ratio of "
                f"{limit.ratio:.1%} (error_limit.ratio): fix the mapping or the upstream data, then re-run"
            )
        return None


def resume_from(app: AppConfig, inc: Any, watermark: str | None) -> datetime | None:
    """Where a regular run of an incremental source (``inc``: its ``incremental`` settings)
    starts, in the app's local time: the watermark minus the lookback, else
    ``incremental.initial`` (an offset written with it converted to the app's zone), else None
    (from the beginning)."""
    if watermark:
        lookback = inc.lookback if inc.lookback is not None else app.defaults.lookback
        return datetime.strptime(watermark, WATERMARK_FORMAT) - lookback
    initial: datetime | None = inc.initial
    if initial is None:
        return None
    if initial.tzinfo is not None:  # e.g. 2026-11-01T08:00:00+09:00: the same instant, local
        initial = initial.astimezone(ZoneInfo(app.timezone))
    return initial.replace(tzinfo=None)


def _snapshot(run: _Run, mapping: CompiledMapping) -> SnapshotDeletes | None:
    cfg = run.ds.target.snapshot_delete
    if cfg is None or not cfg.enabled:
        return None
    tracker = SnapshotDeletes(run.store, run.ds, mapping, run.run_id, cfg)
    tracker.prepare()
    return tracker


@dataclass(slots=True)
class _Delete:
    """A waiting delete (the read worker sorted its record as one): the key values it deletes."""

    key_values: Row


@dataclass(slots=True)
class _Reject:
    """A waiting record the read worker could not map: it keeps its place among the records of
    its key (a later row of the key supersedes its quarantine entry, an earlier one does not)."""

    rejected: Rejected


_Waiting = _Reject | tuple[str | None, Row]
"""A page's rejected record, or one of its deletes as (its row key, its key values)."""


class _Batch:
    """The batch being assembled: mapped rows, logical deletes and quarantined records.

    Records are not mapped at once when the dataset already has row state (``skip_unchanged``):
    each waits with its row key and its digest (:func:`~syncd.changes.hashing.record_digester`).
    At ``flush`` one query reads the stored digests of the waiting keys; a record whose digest
    equals its key's stored digest maps to the row already written, so it is counted unchanged
    without being mapped, hashed or written (the snapshot re-sync's common case). The others are
    mapped in their original order, and once a record of a key is to be written every later record
    of that key is too, so "last wins" holds as before.

    Records come either raw (``add``: mapped here, the waiting key from the key columns alone),
    as their JSON text and head (``add_head``, a re-sync's scan of an http source: decoded only
    if mapped), or already mapped by the read worker (``add_page``: the waiting entry holds the row
    and its hash). The decision to skip is taken here in all cases, when ``batch_size`` records wait.

    What is left to write is written once it reaches ``batch_size`` rows (and at the end), not
    once per ``batch_size`` records read: a re-sync in which 1 % changed commits once per
    ``batch_size`` changed rows instead of a transaction of ten rows per thousand records read.
    Until then the keys of those rows are ``pending``: a later record of a pending key is never
    skipped (its stored digest is not yet the pending row's), so "last wins" holds across the
    records read before one write as it does within one batch. Memory stays bounded by the batch
    size: fewer than ``batch_size`` rows wait to be written while the next ``batch_size`` records
    (plus a page) wait to be resolved, so one write holds at most about twice ``batch_size`` rows.
    """

    def __init__(
        self,
        run: _Run,
        writer: BatchWriter,
        mapping: CompiledMapping,
        snapshot: SnapshotDeletes | None,
        *,
        skip_unchanged: bool,
    ) -> None:
        self.run = run
        self.writer = writer
        self.mapping = mapping
        self.snapshot = snapshot
        self.sorter = RecordSorter(run.ds, mapping)
        self.digest_key = record_digest_key(run.app, run.ds, mapping)
        self.digest = record_digester(mapping.record_fields, self.digest_key)
        self.skip_unchanged = skip_unchanged
        self.waiting: list[tuple[str, str | None, Any]] = []
        self.hashes: list[str] | None = None  # row hashes, when the rows come from the read worker
        self.pending: set[str] = set()  # keys of resolved records not written yet (never skipped)

    def __len__(self) -> int:
        return self.to_write() + len(self.waiting)

    def to_write(self) -> int:
        """Rows, deletes and quarantined records the next write commits."""
        sorter = self.sorter
        return len(sorter.rows) + len(sorter.deletes) + len(sorter.rejected)

    def add(self, record: dict[str, Any], digest: str | None = None) -> None:
        """Take a raw record (with its digest, when the source took it)."""
        if digest is None:
            digest = self.digest(record)
        if self.skip_unchanged:
            key = self._row_key(record)
            if key is not None:
                self.waiting.append((key, digest, record))
                return
            # no usable key: the full mapping quarantines it (or the writer rejects the row)
        self.sorter.sort(record, digest)

    def add_head(self, text: bytes, head: dict[str, Any], digest: str) -> None:
        """Take a record as its text, head and digest (a re-sync's scan,
        :meth:`HttpSource.read_heads`): it waits as its text, decoded only if it is to be mapped."""
        key = self._row_key(head)
        if key is None:
            # the full record decides: it waits under its own key (a key field named twice, the
            # first value null: the last is the key, and later records of it must not be skipped
            # past it), or it is sorted at once (quarantined, or the writer rejects the row)
            self.add(orjson.loads(text), digest)
        else:
            self.waiting.append((key, digest, text))

    def add_page(self, page: MappedPage) -> None:
        """Take a page the read worker mapped."""
        sorter = self.sorter
        if self.skip_unchanged:
            hashes = self.hashes if self.hashes is not None else []
            self.hashes = hashes
            # a page's deletes and rejected records wait among its rows, each at its place: the
            # last record of a key wins
            places = iter(self._page_places(page))
            place = next(places, None)
            waiting = self.waiting.append
            entries = zip(page.keys, page.digests, page.rows, page.hashes, strict=True)
            for n, (key, digest, row, row_hash) in enumerate(entries):
                while place is not None and place[0] <= n:
                    self._wait_other(place[1])
                    place = next(places, None)
                if key is None:  # the writer rejects it
                    sorter.rows.append(row)
                    sorter.digests.append(digest)
                    hashes.append(row_hash)
                else:
                    waiting((key, digest, (row, row_hash)))
            while place is not None:
                self._wait_other(place[1])
                place = next(places, None)
        else:
            base, deleted = len(sorter.rows), len(sorter.deletes)
            if page.hashes:  # else the writer hashes the rows (a first load into SQLite)
                hashes = self.hashes if self.hashes is not None else []
                self.hashes = hashes
                hashes.extend(page.hashes)
            sorter.rows.extend(page.rows)
            sorter.digests.extend(page.digests)
            sorter.deletes.extend(page.deletes)
            sorter.delete_after.extend(base + n for n in page.delete_after)
            sorter.rejected.extend(
                r._replace(after=(base + r.after[0], deleted + r.after[1])) for r in page.rejected
            )

    @staticmethod
    def _page_places(page: MappedPage) -> list[tuple[int, _Waiting]]:
        """The page's deletes and rejected records in read order, each with how many of the page's
        rows came before it."""
        placed = zip(page.delete_after, page.delete_keys, page.deletes, strict=True)
        deletes: list[tuple[int, _Waiting]] = [(n, (key, kv)) for n, key, kv in placed]
        if not page.rejected:
            return deletes
        merged: list[tuple[int, _Waiting]] = []
        j = 0
        for rejected in page.rejected:
            rows_before, deletes_before = rejected.after
            while j < len(deletes) and j < deletes_before:
                merged.append(deletes[j])
                j += 1
            merged.append((rows_before, _Reject(rejected)))
        merged.extend(deletes[j:])
        return merged

    def _wait_other(self, item: _Waiting) -> None:
        if isinstance(item, _Reject):
            self._wait_reject(item)
        else:
            self._wait_delete(item[0], item[1])

    def _wait_reject(self, item: _Reject) -> None:
        """A record the read worker could not map waits among the records of its key, never skipped."""
        kv = item.rejected.key_values
        key = None if kv is None else self.writer.row_key(kv)
        if key is None:  # no key: nothing it could be superseded by
            self.sorter.add_rejected(item.rejected)
        else:
            self.waiting.append((key, None, item))

    def _wait_delete(self, key: str | None, key_values: Row) -> None:
        """A delete the read worker sorted waits among the records, never skipped."""
        if key is None:  # a null key: it matches no row (the writer counts it unchanged)
            self.sorter.add_delete(key_values)
        else:
            self.waiting.append((key, None, _Delete(key_values)))

    def _row_key(self, record: dict[str, Any]) -> str | None:
        try:
            return self.writer.row_key(self.mapping.key_record(record))
        except RecordError:
            return None

    def _resolve_waiting(self) -> None:
        """Skip the waiting records whose digest is stored for their key (counted unchanged, and
        seen by a snapshot run); map the rest, whose keys become pending."""
        waiting = self.waiting
        if not waiting:
            return
        stored = self.writer.stored_digests([key for key, digest, _ in waiting if digest is not None])
        skipped: list[str] = []
        sorter, hashes, pending = self.sorter, self.hashes, self.pending
        # in order: once a record of a key is to be written, every later record of it is too (a key
        # twice among the waiting records ends with the last of them, whichever equals the stored)
        for key, digest, item in waiting:
            if digest is not None and key not in pending and stored.get(key) == digest:
                skipped.append(key)
                continue
            pending.add(key)
            if hashes is None:
                record = item
                if item.__class__ is bytes:  # a record that waited as its text (add_head)
                    record = orjson.loads(item)
                    written = self._row_key(record)
                    if written is not None and written != key:
                        # its key field named twice: the head read the first value, the mapping
                        # takes the last; later records of the key it is written under wait too
                        pending.add(written)
                sorter.sort(record, digest)
            elif item.__class__ is _Delete:  # sorted by the read worker as a delete
                sorter.add_delete(item.key_values)
            elif item.__class__ is _Reject:  # the read worker could not map it
                sorter.add_rejected(item.rejected)
            else:  # mapped by the read worker
                sorter.rows.append(item[0])
                sorter.digests.append(digest)
                hashes.append(item[1])
        waiting.clear()
        self.run.counts.unchanged += len(skipped)
        if skipped:
            # read again as they were written: their quarantined earlier versions are superseded
            self.writer.supersede(skipped)
            if self.snapshot is not None:  # their rows stand: seen, with nothing to write
                self.snapshot.mark_seen(skipped)

    def flush_when_full(self, checkpoint: Checkpoint | None = None) -> None:
        """At the end of a page: once ``batch_size`` records wait, resolve them; once ``batch_size``
        rows are left to write, write them (see the class docstring); report. A page with a
        ``checkpoint`` ends a whole (a file): what waits is written at once, with the checkpoint."""
        size = self.run.batch_size
        if checkpoint is not None:
            self.flush(checkpoint)
        elif len(self) >= size:
            if self.waiting:
                self.run.check_stop()
                self._resolve_waiting()
            if self.to_write() >= size:
                self.flush()
        self.run.report_progress()

    def flush(self, checkpoint: Checkpoint | None = None) -> None:
        """Resolve what waits and write the rest in one transaction (or not at all when a stop was
        requested). A source's ``checkpoint`` (:attr:`Page.checkpoint`: the records read so far are
        a whole, e.g. a file) commits in the same transaction, or alone when nothing is left to write."""
        if not len(self) and checkpoint is None:
            return
        run, sorter = self.run, self.sorter
        run.check_stop()  # a batch is committed whole or not started
        self._resolve_waiting()
        also = None if checkpoint is None else self._gated(checkpoint)
        if not self.to_write():
            if also is not None:
                self.writer.write(run.run_id, [], also=also)
            return
        row_key = self.writer.row_key
        quarantined = [
            QuarantineItem(
                raw=r.raw,
                reason=r.reason,
                record_key=r.record_key,
                row_key=None if r.key_values is None else row_key(r.key_values),
                protected=r.protected,
                after=r.after,
            )
            for r in sorter.rejected
        ]
        counts = self.writer.write(
            run.run_id,
            sorter.rows,
            sorter.deletes,
            quarantined,
            sorter.digests,
            hashes=self.hashes,
            delete_after=sorter.delete_after,
            also=also,
        )
        run.counts.add(counts)
        if self.snapshot is not None:  # after the batch committed: its keys were seen by this run
            self.snapshot.mark_seen(self._seen_keys())
        sorter.clear()
        if self.hashes is not None:
            self.hashes.clear()
        self.pending.clear()
        run.check_error_limit(final=False)

    def _gated(self, checkpoint: Checkpoint) -> Callable[[sa.Connection, BatchCounts], None]:
        """``checkpoint`` as the writer calls it inside the batch's transaction: only when the run's
        error limit would hold if the run ended with this batch. Past it the batch still commits
        (its quarantined records are kept) but the checkpoint does not: a file over the limit is
        read again by the next run, as a run failing on the limit reads its window again."""
        run = self.run

        def also(conn: sa.Connection, counts: BatchCounts) -> None:
            problem = run.over_error_limit(run.counts.quarantined + counts.quarantined, final=True)
            if problem is None:
                checkpoint(conn)
            else:
                log.info("sync.checkpoint_deferred", reason=problem)

        return also

    def _seen_keys(self) -> list[str]:
        """The row keys the write just committed stands for, as ``row_state`` holds them: its rows'
        (none for a row the writer rejected: its key null or longer than ``ROW_KEY_LENGTH``) and its
        quarantined records' — the key columns mapped, so that a record which fails its mapping this
        time keeps the row it was written as before (upstream's key text when even the key columns
        cannot be mapped)."""
        row_key, key_of = self.writer.row_key, self.mapping.key_of
        keys = [key for row in self.sorter.rows if (key := row_key(key_of(row))) is not None]
        for rejected in self.sorter.rejected:
            raw_key, key_values = rejected.record_key, rejected.key_values
            key = raw_key if key_values is None else row_key(key_values)
            if key is not None and len(key) <= ROW_KEY_LENGTH:
                keys.append(key)
        return keys


class _Reading:
    """Where the run's records come from: its source read in this process, or the read worker.

    ``defaults.read_worker`` (docs/performance.md): ``always`` starts the worker before anything
    else; ``auto`` reads in this process, and when the first page of an http dataset's first load
    reports at least :data:`WORKER_MIN_RECORDS` records, starts the worker *held* (it imports and
    prepares, ~0.3 s) while this process goes on reading, mapping and writing. At the first page
    boundary after the worker said it is ready, this process stops reading and the worker reads on
    from the next page (the page's :class:`~syncd.sources.base.ResumePoint`: paging state and
    statistics), so no page is read twice and no start-up time is spent waiting. A worker that
    fails before it is ready only costs the speed: the read stays in this process. A re-sync
    never hands over: it maps only the records whose digest changed, which the worker cannot know;
    a worker that only reads and digests, sending the texts, was measured: 0-15 % faster on 2 busy
    cores, for a 50 MB process more (docs/performance.md, "读取子进程")."""

    def __init__(
        self,
        run: _Run,
        window: Window,
        source_factory: Callable[[AppConfig, DatasetConfig], Source],
        *,
        first_load: bool,
    ) -> None:
        self.run = run
        self.window = window
        self.first_load = first_load
        self.factory = source_factory
        self.source: Source | ReadWorker | None = None
        self.pending: ReadWorker | None = None  # started held, not reading yet
        mode = run.app.defaults.read_worker
        usable = mode != "never" and source_factory is build_source and run.ds.source.type == "http"
        self.worker_now = usable and mode == "always"
        self.switch_at = WORKER_MIN_RECORDS if usable and mode == "auto" and first_load else None

    def start_early(self) -> None:
        """``always``: start the worker now; its start-up (imports, the first request) overlaps
        the run's own set-up (mapping, target table)."""
        if self.worker_now:
            self.source = self._spawn(None, hold=False)

    def open(self) -> Source | ReadWorker:
        if self.source is None:
            self.source = self.factory(self.run.app, self.run.ds)
            watch_stop(self.source, self.run.stop)  # a stop ends its retries, not only its pages
            if self.switch_at is not None and hasattr(self.source, "offer_resume"):
                self.source.offer_resume = True  # each page says where the worker could read on
        return self.source

    def worth_a_worker(self, page: Page) -> bool:
        """Whether this first page starts the worker (``auto``: a large enough first load)."""
        total = page.reported_total
        return (
            self.switch_at is not None
            and self.pending is None
            and page.number == 1
            and total is not None
            and total >= self.switch_at
        )

    def start_held_worker(self, reported_total: int | None) -> None:
        try:
            self.pending = self._spawn(reported_total, hold=True)
        except ReadWorkerError as exc:  # it could not even be started: the read stays here
            self._read_here(None, str(exc))

    def worker_ready(self) -> bool:
        """Whether the held worker is ready to read on. One that failed is given up (logged once)."""
        worker = self.pending
        if worker is None:
            return False
        if worker.wait_ready(READY_WAIT_S):
            return True
        if worker.unavailable is not None:
            self.pending = None
            worker.close()
            self._read_here(worker.pid, worker.unavailable)
        return False

    def _read_here(self, pid: int | None, reason: str) -> None:
        """No worker for this read after all: this process reads it to the end."""
        log.warning("sync.read_worker_unavailable", pid=pid, reason=reason[:500])
        if self.source is not None and hasattr(self.source, "offer_resume"):
            self.source.offer_resume = False

    def hand_over(self, resume: ResumePoint) -> ReadWorker:
        """Close the source read so far (its requests still count); the held worker reads on after
        ``resume``'s page."""
        worker, self.pending = self.pending, None
        if worker is None:  # pragma: no cover - _take_records hands over only to a ready worker
            raise ReadWorkerError("no read worker to hand the read over to")
        old, self.source = self.source, worker
        if old is not None:
            self._count(old)
            old.close()
        worker.go(resume)
        log.info("sync.read_worker_took_over", after_page=resume.stats.pages, records=resume.stats.records)
        return worker

    def _spawn(self, reported_total: int | None, *, hold: bool) -> ReadWorker:
        run = self.run
        worker = ReadWorker(
            run.app, run.ds, self.window,
            keys=not self.first_load, hold=hold, today=run.today, limits=run.limits,
            # the run's process writes SQLite itself, with CPU to spare: it hashes the rows there;
            # where its writes wait on a server it has none (docs/performance.md)
            hashes=run.store.engine.dialect.name != "sqlite",
        )
        worker.watch_stop(run.stop)  # a stop ends the child even while it waits on the gateway
        log.info("sync.read_worker", pid=worker.pid, reported_total=reported_total)
        return worker

    def _count(self, source: Source | ReadWorker) -> None:
        self.run.counts.requests += source.stats.requests
        self.run.counts.retries += source.stats.retries

    def close(self, success: bool) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:  # the read ended (or failed) before the worker took over
            pending.close()
        source, self.source = self.source, None
        if source is not None:
            self._count(source)
            _tell_finish(self.run, source, success)
            source.close()
            if isinstance(source, ReadWorker) and source.peak_rss_bytes is not None:
                self.run.worker_peak_rss = source.peak_rss_bytes
                log.info("sync.read_worker_done", peak_rss_mb=round(source.peak_rss_bytes / 2**20, 1))


def _process(
    run: _Run,
    reading: _Reading,
    mapping: CompiledMapping,
    snapshot: SnapshotDeletes | None,
) -> BatchWriter:
    writer = run.store.writer(run.ds, mapping)
    batch = _Batch(run, writer, mapping, snapshot, skip_unchanged=not reading.first_load)
    # a re-sync reads the stored digests of every batch: on one connection held for the run
    with writer.digest_reads() if batch.skip_unchanged else nullcontext():
        source = reading.open()
        if isinstance(source, ReadWorker):
            _take_mapped(run, source, batch)
        else:
            resume = _take_records(run, source, reading, batch)
            if resume is not None:
                worker = reading.hand_over(resume)
                batch.flush()  # the records this process read, written while the worker reads on
                _take_mapped(run, worker, batch)
        batch.flush()
    run.check_error_limit(final=True)
    return writer


class _Pages:
    """A read's pages, the next one read ahead while this one is mapped and written
    (syncd.sources.prefetch) — except while the read may still go to a held read worker (an http
    first load): then each is read when it is wanted, so that no request is in flight when the
    worker takes over (it would be read again) and this process holds one page less when its
    memory peaks (about 3 MB of the run's peak). ``read_ahead()`` starts reading ahead from where
    the read stands."""

    def __init__(self, pages: Iterator[Page], name: str, *, ahead: bool) -> None:
        self._pages, self._name = pages, name
        self._it: Iterator[Page] = Prefetcher(pages, name=name) if ahead else pages
        self._ahead = ahead

    def read_ahead(self) -> None:
        if not self._ahead:
            self._ahead = True
            self._it = Prefetcher(self._pages, name=self._name)

    def __iter__(self) -> _Pages:
        return self

    def __next__(self) -> Page:
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _take_records(run: _Run, source: Source, reading: _Reading, batch: _Batch) -> ResumePoint | None:
    """Read and map in this process. Returns where the read stands instead, once the read worker
    started for a large first load is ready to read on from there (:class:`_Reading`)."""
    update_time = source.update_time
    mapping = batch.mapping
    if digest_texts(source, batch.digest_key) and batch.skip_unchanged and reading.switch_at is None:
        # a re-sync: most records are skipped by their digests, so they come undecoded
        source.read_heads(mapping.key_fields)  # type: ignore[attr-defined]
    pages = _Pages(
        source.read(reading.window), f"syncd-read-{run.ds.name}", ahead=reading.switch_at is None
    )
    try:
        for page in pages:
            run.check_stop()
            total = page.reported_total
            if reading.worth_a_worker(page):
                reading.start_held_worker(total)
            run.took_page(total)
            # taken off the page one by one: a record mapped on a first load is not kept, so the
            # page's raw records are gone before the batch is written (the run's memory peak)
            if page.heads is not None:
                _take_heads(run, page, batch, update_time)
            else:
                records, digests = page.records, page.digests
                records.reverse()
                if digests is not None:
                    digests.reverse()
                while records:
                    record = records.pop()
                    run.counts.fetched += 1
                    ts = update_time(record)
                    if ts is not None and (run.max_seen is None or ts > run.max_seen):
                        run.max_seen = ts
                    batch.add(record, digests.pop() if digests is not None else None)
            batch.flush_when_full(page.checkpoint)
            if page.resume is not None and reading.worker_ready():
                return page.resume
            if reading.pending is None:  # no worker will take this read over (any more)
                pages.read_ahead()
    finally:
        # an early end (stop request, guard, failed batch, the hand-over) releases the source's
        # cursor now; a request already sent for the next page (read ahead) is finished first
        pages.close()
    return None


def _take_heads(run: _Run, page: Page, batch: _Batch, update_time: Callable[[Any], datetime | None]) -> None:
    """A page read as texts and heads (a re-sync's scan): the update time from the head."""
    texts, heads, digests = page.texts or [], page.heads or [], page.digests or []
    run.counts.fetched += len(texts)
    add = batch.add_head
    for text, head, digest in zip(texts, heads, digests, strict=True):
        ts = update_time(head)
        if ts is not None and (run.max_seen is None or ts > run.max_seen):
            run.max_seen = ts
        add(text, head, digest)
    texts.clear()
    heads.clear()
    digests.clear()


def _take_mapped(run: _Run, worker: ReadWorker, batch: _Batch) -> None:
    """Take the pages the read worker read and mapped (syncd.sources.worker)."""
    try:
        for page in worker.pages():
            run.check_stop()
            run.took_page(page.reported_total)
            run.counts.fetched += page.fetched
            ts = page.max_seen
            if ts is not None and (run.max_seen is None or ts > run.max_seen):
                run.max_seen = ts
            batch.add_page(page)
            batch.flush_when_full()
    except ReadWorkerError:
        # a stop's own signal can end the child before it ignores SIGTERM (a control-group kill in
        # its first moments): the run was asked to stop, so it is interrupted, not failed
        run.check_stop()
        raise


_TOTAL_CHANGED = "the gateway's reported total changed while paging: a record may have been skipped"


def unsure_snapshot(stats: ReadStats) -> str | None:
    """Why this complete read may still have missed a live record, or None. Records that enter or
    leave the upstream result while it is paged by page number or offset shift the rest: one at a
    page boundary is skipped, and would be deleted here (and inserted again by the next run)."""
    if stats.total_changed:
        return _TOTAL_CHANGED
    if stats.reported_total is not None and stats.records < stats.reported_total:
        return f"upstream reported {stats.reported_total} records but {stats.records} were received"
    return None


def _snapshot_deletes(
    run: _Run,
    source: Source | ReadWorker,
    window: Window,
    snapshot: SnapshotDeletes | None,
    writer: BatchWriter,
) -> None:
    """Delete the keys a complete full read did not see (guarded; see syncd.targets.snapshot)."""
    if snapshot is None:
        return
    if window.since is not None or not getattr(source, "snapshot_read", True):
        log.info("snapshot.skipped", reason="this run did not read the whole dataset")
        return
    unsure = unsure_snapshot(source.stats)
    if unsure is not None:
        log.warning("snapshot.deferred", reason=unsure)
        run.warnings.append(f"snapshot deletes wait for the next complete read: {unsure}")
        return
    run.check_stop()
    run.check_lock(force=True)  # deleting beside another run of the dataset deletes live rows
    counts = snapshot.apply(writer, run.batch_size, before_write=run.check_lock)
    run.counts.deleted += counts.deleted


def run_dataset(
    app: AppConfig,
    dataset: DatasetConfig,
    store: StateStore,
    *,
    now: datetime | None = None,
    trigger: str = "manual",
    source_factory: Callable[[AppConfig, DatasetConfig], Source] = build_source,
    should_stop: threading.Event | Callable[[], bool] | None = None,
    backfill: Backfill | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    lock: RunLock | None = None,
) -> RunResult:
    """Run ``dataset`` once. Never raises for a failed run: the result says what happened.

    ``should_stop`` (an Event, or a callable returning True) is polled between pages and before
    each batch is written, and by the source before each request and retry and during its backoff
    (:class:`~syncd.sources.base.StopSignal`); once set the run ends with status ``interrupted``
    (the daemon's SIGTERM), keeping what committed, the watermark unmoved.
    ``backfill`` re-reads a window (see :class:`Backfill`); ``on_progress`` is called after every page.
    ``lock`` is the dataset's run lock the caller holds (``DatasetLocker.take``): checked between
    batches, a lost one fails the run (``sync.lock_lost``). Without it nothing is checked (tests,
    an in-memory database).
    """
    started = time.monotonic()
    run = _Run(app, dataset, store, now or datetime.now(UTC))
    if should_stop is not None:
        run.stop = StopSignal(should_stop)
    run.backfill = backfill
    run.on_progress = on_progress
    run.lock = lock
    with _bound(dataset=dataset.name, run_id=run.run_id):
        try:
            before = _start(run, trigger)
        except (AuthorizationError, KeyDefinitionChanged) as exc:
            log.error("sync.refused", reason=str(exc))
            _record_refusal(run, trigger, str(exc))
            return RunResult(
                dataset.name, run.run_id, "refused", run.counts, time.monotonic() - started, error=str(exc)
            )
        except SyncdError as exc:
            log.error("sync.failed", error=str(exc), error_type=type(exc).__name__)
            return RunResult(
                dataset.name, run.run_id, "failed", run.counts, time.monotonic() - started, error=str(exc),
                config_error=isinstance(exc, ConfigError),
            )
        with fewer_collections():  # syncd.gcpolicy
            status, error, after = _read_and_write(run, before, trigger, source_factory)
        return _finish(run, started, status, error, before=before, after=after)


def _run_info(run: _Run, trigger: str, before: str | None) -> RunInfo:
    auth = run.ds.authorization
    return RunInfo(
        run_id=run.run_id,
        dataset=run.ds.name,
        started_at=run.started_utc.replace(tzinfo=None),
        approval_code=auth.approval_code,
        purpose=auth.purpose,
        node=default_node(),
        trigger=trigger,
        watermark_before=before,
    )


def _start(run: _Run, trigger: str) -> str | None:
    """Check the authorization, prepare the state tables, check the key definition
    (:mod:`syncd.targets.keydef`) and open the run record; return the watermark."""
    auth = run.ds.authorization
    days_left = check_authorization(run.ds, run.started_local.date())
    if days_left <= auth.warn_days:
        run.warnings.append(
            f"authorization {auth.approval_code} expires in {days_left} days ({auth.valid_until})"
        )
        log.warning("authorization.expiring", approval_code=auth.approval_code, days_left=days_left)
    run.store.ensure_schema()
    check_key_definition(run.store, run.ds, run.app.code_tables)  # KeyDefinitionChanged: refused
    before = run.store.get_watermark(run.ds.name)
    run.store.begin_run(_run_info(run, trigger, before))
    return before


def _record_refusal(run: _Run, trigger: str, reason: str) -> None:
    """Auditors see refused runs too (使用留痕); a database problem here only costs the record. The
    run moves no watermark: its row records the one in force as before and after."""
    try:
        run.store.ensure_schema()
        run.store.begin_run(_run_info(run, trigger, run.store.get_watermark(run.ds.name)))
        run.store.finish_run(
            run.run_id, run.ds.name, status="refused", counts=run.counts, error=reason, watermark=None
        )
    except SyncdError as exc:
        log.warning("sync.refusal_not_recorded", error=str(exc))


def _read_and_write(
    run: _Run,
    before: str | None,
    trigger: str,
    source_factory: Callable[[AppConfig, DatasetConfig], Source],
) -> tuple[str, str | None, str | None]:
    """Read the window, write every batch; return (status, error, new watermark)."""
    window = run.window(before)
    log.info(
        "sync.start",
        trigger=trigger,
        watermark=before,
        window_since=window.since.isoformat(sep=" ") if window.since else None,
        window_until=window.until.isoformat(sep=" ") if window.until else None,
    )
    reading: _Reading | None = None
    snapshot: SnapshotDeletes | None = None
    success = False
    try:
        # the existing table's narrower columns, before a read worker compiles the mapping with them
        run.limits = run.store.column_limits(run.ds)
        reading = _Reading(run, window, source_factory, first_load=not run.store.has_row_state(run.ds.name))
        reading.start_early()
        mapping = compile_mapping(run.ds, run.app.code_tables, today=run.today, limits=run.limits)
        snapshot = _snapshot(run, mapping)
        writer = _process(run, reading, mapping, snapshot)
        stats = _read_to_the_end(run, reading)
        shifted = _shifted(run, stats)
        if shifted is not None:
            reading.close(True)
            reading = _Reading(run, window, source_factory, first_load=False)
            writer, stats = _read_again(run, reading, mapping, snapshot, stats, reason=shifted)
        _snapshot_deletes(run, reading.open(), window, snapshot, writer)
        # still ours, or another run may have read and written meanwhile: no watermark, and a file
        # source keeps its files
        run.check_lock(force=True)
        success = True
        total, received = stats.reported_total, stats.records
        if total is not None and total != received:
            run.warnings.append(f"upstream reported {total} records but {received} were received")
            log.warning("sync.total_mismatch", reported_total=total, received=received)
        return "success", None, run.new_watermark(window, before)
    except StopRequested as exc:
        log.warning("sync.interrupted", reason=str(exc))
        return "interrupted", str(exc), None
    except RunLockLost as exc:
        log.error("sync.lock_lost", error=str(exc), reason=exc.reason)
        return "failed", str(exc), None
    except Exception as exc:  # every failure is recorded on the run, then reported (BLE allows re-logging)
        known = isinstance(exc, SyncdError)
        error = str(exc) if known else f"{type(exc).__name__}: {exc}"
        run.config_error = isinstance(exc, ConfigError)
        log.error("sync.failed", error=error, error_type=type(exc).__name__, exc_info=not known)
        return "failed", error, None
    finally:
        if snapshot is not None:
            snapshot.close()
        if reading is not None:
            reading.close(success)


def _read_to_the_end(run: _Run, reading: _Reading) -> ReadStats:
    """The statistics of a read that ended; GuardError when the source stopped before the end."""
    stats = reading.open().stats
    run.warnings.extend(stats.warnings)
    if not stats.complete:
        raise GuardError("the source stopped before the end of the data; the watermark is kept")
    return stats


def _shifted(run: _Run, stats: ReadStats) -> str | None:
    """Why records may have shifted past a page boundary during this read, or None.

    A page-number or offset read of a result that changes while it is paged can skip the record at
    a page boundary. When the gateway bounds the window's end (``incremental.end_param``), a record
    updated during the read leaves the result and the reported total changes. A gateway without that
    bound keeps it, with its new update time, at the end of a result ordered by update time: the
    total stays, and the record after the one that moved slipped onto a page already read. Such a
    read shows an update time at or after the run's start (nothing the run could have seen before
    it started): read again then too."""
    if stats.total_changed:
        return _TOTAL_CHANGED
    source = run.ds.source
    paging = getattr(getattr(source, "pagination", None), "type", None)
    if paging in ("page_number", "offset") and run.max_seen is not None and run.max_seen >= run.started_local:
        return (
            f"a record updated at {run.max_seen.isoformat(sep=' ')}, after the run started, was read: "
            "records that move while the gateway pages by number or offset can skip one"
        )
    return None


def _read_again(
    run: _Run,
    reading: _Reading,
    mapping: CompiledMapping,
    snapshot: SnapshotDeletes | None,
    first: ReadStats,
    *,
    reason: str,
) -> tuple[BatchWriter, ReadStats]:
    """Read the same window once more, after a read in which records may have shifted past a page
    boundary (:func:`_shifted`: the reported total changed between pages, or a record updated after
    the run started was read).

    Records that leave (or enter) the upstream result while it is paged by page number or offset
    shift the rest: the record at a page boundary moves onto a page already read and that read
    never sees it. Its update time lies inside the window, usually well before the new watermark,
    so no later incremental run would read it again. The second read finds it (a record skipped
    twice needs two such moves at the same moment); the records the first read wrote are skipped
    by their digests (``row_state.record_digest``), so it costs the requests and little more.

    The second read's fetched/unchanged/quarantined are not added to the run's counts (the same
    records, counted once; the error limit judges one read); what it writes is."""
    log.warning(
        "sync.reread",
        reason=reason,
        pages=first.pages,
        records=first.records,
    )
    counted = run.counts
    run.counts = RunCounts(reported_total=counted.reported_total)
    try:
        writer = _process(run, reading, mapping, snapshot)
    finally:
        again, run.counts = run.counts, counted
        for name in ("inserted", "updated", "deleted", "pages"):
            setattr(counted, name, getattr(counted, name) + getattr(again, name))
    stats = _read_to_the_end(run, reading)
    if stats.total_changed:
        log.warning("sync.read_unstable", reason="the reported total changed again during the second read")
        run.warnings.append(
            "upstream kept changing while it was read twice: a record may have been skipped; "
            f"a backfill reads it again (syncd sync {run.ds.name} --full, or --from/--to around the window)"
        )
    return writer, stats


def _tell_finish(run: _Run, source: Source | ReadWorker, success: bool) -> None:
    """Tell a source that has ``finish(success)`` how the run ended (e.g. move the files read)."""
    finish = getattr(source, "finish", None)
    if finish is None:
        return
    try:
        finish(success)
    except Exception as exc:  # noqa: BLE001 - the rows are committed: a failed move only costs a warning
        run.warnings.append(f"the source could not finish cleanly: {exc}")
        log.warning("sync.source_finish_failed", error=str(exc), error_type=type(exc).__name__)


def _finish(
    run: _Run, started: float, status: str, error: str | None, *, before: str | None, after: str | None
) -> RunResult:
    """Record the run's end (and the new watermark, in the same transaction) and log ``sync.finish``."""
    ds, auth, counts = run.ds, run.ds.authorization, run.counts
    duration = time.monotonic() - started
    try:
        run.store.finish_run(run.run_id, ds.name, status=status, counts=counts, error=error, watermark=after)
    except SyncdError as exc:
        status, error = "failed", f"{error + '; ' if error else ''}could not record the run: {exc}"
        after = None
        log.error("sync.failed", error=error)
    result = RunResult(
        ds.name,
        run.run_id,
        status,
        counts,
        duration,
        watermark_before=before,
        watermark_after=after or before,
        error=error,
        warnings=run.warnings,
        worker_peak_rss_bytes=run.worker_peak_rss,
        config_error=run.config_error and status == "failed",
    )
    lag = None
    if result.watermark_after:
        wm = datetime.strptime(result.watermark_after, WATERMARK_FORMAT)
        lag = round((run.started_local - wm) / timedelta(seconds=1))
    result.freshness_lag_s = lag
    log.info(
        "sync.finish",
        status=status,
        duration_s=round(duration, 3),
        fetched=counts.fetched,
        inserted=counts.inserted,
        updated=counts.updated,
        deleted=counts.deleted,
        unchanged=counts.unchanged,
        quarantined=counts.quarantined,
        reported_total=counts.reported_total,
        requests=counts.requests,
        retries=counts.retries,
        pages=counts.pages,
        watermark=result.watermark_after,
        freshness_lag_s=lag,
        approval_code=auth.approval_code,
        purpose=auth.purpose,
        error=error,
    )
    return result
