"""Deterministic encodings of mapped values: row hashes, row keys and change-feed JSON.

Row hash (``row_hash``)
    blake2b with a 16-byte digest (32 hex characters). Its input names the row's value types
    first, then the values, so the encoding is injective: no two different tuples share it.

    The fast form (every row a mapping produces): ``J`` + one type letter per value + ``\0`` +
    the orjson array of the values. Given the type letters, the JSON text decodes to exactly one
    tuple, so types never collide even where the JSON does (``date(2024, 1, 2)`` and the string
    ``"2024-01-02"`` both write ``"2024-01-02"``; their letters differ).

    =========  ======  =================================================================
    type       letter  JSON value
    =========  ======  =================================================================
    None       ``N``   ``null``
    str        ``s``   the string (a ``str`` subclass counts as ``str``)
    bool       ``b``   ``true`` / ``false``
    int        ``i``   the number (64-bit range)
    Decimal    ``d``   the numeric value as a string, fixed-point, trailing fractional zeros removed
    date       ``D``   ``"YYYY-MM-DD"``
    datetime   ``t``   ISO 8601 as orjson writes it (microseconds when not 0; an aware value
                       keeps its offset)
    =========  ======  =================================================================

    The full form, for what orjson cannot or should not write (float, time, bytes, an integer
    beyond 64 bits, a lone surrogate, a subclass of date): ``L`` + each value as
    ``<tag><length>:<payload>`` (tags ``N s b i d f t D T B``; str as UTF-8 with
    ``surrogatepass``, float as ``repr``, bytes as hex). The leading ``J``/``L`` keeps the two
    forms apart.

    So ``None``, ``""`` and ``"None"`` differ, and ``1`` differs from ``"1"`` and ``True``.
    **Decision:** ``Decimal("1.5")`` and ``Decimal("1.50")`` hash the same. A DECIMAL column
    stores both as the same number and the change detector compares numerically, so letting
    the representation leak into the hash would only produce update candidates that turn out
    to change nothing.

    Earlier builds stored the full form for every row. Their hashes differ from the fast form,
    so after the upgrade each row is an update candidate once: it is compared with the stored row
    and, with no real difference, only its stored hash is refreshed (docs/upgrade.md).

Row key (``key_text``)
    A single key column → ``str`` of the value; a composite key → a compact JSON array.
    Decimals are written in fixed point, dates and datetimes in ISO 8601.

Record digest (``record_digester``)
    blake2b (16 bytes), keyed with the compiled mapping's fingerprint (and, for a dataset that
    masks a column, its source's secrets: :mod:`syncd.changes.digestkey`), over the orjson encoding
    of the values of the top-level fields the mapping reads, in sorted field order. Values that
    are not JSON types (the SQL and XLSX sources' Decimal, datetime, bytes…) are encoded as a
    tagged object ``{"\u0000": type name, "v": text}``; such sources never yield objects of
    their own, and JSON sources never yield anything else, so the encoding stays injective
    within one source kind (which the fingerprint names). ``row_state.record_digest`` keeps it:
    a record whose digest equals the stored one maps to the stored row, so it is not mapped again.

    A record that came as its JSON text (an http source, :mod:`syncd.sources.http.texts`:
    simdjson's minified re-serialisation, the same text for the same record) is digested over
    that text instead (``text_digester``, same key), so a re-sync scan never decodes the
    records it skips. Every field counts then, read by the mapping or not: a change to a field
    the mapping ignores costs one mapping that finds the row unchanged. The two inputs cannot
    collide: a text is an object (``{…``), a value encoding an array (``[…``). A page the text
    reader cannot carry exactly is decoded as before and its records digested by their values:
    each kind of digest only ever equals one of its own kind, so a switch between them (an
    upgrade, such a page) costs each record one mapping, never a wrong skip.

Change-feed JSON (``json_text``)
    Compact JSON, non-ASCII kept as is; Decimal as a string (``"1.50"``), date and datetime
    in ISO 8601, bool as ``true``/``false``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import orjson

__all__ = [
    "decimal_text",
    "json_text",
    "key_text",
    "raw_hash",
    "record_digester",
    "row_hash",
    "text_digester",
]


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
    if value is None:
        return _enc_none
    for kind in _FALLBACK_ORDER:
        if isinstance(value, kind):
            return _ENCODERS[kind]
    raise TypeError(
        f"cannot hash a value of type {type(value).__name__}: mapped rows hold str, int, Decimal, "
        "date, datetime, bool or None"
    )


def _encode_full(row: Sequence[Any]) -> bytes:
    """The full form (``L`` + tagged, length-prefixed values): every type row_hash accepts."""
    return ("L" + "".join(_encoder(value)(value) for value in row)).encode("utf-8", "surrogatepass")


# The fast form's type letters; a type not here (or a str subclass, mapped to "s") takes the full form.
_LETTERS: dict[type, str] = {
    type(None): "N",
    str: "s",
    bool: "b",
    int: "i",
    Decimal: "d",
    date: "D",
    datetime: "t",
}


def _signature(types: tuple[type, ...]) -> bytes | None:
    """``J`` + the type letters + NUL for rows of these value types; None: use the full form."""
    letters = []
    for kind in types:
        letter = _LETTERS.get(kind)
        if letter is None:
            if not issubclass(kind, str):  # orjson writes a str subclass exactly like a str
                return None
            letter = "s"
        letters.append(letter)
    return ("J" + "".join(letters) + "\x00").encode()


_SIGNATURES: dict[tuple[type, ...], bytes | None] = {}


def _hash_default(value: Any) -> Any:
    if value.__class__ is Decimal:
        return decimal_text(value)
    raise TypeError  # cannot happen: the signature admitted only types orjson writes or Decimal


def row_hash(row: Sequence[Any]) -> str:
    """32 hex characters identifying the content of a mapped row (see the module docstring)."""
    types = tuple(map(type, row))
    try:
        signature = _SIGNATURES[types]
    except KeyError:
        signature = _signature(types)
        if len(_SIGNATURES) < 4096:  # a dataset has a handful of shapes (None in some columns)
            _SIGNATURES[types] = signature
    if signature is not None:
        try:
            payload = signature + orjson.dumps(row, default=_hash_default)
        except orjson.JSONEncodeError:  # a lone surrogate, an integer beyond 64 bits
            payload = _encode_full(row)
    else:
        payload = _encode_full(row)
    return blake2b(payload, digest_size=16).hexdigest()


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


def record_digester(fields: Sequence[str], key: bytes | None) -> Callable[[Any], str | None]:
    """``record -> 32 hex characters`` over the values of ``fields`` (see the module docstring),
    or None when the record cannot be encoded (not an object, an integer beyond 64 bits, a lone
    surrogate): such a record is simply mapped every time. ``key`` None: no record is digested
    (a masked dataset without a secret to key its digests with, :mod:`syncd.changes.digestkey`)."""
    if key is None:
        return _no_digest
    names = tuple(sorted(fields))
    dumps = orjson.dumps
    # the key's block is compressed once here; each digest copies that state (0.56 against 0.75 µs)
    keyed = blake2b(digest_size=16, key=key)
    # itemgetter picks the values in C; a record missing a field takes the .get() path. Both give
    # the same JSON array (orjson writes a tuple and a list alike), so the digest does not depend on it.
    pick = operator.itemgetter(*names) if len(names) > 1 else None

    def record_digest(record: Any) -> str | None:
        if record.__class__ is not dict:
            return None
        try:
            values: Any = pick(record) if pick is not None else [record.get(names[0])] if names else []
        except KeyError:
            get = record.get
            values = [get(name) for name in names]
        try:
            payload = dumps(values, default=_tagged_value, option=_DIGEST_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            return None
        h = keyed.copy()
        h.update(payload)
        return h.hexdigest()

    return record_digest


def _no_digest(_record: Any) -> None:
    return None


def text_digester(key: bytes) -> Callable[[bytes], str]:
    """``text -> 32 hex characters``: the record digest of a record that came as its JSON text
    (:mod:`syncd.sources.http.texts`), blake2b keyed like :func:`record_digester`'s over the text."""
    keyed = blake2b(digest_size=16, key=key)

    def text_digest(text: bytes) -> str:
        h = keyed.copy()
        h.update(text)
        return h.hexdigest()

    return text_digest


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
