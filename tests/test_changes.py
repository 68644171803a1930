"""Change detection without a database: row hashes, row keys, feed JSON, classification, normalisers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.changes import (
    DELETED_HASH,
    changed_indexes,
    classify,
    decimal_text,
    json_text,
    key_text,
    normaliser_for,
    normaliser_for_type,
    raw_hash,
    row_hash,
)
from syncd.config.model import ColumnConfig

# --------------------------------------------------------------------------- row_hash


def test_row_hash_is_32_hex_and_stable_across_calls() -> None:
    at = datetime(2024, 11, 2, 8, 0, 0, 5)
    row = ("R1", "张𠮷", Decimal("12.30"), date(2024, 11, 2), at, True, 7, None)
    first = row_hash(row)
    assert len(first) == 32
    int(first, 16)
    assert all(row_hash(tuple(row)) == first for _ in range(3))
    # fixed value: the encoding is part of the stored state, changing it re-classifies every row
    assert row_hash(()) == "4a3228b71327704c56bd083d7b6c4368"
    pinned = row_hash(("R1", 1, None, Decimal("1.50"), date(2024, 1, 2), True))
    assert pinned == "8eb2346ef343de58c54fe468f522423c"
    # the full form (a type orjson is not trusted with) is pinned too
    assert row_hash((1.5, time(8, 30), b"\x01")) == "9a571d568face7c091568e6f34ae105d"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((None,), ("",)),
        ((None,), ("None",)),
        (("",), ("None",)),
        ((1,), ("1",)),
        ((1,), (True,)),
        ((0,), (False,)),
        ((1,), (Decimal("1"),)),
        ((1,), (1.0,)),
        ((date(2024, 1, 2),), ("2024-01-02",)),
        ((date(2024, 1, 2),), (datetime(2024, 1, 2),)),
        (("ab", "c"), ("a", "bc")),  # length-prefixed parts: no ambiguity at the seams
        (("a", "b"), ("b", "a")),
        (("a",), ("a", None)),
        ((datetime(2024, 1, 2, 3),), (datetime(2024, 1, 2, 3, tzinfo=UTC),)),
        ((datetime(2024, 1, 2, 3),), (datetime(2024, 1, 2, 3, 0, 0, 1),)),
        ((datetime(2024, 1, 2, 3),), ("2024-01-02T03:00:00",)),
        ((Decimal("1.5"),), ("1.5",)),
        ((True,), ("true",)),
        ((None,), ("null",)),
        (('a","b',), ("a", "b")),  # JSON escaping: a quote inside a value is not a seam
        (("\ud83d",), ("\\ud83d",)),  # a lone surrogate (full form) vs its escaped spelling
        ((2**64,), (str(2**64),)),  # beyond orjson's 64 bits: the full form
        ((None, 2**64), (None, str(2**64))),  # the full form spells None too
        ((float("nan"),), (float("inf"),)),  # orjson would write both as null: floats take the full form
        ((1.0,), (None,)),
    ],
)
def test_row_hash_distinguishes_values_and_types(left: tuple[object, ...], right: tuple[object, ...]) -> None:
    assert row_hash(left) != row_hash(right)


def test_row_hash_treats_numerically_equal_decimals_as_equal() -> None:
    # decision: a DECIMAL column stores 1.5 and 1.50 alike, so they must not look like a change
    assert row_hash((Decimal("1.5"),)) == row_hash((Decimal("1.50"),))
    assert row_hash((Decimal("100"),)) == row_hash((Decimal("1E+2"),))
    assert row_hash((Decimal("-0.00"),)) == row_hash((Decimal("0"),))
    assert row_hash((Decimal("1.5"),)) != row_hash((Decimal("1.51"),))


def test_row_hash_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="cannot hash a value of type list"):
        row_hash((["a"],))


def test_row_hash_accepts_subclasses_and_lone_surrogates() -> None:
    class Code(str):
        pass

    assert row_hash((Code("x"),)) == row_hash(("x",))
    assert len(row_hash(("\ud83d",))) == 32  # a lone surrogate from a broken upstream JSON

    class Day(date):
        pass

    # a date subclass takes the full form, which spells dates as the fast form does not
    assert row_hash((Day(2024, 1, 2),)) != row_hash((date(2024, 1, 2),))
    assert row_hash((Day(2024, 1, 2),)) == row_hash((Day(2024, 1, 2),))


_SCALARS = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, max_value=10**6, min_value=-(10**6)),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
)


def _canonical(row: tuple[object, ...]) -> tuple[object, ...]:
    """What row_hash promises to tell apart: each value with its type; Decimals by numeric value."""
    out: list[object] = []
    for v in row:
        if isinstance(v, Decimal):
            out.append(("Decimal", decimal_text(v)))
        elif isinstance(v, datetime):
            out.append(("datetime", v, v.tzinfo))
        else:
            out.append((type(v).__name__, v))
    return tuple(out)


def _respelled(row: tuple[object, ...]) -> tuple[object, ...]:
    """The same values with every Decimal spelled differently (1.5 → 1.50)."""
    return tuple(v.quantize(Decimal("0.0001")) if isinstance(v, Decimal) else v for v in row)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SCALARS, max_size=4).map(tuple), st.lists(_SCALARS, max_size=4).map(tuple))
def test_row_hash_equal_exactly_when_the_rows_are(
    left: tuple[object, ...], right: tuple[object, ...]
) -> None:
    assert (row_hash(left) == row_hash(right)) == (_canonical(left) == _canonical(right))
    assert row_hash(left) == row_hash(_respelled(left))
    assert row_hash(left) == row_hash(tuple(left))


def test_decimal_text() -> None:
    assert decimal_text(Decimal("1.50")) == "1.5"
    assert decimal_text(Decimal("1E+3")) == "1000"
    assert decimal_text(Decimal("-0.0")) == "0"
    assert decimal_text(Decimal("12345678901234567890.123")) == "12345678901234567890.123"


# --------------------------------------------------------------------------- keys and JSON


@pytest.mark.parametrize("column_type", ["string", "int", "decimal", "date", "datetime"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_row_key_of_one_column_is_key_text_of_the_normalised_value(
    column_type: str, data: st.DataObject
) -> None:
    """The one-column fast path of row_key_function gives exactly what the general form gives:
    key_text of the normalised value, None for a null or an over-long key, an error for a row of
    the wrong width."""
    from syncd.changes.detector import normaliser_for
    from syncd.changes.keys import ROW_KEY_LENGTH, row_key_function

    spec = ColumnConfig(source="id", type=column_type)
    values = {
        "string": st.text(max_size=600),
        "int": st.integers(-(2**63), 2**63 - 1),
        "decimal": st.decimals(
            allow_nan=False, allow_infinity=False, places=2, min_value=-(10**12), max_value=10**12
        ),
        "date": st.dates(),
        "datetime": st.datetimes(),
    }[column_type]
    value = data.draw(st.none() | values)
    one = row_key_function([spec])
    norm = normaliser_for(spec)
    expected = None if norm(value) is None else key_text((norm(value),))
    if expected is not None and len(expected) > ROW_KEY_LENGTH:
        expected = None
    assert one((value,)) == expected
    with pytest.raises(ValueError):
        one((value, value))


def test_key_text_single_and_composite() -> None:
    assert key_text(("R001",)) == "R001"
    assert key_text((42,)) == "42"
    assert key_text((Decimal("1.50"),)) == "1.50"
    assert key_text((date(2024, 1, 2),)) == "2024-01-02"
    assert key_text(("330102", 2024)) == '["330102",2024]'
    assert key_text(("𠮷", date(2024, 1, 2))) == '["𠮷","2024-01-02"]'
    assert json.loads(key_text(("a", "b"))) == ["a", "b"]


def test_json_text_encodes_feed_values() -> None:
    text = json_text(
        {
            "d": Decimal("1.50"),
            "day": date(2024, 1, 2),
            "at": datetime(2024, 1, 2, 3, 4, 5, 6),
            "b": True,
            "n": None,
            "name": "张𠮷",
        }
    )
    assert json.loads(text) == {
        "d": "1.50",
        "day": "2024-01-02",
        "at": "2024-01-02T03:04:05.000006",
        "b": True,
        "n": None,
        "name": "张𠮷",
    }
    assert "𠮷" in text  # not \\u-escaped: the feed stays readable


def test_raw_hash_ignores_key_order() -> None:
    assert raw_hash({"a": 1, "b": {"c": 2, "d": 3}}) == raw_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert raw_hash({"a": 1}) != raw_hash({"a": "1"})


# --------------------------------------------------------------------------- classify


def test_classify_sorts_every_key() -> None:
    stored = {"same": "h1", "changed": "h2", "gone": "h3", "soft": DELETED_HASH, "back": DELETED_HASH}
    incoming = {"same": "h1", "changed": "h2x", "new": "h4", "back": "h5"}
    verdict = classify(incoming, ["gone", "soft", "never"], stored)
    assert verdict.inserts == ["new"]
    assert verdict.update_candidates == ["changed", "back"]  # a soft-deleted row that comes back
    assert verdict.unchanged == ["same"]
    assert verdict.deletes == ["gone"]
    assert verdict.ignored_deletes == ["soft", "never"]


def test_classify_empty() -> None:
    verdict = classify({}, [], {})
    assert not (verdict.inserts or verdict.update_candidates or verdict.unchanged or verdict.deletes)


def test_deleted_hash_cannot_collide_with_a_digest() -> None:
    assert len(DELETED_HASH) == 32
    with pytest.raises(ValueError, match="invalid literal"):
        int(DELETED_HASH, 16)


# --------------------------------------------------------------------------- normalisers and diff


def test_decimal_normaliser_quantizes_like_the_database() -> None:
    norm = normaliser_for(ColumnConfig(source="x", type="decimal", precision=12, scale=2))
    assert norm(Decimal("1.5")) == Decimal("1.50")
    assert str(norm(Decimal("1.5"))) == "1.50"
    assert norm(Decimal("1.555")) == Decimal("1.56")  # half up, as PostgreSQL and MariaDB round
    assert norm(Decimal("-1.555")) == Decimal("-1.56")
    assert norm(1.1) == Decimal("1.10")  # SQLite hands back floats: via repr, not the binary value
    assert norm(99999999999999.98) == Decimal("99999999999999.98")
    assert norm(3) == Decimal("3.00")
    assert norm(None) is None
    assert norm("not a number") == "not a number"


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("int", Decimal("5"), 5),
        ("int", 5, 5),
        ("bool", 1, True),
        ("bool", 0, False),
        ("bool", True, True),
        ("date", datetime(2024, 1, 2, 3), date(2024, 1, 2)),
        ("date", "2024-01-02", date(2024, 1, 2)),
        ("datetime", "2024-01-02 03:04:05.000006", datetime(2024, 1, 2, 3, 4, 5, 6)),
        ("datetime", date(2024, 1, 2), datetime(2024, 1, 2)),
        ("string", "张𠮷 ", "张𠮷 "),
    ],
)
def test_normalisers(kind: str, raw: object, expected: object) -> None:
    value = normaliser_for_type(kind)(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown column type 'money'"):
        normaliser_for_type("money")


def test_changed_indexes() -> None:
    assert changed_indexes(("a", 1, None), ("a", 1, None)) == ()
    assert changed_indexes(("a", 1, None), ("b", 1, "")) == (0, 2)
    with pytest.raises(ValueError, match="longer"):
        changed_indexes(("a",), ("a", "b"))


def test_public_api_is_complete() -> None:
    import syncd.changes
    import syncd.targets

    for module in (syncd.changes, syncd.targets):
        assert len(set(module.__all__)) == len(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
