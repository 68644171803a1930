"""Quarantine: list and show quarantined records, and replay them after the YAML is fixed.

A record that could not be mapped is kept in the ``quarantine`` table with its raw payload and
the reason (DESIGN §4.6). The payload is stored **redacted**: source fields that feed masked or
hashed columns are masked/hashed before storage, so those values cannot be restored; a record
whose only fault was in such a field stays quarantined (fix it upstream and let the next run
fetch it again).

:func:`replay_quarantine` re-maps every quarantined record of a dataset with the current
configuration. Records that now map are written through :meth:`BatchWriter.write` (change
tracked, atomic per batch, recorded as a run with trigger ``replay`` for the audit trail) and
their entries are deleted; the others stay with their new reason. Replaying twice is harmless:
a written row has the same hash the second time, so it makes no change entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from syncd.changes import raw_hash
from syncd.config.model import AppConfig, DatasetConfig
from syncd.errors import RecordError, TargetError
from syncd.mapping import CompiledMapping, compile_mapping
from syncd.mapping.records import RecordSorter, delete_flag, storable
from syncd.runner import RunLock, check_authorization
from syncd.targets import BatchWriter, QuarantineItem, RunCounts, RunInfo, StateStore, write_engine
from syncd.targets.dialects import chunked

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


def _pages(store: StateStore, dataset: str, size: int) -> list[list[tuple[str, dict[str, Any], str]]]:
    """The dataset's entries as (raw_hash, raw, reason) pages, read once before anything is written."""
    import json

    q = store.tables.quarantine
    query = sa.select(q.c.raw_hash, q.c.raw, q.c.reason).where(q.c.dataset == dataset).order_by(q.c.raw_hash)
    with store.engine.connect() as conn:
        entries = [(str(h), json.loads(raw), reason) for h, raw, reason in conn.execute(query)]
    return [list(part) for part in chunked(entries, size)]


def replay_quarantine(
    app: AppConfig,
    dataset: DatasetConfig,
    store: StateStore,
    *,
    now: datetime | None = None,
    lock: RunLock | None = None,
) -> ReplayResult:
    """Re-map and write the quarantined records of ``dataset`` (see the module docstring).

    Raises AuthorizationError when the dataset's authorization does not allow writing today, and
    RunLockLost (the replay recorded as failed) when ``lock``, the dataset's run lock, is lost
    before a page is written.
    """
    now = now or datetime.now(UTC)
    from zoneinfo import ZoneInfo

    check_authorization(dataset, now.astimezone(ZoneInfo(app.timezone)).date())
    store.ensure_schema()
    mapping = compile_mapping(dataset, app.code_tables)
    writer = store.writer(dataset, mapping)
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
    sorter = RecordSorter(dataset, mapping)  # the upstream key of a record that still fails
    counts = RunCounts()
    store.begin_run(info)
    error: str | None = None
    try:
        for page in _pages(store, dataset.name, dataset.batch_size or app.defaults.batch_size):
            if lock is not None:
                lock.check()
            _replay_page(
                store, writer=writer, mapping=mapping, is_deleted=is_deleted, page=page,
                result=result, counts=counts, sorter=sorter,
            )
    except Exception as exc:
        error = str(exc)
        raise
    finally:
        status = "success" if error is None else "failed"
        store.finish_run(info.run_id, dataset.name, status=status, counts=counts, error=error, watermark=None)
    return result


def _replay_page(
    store: StateStore,
    *,
    writer: BatchWriter,
    mapping: CompiledMapping,
    is_deleted: Callable[[dict[str, Any]], bool] | None,
    page: list[tuple[str, dict[str, Any], str]],
    result: ReplayResult,
    counts: RunCounts,
    sorter: RecordSorter,
) -> None:
    rows: list[Row] = []
    deletes: list[Row] = []
    failing: list[QuarantineItem] = []
    landed: list[str] = []
    for digest, raw, stored_reason in page:
        result.examined += 1  # not counted as fetched: nothing was received from upstream
        try:
            row = mapping(raw)
        except RecordError as exc:
            reason = str(exc)
            result.reasons[reason] = result.reasons.get(reason, 0) + 1
            result.still_failing += 1
            if raw_hash(raw) == digest and storable(reason) == stored_reason:
                continue  # the entry stands as it is: not seen again upstream, so its count stays
            # the stored raw is already redacted: its hash is the entry's own, so this updates the
            # reason; its key is read from it as the run read it (the entry keeps its key)
            key = storable(sorter.record_key(raw))
            failing.append(QuarantineItem(raw=raw, reason=reason, record_key=key))
            if raw_hash(raw) != digest:
                landed.append(digest)  # an entry stored under an older hashing: replaced by the new one
            continue
        if is_deleted is not None and is_deleted(raw):
            deletes.append(mapping.key_of(row))
        else:
            rows.append(row)
        landed.append(digest)
    batch = writer.write(result.run_id, rows, deletes, failing)
    # what the replay wrote; its still-failing records are no new quarantine entries
    counts.inserted += batch.inserted
    counts.updated += batch.updated
    counts.deleted += batch.deleted
    counts.unchanged += batch.unchanged
    result.inserted += batch.inserted
    result.updated += batch.updated
    result.deleted += batch.deleted
    result.unchanged += batch.unchanged
    result.still_failing += batch.quarantined - len(failing)  # rows the writer refused (null key …)
    _forget(store, result.dataset, landed)


def _forget(store: StateStore, dataset: str, hashes: list[str]) -> None:
    q = store.tables.quarantine
    try:
        with write_engine(store.engine).begin() as conn:
            for part in chunked(hashes, 500):
                conn.execute(sa.delete(q).where(q.c.dataset == dataset, q.c.raw_hash.in_(list(part))))
    except sa.exc.SQLAlchemyError as exc:
        raise TargetError(f"removing replayed quarantine entries of dataset {dataset} failed: {exc}") from exc
