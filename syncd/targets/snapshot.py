"""Full-snapshot delete detection (全量快照删除检测), guarded.

A dataset with ``target.snapshot_delete`` reads its whole upstream each run. Keys that such a
run did not see were deleted upstream. Memory stays bounded at any table size (DESIGN §4.5):

1. the run's seen keys go into a temporary table of its own (``{prefix}seen_keys``, one row key
   per row), on a database connection the run holds: the keys of a batch once it committed, or of
   records skipped as unchanged once their stored digests matched, collected and bulk-inserted
   :data:`SEEN_BUFFER` at a time (COPY on PostgreSQL), indexed once the read is done. At most
   ``SEEN_BUFFER`` keys are held in Python, and ``row_state`` is not written for keys that did not
   change (earlier versions marked ``row_state.seen_run`` on every key of every run: an UPDATE of
   the whole dataset's state each run, which took as long as the rest of a snapshot re-sync and
   left a dead row version of each key on PostgreSQL). The table is dropped when the run ends,
   whatever the outcome (:meth:`SnapshotDeletes.close`); a crash ends it with the session;
2. when the run read everything (``stats.complete``), two counts find how many live keys of
   ``row_state`` are not among the seen keys; over ``max_ratio`` of the live rows the run fails
   with a :class:`GuardError` and nothing is deleted (an empty or truncated upstream answer
   never wipes a table);
3. with ``missing_runs`` > 1, a key must be missing in that many consecutive complete runs: the
   streaks live in ``{prefix}snapshot_missing`` (only keys currently missing have a row);
4. the keys to delete are paged by ``row_key`` (keyset) and deleted through
   :meth:`BatchWriter.write` (hard, or soft per ``target.logical_delete``), so the change feed
   records each delete exactly once. A crash mid-delete converges: deleted keys have left
   ``row_state`` (or carry the deleted hash), and the next complete run deletes the rest;
5. the quarantine entries of keys this complete read did not see are removed (after the guard):
   upstream no longer sends those records, so replaying one would bring back a record deleted
   upstream. Here only the keys without a live row (their first record failed); entries of keys
   with rows go with their rows' deletes (the writer removes the entries of the keys it deletes),
   after ``missing_runs`` misses when it is above 1. A read that saw no key at all removes none.

``syncd plan`` asks the same questions without writing (:meth:`SnapshotDeletes.preview`): its
seen keys go into the same kind of temporary table, which no other session sees and which ends
with the plan, and it only reads the streaks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.changes import DELETED_HASH
from syncd.changes.keys import ROW_KEY_LENGTH
from syncd.config.model import ColumnConfig, DatasetConfig, SnapshotDeleteConfig
from syncd.errors import GuardError, TargetError
from syncd.targets.dialects import BulkWriter, chunked, upsert_statement
from syncd.targets.engine import describe_url, write_engine
from syncd.targets.records import BatchCounts
from syncd.targets.schema import (
    MYSQL_TABLE_OPTIONS,
    MappingShape,
    create_tables,
    key_column_names,
    warn_inexact_keys,
)
from syncd.targets.sqltypes import exact_text
from syncd.targets.state import StateStore
from syncd.targets.verify import key_columns
from syncd.targets.writer import BatchWriter, failure_reason

__all__ = ["SnapshotDeletes", "SnapshotPreview", "missing_table", "seen_table"]

log = structlog.get_logger(__name__)

SEEN_BUFFER = 20_000
"""Seen keys collected before they are inserted into the seen-key table in one bulk insert (at
most ≈ 2 MB of key texts): one transaction, and on PostgreSQL one COPY, per twenty batches."""


def missing_table(metadata: sa.MetaData, prefix: str = "syncd_") -> sa.Table:
    """``{prefix}snapshot_missing``: (dataset, row_key) → consecutive complete runs missing."""
    return sa.Table(
        f"{prefix}snapshot_missing",
        metadata,
        sa.Column("dataset", exact_text(64), primary_key=True),
        sa.Column("row_key", exact_text(ROW_KEY_LENGTH), primary_key=True),
        sa.Column("streak", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )


def seen_table(metadata: sa.MetaData, prefix: str = "syncd_", *, collation: str | None = None) -> sa.Table:
    """``{prefix}seen_keys``: the row keys one run saw (a temporary table, one per session).

    Not unique: a key read twice (upstream sent it twice, or the run read the window again) is
    inserted twice, which a plain bulk insert does faster than a conflict check; the questions
    asked of it ("is this key among them?") do not care. ``collation`` (MariaDB/MySQL): that of
    ``row_state.row_key`` in the database, which its keys are compared with (MariaDB refuses to
    compare columns of two collations; a table an earlier version made has utf8mb4_bin)."""
    return sa.Table(
        f"{prefix}seen_keys",
        metadata,
        sa.Column("row_key", exact_text(ROW_KEY_LENGTH, mysql_collation=collation), nullable=False),
        prefixes=["TEMPORARY"],
        **MYSQL_TABLE_OPTIONS,
    )


def _key_parser(spec: ColumnConfig) -> Callable[[Any], Any]:
    """The inverse of ``key_text`` for one key column: row-key text part → the column's value."""
    kind = spec.type
    if kind == "int":
        return int
    if kind == "decimal":
        return lambda v: Decimal(str(v))
    if kind == "date":
        return lambda v: date.fromisoformat(str(v))
    if kind == "datetime":
        return lambda v: datetime.fromisoformat(str(v))
    if kind == "bool":
        return lambda v: v if isinstance(v, bool) else str(v) == "True"
    return str


@dataclass(frozen=True, slots=True)
class SnapshotPreview:
    """What :meth:`SnapshotDeletes.apply` would do after this read (``syncd plan``)."""

    live: int  # live keys in row_state
    missing: int  # of them not seen by this read
    due: int  # of them missing in ``missing_runs`` complete reads in a row: would be deleted
    keys: list[str]  # the first due keys by row_key (as row_state holds them: hashed keys hashed)
    refused: str | None  # the guard's refusal (a sync would fail and delete nothing), or None


class SnapshotDeletes:
    """Seen-key marking and guarded deletes for one run of one snapshot dataset.

    :meth:`prepare` opens the run's own connection and its seen-key table; :meth:`close` ends
    both (always call it: the runner does, in a ``finally``)."""

    def __init__(
        self,
        store: StateStore,
        dataset: DatasetConfig,
        shape: MappingShape,
        run_id: str,
        config: SnapshotDeleteConfig,
    ) -> None:
        self._store = store
        self._dataset = dataset.name
        self._run_id = run_id
        self._cfg = config
        self._rs = store.tables.row_state
        self._missing = missing_table(sa.MetaData(), store.prefix)
        self._seen = seen_table(sa.MetaData(), store.prefix, collation=store.row_key_collation)
        self._insert_seen = BulkWriter(store.engine, self._seen, ("row_key",))
        self._conn: sa.Connection | None = None  # holds the seen-key table (prepare … close)
        self._buffered: list[tuple[str]] = []  # seen keys not inserted yet (SEEN_BUFFER)
        self._seen_count = 0  # keys marked seen by this run (repeats counted)
        self._indexed = False
        self._writes = write_engine(store.engine)
        keys = key_column_names(shape)
        specs = [shape.specs[k] for k in keys]
        self._parsers = tuple(_key_parser(s) for s in specs)

    # ------------------------------------------------------------------ setup

    def prepare(self, *, dry_run: bool = False) -> None:
        """Create the streak table (not for a ``dry_run``: a plan only reads it, and reports inexact
        key columns itself), open the run's connection and its (empty) seen-key table."""
        if not dry_run:
            create_tables(self._store.engine, [self._missing])
            if self._cfg.missing_runs > 1:  # the streak table is used (and its keys matter) only then
                try:
                    keys = key_columns(self._store.engine, self._missing.name, ["row_key"], whole_table=True)
                except sa.exc.SQLAlchemyError as exc:
                    why = f"dataset {self._dataset}: reading {self._missing.name} failed: {exc}"
                    raise TargetError(why) from exc
                warn_inexact_keys(self._store.engine, keys.values(), dataset=self._dataset)
        try:
            conn = self._store.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            why = f"dataset {self._dataset}: connecting for snapshot delete detection failed: {exc}"
            raise TargetError(why) from exc
        self._conn = conn
        try:
            with conn.begin():
                # a pooled connection holds none (close() drops it, or discards the connection),
                # but one left behind would be found and replaced, not doubled
                self._seen.drop(conn, checkfirst=True)
                self._seen.create(conn)
        except sa.exc.SQLAlchemyError as exc:
            self.close()
            raise TargetError(f"dataset {self._dataset}: creating the seen-key table failed: {exc}") from exc

    def close(self) -> None:
        """Drop the seen-key table and give the run's connection back (idempotent). Where the drop
        fails (a connection the database closed), the connection is discarded instead of pooled,
        and the table ends with its session. Never discarded otherwise: an in-memory SQLite
        database lives in its one connection."""
        conn, self._conn = self._conn, None
        self._buffered = []
        if conn is None:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                self._seen.drop(conn, checkfirst=True)
        except sa.exc.SQLAlchemyError as exc:
            error = str(exc)[:200]
            log.warning("snapshot.seen_keys_dropped_with_session", dataset=self._dataset, error=error)
            conn.invalidate()
        finally:
            conn.close()

    def _session(self) -> sa.Connection:
        if self._conn is None:
            raise TargetError(f"dataset {self._dataset}: snapshot delete detection used before prepare()")
        return self._conn

    # ------------------------------------------------------------------ per batch

    def mark_seen(self, row_keys: Sequence[str]) -> None:
        """Record that this run saw ``row_keys`` (after their batch committed)."""
        self._seen_count += len(row_keys)
        self._buffered.extend((key,) for key in row_keys)
        if len(self._buffered) >= SEEN_BUFFER:
            self._flush_seen()

    def _flush_seen(self) -> None:
        buffered, self._buffered = self._buffered, []
        if not buffered:
            return
        conn = self._session()
        try:
            with conn.begin():
                self._insert_seen.write(conn, buffered)
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"dataset {self._dataset}: marking seen keys failed: {exc}") from exc

    # ------------------------------------------------------------------ end of a complete run

    def _alive(self) -> sa.ColumnElement[bool]:
        rs = self._rs
        return sa.and_(rs.c.dataset == self._dataset, rs.c.row_hash != DELETED_HASH)

    def _unseen(self) -> sa.ColumnElement[bool]:
        rs, seen = self._rs, self._seen
        seen_here = sa.select(seen.c.row_key).where(seen.c.row_key == rs.c.row_key).exists()
        return sa.and_(self._alive(), ~seen_here)

    def _count(self, conn: sa.Connection, where: sa.ColumnElement[bool]) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(self._rs).where(where)).scalar_one())

    def check(self) -> tuple[int, int]:
        """(missing, total) live keys; raise GuardError when too many would be deleted."""
        missing, total = self._missing_of_live()
        refused = self._refusal(missing, total)
        if refused is not None:
            raise GuardError(refused)
        return missing, total

    def _refusal(self, missing: int, total: int) -> str | None:
        if not missing or missing / total <= self._cfg.max_ratio:
            return None
        return (
            f"snapshot delete refused: {missing} of {total} rows ({missing / total:.1%}) were not in "
            f"this complete read, over the limit of {self._cfg.max_ratio:.1%} "
            "(target.snapshot_delete.max_ratio). Nothing was deleted. Check the upstream export "
            "(an empty or truncated answer?); if the deletions are real, raise max_ratio for one run"
        )

    def _missing_of_live(self) -> tuple[int, int]:
        """(missing, total) live keys, the seen keys all in and indexed."""
        self._flush_seen()
        conn = self._session()
        with conn.begin():
            if not self._indexed:  # built once all keys are in: faster than keeping it while inserting
                sa.Index(f"ix_{self._seen.name}", self._seen.c.row_key).create(conn)
                self._indexed = True
                if conn.dialect.name == "postgresql":
                    # autovacuum never analyses a temporary table: without statistics the planner
                    # may probe it by scanning it once per live key
                    name = conn.dialect.identifier_preparer.format_table(self._seen)
                    conn.exec_driver_sql(f"ANALYZE {name}")
            total = self._count(conn, self._alive())
            missing = self._count(conn, self._unseen())
        return missing, total

    def preview(self, samples: int) -> SnapshotPreview:
        """What :meth:`apply` would do now, reading only: the guard's verdict, how many keys it
        would delete (with ``missing_runs`` > 1: those whose stored streak this read completes)
        and the first ``samples`` of them. TargetError on a database error."""
        try:
            return self._preview(samples)
        except sa.exc.SQLAlchemyError as exc:
            where, ds = describe_url(self._store.engine.url), self._dataset
            doing = f"dataset {ds}: comparing the keys read with {self._rs.name} (snapshot_delete)"
            raise TargetError(f"{doing} in {where} failed: {failure_reason(exc)[:500]}") from exc

    def _preview(self, samples: int) -> SnapshotPreview:
        missing, live = self._missing_of_live()
        refused = self._refusal(missing, live)
        if refused is not None or not missing:
            return SnapshotPreview(live=live, missing=missing, due=0, keys=[], refused=refused)
        conn = self._session()
        rs, ms = self._rs, self._missing
        due_where = self._unseen()
        with conn.begin():
            if self._cfg.missing_runs > 1:
                if not sa.inspect(conn).has_table(ms.name):  # no run has counted a streak yet
                    return SnapshotPreview(live=live, missing=missing, due=0, keys=[], refused=None)
                streak = sa.select(ms.c.row_key).where(
                    ms.c.dataset == self._dataset, ms.c.row_key == self._as_streak_key(rs.c.row_key),
                    ms.c.streak >= self._cfg.missing_runs - 1,
                )
                due_where = sa.and_(due_where, streak.exists())
                due = self._count(conn, due_where)
            else:
                due = missing
            first = sa.select(rs.c.row_key).where(due_where).order_by(rs.c.row_key).limit(max(0, samples))
            keys = [str(k) for k in conn.execute(first).scalars()] if samples > 0 and due else []
        return SnapshotPreview(live=live, missing=missing, due=due, keys=keys, refused=None)

    # MariaDB refuses to compare two columns of different collations ("Illegal mix of collations"),
    # and after an upgrade syncd's row key columns differ: a row_state an earlier version made keeps
    # utf8mb4_bin while a table created since (snapshot_missing) or a column added since
    # (quarantine.row_key) has the NO PAD collation, and an operator may convert one table and not
    # the other. The seen-key table takes row_state's collation when it is created. Where two key
    # columns meet, the outer query's is cast to the collation of the one it probes, whose index
    # then still serves the look-up (a cast column of the probed table loses it: every probe scans
    # the dataset's rows).

    def _as_row_state(self, key: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``key`` (an outer row key column of another of syncd's tables) in the collation of
        ``row_state.row_key`` and the seen-key table (MariaDB/MySQL; unchanged elsewhere)."""
        collation = self._store.row_key_collation
        return key if collation is None else key.collate(collation)

    def _as_streak_key(self, key: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``key`` (``row_state.row_key``) in the collation of ``snapshot_missing.row_key`` where the
        two differ (MariaDB/MySQL: one catalogue query; unchanged elsewhere). The streaks' own
        collation is the one a sync counts them in (``_update_streaks`` looks keys up in it)."""
        found = key_columns(self._store.engine, self._missing.name, ["row_key"], whole_table=True)
        streak = found["row_key"].collation if "row_key" in found else None
        return key if streak is None or streak == self._store.row_key_collation else key.collate(streak)

    def _pages(self, query: sa.Select[Any], column: sa.ColumnElement[Any], size: int) -> Iterable[list[str]]:
        """Row keys of ``query`` in keyset pages (never OFFSET: rows leave while we page), read on
        the run's connection (the query may ask for the seen keys)."""
        conn = self._session()
        last: str | None = None
        while True:
            page_query = query.order_by(column).limit(size)
            if last is not None:
                page_query = page_query.where(column > last)
            with conn.begin():
                keys = [str(k) for k in conn.execute(page_query).scalars()]
            if not keys:
                return
            yield keys
            last = keys[-1]

    def _update_streaks(self, size: int) -> None:
        ms = self._missing
        mine = ms.c.dataset == self._dataset
        upsert = upsert_statement(self._store.engine, ms, ("dataset", "row_key"), ["streak", "run_id"])
        unseen = sa.select(self._rs.c.row_key).where(self._unseen())
        for keys in self._pages(unseen, self._rs.c.row_key, size):
            with self._writes.begin() as conn:
                query = sa.select(ms.c.row_key, ms.c.streak).where(mine, ms.c.row_key.in_(keys))
                old: dict[str, int] = {str(k): int(n) for k, n in conn.execute(query)}
                run_id, ds = self._run_id, self._dataset
                rows = [
                    {"dataset": ds, "row_key": k, "streak": old.get(k, 0) + 1, "run_id": run_id} for k in keys
                ]
                conn.execute(upsert, rows)
        with self._writes.begin() as conn:  # seen again, or gone: the streak is over
            conn.execute(sa.delete(ms).where(mine, ms.c.run_id != self._run_id))

    def _forget_unseen_entries(self) -> None:
        """Remove the quarantine entries whose key this complete read did not see (see step 5):
        only those of keys without a live row — an entry of a key with a row goes when the writer
        deletes the row (at once, or after ``missing_runs`` misses: until then the row stands and
        upstream may send the key again) — and nothing after a read that saw no key at all (an empty
        answer: the delete guard cannot judge a dataset whose every record is quarantined)."""
        if self._seen_count == 0:
            return
        q, rs = self._store.tables.quarantine, self._rs
        seen = self._seen
        entry_key = self._as_row_state(q.c.row_key)
        seen_here = sa.select(seen.c.row_key).where(seen.c.row_key == entry_key).exists()
        has_row = sa.select(rs.c.row_key).where(self._alive(), rs.c.row_key == entry_key).exists()
        mine = sa.and_(q.c.dataset == self._dataset, q.c.row_key.is_not(None))
        unseen = sa.select(q.c.row_key).where(mine, ~seen_here, ~has_row)
        conn = self._session()
        with conn.begin():  # read where the seen-key table is; deleted in a write transaction
            keys = sorted({str(k) for k in conn.execute(unseen).scalars()})
        if not keys:
            return
        removed = 0
        with self._writes.begin() as write:
            for part in chunked(keys, 500):
                gone = sa.delete(q).where(q.c.dataset == self._dataset, q.c.row_key.in_(part))
                removed += max(write.execute(gone).rowcount, 0)
        log.info("quarantine.superseded", dataset=self._dataset, entries=removed, reason="not read upstream")

    def _key_values(self, row_key: str) -> tuple[Any, ...]:
        parts = [row_key] if len(self._parsers) == 1 else json.loads(row_key)
        return tuple(parse(p) for parse, p in zip(self._parsers, parts, strict=True))

    def apply(
        self, writer: BatchWriter, batch_size: int, *, before_write: Callable[[], None] | None = None
    ) -> BatchCounts:
        """Guard, then delete the keys missing long enough; returns the writer's counts.
        ``before_write`` is called before each batch of deletes (the runner's run-lock check: it
        raises to stop them)."""
        total = BatchCounts()
        try:
            missing, rows = self.check()
            self._forget_unseen_entries()
            ms = self._missing
            if self._cfg.missing_runs > 1:
                if missing:
                    self._update_streaks(batch_size)
                else:
                    with self._writes.begin() as conn:
                        conn.execute(sa.delete(ms).where(ms.c.dataset == self._dataset))
            if not missing:
                return total
            if self._cfg.missing_runs > 1:
                due = sa.select(ms.c.row_key).where(
                    ms.c.dataset == self._dataset,
                    ms.c.run_id == self._run_id,
                    ms.c.streak >= self._cfg.missing_runs,
                )
                pages = self._pages(due, ms.c.row_key, batch_size)
            else:
                pages = self._pages(sa.select(self._rs.c.row_key).where(self._unseen()), self._rs.c.row_key,
                                    batch_size)
            for keys in pages:
                if before_write is not None:
                    before_write()
                counts = writer.write(self._run_id, rows=(), deletes=[self._key_values(k) for k in keys])
                total.deleted += counts.deleted
                total.unchanged += counts.unchanged
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"dataset {self._dataset}: snapshot delete detection failed: {exc}") from exc
        log.info(
            "snapshot.deletes",
            dataset=self._dataset,
            missing=missing,
            live_rows=rows,
            deleted=total.deleted,
            missing_runs=self._cfg.missing_runs,
        )
        return total
