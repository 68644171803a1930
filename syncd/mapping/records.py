"""One raw record → what the batch writer needs: a row, a delete or a quarantine entry.

Shared by the runner (records mapped in the run's own process) and the read worker
(:mod:`syncd.sources.worker`, records mapped in a child process), so both sort records the same
way. Nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from syncd.changes.hashing import key_text
from syncd.config.model import DatasetConfig
from syncd.errors import RecordError
from syncd.mapping.compiler import CompiledMapping
from syncd.paths import MISSING, compile_path

__all__ = ["RecordSorter", "Rejected", "delete_flag", "storable"]

Row = tuple[Any, ...]

class Rejected(NamedTuple):
    """A record that could not be mapped: the fields of its quarantine entry, and its place."""

    raw: dict[str, Any]
    """The record, masked/hashed as its columns mask it (:meth:`CompiledMapping.redact_raw`)."""
    reason: str
    record_key: str | None
    """Its key as upstream sent it (redacted like ``raw``), or None."""
    key_values: Row | None
    """Its key columns mapped (``CompiledMapping.key_record``), or None when they cannot be: the
    key of the row the record stands for. A full-snapshot run marks it seen (a record that fails
    its mapping this time must not have its earlier row deleted as if upstream no longer sent it),
    and a later write of that key supersedes the entry."""
    protected: dict[str, list[Any]] | None = None
    """Its masked/hashed columns' values (:meth:`CompiledMapping.protect`), for replay."""
    after: tuple[int, int] = (0, 0)
    """Its place in the read: how many rows and deletes its sorter held before it."""


def storable(text: str | None) -> str | None:
    """``text`` with NUL characters spelled out: PostgreSQL text cannot hold them, and a bad
    record's reason or key must never make its quarantine batch fail (DESIGN §4.6)."""
    return text.replace("\x00", "\\x00") if text is not None and "\x00" in text else text


def delete_flag(dataset: DatasetConfig) -> Callable[[dict[str, Any]], bool] | None:
    """Whether a raw record is flagged deleted upstream (``target.logical_delete``: its field's
    value, stripped text or a bool as ``true``/``false``, among ``values``); None without one.
    The one rule of the runner, the read worker, ``plan`` and quarantine replay."""
    ld = dataset.target.logical_delete
    if ld is None:
        return None
    getter = compile_path(ld.field)
    values = frozenset(ld.values)

    def is_deleted(record: dict[str, Any]) -> bool:
        v = getter(record)
        if v is MISSING or v is None:
            return False
        if isinstance(v, bool):
            return str(v).lower() in values
        return str(v).strip() in values

    return is_deleted


class RecordSorter:
    """Maps records of one dataset and sorts them into rows, deletes and rejected records.

    ``sort(record, digest)`` appends to exactly one of ``rows`` (with ``digests`` in parallel),
    ``deletes`` (the key values of a record flagged deleted upstream, its key columns alone mapped,
    with ``delete_after`` in parallel: how many rows were sorted before it, its place in the read)
    or ``rejected`` (each with its place: how many rows and deletes were sorted before it).
    """

    def __init__(self, dataset: DatasetConfig, mapping: CompiledMapping) -> None:
        self.mapping = mapping
        self.is_deleted = delete_flag(dataset)
        self.rows: list[Row] = []
        self.digests: list[str | None] = []
        self.deletes: list[Row] = []
        self.delete_after: list[int] = []
        self.rejected: list[Rejected] = []
        self._key_paths = self._key_sources(mapping)

    @staticmethod
    def _key_sources(mapping: CompiledMapping) -> list[Callable[[Any], Any]] | None:
        paths = []
        for idx in mapping.key_indexes:
            spec = mapping.specs[mapping.columns[idx]]
            if spec.source is None:
                return None
            paths.append(compile_path(spec.source))
        return paths

    def sort(self, record: dict[str, Any], digest: str | None) -> None:
        """Sort one record. A record flagged deleted upstream maps its key columns alone: a deletion
        is often sent as a tombstone (the key, the flag, every other field empty), whose other
        columns would fail their checks (``required``, ``nullable: false``); only a deletion whose
        key cannot be mapped is quarantined. Deletes write nothing but the key and the flag."""
        mapping = self.mapping
        try:
            if self.is_deleted is not None and self.is_deleted(record):
                self.add_delete(mapping.key_record(record))
                return
            row = mapping.map_record(record)
        except RecordError as exc:
            redacted = mapping.redact_raw(record)  # masked key columns stay masked in the entry
            try:
                key_values: Row | None = mapping.key_record(record)
            except RecordError:
                key_values = None
            reason, raw_key = storable(str(exc)) or "", storable(self.record_key(redacted))
            protected = mapping.protect(record)
            self.rejected.append(Rejected(redacted, reason, raw_key, key_values, protected, self.place()))
            return
        self.rows.append(row)
        self.digests.append(digest)

    def place(self) -> tuple[int, int]:
        """Where the next record goes: after this many rows and deletes."""
        return (len(self.rows), len(self.deletes))

    def add_rejected(self, rejected: Rejected) -> None:
        """A record another sorter rejected (the read worker's), placed after what this one holds."""
        self.rejected.append(rejected._replace(after=self.place()))

    def add_delete(self, key_values: Row) -> None:
        """A delete of these key values, placed after the rows sorted so far."""
        self.deletes.append(key_values)
        self.delete_after.append(len(self.rows))

    def record_key(self, record: dict[str, Any]) -> str | None:
        """Best-effort key of an unmappable record as upstream sent it (``record`` redacted: masked
        or hashed key fields stay so), for the quarantine entry."""
        if self._key_paths is None:
            return None
        keys = []
        for getter in self._key_paths:
            v = getter(record)
            if v is MISSING or v is None:
                return None
            keys.append(v)
        return key_text(keys)

    def clear(self) -> None:
        self.rows.clear()
        self.digests.clear()
        self.deletes.clear()
        self.delete_after.clear()
        self.rejected.clear()
