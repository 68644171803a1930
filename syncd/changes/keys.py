"""Row keys of mapped rows, as the writer stores them in ``row_state.row_key`` (no database here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from syncd.changes.detector import normaliser_for
from syncd.changes.hashing import key_text
from syncd.config.model import ColumnConfig

__all__ = ["ROW_KEY_LENGTH", "row_key_function"]

ROW_KEY_LENGTH = 512
"""The longest row key kept; a row with a longer key is quarantined by the writer."""

Row = tuple[Any, ...]


def row_key_function(key_specs: Sequence[ColumnConfig]) -> Callable[[Row], str | None]:
    """``key values → row key``: the values (in key order) normalised per column type, as the
    database holds them, then :func:`~syncd.changes.hashing.key_text`; None when the writer would
    reject such a row (a null key value, or a key longer than :data:`ROW_KEY_LENGTH`)."""
    norms = tuple(normaliser_for(spec) for spec in key_specs)
    if len(norms) == 1:  # the common key, one column: called for every record of a re-sync
        norm = norms[0]

        def row_key_of_one(values: Row) -> str | None:
            (value,) = values
            v = norm(value)
            if v is None:
                return None
            key = v if v.__class__ is str else key_text((v,))
            return key if len(key) <= ROW_KEY_LENGTH else None

        return row_key_of_one

    def row_key(values: Row) -> str | None:
        kv = tuple(norm(v) for norm, v in zip(norms, values, strict=True))
        if any(v is None for v in kv):
            return None
        key = key_text(kv)
        return key if len(key) <= ROW_KEY_LENGTH else None

    return row_key
