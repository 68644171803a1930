"""Validators of the field mapping: ID numbers (GB 11643), Excel damage, regex, length, range."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest

from syncd.config.model import DatasetConfig
from syncd.errors import RecordError
from syncd.mapping import compile_mapping
from syncd.mapping.validators import looks_excel_damaged, plausible_birth

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def check_digit(body: str) -> str:
    """GB 11643-1999, written out plainly (independent of the implementation under test)."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11]


def id_number(region: str, born: date, seq: int) -> str:
    body = f"{region}{born:%Y%m%d}{seq:03d}"
    return body + check_digit(body)


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
def column(request: pytest.FixtureRequest) -> Column:
    def make(**spec: Any) -> Callable[[Any], Any]:
        mapping = compile_mapping(dataset({"c": {"source": "x", **spec}}), inline=request.param)
        return lambda value: mapping({"x": value})[1]

    return make


def reason(fn: Callable[[Any], Any], value: Any) -> str:
    with pytest.raises(RecordError) as caught:
        fn(value)
    assert caught.value.column == "c"
    return caught.value.reason


# --------------------------------------------------------------------------- id_number


def test_check_digit_helper_matches_the_standard_example() -> None:
    assert check_digit("11010519491231002") == "X"  # the example printed in GB 11643-1999


@pytest.mark.parametrize(
    "value",
    [
        "11010519491231002X",
        id_number("330102", date(1990, 1, 1), 123),
        id_number("440305", date(2000, 2, 29), 5),
        id_number("650102", date(1900, 1, 1), 999),
        id_number("330127", date.today(), 1),
    ],
)
def test_id_number_valid(column: Column, value: str) -> None:
    assert column(validators=["id_number"])(value) == value


def test_id_number_lowercase_x_is_normalised(column: Column) -> None:
    # documented contract: the one validator that changes the value
    assert column(validators=["id_number"])("11010519491231002x") == "11010519491231002X"


def test_id_number_check_digit_mismatch(column: Column) -> None:
    good = id_number("330102", date(1985, 6, 15), 42)
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    text = reason(column(validators=["id_number"]), wrong)
    assert "check digit" in text
    assert wrong not in text  # reasons never quote an ID number


def test_id_number_every_single_digit_error_is_caught(column: Column) -> None:
    validate = column(validators=["id_number"])
    good = id_number("320582", date(1976, 3, 8), 317)
    for i in range(17):
        for d in "0123456789":
            if d == good[i]:
                continue
            damaged = good[:i] + d + good[i + 1 :]
            with pytest.raises(RecordError):
                validate(damaged)


def test_id_number_birth_date(column: Column) -> None:
    validate = column(validators=["id_number"])
    body = "330102" + "19900230" + "123"  # 30 February
    assert "not a real date" in reason(validate, body + check_digit(body))
    future = id_number("330102", date.today() + timedelta(days=1), 1)
    assert "not plausible" in reason(validate, future)
    ancient = id_number("330102", date(1899, 12, 31), 1)
    assert "not plausible" in reason(validate, ancient)


def test_plausible_birth_is_exactly_the_real_dates_from_1900_to_today() -> None:
    """Every 8-digit YYYYMMDD from 1890 to 2040 (month 00-13, day 00-32) against the calendar."""
    today = date(2026, 11, 30)
    real = set()
    day = date(1900, 1, 1)
    while day <= today:
        real.add(day.strftime("%Y%m%d"))
        day += timedelta(days=1)
    texts = [f"{y:04d}{m:02d}{d:02d}" for y in range(1890, 2041) for m in range(14) for d in range(33)]
    assert {t for t in texts if plausible_birth(t, "20261130")} == real


def test_id_number_old_15_digit(column: Column) -> None:
    assert "15-digit old-style" in reason(column(validators=["id_number"]), "330102900101123")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("3.30102E+17", "damaged by Excel"),
        ("1101051949123100", "18 characters expected, got 16"),
        ("11010519491231002Y", "digits and the last a digit or X"),
        (
            "１１０１０５１９４９１２３１００２Ｘ",
            "digits and the last a digit or X",
        ),  # full-width: use halfwidth
        ("", "18 characters expected, got 0"),
    ],
)
def test_id_number_malformed(column: Column, value: str, fragment: str) -> None:
    assert fragment in reason(column(validators=["id_number"]), value)


def test_id_number_after_halfwidth_and_upper(column: Column) -> None:
    validate = column(transforms=["strip", "halfwidth", "upper"], validators=["required", "id_number"])
    assert validate("　１１０１０５１９４９１２３１００２ｘ ") == "11010519491231002X"


def test_id_number_lets_null_through_and_required_does_not(column: Column) -> None:
    assert column(validators=["id_number"])(None) is None
    assert reason(column(validators=["required", "id_number"]), None) == "required value missing"
    assert reason(column(validators=["required"]), "  ") == "required value missing"


def test_validation_before_mask_and_masked_error_messages(column: Column) -> None:
    masked = column(transforms=["strip", {"mask": "id_number"}], validators=["id_number"])
    assert masked(" 11010519491231002x ") == "110105********002X"  # validated (and normalised), then masked
    wrong = "110105194912310021"
    text = reason(column(transforms=[{"mask": "id_number"}], validators=[{"regex": r"\d{17}X"}]), wrong)
    assert wrong not in text
    assert "'110105********0021'" in text  # shown as it would be stored


# --------------------------------------------------------------------------- Excel damage


@pytest.mark.parametrize("value", [1.2345678901234e15, 3.60102e17, -2e16, 360102199001010000])
def test_looks_excel_damaged_numbers(value: Any) -> None:
    # floats of 10**15 and more cannot hold their digits; long integers ending in 0000 lost them
    assert looks_excel_damaged(value)


@pytest.mark.parametrize(
    "value",
    [
        "3.60102E+17",
        "3.30102e+17",
        "3.30102E17",
        " 3.6E+17 ",
        "360102000000000000",
        "360102000000000000.0",
        "3601021990010100000",
        3.60102e17,
        360102000000000000,
    ],
)
def test_excel_damage_detected(column: Column, value: Any) -> None:
    assert looks_excel_damaged(value)
    expected = "looks damaged by Excel (scientific notation): the upstream must send this field as text"
    assert reason(column(validators=["not_excel_damaged"]), value) == expected


@pytest.mark.parametrize(
    "value", ["11010519491231002X", "330102199001011230", "E10086", "1e", "12345", 12345, 3.5, "2000", None]
)
def test_excel_damage_not_flagged(column: Column, value: Any) -> None:
    expected = None if value is None else str(value)
    assert column(validators=["not_excel_damaged"])(value) == expected


@pytest.mark.parametrize("value", [1.2345678901234e15, 1.10105194912159e17, -2e16])
@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"transforms": ["strip"]},
        {"type": "int"},
        {"transforms": [{"mask": "id_number"}]},
        {"transforms": [{"hash": {"salt": "s"}}], "length": 64},
    ],
    ids=["string", "transformed", "int", "masked", "hashed"],
)
def test_float_excel_damage_detected_before_the_cast_makes_it_text(
    column: Column, spec: dict[str, Any], value: float
) -> None:
    # the string cast would turn 1.2345678901234e15 into '1234567890123400' (no 0000 tail) and
    # 1.10105194912159e17 into '110105194912159008' (a valid-looking ID number): the float itself
    # is checked, on every column as on masked ones
    expected = "looks damaged by Excel (scientific notation): the upstream must send this field as text"
    assert reason(column(**spec, validators=["not_excel_damaged"]), value) == expected
    id_reason = reason(column(**spec, validators=["id_number"]), value)
    assert id_reason == "not a valid ID number (身份证号): " + expected
    custom = column(**spec, validators=["required", {"type": "id_number", "message": "身份证号被Excel损坏"}])
    assert reason(custom, value) == "身份证号被Excel损坏"


def test_numbers_that_are_not_damaged_still_pass_as_text(column: Column) -> None:
    checked = column(validators=["not_excel_damaged", {"type": "length", "max": 20}])
    assert checked(3.5) == "3.5"
    assert checked(123456789012345.0) == "123456789012345"  # below 10**15: every digit held
    exact = 330102199001011234  # a JSON integer keeps every digit
    assert column(validators=["id_number"])(exact) == str(exact)
    assert "15-digit old-style" in reason(column(validators=["id_number"]), 330102900101123.0)


# --------------------------------------------------------------------------- regex, length, range


def test_regex_is_a_full_match(column: Column) -> None:
    division = column(validators=[{"regex": "[0-9]{12}"}])
    assert division("330102001001") == "330102001001"
    assert "does not match the pattern [0-9]{12}" in reason(division, "3301020010011")
    assert "does not match" in reason(division, "33010200100")
    assert division(None) is None
    assert column(type="int", validators=[{"regex": "[1-9][0-9]*"}])("42") == 42


def test_length(column: Column) -> None:
    name = column(validators=[{"type": "length", "min": 2, "max": 4}])
    assert name("𠮷野") == "𠮷野"  # two characters, not three UTF-16 units
    assert "too short (1 < 2 characters)" in reason(name, "张")
    assert "too long (5 > 4 characters)" in reason(name, "张三李四王")


def test_range(column: Column) -> None:
    age = column(type="int", validators=[{"type": "range", "min": 0, "max": 150}])
    assert age("42") == 42
    assert "below the minimum 0" in reason(age, -1)
    assert "above the maximum 150" in reason(age, "151")
    amount = column(type="decimal", scale=2, validators=[{"type": "range", "min": "0.01"}])
    assert str(amount("0.01")) == "0.01"
    assert "below the minimum" in reason(amount, "0.001")  # quantized to 0.00 first
    text = column(validators=[{"type": "range", "max": 10}])
    assert text("9.5") == "9.5"
    assert "is not a number" in reason(text, "abc")


def test_message_overrides_the_reason(column: Column) -> None:
    custom = "身份证号不合法 (invalid ID number)"
    assert reason(column(validators=[{"type": "id_number", "message": custom}]), "123") == custom
    assert reason(column(validators=[{"type": "required", "message": "姓名必填"}]), None) == "姓名必填"
