"""Quarantine: list and show quarantined records, and replay them after the YAML is fixed.

A record that could not be mapped is kept in the ``quarantine`` table with its raw payload and
the reason (DESIGN §4.6). The payload is stored **redacted**: source fields that feed masked or
hashed columns are masked/hashed before storage, so those values cannot be restored. Beside it
the entry keeps what its masked/hashed columns computed from the clear record
(:meth:`CompiledMapping.protect`), and the key of the row it stands for (``row_key``).

An entry stands for the latest upstream version of its key only until that key is handled again:
the writer removes it when a later record of the key is written, found unchanged, deleted or
quarantined (:mod:`syncd.targets.writer`), and a complete snapshot read removes the entries of
keys it did not see (:mod:`syncd.targets.snapshot`). So what replay finds is never older than what
the target holds.

:func:`replay_quarantine` re-maps every quarantined record of a dataset with the current
configuration (:func:`~syncd.mapping.compiler.compile_replay`: masked/hashed columns go on from
their stored values, so a hashed key comes out as a sync writes it). Records that now map are
written through :meth:`BatchWriter.write` (change tracked, atomic per batch, recorded as a run with
trigger ``replay`` for the audit trail) and their entries are deleted; the others stay with their
new reason. Entries are replayed oldest first, and of several entries of one key only the newest
(older ones are superseded, and removed); an entry stored under an older hashing whose record is
also stored under its hash now is a copy of that entry: the entries of one record first share
what they hold (row key, stored masked/hashed values), then the one that maps (else whose key is
known, else the one under the hash) stands and the others are superseded too; the one that stands
is stored with what it was given (under its hash) in the transaction that removes the others,
before any page is written, so a replay stopped later loses nothing the removed copies held. An entry stored
without ``row_key`` (by an older syncd, or its key columns could not be mapped) is also superseded
when the change feed shows a write of its key after it was last seen; and it is not replayed at
all once the feed may have lost such a write: when the dataset's feed was pruned (``syncd changes
prune``, ``changes.retention_days``) up to entries written at or after the entry was last seen
(:meth:`FeedPruner.pruned`), it stays, its ``last_seen`` untouched, with a reason that tells the
operator to delete it and backfill with ``syncd sync DATASET --full``. Replaying twice is harmless:
a written row has the same hash the second time, so it makes no change entry.

A replay receives nothing from upstream, so an entry that still fails is not *seen* again: replay
may give it its new reason (and the row key its key columns now map to), but keeps its
``first_seen``, ``last_seen``, ``times`` and ``run_id``. ``last_seen`` is what the checks above start
from: an entry without a row key rewritten as seen at the replay would have the change feed
checked only from then, and the next replay would miss a write of its key (or a prune of the
feed) in between and write the older record over the newer row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from syncd.changes import raw_hash
from syncd.changes.hashing import json_text
from syncd.changes.keys import ROW_KEY_LENGTH
from syncd.config.model import AppConfig, DatasetConfig
from syncd.errors import RecordError, TargetError
from syncd.mapping.compiler import ReplayMapping, compile_replay
from syncd.mapping.records import RecordSorter, delete_flag, storable
from syncd.runner import RunLock, check_authorization
from syncd.targets import BatchWriter, RunCounts, RunInfo, StateStore, write_engine
from syncd.targets.dialects import chunked
from syncd.targets.keydef import check_key_definition
from syncd.targets.prune import FeedPruner

__all__ = ["ReplayResult", "find_entry", "list_entries", "replay_quarantine"]

Row = tuple[Any, ...]


@dataclass
class ReplayResult:
    """What a replay did."""

    dataset: str
    run_id: str
    examined: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    still_failing: int = 0
    superseded: int = 0  # entries removed unreplayed: a later record of their key was handled, or a copy
    unverified: int = 0  # entries kept unreplayed (also still_failing): no row key, feed pruned past them
    reasons: dict[str, int] = field(default_factory=dict)  # new reason → how many


def list_entries(store: StateStore, dataset: str, limit: int = 100) -> list[dict[str, Any]]:
    """Quarantined records of ``dataset``, most recently seen first (``raw`` decoded)."""
    return store.quarantined(dataset, limit=limit)


def find_entry(store: StateStore, dataset: str, hash_prefix: str) -> list[dict[str, Any]]:
    """Entries whose raw hash starts with ``hash_prefix`` (at most a few; ``raw`` decoded); a
    database error (no quarantine table yet, say) is a TargetError with what was being read."""
    prefix = "".join(ch for ch in hash_prefix.lower() if ch in "0123456789abcdef")
    if not prefix:
        return []
    return store.quarantined_by_hash(dataset, prefix)


@dataclass(slots=True)
class _Entry:
    """One quarantine entry as replay reads it, and what the current mapping makes of it."""

    digest: str
    current: str  # its raw hash now: ``digest`` unless it was stored under an older hashing
    raw: dict[str, Any]
    reason: str
    row_key: str | None
    protected: dict[str, Any] | None
    first_seen: datetime
    last_seen: datetime
    times: int
    run_id: str
    row: Row | None = None
    error: str | None = None
    key: str | None = None  # the row key it stands for, when known
    carried: bool = False  # given values its record's other entries held (:func:`_share`)
    deleted: bool = False  # flagged deleted upstream: ``row`` is its key values alone (a tombstone)


def _entries(store: StateStore, dataset: str) -> list[_Entry]:
    """The dataset's entries, oldest first, read once before anything is written."""
    q = store.tables.quarantine
    query = (
        sa.select(
            q.c.raw_hash, q.c.raw, q.c.reason, q.c.row_key, q.c.protected,
            q.c.first_seen, q.c.last_seen, q.c.times, q.c.run_id,
        )
        .where(q.c.dataset == dataset)
        .order_by(q.c.last_seen, q.c.raw_hash)
    )
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"reading the quarantine of dataset {dataset} failed: {exc}") from exc
    entries: list[_Entry] = []
    for h, raw, reason, key, prot, first, last, times, run_id in rows:
        record = json.loads(raw)
        entries.append(
            _Entry(
                str(h), raw_hash(record), record, reason, key, None if prot is None else json.loads(prot),
                first, last, int(times), str(run_id),
            )
        )
    return entries


def replay_quarantine(
    app: AppConfig,
    dataset: DatasetConfig,
    store: StateStore,
    *,
    now: datetime | None = None,
    lock: RunLock | None = None,
) -> ReplayResult:
    """Re-map and write the quarantined records of ``dataset`` (see the module docstring).

    Raises AuthorizationError when the dataset's authorization does not allow writing today,
    KeyDefinitionChanged (:mod:`syncd.targets.keydef`) when its key is made differently from when
    its rows were synced, and
    RunLockLost (the replay recorded as failed) when ``lock``, the dataset's run lock, is lost
    before a page is written.
    """
    now = now or datetime.now(UTC)
    today = now.astimezone(ZoneInfo(app.timezone)).date()
    check_authorization(dataset, today)
    store.ensure_schema()
    check_key_definition(store, dataset, app.code_tables)  # KeyDefinitionChanged: nothing replayed
    # as a sync maps: the configured zone's date, the existing table's narrower columns
    replay = compile_replay(dataset, app.code_tables, today=today, limits=store.column_limits(dataset))
    writer = store.writer(dataset, replay.mapping)
    is_deleted = delete_flag(dataset)
    auth = dataset.authorization
    info = RunInfo.create(
        dataset.name,
        approval_code=auth.approval_code,
        purpose=auth.purpose,
        trigger="replay",
        watermark_before=store.get_watermark(dataset.name),  # a replay leaves it where it is
    )
    result = ReplayResult(dataset=dataset.name, run_id=info.run_id)
    sorter = RecordSorter(dataset, replay.mapping)  # the upstream key of a record that still fails
    counts = RunCounts()
    store.begin_run(info)
    error: str | None = None
    try:
        entries = _entries(store, dataset.name)
        result.examined = len(entries)  # not counted as fetched: nothing was received from upstream
        for entry in entries:
            entry.deleted = is_deleted is not None and is_deleted(entry.raw)
            _map_entry(entry, replay, writer)
        stale = _copies(entries, replay, writer)
        copied = {id(entry) for entry in stale}
        stale += _superseded(store, dataset.name, [entry for entry in entries if id(entry) not in copied])
        result.superseded = len(stale)
        if lock is not None:
            lock.check(force=True)
        gone = {id(entry) for entry in stale}
        left = [entry for entry in entries if id(entry) not in gone]
        _forget(store, dataset.name, stale, [entry for entry in left if entry.carried])
        held = _unverifiable(app, store, dataset.name, left, result)
        if held:
            gone = {id(entry) for entry in held}
            left = [entry for entry in left if id(entry) not in gone]
        for page in chunked(left, dataset.batch_size or app.defaults.batch_size):
            if lock is not None:
                lock.check()
            _replay_page(
                store, writer=writer, page=list(page), result=result,
                counts=counts, sorter=sorter,
            )
    except BaseException as exc:  # Ctrl-C too: a replay stopped mid-way is no success (the audit trail)
        error = str(exc) or type(exc).__name__
        raise
    finally:
        status = "success" if error is None else "failed"
        store.finish_run(info.run_id, dataset.name, status=status, counts=counts, error=error, watermark=None)
    return result


def _map_entry(entry: _Entry, replay: ReplayMapping, writer: BatchWriter) -> None:
    """Map the entry with the current configuration; note its row (or error) and its key. A
    deletion maps its key columns alone, as a sync does (:meth:`RecordSorter.sort`): a tombstone
    quarantined by an older syncd for its other, empty, fields is deleted now."""
    entry.row = entry.error = entry.key = None
    try:
        if entry.deleted:
            entry.row = replay.key_of_entry(entry.raw, entry.protected)
        else:
            entry.row = replay(entry.raw, entry.protected)
    except RecordError as exc:
        entry.error = str(exc)
        entry.key = entry.row_key
        if entry.key is None:  # stored without one: maybe the current key columns map
            try:
                entry.key = writer.row_key(replay.key_of_entry(entry.raw, entry.protected))
            except RecordError:
                entry.key = None
        return
    entry.key = writer.row_key(entry.row if entry.deleted else replay.mapping.key_of(entry.row))


def _superseded(store: StateStore, dataset: str, entries: list[_Entry]) -> list[_Entry]:
    """The entries not to replay (copies already left out, see :func:`_copies`): of several
    entries of one key all but the newest, and entries stored without a row key whose key the
    change feed shows written after they were last seen."""
    newest: dict[str, _Entry] = {}
    for entry in entries:  # oldest first: the last of a key is its newest
        if entry.key is not None:
            newest[entry.key] = entry
    stale = [entry for entry in entries if entry.key is not None and newest[entry.key] is not entry]
    unkeyed = [entry for entry in newest.values() if entry.row_key is None]
    if unkeyed:
        written = _last_changes(store, dataset, unkeyed)
        stale += [entry for entry in unkeyed if entry.key in written and written[entry.key] > entry.last_seen]
    return stale


def _copies(entries: list[_Entry], replay: ReplayMapping, writer: BatchWriter) -> list[_Entry]:
    """Entries of a record that has another entry under the same raw hash now (one stored under
    an older hashing by an older syncd, the record quarantined again since): all but the most
    useful one, which replay then takes as the record's only entry. One record has one key, so
    they are entries of one key even when replay cannot key some of them; left, a copy moving to
    its hash would rewrite that entry's reason and row key, or come back as the entry of a record
    that just landed.

    An older syncd may have stored what replay needs (the row key, the stored value of a hashed
    key) with the copy only, the entry under the hash having been stored when the column failed
    before its hash: the entries first share what they hold (:func:`_share`), and the one kept is
    stored with it in the transaction that removes the others (:func:`_forget`), so removing one
    loses nothing, even when the replay stops before the kept one is written or settled. Kept is
    the one that maps now, else whose key is known, else the one under the current hash, else
    the newest; its own reason and sightings stand."""
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.current, []).append(entry)
    stale: set[int] = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        _share(group, replay, writer)
        ranked = sorted(  # ties: the later of the oldest-first order (the newest) first
            enumerate(group),
            key=lambda item: (
                item[1].row is not None,
                item[1].key is not None,
                item[1].digest == item[1].current,
                item[1].last_seen,
                item[0],
            ),
            reverse=True,
        )
        stale.update(id(entry) for _, entry in ranked[1:])
    return [entry for entry in entries if id(entry) in stale]


def _share(group: list[_Entry], replay: ReplayMapping, writer: BatchWriter) -> None:
    """Give each entry of one record (``group``, oldest first) what the others hold and it lacks:
    the stored values of the masked/hashed columns (the same redacted raw, so computed from the
    same clear record; the entry under the current hash, then the newest, preferred), an entry
    that did not map mapped again with them; and the row key, when the entries stored one and
    the entry's key is unknown or that one. An entry given something is ``carried``: stored with
    it in the transaction that removes its copies (:func:`_forget`), before any page is written."""
    preferred = sorted(
        enumerate(group), key=lambda item: (item[1].digest == item[1].current, item[0]), reverse=True
    )
    merged = replay.merge_protected([entry.protected for _, entry in preferred])
    for entry in group:
        if entry.row is None and (merged or None) != (entry.protected or None):
            entry.protected = merged
            entry.carried = True
            _map_entry(entry, replay, writer)
    stored = {entry.row_key for entry in group if entry.row_key is not None}
    if len(stored) != 1:
        return
    (key,) = stored
    for entry in group:  # one record, one key: no later write of it since that entry was seen
        if entry.row_key is None and entry.key in (None, key):
            entry.row_key = entry.key = key
            entry.carried = True


def _unverifiable(
    app: AppConfig, store: StateStore, dataset: str, entries: list[_Entry], result: ReplayResult
) -> list[_Entry]:
    """The entries without a row key that replay cannot check: the change feed was pruned up to
    entries written at or after they were last seen, so a later write of their key may be gone
    from it (:func:`_superseded` would miss it, and replay would write the older record over the
    newer row). They stay in the quarantine with a reason saying what to do; their ``last_seen``
    is left alone, so every later replay holds them back too. Counted in ``result``."""
    unkeyed = [entry for entry in entries if entry.row_key is None]
    if not unkeyed:
        return []
    mark = FeedPruner(store).pruned(dataset)
    if mark is None:
        return []
    held = [entry for entry in unkeyed if _utc(entry.last_seen) <= mark.upto_changed_at]
    if not held:
        return []
    q = store.tables.quarantine
    pruned = mark.upto_changed_at.astimezone(ZoneInfo(app.timezone))
    delete = f"DELETE FROM {q.name} WHERE dataset = '{dataset}' AND row_key IS NULL"  # noqa: S608 - shown, not run
    reason = (
        f"not replayed: stored without its row key, and the change feed of {dataset} was pruned "
        f"(syncd changes prune, changes.retention_days) up to entries written {pruned:%Y-%m-%d %H:%M:%S} "
        f"({app.timezone}), after this record was last seen: replay cannot tell whether a later record of "
        "its key was written since, and could overwrite that with this older one. Delete the entry and "
        f"read the dataset again: {delete}, then `syncd sync {dataset} --full` (docs/cli.md, replay)"
    )
    digests = [entry.digest for entry in held]
    try:
        with write_engine(store.engine).begin() as conn:
            for part in chunked(digests, 500):
                conn.execute(
                    sa.update(q)
                    .where(q.c.dataset == dataset, q.c.raw_hash.in_(list(part)))
                    .values(reason=reason)
                )
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"updating quarantine entries of dataset {dataset} failed: {exc}") from exc
    result.unverified += len(held)
    result.still_failing += len(held)
    result.reasons[reason] = result.reasons.get(reason, 0) + len(held)
    return held


def _last_changes(store: StateStore, dataset: str, entries: Sequence[_Entry]) -> dict[str, datetime]:
    """Row key → its latest change entry's time, for the keys of ``entries`` changed since the
    oldest of them was last seen (the ``dataset, changed_at`` index bounds the read)."""
    ch = store.tables.changes
    since = min(entry.last_seen for entry in entries)
    keys = sorted({entry.key for entry in entries if entry.key is not None})
    found: dict[str, datetime] = {}
    try:
        with store.engine.connect() as conn:
            for part in chunked(keys, 500):
                query = (
                    sa.select(ch.c.row_key, sa.func.max(ch.c.changed_at))
                    .where(ch.c.dataset == dataset, ch.c.changed_at > since, ch.c.row_key.in_(list(part)))
                    .group_by(ch.c.row_key)
                )
                for key, at in conn.execute(query):
                    found[str(key)] = _utc(at)
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"reading the changes of dataset {dataset} failed: {exc}") from exc
    return found


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _replay_page(
    store: StateStore,
    *,
    writer: BatchWriter,
    page: list[_Entry],
    result: ReplayResult,
    counts: RunCounts,
    sorter: RecordSorter,
) -> None:
    rows: list[Row] = []
    deletes: list[Row] = []
    failing: list[dict[str, Any]] = []
    landed: list[str] = []
    for entry in page:
        digest, raw, row = entry.digest, entry.raw, entry.row
        if row is None:
            reason = entry.error or ""
            result.reasons[reason] = result.reasons.get(reason, 0) + 1
            result.still_failing += 1
            same = entry.current == digest
            keyed = entry.row_key is not None or entry.key is None  # nothing to add to its key
            if same and keyed and not entry.carried and storable(reason) == entry.reason:
                continue  # the entry stands as it is: not seen again upstream, so its count stays
            # the stored raw is already redacted: its hash is the entry's own, so this updates the
            # reason (and the key, when the entry had none); its upstream key is read from it as the
            # run read it, its masked/hashed values are kept (with those carried over from its
            # record's other entries), and so is when it was seen (no sighting)
            record_key = storable(sorter.record_key(raw))
            failing.append(
                {
                    "dataset": result.dataset,
                    "raw_hash": entry.current,
                    "run_id": entry.run_id,
                    "record_key": None if record_key is None else record_key[:ROW_KEY_LENGTH],
                    "raw": json_text(raw),
                    "reason": storable(reason) or "",
                    "first_seen": entry.first_seen,
                    "last_seen": entry.last_seen,
                    "times": entry.times,
                    "row_key": entry.key,
                    "protected": None if entry.protected is None else json_text(entry.protected),
                }
            )
            if not same:
                landed.append(digest)  # an entry stored under an older hashing: replaced by the new one
            continue
        if entry.deleted:
            deletes.append(row)
        else:
            rows.append(row)
        landed.append(digest)
    batch = writer.write(result.run_id, rows, deletes)
    # what the replay wrote; its still-failing records are no new quarantine entries
    counts.inserted += batch.inserted
    counts.updated += batch.updated
    counts.deleted += batch.deleted
    counts.unchanged += batch.unchanged
    result.inserted += batch.inserted
    result.updated += batch.updated
    result.deleted += batch.deleted
    result.unchanged += batch.unchanged
    result.still_failing += batch.quarantined  # rows the writer refused (null key …)
    _settle(store, result.dataset, failing, landed)


def _settle(store: StateStore, dataset: str, failing: list[dict[str, Any]], landed: list[str]) -> None:
    """In one transaction: remove the entries in ``landed`` and store the still-failing entries
    ``failing`` (quarantine rows) with their new reason, key and masked/hashed values, their
    sightings as they were. An entry stored under an older hashing comes back under its new hash
    (no entry holds that hash: :func:`_copies` superseded it otherwise)."""
    q = store.tables.quarantine
    by_hash = {entry["raw_hash"]: entry for entry in failing}
    update = (
        sa.update(q)
        .where(q.c.dataset == sa.bindparam("b_dataset"), q.c.raw_hash == sa.bindparam("b_raw_hash"))
        .values(
            reason=sa.bindparam("b_reason"),
            record_key=sa.bindparam("b_record_key"),
            row_key=sa.bindparam("b_row_key"),
            protected=sa.bindparam("b_protected"),
        )
    )
    try:
        with write_engine(store.engine).begin() as conn:
            for part in chunked(landed, 500):
                conn.execute(sa.delete(q).where(q.c.dataset == dataset, q.c.raw_hash.in_(list(part))))
            stored: set[str] = set()
            for part in chunked(list(by_hash), 500):
                query = sa.select(q.c.raw_hash).where(q.c.dataset == dataset, q.c.raw_hash.in_(list(part)))
                stored.update(str(h) for (h,) in conn.execute(query))
            changed = [{f"b_{k}": v for k, v in entry.items()} for h, entry in by_hash.items() if h in stored]
            if changed:
                conn.execute(update, changed)
            new = [entry for h, entry in by_hash.items() if h not in stored]
            if new:
                conn.execute(sa.insert(q), new)
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"updating quarantine entries of dataset {dataset} failed: {exc}") from exc


def _forget(store: StateStore, dataset: str, stale: list[_Entry], carried: list[_Entry]) -> None:
    """In one transaction: remove the ``stale`` entries and store on each ``carried`` entry (the one
    of its record that stands, :func:`_copies`) what it was given by the removed copies (its row key,
    its masked/hashed values), moving it to its current raw hash when stored under an older one.
    Done before any page is written: a replay stopped later (run lock lost, a failed batch, Ctrl-C,
    a crash between a page's write and :func:`_settle`) leaves an entry that holds all its record's
    removed copies held, so the next replay lands it, and the writer, given its row key, removes it
    when it writes the row. The carried entries are then as stored (``carried`` reset)."""
    q = store.tables.quarantine
    try:
        with write_engine(store.engine).begin() as conn:
            for part in chunked([entry.digest for entry in stale], 500):
                conn.execute(sa.delete(q).where(q.c.dataset == dataset, q.c.raw_hash.in_(list(part))))
            for entry in carried:  # no other entry holds its current hash: its copies are gone
                conn.execute(
                    sa.update(q)
                    .where(q.c.dataset == dataset, q.c.raw_hash == entry.digest)
                    .values(
                        raw_hash=entry.current,
                        row_key=entry.row_key,
                        protected=None if entry.protected is None else json_text(entry.protected),
                    )
                )
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"updating quarantine entries of dataset {dataset} failed: {exc}") from exc
    for entry in carried:
        entry.digest = entry.current
        entry.carried = False
