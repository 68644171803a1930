"""Configuration mistakes found while compiling a mapping: MappingSpecError with the exact path."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.config.model import DatasetConfig
from syncd.mapping import TRANSFORMS, VALIDATORS, MappingSpecError, compile_mapping

CODE_TABLES = {"ethnicity": {"01": "汉族"}, "gender": {"1": "男", "2": "女"}}


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
            "columns": {"k": {"source": "id"}, **columns},
        }
    )


def spec_error(column: dict[str, Any]) -> MappingSpecError:
    with pytest.raises(MappingSpecError) as caught:
        compile_mapping(dataset({"birth": column}), CODE_TABLES)
    return caught.value


CASES: list[tuple[str, dict[str, Any], tuple[str | int, ...], str]] = [
    (
        "unknown transform with suggestion",
        {"source": "x", "transforms": ["strip", "uper"]},
        ("columns", "birth", "transforms", 1),
        "unknown transform 'uper' (did you mean 'upper'?); known transforms are: code_table, concat",
    ),
    (
        "unknown validator",
        {"source": "x", "validators": ["id_card"]},
        ("columns", "birth", "validators", 0),
        "unknown validator 'id_card'",
    ),
    (
        "option a transform does not use",
        {"source": "x", "transforms": ["strip", "null_if", {"type": "strip", "values": ["无"]}]},
        ("columns", "birth", "transforms", 2, "values"),
        "option values is not used by the `strip` transform; it takes no options",
    ),
    (
        "several unused options",
        {"source": "x", "transforms": [{"type": "date", "formats": ["%Y"], "pattern": "x", "kind": "name"}]},
        ("columns", "birth", "transforms", 0, "kind"),
        "options kind, pattern are not used by the `date` transform; it takes: formats",
    ),
    (
        "option a validator does not use",
        {"source": "x", "validators": [{"type": "id_number", "pattern": "x"}]},
        ("columns", "birth", "validators", 0, "pattern"),
        "not used by the `id_number` validator; it takes: message",
    ),
    (
        "bad regex in regex_extract",
        {"source": "x", "transforms": [{"regex_extract": "(\\d+"}]},
        ("columns", "birth", "transforms", 0, "pattern"),
        "is not a valid regular expression",
    ),
    (
        "bad regex in a validator",
        {"source": "x", "validators": [{"regex": "[0-9"}]},
        ("columns", "birth", "validators", 0, "pattern"),
        "is not a valid regular expression",
    ),
    (
        "regex_extract group out of range",
        {"source": "x", "transforms": [{"regex_extract": {"pattern": "(\\d+)", "group": 2}}]},
        ("columns", "birth", "transforms", 0, "group"),
        "group 2 does not exist: the pattern has 1 group(s)",
    ),
    (
        "regex_extract unknown group name",
        {"source": "x", "transforms": [{"regex_extract": {"pattern": "(?P<a>\\d+)", "group": "b"}}]},
        ("columns", "birth", "transforms", 0, "group"),
        "no group named 'b'",
    ),
    (
        "unknown code table",
        {"source": "x", "transforms": ["strip", {"code_table": "ethnicty"}]},
        ("columns", "birth", "transforms", 1, "table"),
        "unknown code table 'ethnicty' (did you mean 'ethnicity'?)",
    ),
    (
        "empty inline code table",
        {"source": "x", "transforms": [{"code_table": {"table": {}}}]},
        ("columns", "birth", "transforms", 0, "table"),
        "code table (inline) is empty",
    ),
    (
        "code table without a table",
        {"source": "x", "transforms": [{"type": "code_table", "unknown": "null"}]},
        ("columns", "birth", "transforms", 0),
        "code_table needs `table`",
    ),
    (
        "date format in YYYY notation",
        {"source": "x", "type": "date", "transforms": [{"date": ["%Y%m%d", "YYYY-MM-DD"]}]},
        ("columns", "birth", "transforms", 0, "formats", 1),
        "'YYYY-MM-DD' is not a strftime format: write it with % directives",
    ),
    (
        "unknown strftime directive",
        {"source": "x", "type": "date", "transforms": [{"date": ["%Y-%Q"]}]},
        ("columns", "birth", "transforms", 0, "formats", 0),
        "is not a valid strftime format",
    ),
    (
        "lone percent",
        {"source": "x", "type": "date", "transforms": [{"date": ["%Y%m%d%"]}]},
        ("columns", "birth", "transforms", 0, "formats", 0),
        "ends with a lone '%'",
    ),
    (
        "time-zone directive",
        {"source": "x", "type": "datetime", "transforms": [{"datetime": ["%Y-%m-%dT%H:%M:%S%z"]}]},
        ("columns", "birth", "transforms", 0, "formats", 0),
        "time-zone directive",
    ),
    (
        "empty format list",
        {"source": "x", "type": "date", "transforms": [{"type": "date", "formats": []}]},
        ("columns", "birth", "transforms", 0, "formats"),
        "date lists no formats",
    ),
    (
        "constant incompatible with an int column",
        {"type": "int", "transforms": [{"constant": "abc"}]},
        ("columns", "birth", "transforms", 0, "value"),
        "the constant value 'abc' does not fit this int column: 'abc' is not a whole number",
    ),
    (
        "constant too long",
        {"length": 2, "transforms": [{"constant": "abc"}]},
        ("columns", "birth", "transforms", 0, "value"),
        "too long (3 > 2)",
    ),
    (
        "constant null in a not-nullable column",
        {"nullable": False, "transforms": [{"type": "constant", "value": None}]},
        ("columns", "birth", "transforms", 0, "value"),
        "required value missing",
    ),
    (
        "constant that is a mapping",
        {"transforms": [{"type": "constant", "value": {"a": 1}}]},
        ("columns", "birth", "transforms", 0, "value"),
        "must be a single value",
    ),
    (
        "constant without a value",
        {"transforms": ["constant"]},
        ("columns", "birth", "transforms", 0),
        "constant needs a `value`",
    ),
    (
        "default incompatible with a date column",
        {"source": "x", "type": "date", "transforms": ["null_if", {"default": "unknown"}]},
        ("columns", "birth", "transforms", 1, "value"),
        "the default value 'unknown' does not fit this date column",
    ),
    (
        "default rejected by the transforms after it",
        {
            "source": "x",
            "transforms": [{"default": "3"}, {"code_table": {"table": "gender", "unknown": "quarantine"}}],
        },
        ("columns", "birth", "transforms", 0, "value"),
        "'3' is not in code table gender",
    ),
    (
        "default without a value",
        {"source": "x", "transforms": ["default"]},
        ("columns", "birth", "transforms", 0),
        "default needs a `value`",
    ),
    (
        "generator not first",
        {"source": "x", "transforms": ["strip", {"constant": "a"}]},
        ("columns", "birth", "transforms", 1),
        "`constant` produces the column's value, so it must be the first transform",
    ),
    (
        "source beside concat",
        {"source": "x", "transforms": [{"concat": {"fields": ["a", "b"]}}]},
        ("columns", "birth", "source"),
        "`source` is not read when the first transform is `concat`",
    ),
    (
        "concat without fields",
        {"transforms": [{"type": "concat", "separator": "-"}]},
        ("columns", "birth", "transforms", 0, "fields"),
        "concat needs `fields`",
    ),
    (
        "mask on a non-string column",
        {"source": "x", "type": "int", "transforms": [{"mask": "phone"}]},
        ("columns", "birth", "type"),
        "a masked value is text: use type: string",
    ),
    (
        "mask without a kind",
        {"source": "x", "transforms": [{"type": "mask", "keep_first": 1}]},
        ("columns", "birth", "transforms", 0),
        "mask needs a `kind`",
    ),
    (
        "keep_first with a fixed kind",
        {"source": "x", "transforms": [{"mask": {"kind": "phone", "keep_first": 2}}]},
        ("columns", "birth", "transforms", 0, "keep_first"),
        "keep_first applies to kind: keep only",
    ),
    (
        "negative keep_last",
        {"source": "x", "transforms": [{"mask": {"kind": "keep", "keep_last": -1}}]},
        ("columns", "birth", "transforms", 0, "keep_last"),
        "keep_last must be 0 or more",
    ),
    (
        "hash without a salt",
        {"source": "x", "transforms": ["hash"]},
        ("columns", "birth", "transforms", 0),
        "hash needs a `salt`",
    ),
    (
        "hash longer than the column",
        {"source": "x", "length": 32, "transforms": [{"hash": {"salt": "s"}}]},
        ("columns", "birth", "length"),
        "a hash is 64 hex characters but length is 32",
    ),
    (
        "null_if with an empty list",
        {"source": "x", "transforms": [{"type": "null_if", "values": []}]},
        ("columns", "birth", "transforms", 0, "values"),
        "null_if lists no values",
    ),
    (
        "length validator without bounds",
        {"source": "x", "validators": [{"type": "length"}]},
        ("columns", "birth", "validators", 0),
        "length needs `min`, `max` or both",
    ),
    (
        "length validator min above max",
        {"source": "x", "validators": ["required", {"type": "length", "min": 5, "max": 2}]},
        ("columns", "birth", "validators", 1, "min"),
        "min (5) is greater than max (2)",
    ),
    (
        "length validator with a fraction",
        {"source": "x", "validators": [{"type": "length", "max": 2.5}]},
        ("columns", "birth", "validators", 0, "max"),
        "max must be a whole number of characters",
    ),
    (
        "range on a date column",
        {"source": "x", "type": "date", "validators": [{"type": "range", "min": 0}]},
        ("columns", "birth", "validators", 0),
        "range checks numbers; this column's type is date",
    ),
    (
        "regex validator without a pattern",
        {"source": "x", "validators": [{"type": "regex", "message": "bad"}]},
        ("columns", "birth", "validators", 0),
        "regex needs a `pattern`",
    ),
    (
        "bool value listed as both",
        {"source": "x", "type": "bool", "true_values": ["1", "Y"], "false_values": ["0", "Y"]},
        ("columns", "birth", "true_values"),
        "Y appear in both true_values and false_values",
    ),
]


@pytest.mark.parametrize(("case", "column", "path", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_spec_error_path_and_message(
    case: str, column: dict[str, Any], path: tuple[str | int, ...], fragment: str
) -> None:
    error = spec_error(column)
    assert error.path == path
    assert fragment in error.message
    assert str(error) == ".".join(str(p) for p in path) + ": " + error.message
    assert isinstance(error, ValueError)


def test_unknown_type_lists_every_known_type() -> None:
    assert all(name in spec_error({"source": "x", "transforms": ["nope"]}).message for name in TRANSFORMS)
    assert all(name in spec_error({"source": "x", "validators": ["nope"]}).message for name in VALIDATORS)


def test_hash_salt_never_in_spec_errors() -> None:
    error = spec_error({"source": "x", "length": 10, "transforms": [{"hash": {"salt": "TOP-SECRET-SALT"}}]})
    assert "TOP-SECRET-SALT" not in str(error)
    error = spec_error(
        {"source": "x", "transforms": [{"type": "hash", "salt": "TOP-SECRET-SALT", "kind": "name"}]}
    )
    assert "TOP-SECRET-SALT" not in str(error)


def test_sm3_is_accepted_where_openssl_has_it() -> None:
    mapping = compile_mapping(
        dataset({"birth": {"source": "x", "transforms": [{"hash": {"salt": "s", "algorithm": "sm3"}}]}})
    )
    assert len(mapping({"id": 1, "x": "1"})[1]) == 64


def test_spec_error_in_the_first_bad_column_wins() -> None:
    with pytest.raises(MappingSpecError) as caught:
        compile_mapping(
            dataset(
                {"a": {"source": "x", "transforms": ["bad_a"]}, "b": {"source": "y", "transforms": ["bad_b"]}}
            )
        )
    assert caught.value.path == ("columns", "a", "transforms", 0)



MINIMAL: dict[str, Any] = {
    "name": "t",
    "source": {"type": "http", "connection": "gw", "path": "/api/x"},
    "authorization": {"approval_code": "T-1", "fields": ["x"], "valid_from": "2026-01-01",
                      "valid_until": "2027-01-01"},
    "target": {"table": "t", "key": ["k"]},
}


def keyed(transforms: list[Any]) -> DatasetConfig:
    """A dataset whose key column ``k`` has these transforms."""
    return DatasetConfig.model_validate(
        {**MINIMAL, "columns": {"k": {"source": "id", "length": 64, "transforms": transforms}}}
    )


@pytest.mark.parametrize(
    ("transforms", "at"),
    [
        ([{"mask": "id_number"}], 0),
        (["strip", {"mask": {"kind": "keep", "keep_first": 6}}, {"hash": "s"}], 1),
    ],
)
def test_mask_on_a_key_column_is_refused(transforms: list[Any], at: int) -> None:
    """A masked key merges different records into one row (the second overwrites the first)."""
    with pytest.raises(MappingSpecError) as caught:
        compile_mapping(keyed(transforms))
    assert caught.value.path == ("columns", "k", "transforms", at)
    assert "target.key column and `mask` cannot be on it" in caught.value.message
    assert "salted hash" in caught.value.message and "${credential:NAME}" in caught.value.message


def test_a_salted_hash_on_a_key_column_keeps_records_apart() -> None:
    mapping = compile_mapping(keyed(["strip", {"hash": "s"}]))
    a, b = mapping({"id": "11010519491231002X"}), mapping({"id": "11010519571231002X"})
    assert mapping.key_of(a) != mapping.key_of(b)
