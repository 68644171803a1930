"""The batch writer: one batch of mapped rows → target rows, row state and change feed, atomically.

``write`` does, with no per-row round trip (DESIGN §4.1-4.4):

1. dedupe the rows by key (last wins; a key also in ``deletes`` is deleted, or, when the deletes
   have their places in the read, whichever came last) and hash them;
2. read the stored hashes of all keys, one ``IN`` query per chunk;
3. classify (:func:`syncd.changes.detector.classify`): new → insert, same hash → nothing at
   all, other hash → update candidate, delete of a known key → delete;
4. read the current target rows of update candidates and deletes (one query per chunk) and
   compare normalised values: the changed columns go to the feed; a candidate with no real
   difference only refreshes its stored hash;
   A row whose content is unchanged but whose record digest is new (or was never stored) only
   gets its ``row_state.record_digest`` refreshed, so the runner can skip mapping it next time
   (a record without a digest clears the stored one);
5. in ONE transaction: bulk upsert rows, bulk delete (hard: DELETE; soft: set the flag and keep
   the key's state with :data:`DELETED_HASH`), upsert row state, insert change entries, remove
   the quarantine entries the batch supersedes, upsert quarantine items. Any database error rolls
   everything back and raises TargetError.

A quarantine entry stands for the latest record of its key only until that key is handled again:
a later row of the key (inserted, updated or unchanged), a delete of it, or a later quarantined
record of it supersedes the entry, which is removed in the batch that handles the key (a replay
must never write an older version over a newer one, or bring back a row deleted upstream). The
"last wins" of a batch holds here too: a quarantined record after the row of its key in the read
stays. Entries are found by ``quarantine.row_key``; the keys holding entries are read once per
writer (:data:`QUARANTINE_KEYS_HELD`), so a batch of a dataset without entries pays nothing.

Re-running a batch that was committed before a crash finds every hash equal: zero writes and
zero change entries — the exactly-once effect.
"""

from __future__ import annotations

import contextvars
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql

from syncd.changes.detector import (
    DELETED_HASH,
    Classification,
    Normaliser,
    Op,
    changed_indexes,
    classify,
    normaliser_for,
    normaliser_for_type,
)
from syncd.changes.hashing import json_text, key_text, raw_hash, row_hash
from syncd.changes.keys import ROW_KEY_LENGTH, row_key_function
from syncd.config.model import DatasetConfig
from syncd.errors import TargetError
from syncd.mapping.codegen import compiled_source
from syncd.targets.dialects import (
    BulkWriter,
    GrowthAnalyzer,
    KeyLookup,
    chunked,
    param_budget,
    upsert_statement,
)
from syncd.targets.engine import describe_url, write_engine
from syncd.targets.records import BatchCounts, QuarantineItem
from syncd.targets.schema import MappingShape, StateTables, key_column_names
from syncd.targets.sqltypes import SQLITE_EXACT_DIGITS, sqlite_decimal_limit

__all__ = ["BatchWriter", "failure_reason"]

log = structlog.get_logger(__name__)

SPLIT_LOOKUP_KEYS = 512
SPLIT_LOOKUP_SLOW_S = 25e-6
"""A look-up of at least SPLIT_LOOKUP_KEYS keys (a re-sync's stored digests, the current rows of a
batch's changed keys) is split in two halves read at the same time, the second on a connection of
its own, once the previous look-up of its kind took more than this per key. Cached, a look-up costs
1-5 µs a key of CPU under one interpreter lock, and a split cost the bench's SQLite snapshot re-sync
of 10⁵ about 8 %; when the pages are not in memory (page cache reclaimed since the last run, tables
larger than the memory) each key waits for random reads of the disk (about 130 µs a key and table
on the bench machine), and two reads in flight are served about 1.7 times as fast as one."""

QUARANTINE_KEYS_HELD = 10_000
"""The row keys of a dataset's quarantine entries a writer holds in memory (read once, on its
first write), so that only a batch that handles one of them deletes entries. A dataset with
more entries has every batch delete the entries of its keys (one indexed DELETE per batch)."""

Row = tuple[Any, ...]

_INSERT_OP = Op.INSERT.value
_IDENTITY = normaliser_for_type("string")  # the normaliser of text: nothing to do
SQLITE_WHOLE_DIGITS = 18  # a whole number under 10**18 is under 2**63: an exact SQLite INTEGER

CHANGE_COLUMNS = (
    "dataset",
    "run_id",
    "op",
    "row_key",
    "changed_columns",
    "old_values",
    "new_values",
    "changed_at",
)


_Also = Callable[[sa.Connection, BatchCounts], None]
"""More of the caller's state, committed in a batch's transaction (:meth:`BatchWriter.write`)."""


@dataclass(slots=True)
class _Batch:
    """One batch after deduplication: row key → row / key values / delete key values."""

    run_id: str
    now: datetime
    rejects: list[QuarantineItem]
    rows: dict[str, Row] = field(default_factory=dict)
    keys: dict[str, Row] = field(default_factory=dict)
    digests: dict[str, str | None] = field(default_factory=dict)  # row key → record digest
    hashes: dict[str, str] = field(default_factory=dict)  # row key → row hash, when the caller gave them
    deletes: dict[str, Row] = field(default_factory=dict)
    counts: BatchCounts = field(default_factory=BatchCounts)
    row_at: dict[str, int] | None = None  # row key → index of its last row, when deletes have places
    delete_at: dict[str, int] | None = None  # row key → index of its last delete, when rejects have places


@dataclass(slots=True)
class _Plan:
    """What one batch writes; every row a tuple in its BulkWriter's column order."""

    inserts: list[Row] = field(default_factory=list)  # keys row_state does not know
    upserts: list[Row] = field(default_factory=list)
    hard_deletes: list[Row] = field(default_factory=list)
    soft_deletes: list[Row] = field(default_factory=list)
    state_inserts: list[Row] = field(default_factory=list)  # (dataset, row_key, row_hash, record_digest)
    state_upserts: list[Row] = field(default_factory=list)
    state_deletes: list[str] = field(default_factory=list)
    changes: list[Row] = field(default_factory=list)  # CHANGE_COLUMNS


class BatchWriter:
    """Writes batches of one dataset into its target table. Build it with ``StateStore.writer``."""

    def __init__(
        self,
        engine: sa.Engine,
        tables: StateTables,
        dataset: DatasetConfig,
        shape: MappingShape,
        table: sa.Table,
        *,
        key_collation: str | None = None,
    ) -> None:
        """``key_collation``: MariaDB/MySQL, the collation ``row_state.row_key`` has in the
        database (:attr:`StateStore.row_key_collation`), for the look-ups that join it."""
        self._engine = write_engine(engine)
        self._reads = engine  # plain transactions (no write lock on SQLite) for look-ups outside a batch
        self._held: sa.Connection | None = None  # the run's look-up connection (digest_reads)
        self._where = describe_url(engine.url)
        self._tables = tables
        self._dataset = dataset.name
        self._table = table
        self._columns = tuple(shape.columns)
        self._key_idx = tuple(shape.key_indexes)
        self._key_names = key_column_names(shape)
        self._norms = tuple(normaliser_for(shape.specs[c]) for c in self._columns)
        self._stage = ""  # what the writer is doing, for error messages
        self._key_norms = tuple(self._norms[i] for i in self._key_idx)
        self._row_key = row_key_function([shape.specs[self._columns[i]] for i in self._key_idx])
        self._norm_at = tuple((i, n) for i, n in enumerate(self._norms) if n is not _IDENTITY)
        soft = dataset.target.logical_delete
        self._soft = soft.soft_column if soft is not None and soft.mode == "soft" else None
        self._out = self._columns + ((self._soft,) if self._soft else ())
        self._all_json = json_text(list(self._out))  # changed_columns of every insert and delete
        self._out_norms = (*self._norms, *((normaliser_for_type("bool"),) if self._soft else ()))
        self._normalised = _row_normaliser(len(self._columns), self._norm_at, soft=self._soft is not None)
        # SQLite: the decimal columns whose values can exceed what it stores exactly, and their check
        self._inexact, self._fits = _sqlite_inexact(engine, shape, self._columns)
        self._new_values = _values_json(self._out)
        # a row's key values, and key values given alone (deletes), normalised per column type
        self._key_of_row = _key_reader(self._key_idx, self._key_norms)
        self._key_values = _key_reader(tuple(range(len(self._key_idx))), self._key_norms)
        budget = param_budget(engine)
        self._key_chunk = max(1, budget // len(self._key_idx))
        self._state_chunk = budget - 1
        non_key = [c for c in self._out if c not in self._key_names]
        self._upsert_rows = BulkWriter(engine, table, self._out, self._key_names, non_key)
        rs = tables.row_state
        cols, key = ("row_key", "row_hash", "record_digest"), ("row_key",)
        # all text columns: read as one JSON row on SQLite and MariaDB (KeyLookup)
        on_rs: dict[str, Any] = {"scope": "dataset", "packed": True, "collation": key_collation}
        self._state_of = KeyLookup(engine, rs, cols, key, budget, **on_rs)
        # each twice: the second instance reads the second half of a split look-up (SPLIT_LOOKUP_KEYS)
        # in another thread, and KeyLookup keeps per-instance caches
        self._digest_of, self._digest_of_2 = (
            KeyLookup(engine, rs, cols[::2], key, budget, **on_rs) for _ in range(2)
        )
        # the target table is the operator's, who may alter it while this daemon runs: not prepared
        self._rows_of, self._rows_of_2 = (
            KeyLookup(engine, table, self._out, self._key_names, budget, prepared=False) for _ in range(2)
        )
        self._slow: set[KeyLookup] = set()  # the look-ups whose last fetch waited (SPLIT_LOOKUP_SLOW_S)
        state_columns = ("dataset", "row_key", "row_hash", "record_digest")
        self._upsert_state = BulkWriter(engine, rs, state_columns, state_columns[:2], state_columns[2:])
        self._insert_changes = BulkWriter(engine, tables.changes, CHANGE_COLUMNS)
        self._analyzer = GrowthAnalyzer(engine, [(table, self._key_names), (rs, ("dataset", "row_key"))])
        self._upsert_quarantine = _quarantine_upsert(engine, tables.quarantine)
        self._entry_keys: set[str] = set()  # row keys of the dataset's quarantine entries
        self._entries_read = False
        self._every_key = False  # more entries than QUARANTINE_KEYS_HELD: any key may hold one
        key_cols = [table.c[k] for k in self._key_names]
        self._key_expr: Any = key_cols[0] if len(key_cols) == 1 else sa.tuple_(*key_cols)
        # PostgreSQL, one key column: "key = ANY(array)", one parameter and one cached statement,
        # instead of an IN list SQLAlchemy expands to a thousand parameters on every batch
        single_pg = engine.dialect.name == "postgresql" and len(key_cols) == 1
        self._key_array: Any = postgresql.ARRAY(key_cols[0].type) if single_pg else None

    # ------------------------------------------------------------------ keys

    def row_key(self, key_values: Row) -> str | None:
        """The ``row_key`` text the writer would give a row with these key values (in
        ``key_indexes`` order), or None when such a row would be rejected (a null or too long key)."""
        return self._row_key(key_values)

    @contextmanager
    def digest_reads(self) -> Iterator[None]:
        """Hold one connection for :meth:`stored_digests` during the block (a re-sync's batches).

        On PostgreSQL and MariaDB it is in autocommit, so each look-up is one round trip: no pool
        check-out with its ping, no BEGIN, no ROLLBACK on return, and no transaction left open
        between batches. On a busy 2-core machine each round trip waits for the server's turn on
        a core: saving three of the four took 15-20 % off a PostgreSQL snapshot re-sync. An SQLite
        connection is in-process and has no ping: SQLite keeps one connection per look-up. The
        connection goes back to the pool when the block ends, also on an error."""
        if self._held is not None or self._reads.dialect.name == "sqlite":
            yield
            return
        try:
            conn = self._reads.connect()
            try:
                conn.execution_options(isolation_level="AUTOCOMMIT")  # MariaDB: a SET on the wire
            except BaseException:
                conn.close()
                raise
        except sa.exc.SQLAlchemyError as exc:
            raise self._failed("connecting to read " + self._tables.row_state.name, exc) from exc
        self._held = conn
        try:
            yield
        finally:
            self._held = None
            conn.close()

    def stored_digests(self, keys: Sequence[str]) -> dict[str, str]:
        """Row key → stored record digest, for those of ``keys`` that have one (one query per chunk).

        Read outside the batch's transaction: the runner uses it to skip mapping records whose
        digest is unchanged. That is safe because only one run of a dataset writes at a time
        (the daemon's dataset lock) and the digest is stored in the same transaction as the row."""
        stored: dict[str, str] = {}
        try:
            held = self._held
            with self._reads.connect() if held is None else nullcontext(held) as conn:
                found = self._split_fetch(self._digest_of, self._digest_of_2, conn, keys, self._dataset)
                for key, digest in found:
                    if digest is not None:
                        stored[key] = digest
        except sa.exc.SQLAlchemyError as exc:
            raise self._failed("reading " + self._tables.row_state.name, exc) from exc
        return stored

    def _failed(self, doing: str, exc: sa.exc.SQLAlchemyError) -> TargetError:
        reason = failure_reason(exc)
        return TargetError(
            f"dataset {self._dataset}: a batch failed while {doing} in {self._where} and was "
            f"rolled back, nothing of it was kept: {reason[:500]}"
        )

    def _key_param(self, values: Row) -> Any:
        return values[0] if len(values) == 1 else values

    def _keys_match(self, keys: Sequence[Row]) -> Any:
        """WHERE clause: the key is one of ``keys`` (key values in ``key_indexes`` order)."""
        return _one_of(self._key_expr, [self._key_param(k) for k in keys], self._key_array)

    def _reject(self, row: Row, reason: str) -> QuarantineItem:
        return QuarantineItem(raw=dict(zip(self._columns, row, strict=False)), reason=reason)

    def _inexact_reason(self, row: Row) -> str | None:
        """Why SQLite would not store ``row`` exactly (a decimal value past
        :func:`~syncd.targets.sqltypes.sqlite_decimal_limit`), or None. Only for rows ``_fits`` fails."""
        for i, low, high in self._inexact:
            v = row[i]
            if v is None or (v.__class__ is Decimal and low < v < high):
                continue
            number = self._norms[i](v)
            if not isinstance(number, Decimal) or (number.is_finite() and low < number < high):
                continue
            name, digits = self._columns[i], len(number.as_tuple().digits)
            if number.as_tuple().exponent == 0:
                what = "a whole number past the 64-bit range, which an SQLite target stores as a binary float"
            else:
                what = (
                    f"{digits} significant digits; an SQLite target keeps {SQLITE_EXACT_DIGITS} of a number "
                    "with decimals (it stores it as a binary float)"
                )
            return (
                f"column {name}: {number} has {what}, so the record is not written rather than stored "
                f"rounded. Fix: in the dataset's columns.{name}, keep precision at most "
                f"{SQLITE_EXACT_DIGITS} (or scale 0 and precision at most 18), or use PostgreSQL or "
                "MariaDB as the target (target.url); then re-read it with "
                f"`syncd sync {self._dataset} --full`"
            )
        return None

    # ------------------------------------------------------------------ write

    def write(
        self,
        run_id: str,
        rows: Sequence[Row],
        deletes: Sequence[Row] = (),
        quarantined: Sequence[QuarantineItem] = (),
        digests: Sequence[str | None] | None = None,
        *,
        hashes: Sequence[str] | None = None,
        delete_after: Sequence[int] | None = None,
        also: _Also | None = None,
    ) -> BatchCounts:
        """Write one batch atomically; returns what it did.

        ``rows`` are mapped tuples in ``shape.columns`` order. ``deletes`` are key tuples (the
        key values in ``key_indexes`` order, as ``CompiledMapping.key_of`` gives them) or whole
        mapped rows; a key both in ``rows`` and ``deletes`` is deleted. ``quarantined`` items
        are upserted into the quarantine table, but one followed by a row or delete of its
        ``row_key`` (its ``after``) or by another item of that key; the entries this write
        supersedes are removed (see the module docstring). A row whose key is null or longer than 512
        characters is quarantined by the writer itself, and so, on SQLite, is a row with a decimal value
        SQLite would store rounded (:func:`~syncd.targets.sqltypes.sqlite_decimal_limit`; its entry
        holds the mapped row and its key, in its place in the read). ``digests`` (parallel to ``rows``)
        are the digests of the raw records the rows were mapped from, kept in ``row_state.record_digest``.
        ``hashes`` (parallel to ``rows``), when given, are the rows' :func:`row_hash` values, already
        computed where the rows were mapped (the read worker); otherwise the writer computes them.
        ``delete_after`` (parallel to ``deletes``), when given, places each delete in the read: after
        that many of ``rows``. Then the last record of a key wins, a delete or a row: a delete
        supersedes the rows of its key before it, a row after it supersedes the delete — whatever
        records one write holds (the runner's batches end wherever ``batch_size`` falls).
        ``also``, when given, is called inside the batch's transaction after its writes, with the
        batch's counts, to commit more of the caller's state with it (the file source's ledger
        entry of a file whose last record is in the batch); in a transaction of its own when the
        batch has nothing to write.
        """
        batch = _Batch(run_id=run_id, now=datetime.now(UTC), rejects=list(quarantined))
        if digests is not None and len(digests) != len(rows):
            raise ValueError(f"{len(digests)} digests for {len(rows)} rows")
        if hashes is not None and len(hashes) != len(rows):
            raise ValueError(f"{len(hashes)} hashes for {len(rows)} rows")
        if delete_after is not None:
            if len(delete_after) != len(deletes):
                raise ValueError(f"{len(delete_after)} places for {len(deletes)} deletes")
            if deletes:
                batch.row_at = {}
        if any(item.row_key is not None and item.after is not None for item in quarantined):
            batch.row_at = {} if batch.row_at is None else batch.row_at  # where each key was last handled
            batch.delete_at = {}
        self._collect_rows(batch, rows, digests, hashes, delete_after)
        self._collect_deletes(batch, deletes, delete_after)
        batch.counts.quarantined = len(batch.rejects)
        if not (batch.rows or batch.deletes or batch.rejects):
            return self._commit_alone(also, batch.counts)
        rejects, entered = self._settle_rejects(batch)
        stale = self._stale_keys([batch.rows, batch.deletes, entered])
        if hashes is None:
            row_hashes = {key: row_hash(row) for key, row in batch.rows.items()}
        else:
            row_hashes = {key: batch.hashes[key] for key in batch.rows}
        self._stage = "starting a transaction"
        try:
            with self._engine.begin() as conn:
                self._stage = f"reading {self._tables.row_state.name}"
                stored, stored_digests = self._stored_hashes(conn, [*row_hashes, *batch.deletes])
                verdict = classify(row_hashes, batch.deletes, stored)
                self._stage = f"reading {self._table.name}"
                wanted = [batch.keys[k] for k in verdict.update_candidates]
                wanted += [batch.deletes[k] for k in verdict.deletes]
                current = self._current_rows(conn, wanted)
                plan = self._plan(batch, row_hashes, verdict, current, stored_digests)
                self._apply(conn, plan)
                self._stage = f"removing superseded entries of {self._tables.quarantine.name}"
                superseded = self._remove_entries(conn, stale, list(entered.values()))
                self._stage = f"writing {self._tables.quarantine.name}"
                self._upsert_entries(conn, self._quarantine_rows(batch, rejects))
                self._commit_also(conn, also, batch.counts)
                self._stage = "committing"
        except sa.exc.SQLAlchemyError as exc:
            raise self._failed(self._stage, exc) from exc
        self._held_entries(stale, entered, superseded)
        self._analyzer.added(batch.counts.inserted)
        log.debug("target.batch", dataset=self._dataset, run_id=run_id, **counts_dict(batch.counts))
        return batch.counts

    def _commit_also(self, conn: sa.Connection, also: _Also | None, counts: BatchCounts) -> None:
        """Call the caller's ``also`` inside the batch's transaction (``write``)."""
        if also is not None:
            self._stage = "recording the source's checkpoint (the file ledger)"
            also(conn, counts)

    def _commit_alone(self, also: _Also | None, counts: BatchCounts) -> BatchCounts:
        """A batch with nothing to write: the caller's ``also`` in a transaction of its own."""
        if also is not None:
            try:
                with self._engine.begin() as conn:
                    self._commit_also(conn, also, counts)
            except sa.exc.SQLAlchemyError as exc:
                raise self._failed(self._stage, exc) from exc
        return counts

    def _collect_rows(
        self,
        batch: _Batch,
        rows: Sequence[Row],
        digests: Sequence[str | None] | None,
        hashes: Sequence[str] | None,
        delete_after: Sequence[int] | None,
    ) -> None:
        width, key_of_row = len(self._columns), self._key_of_row
        by_key, keys_of, digests_of, hashes_of = batch.rows, batch.keys, batch.digests, batch.hashes
        row_at, fits = batch.row_at, self._fits
        for n, row in enumerate(rows):
            if len(row) != width:
                raise ValueError(f"a row has {len(row)} values but the mapping has {width} columns")
            kv = key_of_row(row)
            if None in kv:
                empty = ", ".join(k for k, v in zip(self._key_names, kv, strict=True) if v is None)
                batch.rejects.append(self._reject(row, f"key column {empty} is empty (null)"))
                continue
            key = key_text(kv)
            if len(key) > ROW_KEY_LENGTH:
                reason = f"the record key is longer than {ROW_KEY_LENGTH} characters"
                batch.rejects.append(self._reject(row, reason))
                continue
            if fits is not None and not fits(row) and (inexact_reason := self._inexact_reason(row)):
                # quarantined in its place in the read, as the mapping quarantines a record: a later
                # row or delete of its key supersedes the entry, an earlier row of it stays
                before = 0 if delete_after is None else bisect_right(delete_after, n)
                raw = dict(zip(self._columns, row, strict=True))
                rejects = batch.rejects  # in read order: the last item of a key is the one that stands
                later = (j for j, r in enumerate(rejects) if r.after is None or r.after[0] > n)
                at = next(later, len(rejects))
                rejects.insert(at, QuarantineItem(raw, inexact_reason, key, key, after=(n + 1, before)))
                if row_at is None:
                    batch.row_at = row_at = {}
                if batch.delete_at is None:
                    batch.delete_at = {}
                continue
            if key in by_key:
                batch.counts.unchanged += 1  # superseded by a later row with the same key
            by_key[key] = row
            keys_of[key] = kv
            digests_of[key] = None if digests is None else digests[n]
            if hashes is not None:
                hashes_of[key] = hashes[n]
            if row_at is not None:
                row_at[key] = n

    def _collect_deletes(
        self, batch: _Batch, deletes: Sequence[Row], delete_after: Sequence[int] | None
    ) -> None:
        width, nkeys = len(self._columns), len(self._key_idx)
        row_at, delete_at = batch.row_at, batch.delete_at
        for j, item in enumerate(deletes):
            kv = tuple(item[i] for i in self._key_idx) if len(item) == width != nkeys else tuple(item)
            if len(kv) != nkeys:
                raise ValueError(f"a delete has {len(item)} values; expected the {nkeys} key values")
            if any(v is None for v in kv):
                batch.counts.unchanged += 1  # cannot match any row
                continue
            kv = self._key_values(kv)
            key = key_text(kv)
            if delete_at is not None:
                delete_at[key] = j
            if key in batch.deletes:
                batch.counts.unchanged += 1
                continue
            if row_at is not None and delete_after is not None and row_at.get(key, -1) >= delete_after[j]:
                batch.counts.unchanged += 1  # a later record of the key is live: it supersedes the delete
                continue
            if batch.rows.pop(key, None) is not None:
                batch.counts.unchanged += 1  # the row is superseded by the delete
            batch.deletes[key] = kv

    # ------------------------------------------------------------------ reads

    def _split_fetch(
        self, first: KeyLookup, second: KeyLookup, conn: sa.Connection, keys: Sequence[Any], scope: Any = None
    ) -> list[tuple[Any, ...]]:
        """``first.fetch(conn, keys, scope)`` as a list. When the last look-up of ``first`` waited
        (SPLIT_LOOKUP_SLOW_S) and there are SPLIT_LOOKUP_KEYS keys or more, the second half is read
        at the same time by ``second`` on another connection of the look-up engine. Both read before
        the batch writes anything, so they see the same committed rows (one run of a dataset writes
        at a time). An error of either half is raised here, after both ended."""
        if len(keys) < SPLIT_LOOKUP_KEYS:
            return list(first.fetch(conn, keys, scope))
        started = time.perf_counter()
        if first not in self._slow:
            rows = list(first.fetch(conn, keys, scope))
            self._note_pace(first, started, len(keys))
            return rows
        half = len(keys) // 2
        other: list[tuple[Any, ...]] = []
        failed: list[BaseException] = []

        def read_second_half() -> None:
            try:
                with self._reads.connect() as own:
                    other.extend(second.fetch(own, keys[half:], scope))
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread below
                failed.append(exc)

        context = contextvars.copy_context()  # the run's log fields
        thread = threading.Thread(target=context.run, args=(read_second_half,), name="syncd-lookup")
        thread.start()
        try:
            rows = list(first.fetch(conn, keys[:half], scope))
        finally:
            thread.join()
        if failed:
            raise failed[0]
        rows.extend(other)
        self._note_pace(first, started, len(keys))
        return rows

    def _note_pace(self, lookup: KeyLookup, started: float, keys: int) -> None:
        """Remember whether the look-up took longer than SPLIT_LOOKUP_SLOW_S a key."""
        if time.perf_counter() - started > SPLIT_LOOKUP_SLOW_S * keys:
            self._slow.add(lookup)
        else:
            self._slow.discard(lookup)

    def _stored_hashes(
        self, conn: sa.Connection, keys: list[str]
    ) -> tuple[dict[str, str], dict[str, str | None]]:
        """(row key → stored row hash, row key → stored record digest) of ``keys``."""
        hashes: dict[str, str] = {}
        digests: dict[str, str | None] = {}
        for row_key, row_hash_, digest in self._state_of.fetch(conn, keys, self._dataset):
            hashes[row_key] = row_hash_
            digests[row_key] = digest
        return hashes, digests

    def _current_rows(self, conn: sa.Connection, keys: list[Row]) -> dict[str, Row]:
        """The current target rows of ``keys``, normalised, by row key."""
        current: dict[str, Row] = {}
        norms, key_idx = self._out_norms, self._key_idx
        params = [self._key_param(k) for k in keys]
        for db_row in self._split_fetch(self._rows_of, self._rows_of_2, conn, params):
            values = tuple(norm(v) for norm, v in zip(norms, db_row, strict=True))
            current[key_text(tuple(values[i] for i in key_idx))] = values
        return current

    # ------------------------------------------------------------------ plan

    def _change(
        self,
        batch: _Batch,
        op: Op,
        key: str,
        columns: Sequence[str],
        *,
        old: dict[str, Any] | None = None,
        new: dict[str, Any] | None = None,
    ) -> Row:
        """A change-log row in CHANGE_COLUMNS order."""
        return (
            self._dataset,
            batch.run_id,
            op.value,
            key,
            self._all_json if columns is self._out else json_text(list(columns)),
            None if old is None else json_text(old),
            None if new is None else json_text(new),
            batch.now,
        )

    def _insert_change(self, batch: _Batch, key: str, new: Row) -> Row:
        """The change-log row of an insert (every column, the new values): ``_change`` spelled out,
        as it runs for every row of a first load."""
        new_values = self._new_values(new)
        return (self._dataset, batch.run_id, _INSERT_OP, key, self._all_json, None, new_values, batch.now)

    def _plan(
        self,
        batch: _Batch,
        hashes: dict[str, str],
        verdict: Classification,
        current: dict[str, Row],
        stored_digests: dict[str, str | None],
    ) -> _Plan:
        plan = _Plan()
        out, counts, dataset = self._out, batch.counts, self._dataset
        candidates = set(verdict.update_candidates)
        counts.unchanged += len(verdict.unchanged) + len(verdict.ignored_deletes)
        digests = batch.digests
        for key in verdict.unchanged:  # same content from a new record: keep its digest for next time
            digest = digests[key]
            # None clears a stored one: it may have been keyed so that it can be recomputed from the
            # YAML (a masked dataset whose source has no secret: syncd.changes.digestkey)
            if digest != stored_digests.get(key):
                plan.state_upserts.append((dataset, key, hashes[key], digest))
        normalised, rows, insert_change = self._normalised, batch.rows, self._insert_change
        for key in verdict.inserts:  # keys row_state does not know: written without a merge
            new = normalised(rows[key])
            plan.state_inserts.append((dataset, key, hashes[key], digests[key]))
            plan.inserts.append(new)
            plan.changes.append(insert_change(batch, key, new))
        counts.inserted += len(verdict.inserts)
        for key, row in rows.items():
            if key not in candidates:
                continue
            new = normalised(row)
            old = current.get(key)
            plan.state_upserts.append((dataset, key, hashes[key], digests[key]))
            if old is None:  # known to row_state but gone from the table
                plan.upserts.append(new)
                plan.changes.append(insert_change(batch, key, new))
                counts.inserted += 1
                continue
            positions = changed_indexes(old, new)
            if not positions:  # e.g. Decimal("1.5") vs "1.50": only the stored hash is refreshed
                counts.unchanged += 1
                continue
            plan.upserts.append(new)
            plan.changes.append(
                self._change(
                    batch,
                    Op.UPDATE,
                    key,
                    [out[i] for i in positions],
                    old={out[i]: old[i] for i in positions},
                    new={out[i]: new[i] for i in positions},
                )
            )
            counts.updated += 1
        for key in verdict.deletes:
            old = current.get(key)
            old_values = None if old is None else dict(zip(out, old, strict=True))
            plan.changes.append(self._change(batch, Op.DELETE, key, out, old=old_values))
            if self._soft:
                plan.soft_deletes.append(batch.deletes[key])
                plan.state_upserts.append((dataset, key, DELETED_HASH, None))
            else:
                plan.hard_deletes.append(batch.deletes[key])
                plan.state_deletes.append(key)
            counts.deleted += 1
        return plan

    def _quarantine_rows(self, batch: _Batch, rejects: list[QuarantineItem]) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for item in rejects:
            digest = raw_hash(item.raw)
            rows[digest] = {
                "dataset": self._dataset,
                "raw_hash": digest,
                "run_id": batch.run_id,
                "record_key": None if item.record_key is None else item.record_key[:ROW_KEY_LENGTH],
                "raw": json_text(item.raw),
                "reason": item.reason,
                "first_seen": batch.now,
                "last_seen": batch.now,
                "times": 1,
                "row_key": item.row_key,
                "protected": None if item.protected is None else json_text(item.protected),
            }
        return list(rows.values())

    # ------------------------------------------------------------------ superseded quarantine entries

    def _settle_rejects(self, batch: _Batch) -> tuple[list[QuarantineItem], dict[str, str]]:
        """The batch's quarantined records to keep, and {row key: raw hash} of those with a key.

        The last record of a key wins: a quarantined record is dropped when a row or a delete of
        its key comes after it in the read (``after``), or another quarantined record of its key."""
        rejects = batch.rejects
        last: dict[str, int] = {}
        for i, item in enumerate(rejects):
            if item.row_key is not None:
                last[item.row_key] = i
        if not last:
            return rejects, {}
        row_at, delete_at = batch.row_at or {}, batch.delete_at or {}
        kept: list[QuarantineItem] = []
        entered: dict[str, str] = {}
        for i, item in enumerate(rejects):
            key, after = item.row_key, item.after
            if key is None:
                kept.append(item)
                continue
            if last[key] != i:
                continue  # a later record of its key was quarantined too
            if after is not None and (row_at.get(key, -1) >= after[0] or delete_at.get(key, -1) >= after[1]):
                continue  # a later record of its key was written or deleted
            kept.append(item)
            entered[key] = raw_hash(item.raw)
        return kept, entered

    def _read_entry_keys(self) -> None:
        """Read the row keys of the dataset's quarantine entries, once (QUARANTINE_KEYS_HELD)."""
        if self._entries_read:
            return
        q = self._tables.quarantine
        query = sa.select(q.c.row_key).where(q.c.dataset == self._dataset, q.c.row_key.is_not(None))
        try:
            with self._reads.connect() as conn:
                keys = [str(k) for (k,) in conn.execute(query.limit(QUARANTINE_KEYS_HELD + 1))]
        except sa.exc.SQLAlchemyError as exc:
            reason = failure_reason(exc)[:500]
            doing = f"dataset {self._dataset}: reading {q.name} in {self._where}"
            raise TargetError(f"{doing} failed: {reason}") from exc
        self._every_key = len(keys) > QUARANTINE_KEYS_HELD
        self._entry_keys = set() if self._every_key else set(keys)
        self._entries_read = True

    def _stale_keys(self, groups: Sequence[Collection[str]]) -> list[str]:
        """The keys among ``groups`` that may have quarantine entries: the ones a write supersedes."""
        self._read_entry_keys()
        held = self._entry_keys
        if self._every_key:
            return self._keys_with_entries(list(dict.fromkeys(k for group in groups for k in group)))
        if not held:
            return []
        if len(held) <= sum(len(group) for group in groups):
            return [k for k in held if any(k in group for group in groups)]
        return list(dict.fromkeys(k for group in groups for k in group if k in held))

    def _row_key_in(self, keys: list[str]) -> Any:
        """``quarantine.row_key IN keys``; on PostgreSQL ``= ANY(array)``: one parameter and one
        cached statement instead of a list of a thousand to parse and plan on every batch."""
        array = postgresql.ARRAY(sa.String()) if self._reads.dialect.name == "postgresql" else None
        return _one_of(self._tables.quarantine.c.row_key, keys, array)

    def _keys_with_entries(self, keys: list[str]) -> list[str]:
        """Past QUARANTINE_KEYS_HELD: which of ``keys`` hold entries, asked with a read (an indexed
        look-up) so that a batch — or a re-sync that writes nothing — deletes only where there is
        something to delete, instead of a DELETE for every thousand keys read."""
        if not keys:
            return []
        q = self._tables.quarantine
        found: list[str] = []
        try:
            with self._reads.connect() as conn:
                for part in chunked(keys, self._state_chunk - 1):
                    mine = (q.c.dataset == self._dataset, self._row_key_in(list(part)))
                    query = sa.select(q.c.row_key).where(*mine).distinct()
                    found.extend(str(k) for k in conn.execute(query).scalars())
        except sa.exc.SQLAlchemyError as exc:
            reason = failure_reason(exc)[:500]
            doing = f"dataset {self._dataset}: reading {q.name} in {self._where}"
            raise TargetError(f"{doing} failed: {reason}") from exc
        return found

    def _remove_entries(self, conn: sa.Connection, keys: list[str], keep: list[str]) -> int:
        """Delete the quarantine entries of ``keys`` but those whose raw hash is in ``keep``."""
        q = self._tables.quarantine
        removed = 0
        for part in chunked(keys, max(1, self._state_chunk - len(keep) - 1)):
            where = [q.c.dataset == self._dataset, self._row_key_in(list(part))]
            if keep:
                where.append(q.c.raw_hash.not_in(keep))
            removed += max(conn.execute(sa.delete(q).where(*where)).rowcount, 0)
        return removed

    def _held_entries(self, stale: list[str], entered: dict[str, str], superseded: int) -> None:
        """After a commit: the keys holding entries now."""
        if not self._every_key:
            self._entry_keys.difference_update(stale)
            self._entry_keys.update(entered)
            if len(self._entry_keys) > QUARANTINE_KEYS_HELD:  # memory stays bounded (DESIGN §4.5)
                self._every_key, self._entry_keys = True, set()
        if superseded:
            log.info("quarantine.superseded", dataset=self._dataset, entries=superseded, reason="read again")

    def supersede(self, keys: Sequence[str]) -> None:
        """Remove the quarantine entries of ``keys``: records of them were read again and found
        unchanged, so no write handles them (the runner skips them by their digests). Their earlier
        quarantined versions are superseded all the same. Costs nothing while the dataset has no
        entries."""
        if not keys:
            return
        self._read_entry_keys()
        if not (self._every_key or self._entry_keys):
            return
        stale = self._stale_keys([set(keys)])
        if not stale:
            return
        try:
            with self._engine.begin() as conn:
                superseded = self._remove_entries(conn, stale, [])
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(
                f"dataset {self._dataset}: removing superseded entries of {self._tables.quarantine.name} "
                f"in {self._where} failed: {failure_reason(exc)[:500]}"
            ) from exc
        self._held_entries(stale, {}, superseded)

    # ------------------------------------------------------------------ apply

    def _apply(self, conn: sa.Connection, plan: _Plan) -> None:
        """Execute the plan inside the caller's transaction."""
        table, rs = self._table, self._tables.row_state
        self._stage = f"writing {table.name}"
        self._upsert_rows.write(conn, plan.inserts, fresh=True)
        self._upsert_rows.write(conn, plan.upserts)
        for chunk in chunked(plan.hard_deletes, self._key_chunk):
            conn.execute(sa.delete(table).where(self._keys_match(chunk)))
        for chunk in chunked(plan.soft_deletes, self._key_chunk):
            conn.execute(sa.update(table).where(self._keys_match(chunk)).values({self._soft: True}))
        self._stage = f"writing {rs.name}"
        self._upsert_state.write(conn, plan.state_inserts, fresh=True)
        self._upsert_state.write(conn, plan.state_upserts)
        for keys in chunked(plan.state_deletes, self._state_chunk):
            conn.execute(sa.delete(rs).where(rs.c.dataset == self._dataset, rs.c.row_key.in_(keys)))
        self._stage = f"writing {self._tables.changes.name}"
        self._insert_changes.write(conn, plan.changes)

    def _upsert_entries(self, conn: sa.Connection, entries: list[dict[str, Any]]) -> None:
        if entries:
            conn.execute(self._upsert_quarantine, entries)


def failure_reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's message on one line. PyMySQL says only ``(0, '')`` for a connection the
    server closed under it (stopped, restarted, killed): that gets words an operator can act on."""
    orig = getattr(exc, "orig", None)
    reason = " ".join(str(orig or exc).split())
    if orig is not None and tuple(getattr(orig, "args", ())) == (0, ""):
        reason = f"the connection to the database was closed (server stopped or restarted?) {reason}"
    return reason


def counts_dict(counts: BatchCounts) -> dict[str, int]:
    return {
        "inserted": counts.inserted,
        "updated": counts.updated,
        "deleted": counts.deleted,
        "unchanged": counts.unchanged,
        "quarantined": counts.quarantined,
    }


def _sqlite_inexact(
    engine: sa.Engine, shape: MappingShape, columns: Sequence[str]
) -> tuple[tuple[tuple[int, Decimal, Decimal], ...], Callable[[Row], bool] | None]:
    """On SQLite, ``(index, -limit, limit)`` of each decimal column whose values can reach
    :func:`~syncd.targets.sqltypes.sqlite_decimal_limit`, and their :func:`_fits_check`; nothing
    elsewhere (PostgreSQL and MariaDB keep every value of the declared type)."""
    if engine.dialect.name != "sqlite":
        return (), None
    found, under = [], []
    for i, name in enumerate(columns):
        spec = shape.specs[name]
        limit = sqlite_decimal_limit(spec.precision, spec.scale) if spec.type == "decimal" else None
        if limit is not None:
            found.append((i, -limit, limit))
            # under 10**(15 - scale) is adjusted() below 15 - scale; under 10**18 (< 2**63), below 18
            under.append((i, SQLITE_EXACT_DIGITS - spec.scale if spec.scale else SQLITE_WHOLE_DIGITS))
    return tuple(found), _fits_check(under)


def _fits_check(under: Sequence[tuple[int, int]]) -> Callable[[Row], bool] | None:
    """``row -> True`` when each of its values is under its column's limit (:func:`_sqlite_inexact`) by
    its exponent, as one generated expression (``r[i] is None or (r[i].__class__ is Decimal and
    r[i].adjusted() < digits)``, ``under`` giving (i, digits): a tenth of a µs a column, half the cost
    of comparing two Decimals); False sends the row to the full check (:meth:`BatchWriter._inexact_reason`):
    a value not of the mapping's Decimal, or a whole number of 19 digits, under 2**63 or not. None
    without such columns."""
    if not under:
        return None
    ns: dict[str, Any] = {"_D": Decimal}
    parts = []
    for i, digits in under:
        parts.append(f"(r[{i}] is None or (r[{i}].__class__ is _D and r[{i}].adjusted() < {digits}))")
    source = f"def _fits(r):\n    return {' and '.join(parts)}\n"
    exec(compiled_source(source, "<syncd sqlite decimal check>"), ns)  # noqa: S102 - syncd's own template
    function: Callable[[Row], bool] = ns["_fits"]
    return function


def _key_reader(positions: Sequence[int], norms: Sequence[Normaliser]) -> Callable[[Row], Row]:
    """``row -> its key values`` (those at ``positions``), each normalised per column type as the
    database holds it."""
    if len(positions) == 1:  # the common key: one column
        k0, norm0 = positions[0], norms[0]
        return lambda row: (norm0(row[k0]),)
    pairs = tuple(zip(norms, positions, strict=True))
    return lambda row: tuple(norm(row[i]) for norm, i in pairs)


def _row_normaliser(
    width: int, norm_at: Sequence[tuple[int, Normaliser]], *, soft: bool
) -> Callable[[Row], Row]:
    """``row -> normalised row`` (with ``False`` appended for a soft-delete column) as one generated
    tuple display: ``(r[0], _n1(r[1]), …)``. Every insert of a first load goes through it; the
    loop it replaces (copy, normalise in place, convert back) was a tenth of the run process's
    Python time. Only the template is source text; the normalisers are bound as globals."""
    ns: dict[str, Any] = {}
    parts = [f"r[{i}]" for i in range(width)]
    for i, norm in norm_at:
        ns[f"_n{i}"] = norm
        parts[i] = f"_n{i}(r[{i}])"
    if soft:
        parts.append("False")
    source = f"def _normalised(r):\n    return ({', '.join(parts)},)\n"
    exec(compiled_source(source, "<syncd row normaliser>"), ns)  # noqa: S102 - syncd's own template
    function: Callable[[Row], Row] = ns["_normalised"]
    return function


def _values_json(columns: Sequence[str]) -> Callable[[Row], str]:
    """``values -> json_text({column: value, …})`` with the dict built by one generated dict
    display (a change-feed entry of every insert). The column names are bound as globals."""
    ns: dict[str, Any] = {"_json_text": json_text}
    parts = []
    for i, name in enumerate(columns):
        ns[f"_k{i}"] = name
        parts.append(f"_k{i}: v[{i}]")
    source = f"def _values(v):\n    return _json_text({{{', '.join(parts)}}})\n"
    exec(compiled_source(source, "<syncd change values>"), ns)  # noqa: S102 - syncd's own template
    function: Callable[[Row], str] = ns["_values"]
    return function


def _one_of(expr: Any, values: list[Any], array: Any | None) -> Any:
    """``expr IN values``, or with a PostgreSQL ``array`` type ``expr = ANY(:values)``: one parameter
    and one cached statement instead of an IN list of a thousand to parse and plan every batch."""
    if array is not None:
        return expr == sa.any_(sa.bindparam(None, values, type_=array))
    return expr.in_(values)


def _quarantine_upsert(engine: sa.Engine, q: sa.Table) -> Any:
    """The quarantine's upsert: a new entry, or the stored one of the same raw hash updated."""
    return upsert_statement(
        engine,
        q,
        ("dataset", "raw_hash"),
        # `times` first: on MariaDB later assignments see the new run_id. No bind parameters
        # here: PyMySQL's executemany cannot bind in the ON DUPLICATE KEY UPDATE clause.
        lambda new: [
            (
                "times",
                sa.case((q.c.run_id == new.run_id, q.c.times), else_=q.c.times + sa.literal_column("1")),
            ),
            ("last_seen", new.last_seen),
            ("reason", new.reason),
            ("record_key", new.record_key),
            ("raw", new.raw),
            ("run_id", new.run_id),
            ("row_key", new.row_key),
            ("protected", new.protected),
        ],
    )
