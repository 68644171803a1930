"""Change detection: pure functions that decide what a batch does (no database here).

The writer hands in the hashes of the batch's rows, the keys to delete and the hashes stored
in ``row_state``; :func:`classify` sorts every key into insert, update candidate, unchanged,
delete or ignored delete. For update candidates the writer then compares the stored row with
the new one column by column, after normalising both sides per column type
(:func:`normaliser_for`), with :func:`changed_indexes`.

Rules (DESIGN §4.4 — an unchanged row causes no write and no change entry):

- key not in ``row_state``                        → insert
- stored hash equals the new hash                 → unchanged
- stored hash differs (or is :data:`DELETED_HASH`) → update candidate
- delete of a key present in ``row_state``        → delete
- delete of an absent or soft-deleted key         → ignored (counted as unchanged)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from syncd.config.model import ColumnConfig

__all__ = [
    "DELETED_HASH",
    "Classification",
    "Op",
    "changed_indexes",
    "classify",
    "normaliser_for",
    "normaliser_for_type",
]

DELETED_HASH = "deleted-" + "-" * 24
"""The ``row_state`` hash of a soft-deleted row: 32 characters that no hex digest can equal."""

Normaliser = Callable[[Any], Any]


class Op(StrEnum):
    """The operation recorded in the change feed."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Classification:
    """Row keys of one batch, sorted by what must happen to them."""

    inserts: list[str]
    update_candidates: list[str]
    unchanged: list[str]
    deletes: list[str]
    ignored_deletes: list[str]


def classify(
    incoming: Mapping[str, str], deletes: Iterable[str], stored: Mapping[str, str]
) -> Classification:
    """Sort the batch's keys. ``incoming`` maps row key → new hash; ``stored`` row key → stored hash.

    A key both in ``incoming`` and ``deletes`` must have been removed from ``incoming`` by the
    caller (the writer applies deletes after rows).
    """
    inserts: list[str] = []
    candidates: list[str] = []
    unchanged: list[str] = []
    for key, new_hash in incoming.items():
        old_hash = stored.get(key)
        if old_hash is None:
            inserts.append(key)
        elif old_hash == new_hash:
            unchanged.append(key)
        else:
            candidates.append(key)
    to_delete: list[str] = []
    ignored: list[str] = []
    for key in deletes:
        old_hash = stored.get(key)
        if old_hash is None or old_hash == DELETED_HASH:
            ignored.append(key)
        else:
            to_delete.append(key)
    return Classification(inserts, candidates, unchanged, to_delete, ignored)


def changed_indexes(old: Sequence[Any], new: Sequence[Any]) -> tuple[int, ...]:
    """Positions whose values differ; both sides must be normalised with the same normalisers."""
    return tuple(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)


# --------------------------------------------------------------------------- normalisers

_WIDE = Context(prec=100, rounding=ROUND_HALF_UP)
_TRUE_TEXT = frozenset({"1", "true", "t", "y", "yes"})


def _string(value: Any) -> Any:
    return value


def _int(value: Any) -> Any:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    try:
        return int(value)
    except (TypeError, ValueError, ArithmeticError):
        return value


def _decimal(scale: int) -> Normaliser:
    exponent = Decimal(1).scaleb(-scale)

    def normalise(value: Any) -> Any:
        if value is None:
            return None
        try:
            number = (
                value
                if isinstance(value, Decimal)
                else Decimal(repr(value) if isinstance(value, float) else value)
            )
            if not number.is_finite():
                return number
            return number.quantize(exponent, context=_WIDE)
        except (TypeError, ValueError, InvalidOperation):
            return value

    return normalise


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return value
    return value


def _datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _bool(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal):
        return bool(value)
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT
    return value


def normaliser_for_type(kind: str, scale: int = 0) -> Normaliser:
    """A function making a value comparable for a column of type ``kind`` (see ColumnConfig.type).

    Decimals are quantized to ``scale`` (half up, as PostgreSQL and MariaDB round), so
    ``Decimal("1.5")`` mapped and ``Decimal("1.50")`` read back compare equal; a float read from
    SQLite goes through ``repr`` first. Values of an unexpected type are returned unchanged.
    """
    if kind == "decimal":
        return _decimal(scale)
    simple: dict[str, Normaliser] = {
        "string": _string,
        "int": _int,
        "date": _date,
        "datetime": _datetime,
        "bool": _bool,
    }
    try:
        return simple[kind]
    except KeyError:
        raise ValueError(f"unknown column type {kind!r}; known: {', '.join([*simple, 'decimal'])}") from None


def normaliser_for(spec: ColumnConfig) -> Normaliser:
    """The normaliser of a mapped column."""
    return normaliser_for_type(spec.type, spec.scale)
