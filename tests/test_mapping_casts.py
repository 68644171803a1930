"""Casts of the field mapping: string, int, decimal, date, datetime, bool; NULL rules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from syncd.config.model import DatasetConfig
from syncd.errors import RecordError
from syncd.mapping import compile_mapping

Column = Callable[..., Callable[[Any], Any]]
"""A factory of one-column mappings: ``column(**spec)(value) -> mapped value``."""


def dataset(columns: dict[str, Any]) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "t",
            "source": {"type": "http", "connection": "gw", "path": "/api/x"},
            "authorization": {
                "approval_code": "T-1",
                "fields": ["x"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-01-01",
            },
            "target": {"table": "t", "key": ["k"]},
            "columns": {"k": {"transforms": [{"constant": 1}]}, **columns},
        }
    )


@pytest.fixture(params=[True, False], ids=["inline", "functions"])
def cast(request: pytest.FixtureRequest) -> Column:
    """``cast("int", nullable=False, ...)`` -> ``value -> cast value`` of a column reading ``x``."""

    def make(type_: str, **spec: Any) -> Callable[[Any], Any]:
        mapping = compile_mapping(
            dataset({"c": {"source": "x", "type": type_, **spec}}), inline=request.param
        )
        return lambda value: mapping({"x": value})[1]

    return make


def failure(fn: Callable[[Any], Any], value: Any) -> RecordError:
    with pytest.raises(RecordError) as caught:
        fn(value)
    assert caught.value.column == "c"
    return caught.value


# --------------------------------------------------------------------------- string


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("330102001001", "330102001001"),
        ("", ""),  # a string column keeps the empty string
        ("  ", "  "),
        (3, "3"),
        (3.0, "3"),
        (3.5, "3.5"),
        (-0.25, "-0.25"),
        (1e-05, "0.00001"),
        (3.60102e17, "360102000000000000"),
        (Decimal("3.50"), "3.50"),
        (True, "true"),
        (date(2024, 11, 2), "2024-11-02"),
        (datetime(2024, 11, 2, 8, 30), "2024-11-02 08:30:00"),
        ("𠮷", "𠮷"),
        (None, None),
    ],
)
def test_string(cast: Column, raw: Any, expected: Any) -> None:
    assert cast("string")(raw) == expected


def test_string_length(cast: Column) -> None:
    code = cast("string", length=6)
    assert code("330102") == "330102"
    assert code("𠮷𠮷𠮷𠮷𠮷𠮷") == "𠮷𠮷𠮷𠮷𠮷𠮷"  # characters, not bytes or UTF-16 units
    assert "too long (7 > 6)" in failure(code, "3301021").reason
    assert "too long (7 > 6)" in failure(code, 3301021).reason


def test_string_rejects_objects_and_arrays(cast: Column) -> None:
    assert "JSON object" in failure(cast("string"), {"a": 1}).reason
    assert "JSON array" in failure(cast("string"), [1, 2]).reason


# --------------------------------------------------------------------------- int


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, 3),
        ("3", 3),
        (" 3 ", 3),
        ("+3", 3),
        ("-3", -3),
        ("3.0", 3),
        ("3.00", 3),
        (3.0, 3),
        (Decimal("4"), 4),
        ("3.", 3),
        ("", None),
        ("\u3000", None),
        (None, None),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_int(cast: Column, raw: Any, expected: Any) -> None:
    assert cast("int")(raw) == expected


@pytest.mark.parametrize("raw", ["3.5", 3.5, "abc", "1e3", "1_000", "３", True, ".0", [3], Decimal("3.5")])
def test_int_rejects(cast: Column, raw: Any) -> None:
    error = failure(cast("int"), raw)
    assert "whole number (column type int)" in error.reason


def test_int_range_and_message_names_value(cast: Column) -> None:
    assert "out of range" in failure(cast("int"), 2**63).reason
    assert "out of range" in failure(cast("int"), str(-(2**63) - 1)).reason
    error = failure(cast("int"), "x" * 80)
    assert "'" + "x" * 50 + "'…" in error.reason  # the value, truncated to 50 characters
    assert "x" * 51 not in error.reason
    assert str(error).startswith("c: ")


@pytest.mark.parametrize("raw", ["9" * 5000, "-" + "1" * 4301, " " + "7" * 4400 + ".0 ", "1" + "0" * 4300])
def test_int_past_pythons_digit_limit_is_out_of_range(cast: Column, raw: str) -> None:
    # int() refuses texts of more than 4,300 digits with its own ValueError
    error = failure(cast("int"), raw)
    assert "is out of range for a 64-bit integer (column type int)" in error.reason
    assert len(error.reason) < 200  # the value is truncated in the reason


def test_int_long_text_of_leading_zeros_is_its_value(cast: Column) -> None:
    assert cast("int")("0" * 5000 + "42") == 42
    assert cast("int")("-" + "0" * 5000 + "9223372036854775808.00") == -(2**63)
    assert "out of range" in failure(cast("int"), "0" * 5000 + "9223372036854775808").reason


# --------------------------------------------------------------------------- decimal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("79270.06", "79270.06"),
        (" 79270.06 ", "79270.06"),
        (19934.59, "19934.59"),
        (6040, "6040.00"),
        (2.675, "2.68"),  # half up on the number as written, not on its binary approximation
        ("2.665", "2.67"),
        ("-2.665", "-2.67"),
        ("0.004", "0.00"),
        ("-0.004", "0.00"),  # no negative zero
        ("1E+2", "100.00"),
        ("", None),
        (None, None),
    ],
)
def test_decimal(cast: Column, raw: Any, expected: str | None) -> None:
    result = cast("decimal", precision=14, scale=2)(raw)
    if expected is None:
        assert result is None
    else:
        assert isinstance(result, Decimal)
        assert str(result) == expected


def test_decimal_precision(cast: Column) -> None:
    money = cast("decimal", precision=6, scale=2)
    assert str(money("9999.994")) == "9999.99"
    assert "too many digits for column type decimal(6,2)" in failure(money, "9999.995").reason
    assert "at most 4 before the decimal point" in failure(money, 12345).reason
    assert "too many digits" in failure(money, "1E+100").reason
    assert str(cast("decimal", precision=40, scale=0)("1" * 40)) == "1" * 40


@pytest.mark.parametrize("raw", ["abc", "NaN", "Infinity", "1_000", "1,000.00", True, {"v": 1}])
def test_decimal_rejects(cast: Column, raw: Any) -> None:
    failure(cast("decimal"), raw)


@pytest.mark.parametrize(("type_", "raw"), [
    ("decimal", "１２３．５"), ("decimal", "１２３"), ("decimal", "－５"), ("int", "１２３"),
    ("date", "２０２４１１０２"),
])
def test_full_width_digits_are_rejected_by_every_cast_naming_halfwidth(
    cast: Column, type_: str, raw: str
) -> None:
    """Decimal() reads any Unicode digit, so the decimal cast took '１２３．５' while int rejected
    '１２３': both reject it now, and the reason names the transform that converts it."""
    error = failure(cast(type_), raw)
    assert "full-width characters (全角); add the `halfwidth` transform before the cast" in error.reason


@pytest.mark.parametrize("raw", ["٣", "১২৩.৫", "１２３．５"])
def test_decimal_reads_ascii_digits_only(cast: Column, raw: str) -> None:
    assert "is not a number (column type decimal(18,2))" in failure(cast("decimal"), raw).reason


def test_full_width_digits_after_halfwidth(cast: Column) -> None:
    assert str(cast("decimal", transforms=["halfwidth"])("\u3000１２３．５\u3000")) == "123.50"
    assert cast("int", transforms=["halfwidth"])("１２３") == 123
    assert str(cast("decimal")("\u3000123.5\u3000")) == "123.50"  # Unicode blanks around ASCII digits


# --------------------------------------------------------------------------- date and datetime


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-11-02", date(2024, 11, 2)),
        ("20241102", date(2024, 11, 2)),
        (20241102, date(2024, 11, 2)),
        ("2024-11-02 00:00:00.0", date(2024, 11, 2)),
        ("2024-11-02T13:00:00", date(2024, 11, 2)),
        (datetime(2024, 11, 2, 13), date(2024, 11, 2)),
        (date(2024, 11, 2), date(2024, 11, 2)),
        ("  ", None),
        (None, None),
    ],
)
def test_date(cast: Column, raw: Any, expected: date | None) -> None:
    result = cast("date")(raw)
    assert result == expected
    assert type(result) is (date if expected is not None else type(None))


@pytest.mark.parametrize(
    "raw", ["2024年11月2日", "2024/11/02", "20240230", "2024-02-30", "yesterday", 2024, 1.5]
)
def test_date_rejects_other_shapes(cast: Column, raw: Any) -> None:
    assert "add a `date` transform" in failure(cast("date"), raw).reason


@pytest.mark.parametrize(
    "raw",
    [
        "2024-11-02T20:00:00Z",  # 2024-11-03 in China: the date alone would be a day off
        "2024-11-02T20:00:00+00:00",
        "2024-11-02 08:30:05+08:00",
        "2024-11-02T08:30:05.5-05:00",
        datetime(2024, 11, 2, 20, tzinfo=UTC),
        datetime(2024, 11, 2, 8, tzinfo=timezone(timedelta(hours=8))),
    ],
)
def test_date_rejects_offsets_like_datetime(cast: Column, raw: Any) -> None:
    reason = failure(cast("date"), raw).reason
    assert "carries a time-zone offset; date columns hold local dates" in reason
    assert "add a `date` transform whose formats leave the offset out" in reason
    assert "time-zone offset" in failure(cast("datetime"), raw).reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-11-02 08:30:05", datetime(2024, 11, 2, 8, 30, 5)),
        ("2024-11-02T08:30:05", datetime(2024, 11, 2, 8, 30, 5)),
        ("2024-11-02 08:30:05.5", datetime(2024, 11, 2, 8, 30, 5, 500000)),
        ("2024-11-02", datetime(2024, 11, 2)),
        ("20241102", datetime(2024, 11, 2)),
        ("20241102083005", datetime(2024, 11, 2, 8, 30, 5)),
        (date(2024, 11, 2), datetime(2024, 11, 2)),
        ("", None),
    ],
)
def test_datetime(cast: Column, raw: Any, expected: datetime | None) -> None:
    assert cast("datetime")(raw) == expected


def test_datetime_rejects_offsets_and_garbage(cast: Column) -> None:
    assert "time-zone offset" in failure(cast("datetime"), "2024-11-02T08:30:05+08:00").reason
    assert "expected 2024-11-02 08:30:00" in failure(cast("datetime"), "2024/11/02 08:30").reason
    assert "expected 2024-11-02 08:30:00" in failure(cast("datetime"), 1730505600000).reason


# --------------------------------------------------------------------------- bool


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        (1, True),
        ("是", True),
        ("Y", True),
        (True, True),
        ("0", False),
        (0, False),
        ("否", False),
        (False, False),
        (" 1 ", True),
        ("", None),
        (None, None),
    ],
)
def test_bool(cast: Column, raw: Any, expected: bool | None) -> None:
    assert cast("bool")(raw) is expected


def test_bool_custom_values(cast: Column) -> None:
    alive = cast("bool", true_values=["在世"], false_values=["死亡"])
    assert alive("在世") is True
    assert alive("死亡") is False
    assert "true is 在世; false is 死亡" in failure(alive, "1").reason


# --------------------------------------------------------------------------- NULL rules


@pytest.mark.parametrize("type_", ["int", "decimal", "date", "datetime", "bool"])
def test_blank_text_is_null_for_non_string_types(cast: Column, type_: str) -> None:
    assert cast(type_)("") is None
    assert cast(type_)(" \u3000\t") is None


@pytest.mark.parametrize("type_", ["string", "int", "decimal", "date", "datetime", "bool"])
def test_not_nullable(cast: Column, type_: str) -> None:
    required = cast(type_, nullable=False)
    assert failure(required, None).reason == "required value missing"
    assert str(failure(required, None)) == "c: required value missing"
    if type_ != "string":
        assert failure(required, " ").reason == "required value missing"
    else:
        assert required("") == ""
