"""Transforms of the field mapping, each exercised through a compiled one-column mapping.

Every case runs twice: with the statement templates pasted into the generated function
(the fast path) and with every step called as a function, so both forms must agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date, datetime
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
            "target": {"table": "t", "key": [next(iter(columns))]},
            "columns": columns,
        }
    )


@pytest.fixture(params=[True, False], ids=["inline", "functions"])
def column(request: pytest.FixtureRequest) -> Column:
    """``column(transforms=[...], type=..., ...)`` -> ``value -> mapped value`` (source ``x``).

    The mapped column is not the key, so a None result is allowed.
    """

    def make(code_tables: dict[str, dict[str, str]] | None = None, **spec: Any) -> Callable[[Any], Any]:
        cfg = dataset({"k": {"transforms": [{"constant": "k"}]}, "c": {"source": "x", **spec}})
        mapping = compile_mapping(cfg, code_tables, inline=request.param)
        return lambda value: mapping({"x": value})[1]

    return make


# --------------------------------------------------------------------------- text clean-up


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 张三 ", "张三"),
        ("\u3000张三\u3000", "张三"),  # ideographic (full-width) space
        ("\t李四\r\n", "李四"),
        ("\ufeff王五\u200b", "王五"),  # BOM and zero-width space from Excel exports
        ("\xa0𠮷野家\u2003", "𠮷野家"),  # rare character outside the BMP survives
        ("  ", ""),
        (12, "12"),  # numbers pass through strip and become text in the cast
        (None, None),
    ],
)
def test_strip(column: Column, raw: Any, expected: Any) -> None:
    assert column(transforms=["strip"])(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("３３０１０２１９９００１０１１２３Ｘ", "33010219900101123X"),
        ("ＡＢＣａｂｃ！？（）－", "ABCabc!?()-"),
        ("１３８\u3000１２３４", "138 1234"),
        ("𠮷田　一", "𠮷田 一"),
        ("张三", "张三"),
        ("plain", "plain"),
    ],
)
def test_halfwidth(column: Column, raw: str, expected: str) -> None:
    assert column(transforms=["halfwidth"])(raw) == expected


def test_upper_and_lower(column: Column) -> None:
    assert column(transforms=["upper"])("11010519491231002x") == "11010519491231002X"
    assert column(transforms=["lower"])("ABC张") == "abc张"
    assert column(transforms=["upper"])(None) is None


@pytest.mark.parametrize(
    "placeholder", ["无", "/", "-", "--", "null", "NULL", "None", "N/A", "", " 无 ", "\u3000/"]
)
def test_null_if_default_placeholders(column: Column, placeholder: str) -> None:
    assert column(transforms=["null_if"])(placeholder) is None


def test_null_if_keeps_real_values_unchanged(column: Column) -> None:
    null_if = column(transforms=["null_if"])
    assert null_if("无业") == "无业"
    assert null_if(" 张三 ") == " 张三 "  # compared after strip, but not stripped
    assert null_if(0) == "0"


def test_null_if_custom_values_and_numbers(column: Column) -> None:
    null_if = column(type="int", transforms=[{"null_if": ["0", "未知"]}])
    assert null_if(0) is None
    assert null_if("0") is None
    assert null_if("未知") is None
    assert null_if("3") == 3
    assert column(transforms=[{"null_if": ["无"]}])("/") == "/"


@pytest.mark.parametrize("raw", [-1, -1.0, "-1", " -1 ", Decimal("-1"), Decimal("-1.00"), Decimal("-1E+0")])
def test_null_if_matches_every_number_form_including_decimal(column: Column, raw: Any) -> None:
    # SQL sources deliver NUMERIC columns as Decimal: the placeholder -1 must match it too
    assert column(type="int", transforms=[{"null_if": ["-1"]}])(raw) is None
    assert column(type="decimal", transforms=[{"null_if": ["-1"]}])(raw) is None


def test_null_if_on_decimal_compares_the_value_as_written_and_without_trailing_zeros(column: Column) -> None:
    exact = column(type="decimal", transforms=[{"null_if": ["0.00", "99.5"]}])
    assert exact(Decimal("0.00")) is None
    assert exact(Decimal("99.50")) is None
    assert exact(Decimal("0")) == Decimal("0.00")  # "0" is not listed
    assert exact(Decimal("99.05")) == Decimal("99.05")
    assert exact(Decimal("-1")) == Decimal("-1.00")


def test_default_replaces_only_null(column: Column) -> None:
    default = column(transforms=["null_if", {"default": "未登记"}])
    assert default(None) == "未登记"
    assert default("无") == "未登记"
    assert default("张三") == "张三"
    assert column(transforms=[{"default": "x"}])("") == ""  # an empty string is a value


def test_constant_column_needs_no_source() -> None:
    mapping = compile_mapping(
        dataset(
            {
                "k": {"source": "id"},
                "origin": {"transforms": [{"constant": "省平台"}]},
                "version": {"type": "int", "transforms": [{"constant": 2}]},
            }
        )
    )
    assert mapping({"id": "a", "origin": "ignored"}) == ("a", "省平台", 2)
    assert mapping.source_paths == frozenset({"id"})


# --------------------------------------------------------------------------- dates

DATE_FORMATS = ["%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%Y年%m月%d日", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"]


@pytest.mark.parametrize(
    "raw",
    [
        "20241102",
        "2024-11-02",
        "2024/11/02",
        "2024年11月2日",
        "2024年11月02日",
        "2024-11-02 00:00:00",
        "2024-11-02 00:00:00.0",  # the Java-ish shape of many gateways
        "2024-11-02 13:45:10.123",
        " 2024-11-02 ",
        "2024-11-2",  # strptime accepts a day without its leading zero
        20241102,  # a number
    ],
)
def test_date_shapes(column: Column, raw: Any) -> None:
    assert column(type="date", transforms=[{"date": DATE_FORMATS}])(raw) == date(2024, 11, 2)


def test_date_month_and_day_without_leading_zero(column: Column) -> None:
    parse = column(type="date", transforms=[{"date": ["%Y年%m月%d日"]}])
    assert parse("2024年1月5日") == date(2024, 1, 5)
    assert parse("2024年01月05日") == date(2024, 1, 5)
    assert parse("1949年10月1日") == date(1949, 10, 1)


def test_date_full_width_digits_after_halfwidth(column: Column) -> None:
    parse = column(type="date", transforms=["halfwidth", {"date": ["%Y年%m月%d日"]}])
    assert parse("２０２４年１１月２日") == date(2024, 11, 2)


def test_date_first_format_wins(column: Column) -> None:
    # "01/02/2024" is 1 February in %d/%m/%Y and 2 January in %m/%d/%Y
    assert column(type="date", transforms=[{"date": ["%d/%m/%Y", "%m/%d/%Y"]}])("01/02/2024") == date(
        2024, 2, 1
    )
    assert column(type="date", transforms=[{"date": ["%m/%d/%Y", "%d/%m/%Y"]}])("01/02/2024") == date(
        2024, 1, 2
    )


def test_date_with_strptime_only_directives(column: Column) -> None:
    assert column(type="date", transforms=[{"date": ["%d %b %Y"]}])("02 Nov 2024") == date(2024, 11, 2)
    assert column(type="date", transforms=[{"date": ["%Y-%j"]}])("2024-307") == date(2024, 11, 2)


@pytest.mark.parametrize(
    "raw", ["20240230", "2024-02-30", "2024年2月30日", "2023-02-29 00:00:00.0", "2024-13-01"]
)
def test_impossible_date_names_value_and_formats(column: Column, raw: str) -> None:
    parse = column(
        type="date", transforms=[{"date": ["%Y%m%d", "%Y-%m-%d", "%Y年%m月%d日", "%Y-%m-%d %H:%M:%S.%f"]}]
    )
    with pytest.raises(RecordError) as caught:
        parse(raw)
    assert caught.value.column == "c"
    assert repr(raw) in caught.value.reason
    assert "%Y%m%d, %Y-%m-%d, %Y年%m月%d日, %Y-%m-%d %H:%M:%S.%f" in caught.value.reason


def test_date_placeholders_and_blanks(column: Column) -> None:
    parse = column(type="date", transforms=["null_if", {"date": ["%Y%m%d"]}])
    assert parse("无") is None
    assert parse("  ") is None
    assert parse(None) is None
    with pytest.raises(RecordError, match="not a valid date"):
        parse("unknown")


def test_datetime_transform(column: Column) -> None:
    parse = column(
        type="datetime", transforms=[{"datetime": ["%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S", "%Y%m%d"]}]
    )
    assert parse("2024-11-02 08:30:05") == datetime(2024, 11, 2, 8, 30, 5)
    assert parse("20241102083005") == datetime(2024, 11, 2, 8, 30, 5)
    assert parse("20241102") == datetime(2024, 11, 2)
    defaults = column(type="datetime", transforms=["datetime"])
    assert defaults("2024-11-02 00:00:00.0") == datetime(2024, 11, 2)
    assert defaults("2024-11-02T08:30:05") == datetime(2024, 11, 2, 8, 30, 5)
    assert defaults("2024/11/02 08:30:05") == datetime(2024, 11, 2, 8, 30, 5)


def test_date_transform_into_a_string_column(column: Column) -> None:
    # normalising a date to ISO text: the string cast writes dates as YYYY-MM-DD
    assert column(transforms=[{"date": ["%Y年%m月%d日"]}])("2024年11月2日") == "2024-11-02"


def test_date_cache_is_bounded(column: Column) -> None:
    from syncd.mapping import transforms

    parse = column(type="date", transforms=[{"date": ["%Y%m%d"]}])
    days = [
        date.fromordinal(date(1900, 1, 1).toordinal() + i) for i in range(transforms.PARSE_CACHE_SIZE + 10)
    ]
    for day in days:
        assert parse(day.strftime("%Y%m%d")) == day
    assert parse("19000101") == date(1900, 1, 1)  # still right after the cache was cleared


# --------------------------------------------------------------------------- code tables

GENDER = {"1": "男", "2": "女", "9": "未说明"}


def test_code_table_inline_numbers_and_padding(column: Column) -> None:
    lookup = column(transforms=[{"code_table": {"table": GENDER}}])
    assert lookup("1") == "男"
    assert lookup(2) == "女"  # keys are compared as strings
    assert lookup(9.0) == "未说明"
    assert lookup(" 1 ") == "男"
    assert lookup(None) is None
    assert lookup("5") == "5"  # unknown: keep (the default)


def test_code_table_unknown_modes(column: Column) -> None:
    assert column(transforms=[{"code_table": {"table": GENDER, "unknown": "null"}}])("男") is None
    strict = column(transforms=[{"code_table": {"table": GENDER, "unknown": "quarantine"}}])
    with pytest.raises(RecordError) as caught:
        strict("男")
    assert caught.value.column == "c"
    assert "'男' is not in code table (inline)" in caught.value.reason
    assert "known codes: 1, 2, 9" in caught.value.reason


def test_code_table_by_name(column: Column) -> None:
    tables = {"ethnicity": {"01": "汉族", "03": "回族"}}
    lookup = column(
        code_tables=tables, transforms=[{"code_table": {"table": "ethnicity", "unknown": "quarantine"}}]
    )
    assert lookup("01") == "汉族"
    with pytest.raises(RecordError, match="not in code table ethnicity"):
        lookup("1")


# --------------------------------------------------------------------------- regex_extract, concat


def test_regex_extract(column: Column) -> None:
    assert column(transforms=[{"regex_extract": r"(\d{6})"}])("浙江省杭州市 310000") == "310000"
    assert (
        column(transforms=[{"regex_extract": {"pattern": r"(?P<road>\S+路)(\d+)号", "group": "road"}}])(
            "文三路149号"
        )
        == "文三路"
    )
    assert (
        column(transforms=[{"regex_extract": {"pattern": r"(\S+路)(\d+)号", "group": 2}}])("文三路149号")
        == "149"
    )
    assert column(transforms=[{"regex_extract": r"\d+"}])("编号 42") == "42"  # no group: the whole match
    assert column(transforms=[{"regex_extract": r"(\d+)"}])("无") is None
    assert column(transforms=[{"regex_extract": r"(\d+)"}])(12.0) == "12"


def test_concat_skips_missing_parts(column: Column) -> None:
    cfg = dataset(
        {
            "k": {"source": "id"},
            "address": {
                "transforms": [
                    {"concat": {"fields": ["addr.street", "addr.detail", "addr.no"], "separator": " "}},
                    "strip",
                ]
            },
        }
    )
    mapping = compile_mapping(cfg)
    assert mapping({"id": 1, "addr": {"street": "拱宸桥街道", "detail": "文三路", "no": 149}}) == (
        "1",
        "拱宸桥街道 文三路 149",
    )
    assert mapping({"id": 1, "addr": {"street": "拱宸桥街道", "detail": None, "no": ""}}) == (
        "1",
        "拱宸桥街道",
    )
    assert mapping({"id": 1}) == ("1", None)
    assert mapping.source_paths == frozenset({"id", "addr.street", "addr.detail", "addr.no"})


# --------------------------------------------------------------------------- mask and hash


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("id_number", "330102199001011234", "330102********1234"),
        ("id_number", "33010219900101123X", "330102********123X"),
        ("id_number", "330102900101123", "330102*****1123"),  # 15 characters
        ("id_number", "1234567890", "**********"),  # too short to keep anything safely
        ("phone", "13812345678", "138****5678"),
        ("phone", 13812345678, "138****5678"),
        ("phone", "0571-88889999", "057******9999"),
        ("name", "张", "张"),
        ("name", "张三", "张*"),
        ("name", "张三丰", "张**"),
        ("name", "欧阳娜娜", "欧***"),
        ("name", "𠮷野家", "𠮷**"),  # the rare surname counts as one character
        ("name", "李𠮷", "李*"),
    ],
)
def test_mask_kinds(column: Column, kind: str, raw: Any, expected: str) -> None:
    assert column(transforms=[{"mask": kind}])(raw) == expected


def test_mask_keep(column: Column) -> None:
    assert (
        column(transforms=[{"mask": {"kind": "keep", "keep_first": 2, "keep_last": 1}}])("𠮷野家太郎")
        == "𠮷野**郎"
    )
    assert column(transforms=[{"mask": {"kind": "keep", "keep_first": 1}}])("ABCD") == "A***"
    assert column(transforms=[{"mask": {"kind": "keep"}}])("ABCD") == "****"
    assert column(transforms=[{"mask": "name"}])(None) is None


def test_hash_is_salted_sha256_by_default(column: Column) -> None:
    digest = column(transforms=["strip", {"hash": {"salt": "s3cr3t-salt"}}])(" 11010519491231002X ")
    assert digest == hashlib.sha256(b"s3cr3t-salt11010519491231002X").hexdigest()
    assert column(transforms=[{"hash": {"salt": "s3cr3t-salt"}}])(None) is None


def test_hash_sm3(column: Column) -> None:
    digest = column(transforms=[{"hash": {"salt": "盐", "algorithm": "sm3"}}])("13812345678")
    expected = hashlib.new("sm3", "盐13812345678".encode())
    assert digest == expected.hexdigest()
    assert len(digest) == 64


def test_hash_salt_never_in_source_or_repr() -> None:
    mapping = compile_mapping(
        dataset({"k": {"source": "id", "transforms": [{"hash": {"salt": "TOP-SECRET-SALT"}}]}})
    )
    assert "TOP-SECRET-SALT" not in mapping.python_source
    assert "TOP-SECRET-SALT" not in repr(mapping)
    assert "TOP-SECRET-SALT" not in repr(mapping.specs)
    with pytest.raises(RecordError) as caught:
        mapping({"id": {"nested": 1}})
    assert "TOP-SECRET-SALT" not in str(caught.value)
