"""Deterministic encodings of mapped values: row hashes, row keys and change-feed JSON.

Row hash (``row_hash``)
    blake2b with a 16-byte digest (32 hex characters) over a type-tagged, length-prefixed
    encoding of the mapped tuple. Each value becomes ``<tag><length>:<payload>`` and the parts
    are concatenated, so the encoding is injective: no two different tuples share a byte string.

    =========  ===  =====================================================================
    type       tag  payload
    =========  ===  =====================================================================
    None       ``N``  empty
    str        ``s``  the string itself (UTF-8; lone surrogates kept via ``surrogatepass``)
    bool       ``b``  ``1`` or ``0``
    int        ``i``  decimal digits
    Decimal    ``d``  the numeric value in fixed-point, trailing fractional zeros removed
    float      ``f``  ``repr(value)``
    datetime   ``t``  ``isoformat()`` (an aware value keeps its offset)
    date       ``D``  ``isoformat()``
    time       ``T``  ``isoformat()``
    bytes      ``B``  hex
    =========  ===  =====================================================================

    So ``None``, ``""`` and ``"None"`` differ, and ``1`` differs from ``"1"`` and ``True``.
    **Decision:** ``Decimal("1.5")`` and ``Decimal("1.50")`` hash the same. A DECIMAL column
    stores both as the same number and the change detector compares numerically, so letting
    the representation leak into the hash would only produce update candidates that turn out
    to change nothing.

Row key (``key_text``)
    A single key column → ``str`` of the value; a composite key → a compact JSON array.
    Decimals are written in fixed point, dates and datetimes in ISO 8601.

Record digest (``record_digester``)
    blake2b (16 bytes), keyed with the compiled mapping's fingerprint, over the orjson encoding
    of the values of the top-level fields the mapping reads, in sorted field order. Values that
    are not JSON types (the SQL and XLSX sources' Decimal, datetime, bytes…) are encoded as a
    tagged object ``{"\u0000": type name, "v": text}``; such sources never yield objects of
    their own, and JSON sources never yield anything else, so the encoding stays injective
    within one source kind (which the fingerprint names). ``row_state.raw_hash`` keeps it: a
    record whose digest equals the stored one maps to the stored row, so it is not mapped again.

Change-feed JSON (``json_text``)
    Compact JSON, non-ASCII kept as is; Decimal as a string (``"1.50"``), date and datetime
    in ISO 8601, bool as ``true``/``false``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import orjson

__all__ = ["decimal_text", "json_text", "key_text", "raw_hash", "record_digester", "row_hash"]


def decimal_text(value: Decimal) -> str:
    """The value in fixed-point notation without trailing fractional zeros (``-0`` → ``0``)."""
    if not value.is_finite():
        return str(value)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _enc_none(_: Any) -> str:
    return "N0:"


def _tagged(tag: str, payload: str) -> str:
    return f"{tag}{len(payload)}:{payload}"


_ENCODERS: dict[type, Callable[[Any], str]] = {
    type(None): _enc_none,
    str: lambda v: _tagged("s", v),
    bool: lambda v: "b1:1" if v else "b1:0",
    int: lambda v: _tagged("i", str(v)),
    Decimal: lambda v: _tagged("d", decimal_text(v)),
    float: lambda v: _tagged("f", repr(v)),
    datetime: lambda v: _tagged("t", v.isoformat()),
    date: lambda v: _tagged("D", v.isoformat()),
    time: lambda v: _tagged("T", v.isoformat()),
    bytes: lambda v: _tagged("B", v.hex()),
}
# subclass look-up order: bool before int, datetime before date
_FALLBACK_ORDER: tuple[type, ...] = (bool, int, str, Decimal, float, datetime, date, time, bytes)


def _encoder(value: Any) -> Callable[[Any], str]:
    for kind in _FALLBACK_ORDER:
        if isinstance(value, kind):
            return _ENCODERS[kind]
    raise TypeError(
        f"cannot hash a value of type {type(value).__name__}: mapped rows hold str, int, Decimal, "
        "date, datetime, bool or None"
    )


def _encode(row: Sequence[Any]) -> bytes:
    # the hot path of every batch: str and None (most values) are encoded inline
    encoders = _ENCODERS
    parts: list[str] = []
    append = parts.append
    for value in row:
        kind = type(value)
        if kind is str:
            append(f"s{len(value)}:{value}")
        elif value is None:
            append("N0:")
        elif kind is date:
            append(f"D10:{value.isoformat()}")  # YYYY-MM-DD (years 1-9999)
        elif kind is int:
            text = str(value)
            append(f"i{len(text)}:{text}")
        else:
            enc = encoders.get(kind)
            append(enc(value) if enc is not None else _encoder(value)(value))
    return "".join(parts).encode("utf-8", "surrogatepass")


def row_hash(row: Sequence[Any]) -> str:
    """32 hex characters identifying the content of a mapped row (see the module docstring)."""
    return blake2b(_encode(row), digest_size=16).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode a value of type {type(value).__name__} as JSON")


_ORJSON = orjson.OPT_NON_STR_KEYS
_ORJSON_SORTED = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text for the change feed and the quarantine (Decimal as string, ISO dates).

    orjson does the work (several times faster: every insert writes its row into the feed);
    what it refuses (lone surrogates, integers beyond 64 bits) goes through the standard library,
    which writes the same text for everything else mapped rows hold.
    """
    try:
        option = _ORJSON_SORTED if sort_keys else _ORJSON
        return orjson.dumps(value, default=_json_default, option=option).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), default=_json_default, sort_keys=sort_keys
        )


def raw_hash(raw: Any) -> str:
    """32 hex characters identifying a raw upstream record (key order does not matter)."""
    text = json_text(raw, sort_keys=True)
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _tagged_value(value: Any) -> Any:
    text = value.isoformat() if isinstance(value, datetime | date | time) else str(value)
    return {"\x00": type(value).__qualname__, "v": text}


_DIGEST_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_SORT_KEYS


def record_digester(fields: Sequence[str], key: bytes) -> Callable[[Any], str | None]:
    """``record -> 32 hex characters`` over the values of ``fields`` (see the module docstring),
    or None when the record cannot be encoded (not an object, an integer beyond 64 bits, a lone
    surrogate): such a record is simply mapped every time."""
    names = tuple(sorted(fields))
    dumps, digest = orjson.dumps, blake2b

    def record_digest(record: Any) -> str | None:
        if record.__class__ is not dict:
            return None
        get = record.get
        try:
            payload = dumps([get(name) for name in names], default=_tagged_value, option=_DIGEST_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            return None
        return digest(payload, digest_size=16, key=key).hexdigest()

    return record_digest


def _key_part(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def key_text(parts: Sequence[Any]) -> str:
    """The ``row_key`` text of a key: ``str(value)`` for one column, a JSON array for several.

    ``parts`` are the key values, already normalised per column type (see
    :func:`syncd.changes.detector.normaliser_for`) so that a key read back from the database
    gives the same text as the mapped one.
    """
    if len(parts) == 1:
        if parts[0].__class__ is str:  # the common key: one text column
            return parts[0]
        part = _key_part(parts[0])
        return part if isinstance(part, str) else str(part)
    return json_text([_key_part(p) for p in parts])
