"""Change detection: row hashes, row keys and the classification of a batch (pure, no database)."""

from __future__ import annotations

from syncd.changes.detector import (
    DELETED_HASH,
    Classification,
    Op,
    changed_indexes,
    classify,
    normaliser_for,
    normaliser_for_type,
)
from syncd.changes.hashing import (
    decimal_text,
    json_text,
    key_text,
    raw_hash,
    record_digester,
    row_hash,
    text_digester,
)

__all__ = [
    "DELETED_HASH",
    "Classification",
    "Op",
    "changed_indexes",
    "classify",
    "decimal_text",
    "json_text",
    "key_text",
    "normaliser_for",
    "normaliser_for_type",
    "raw_hash",
    "record_digester",
    "row_hash",
    "text_digester",
]
