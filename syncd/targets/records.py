"""Plain records exchanged with the state store and the batch writer."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

__all__ = ["BatchCounts", "QuarantineItem", "ResetCounts", "RunCounts", "RunInfo", "default_node"]


def default_node() -> str:
    """``hostname:pid`` of this process, recorded with every run."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of one dataset, as recorded in the ``runs`` table when it starts."""

    run_id: str  # at most 32 characters; uuid4().hex
    dataset: str
    started_at: datetime  # UTC (a naive value is taken as UTC)
    approval_code: str | None = None  # 审批单号 under which the data is received
    purpose: str | None = None  # 用途 / power-matter code, for the audit trail
    node: str = ""  # hostname:pid
    trigger: str = "manual"  # "manual" or "schedule"
    watermark_before: str | None = None

    @classmethod
    def create(
        cls,
        dataset: str,
        *,
        approval_code: str | None = None,
        purpose: str | None = None,
        trigger: str = "manual",
        watermark_before: str | None = None,
    ) -> RunInfo:
        """A new run starting now, on this node, with a fresh run id."""
        return cls(
            run_id=uuid.uuid4().hex,
            dataset=dataset,
            started_at=datetime.now(UTC),
            approval_code=approval_code,
            purpose=purpose,
            node=default_node(),
            trigger=trigger,
            watermark_before=watermark_before,
        )


@dataclass(slots=True)
class BatchCounts:
    """What one batch did. ``unchanged`` includes superseded duplicates and ignored deletes, so
    the counts add up to ``len(rows) + len(deletes) + len(quarantined)``."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    quarantined: int = 0

    def __iadd__(self, other: BatchCounts) -> BatchCounts:
        self.inserted += other.inserted
        self.updated += other.updated
        self.deleted += other.deleted
        self.unchanged += other.unchanged
        self.quarantined += other.quarantined
        return self

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted + self.unchanged + self.quarantined

    @property
    def written(self) -> int:
        """Rows inserted, updated or deleted (those that have a change entry)."""
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True, slots=True)
class ResetCounts:
    """What ``syncd reset`` found of a dataset (StateStore.reset_counts / reset_dataset)."""

    row_keys: int  # keys in row_state
    watermark: str | None
    quarantined: int  # quarantined records (kept)
    target_rows: int | None  # rows in the target table; None when it does not exist
    files: int = 0  # processed files in the file ledger ({prefix}files), a file source's


@dataclass(slots=True)
class RunCounts:
    """The counters of a finished run, stored on its ``runs`` row."""

    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    quarantined: int = 0
    reported_total: int | None = None
    requests: int = 0
    retries: int = 0
    pages: int = 0

    def add(self, batch: BatchCounts) -> None:
        """Add one batch's counts."""
        self.inserted += batch.inserted
        self.updated += batch.updated
        self.deleted += batch.deleted
        self.unchanged += batch.unchanged
        self.quarantined += batch.quarantined

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """A record that could not be mapped: its raw payload (already redacted) and why.

    ``record_key`` is its key as upstream sent it (shown to the operator). ``row_key`` is the key
    of the row it stands for (its key columns mapped, as ``row_state`` holds it), or None when even
    the key columns cannot be mapped: a later write of that key supersedes the entry. ``protected``
    holds the values of its masked/hashed columns as computed from the clear record
    (:meth:`~syncd.mapping.CompiledMapping.protect`), for replay. ``after`` places it in the read
    (rows and deletes sorted before it, as ``BatchWriter.write`` takes them), so that a row or
    delete of its key later in the same write supersedes it, and an earlier one does not; None:
    after everything else in the write."""

    raw: dict[str, Any]
    reason: str
    record_key: str | None = None
    row_key: str | None = None
    protected: dict[str, Any] | None = None
    after: tuple[int, int] | None = None
