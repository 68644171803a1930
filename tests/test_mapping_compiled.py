"""The compiled mapping as a whole: a realistic 15-column dataset, errors, keys, redaction.

Also checks the two promises the fast paths rest on: the date parsers agree with
``datetime.strptime`` on arbitrary text, and the generated statements agree with the
plain step functions on arbitrary values.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config.model import DatasetConfig
from syncd.errors import RecordError
from syncd.gateway.data import CODE_TABLES, generate_records
from syncd.mapping import CompiledMapping, compile_mapping
from syncd.mapping.compiler import LEFT_OUT, compile_replay
from syncd.mapping.dates import build_parser
from syncd.paths import MISSING, compile_path

DATES = ["%Y-%m-%d", "%Y%m%d", "%Y年%m月%d日", "%Y-%m-%d %H:%M:%S.%f"]

RESIDENTS: dict[str, Any] = {
    "name": "residents",
    "source": {"type": "http", "connection": "gw", "path": "/api/residents/query"},
    "authorization": {
        "approval_code": "浙数资审〔2026〕0158号",
        "fields": [
            "id",
            "name",
            "idCard",
            "gender",
            "birthDate",
            "phone",
            "address",
            "ethnicity",
            "education",
            "householdId",
            "income",
            "householdSize",
            "registerDate",
            "contact",
            "updateTime",
        ],
        "valid_from": "2026-01-01",
        "valid_until": "2027-12-31",
    },
    "target": {"table": "resident_info", "key": ["resident_id"]},
    "columns": {
        "resident_id": {"source": "id", "length": 16, "nullable": False},
        "name": {"source": "name", "length": 64, "transforms": ["strip"]},
        "id_number": {
            "source": "idCard",
            "length": 18,
            "transforms": ["strip", "halfwidth"],
            "validators": ["required", "not_excel_damaged", "id_number"],
        },
        "id_hash": {
            "source": "idCard",
            "length": 64,
            "transforms": ["strip", "halfwidth", "upper", {"hash": {"salt": "county-salt"}}],
        },
        "emergency_contact": {
            "source": "contact.emergencyName",
            "length": 64,
            "transforms": ["strip", "null_if", {"mask": "name"}],
        },
        "gender": {
            "source": "gender",
            "length": 8,
            "transforms": ["strip", {"code_table": {"table": "gender", "unknown": "quarantine"}}],
        },
        "birth_date": {
            "source": "birthDate",
            "type": "date",
            "transforms": ["strip", "null_if", {"date": DATES}],
        },
        "phone": {
            "source": "phone",
            "length": 11,
            "transforms": ["strip", "halfwidth", "null_if", {"mask": "phone"}],
        },
        "division_code": {
            "source": "address.divisionCode",
            "length": 12,
            "validators": [{"regex": "[0-9]{12}"}],
        },
        "address": {"source": "address.detail", "length": 200, "transforms": ["strip", "null_if"]},
        "ethnicity": {"source": "ethnicity", "length": 16, "transforms": [{"code_table": "ethnicity"}]},
        "household_size": {"source": "householdSize", "type": "int", "transforms": ["null_if"]},
        "income": {
            "source": "income",
            "type": "decimal",
            "precision": 14,
            "scale": 2,
            "transforms": ["null_if"],
        },
        "register_date": {"source": "registerDate", "type": "date", "transforms": [{"date": DATES}]},
        "updated_at": {
            "source": "updateTime",
            "type": "datetime",
            "transforms": [{"datetime": ["%Y-%m-%d %H:%M:%S"]}],
        },
    },
}

RECORD: dict[str, Any] = {
    "id": "R00104729",
    "name": "\u3000𠮷田丽 ",
    "idCard": " 11010519491231002x",
    "gender": 1,
    "birthDate": "1949年12月31日",
    "phone": "１３８１２３４５６７８",
    "address": {"divisionCode": "330105005016", "street": "拱宸桥街道", "detail": "文三路149号14幢"},
    "ethnicity": "01",
    "householdSize": "4",
    "income": 79270.06,
    "registerDate": "2002-01-07 00:00:00.0",
    "contact": {"emergencyName": "欧阳娜娜", "emergencyPhone": ""},
    "remark": "无",
    "updateTime": "2026-01-01 00:00:04",
}


@pytest.fixture(scope="module")
def residents() -> CompiledMapping:
    return compile_mapping(DatasetConfig.model_validate(RESIDENTS), CODE_TABLES)


def test_a_mapping_compiled_again_reuses_the_code_but_not_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generated source is compiled once per text (each run compiles its mapping again); every
    compiled mapping still runs in a namespace of its own (its date parse caches among them)."""
    from syncd.mapping import codegen

    compiles: list[str] = []

    def counted(source: str, filename: str, mode: str) -> Any:
        compiles.append(filename)
        return compile(source, filename, mode)

    monkeypatch.setattr(codegen, "compile", counted, raising=False)
    config = copy.deepcopy(RESIDENTS)
    config["name"] = "residents_compiled_twice"
    dataset = DatasetConfig.model_validate(config)
    first = compile_mapping(dataset, CODE_TABLES)
    assert "<syncd mapping of dataset residents_compiled_twice>" in compiles
    compiles.clear()
    second = compile_mapping(DatasetConfig.model_validate(config), CODE_TABLES)
    assert compiles == []
    assert first.map_record.__code__ is second.map_record.__code__
    assert first.map_record.__globals__ is not second.map_record.__globals__
    assert first(RECORD) == second(RECORD)


def test_realistic_record(residents: CompiledMapping) -> None:
    row = residents(RECORD)
    assert dict(zip(residents.columns, row, strict=True)) == {
        "resident_id": "R00104729",
        "name": "𠮷田丽",
        "id_number": "11010519491231002X",
        "id_hash": hashlib.sha256(b"county-salt11010519491231002X").hexdigest(),
        "emergency_contact": "欧***",
        "gender": "男",
        "birth_date": date(1949, 12, 31),
        "phone": "138****5678",
        "division_code": "330105005016",
        "address": "文三路149号14幢",
        "ethnicity": "汉族",
        "household_size": 4,
        "income": Decimal("79270.06"),
        "register_date": date(2002, 1, 7),
        "updated_at": datetime(2026, 1, 1, 0, 0, 4),
    }


def test_columns_keys_specs_and_paths(residents: CompiledMapping) -> None:
    assert residents.columns == tuple(RESIDENTS["columns"])
    assert len(residents.columns) == 15
    assert residents.key_indexes == (0,)
    assert residents.key_of(residents(RECORD)) == ("R00104729",)
    assert residents.specs["income"].scale == 2
    assert residents.specs["id_number"].length == 18
    assert residents.source_paths == frozenset(
        {
            "id",
            "name",
            "idCard",
            "gender",
            "birthDate",
            "phone",
            "address.divisionCode",
            "address.detail",
            "ethnicity",
            "householdSize",
            "income",
            "registerDate",
            "contact.emergencyName",
            "updateTime",
        }
    )
    assert {p.split(".")[0] for p in residents.source_paths} <= set(RESIDENTS["authorization"]["fields"])


def test_composite_key() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["target"]["key"] = ["division_code", "resident_id"]
    mapping = compile_mapping(DatasetConfig.model_validate(spec), CODE_TABLES)
    assert mapping.key_indexes == (8, 0)
    assert mapping.key_of(mapping(RECORD)) == ("330105005016", "R00104729")


def test_key_columns_are_never_null() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["target"]["key"] = ["resident_id", "household_size"]
    mapping = compile_mapping(DatasetConfig.model_validate(spec), CODE_TABLES)
    with pytest.raises(RecordError) as caught:
        mapping({**RECORD, "householdSize": "无"})
    assert (caught.value.column, caught.value.reason) == (
        "household_size",
        "required value missing (key column)",
    )


@pytest.mark.parametrize(
    ("change", "column", "fragment"),
    [
        ({"idCard": "3.30105E+17"}, "id_number", "damaged by Excel"),
        ({"idCard": "110105194912310021"}, "id_number", "check digit"),
        ({"idCard": None}, "id_number", "required value missing"),
        ({"gender": "3"}, "gender", "'3' is not in code table gender"),
        ({"birthDate": "1949年2月30日"}, "birth_date", "'1949年2月30日' is not a valid date"),
        ({"householdSize": "4.5"}, "household_size", "'4.5' is not a whole number"),
        ({"income": "七万"}, "income", "'七万' is not a number"),
        ({"address": {"divisionCode": "33010500501"}}, "division_code", "does not match the pattern"),
        ({"id": None}, "resident_id", "required value missing"),
        ({"id": "R" * 17}, "resident_id", "too long (17 > 16)"),
        ({"updateTime": "2026-01-01"}, "updated_at", "is not a valid date-time"),
        ({"name": {"first": "丽"}}, "name", "JSON object"),
    ],
)
def test_bad_values_name_their_column(
    residents: CompiledMapping, change: dict[str, Any], column: str, fragment: str
) -> None:
    with pytest.raises(RecordError) as caught:
        residents({**RECORD, **change})
    assert caught.value.column == column
    assert fragment in caught.value.reason
    assert str(caught.value).startswith(f"{column}: ")


def test_missing_fields_are_null(residents: CompiledMapping) -> None:
    row = residents(
        {"id": "R1", "idCard": "11010519491231002X", "gender": "女", "updateTime": "2026-01-01 08:00:00"}
    )
    values = dict(zip(residents.columns, row, strict=True))
    assert values["division_code"] is None  # nested path under a missing object
    assert values["emergency_contact"] is None
    assert values["income"] is None


def test_nested_paths_through_non_dicts(residents: CompiledMapping) -> None:
    row = residents({**RECORD, "address": "文三路149号", "contact": None})
    values = dict(zip(residents.columns, row, strict=True))
    assert values["address"] is None
    assert values["division_code"] is None
    assert values["emergency_contact"] is None


def test_list_index_paths() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {"resident_id": {"source": "id"}, "first_phone": {"source": "phones.0.number"}}
    mapping = compile_mapping(DatasetConfig.model_validate(spec))
    assert mapping({"id": "a", "phones": [{"number": "138"}, {"number": "139"}]}) == ("a", "138")
    assert mapping({"id": "a", "phones": []}) == ("a", None)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "functions"])
def test_digit_only_path_parts_are_keys_in_objects_and_indexes_in_lists(inline: bool) -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {
        "resident_id": {"source": "id"},
        "y2023": {"source": "2023", "type": "int"},
        "y2024": {"source": "stats.2024", "type": "int"},
        "second": {"source": "stats.1", "type": "int"},
        "last": {"source": "stats.-1", "type": "int"},
        "both": {"transforms": [{"concat": {"fields": ["stats.2024", "stats.1"], "separator": "/"}}]},
    }
    mapping = compile_mapping(DatasetConfig.model_validate(spec), inline=inline)
    by_year = {"id": "a", "2023": 17, "stats": {"2024": 18, "1": 19, "-1": 20}}
    assert mapping(by_year) == ("a", 17, 18, 19, 20, "18/19")
    by_position = {"id": "a", "stats": [30, 31, 32]}
    assert mapping(by_position) == ("a", None, None, 31, 32, "31")
    int_keys = {"id": "a", "stats": {2024: 18}}  # JSON object keys are text
    assert mapping(int_keys) == ("a", None, None, None, None, None)
    assert compile_path("data.0")({"data": {"0": "key"}}) == "key"
    assert compile_path("data.0")({"data": ["item"]}) == "item"
    assert compile_path("data.0")({"data": "text"}) is MISSING


def test_redact_raw_agrees_with_the_mapping_on_digit_only_parts() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {
        "resident_id": {"source": "id"},
        "card": {"source": "ids.2024", "transforms": [{"mask": "id_number"}]},
        "first": {"source": "cards.0", "transforms": [{"mask": "id_number"}]},
    }
    mapping = compile_mapping(DatasetConfig.model_validate(spec))
    record = {"id": 1, "ids": {"2024": "330102199001011234"}, "cards": ["330102199001011234", "x"]}
    assert mapping(record) == ("1", "330102********1234", "330102********1234")
    assert mapping.redact_raw(record) == {
        "id": 1,
        "ids": {"2024": "330102********1234"},
        "cards": ["330102********1234", None],  # cards.1 is neither read nor authorized: left out
        LEFT_OUT: 1,
    }
    as_list = {"id": 1, "ids": ["330102199001011234"], "cards": {"0": "330102199001011234"}}
    assert mapping(as_list) == ("1", None, "330102********1234")  # ids.2024: no item 2024
    assert mapping.redact_raw(as_list) == {
        "id": 1,
        "ids": [None],  # not read (ids.2024 is no item of it), so not kept
        "cards": {"0": "330102********1234"},
        LEFT_OUT: 1,
    }


def test_redact_raw_keeps_only_what_the_dataset_may_hold() -> None:
    """authorization.fields and what the mapping reads; a whole object beats its parts, a list item
    may be named from either end, and a scalar where an object is expected is left out."""
    spec = copy.deepcopy(RESIDENTS)
    spec["authorization"]["fields"] = ["id", "contact", "contact.emergencyName", "tags.-1", "home.city"]
    spec["columns"] = {"resident_id": {"source": "id"}, "first": {"source": "tags.0.code"}}
    mapping = compile_mapping(DatasetConfig.model_validate(spec))
    record = {
        "id": 1, "mobile": "13812345678",
        "contact": {"emergencyName": "李四", "emergencyPhone": "139"},  # authorized whole
        "tags": [{"code": "a", "note": "n0"}, "t1", {"code": "c", "note": "n2"}],
        "home": "北京",  # home.city is authorized, but home is not an object
    }
    assert mapping.redact_raw(record) == {
        "id": 1,
        "contact": {"emergencyName": "李四", "emergencyPhone": "139"},
        "tags": [{"code": "a"}, None, {"code": "c", "note": "n2"}],
        LEFT_OUT: 4,  # mobile, tags.0.note, tags.1, home
    }
    assert mapping.redact_raw({"id": 1}) == {"id": 1}  # nothing left out: no count


def test_record_that_is_not_an_object(residents: CompiledMapping) -> None:
    with pytest.raises(RecordError, match="the record is not a JSON object"):
        residents(["R1", "张三"])  # type: ignore[arg-type]


def test_redact_raw_masks_nested_sources_and_leaves_the_original(residents: CompiledMapping) -> None:
    original = copy.deepcopy(RECORD)
    redacted = residents.redact_raw(RECORD)
    assert original == RECORD  # untouched
    assert redacted["idCard"] == hashlib.sha256(b"county-salt11010519491231002x").hexdigest()
    assert redacted["phone"] == "１３８****５６７８"
    assert redacted["contact"] == {"emergencyName": "欧***", "emergencyPhone": ""}
    assert redacted["name"] == RECORD["name"]  # not a protected column
    assert redacted["address"] == RECORD["address"]
    redacted["address"]["detail"] = "changed"
    assert RECORD["address"]["detail"] == "文三路149号14幢"  # a deep copy


def test_redact_raw_with_odd_values(residents: CompiledMapping) -> None:
    redacted = residents.redact_raw(
        {"idCard": {"raw": "11010519491231002X"}, "contact": "张三", "phone": None}
    )
    assert redacted == {"idCard": "[redacted]", "contact": "张三", "phone": None}
    assert residents.redact_raw({}) == {}
    # a lone surrogate cannot be hashed (no UTF-8 for it): redacted, not an exception on the
    # quarantine path, which would fail the batch holding the bad record
    assert residents.redact_raw({"idCard": "11010519491231002\ud800"}) == {"idCard": "[redacted]"}


def test_redact_raw_covers_concat_fields_and_masked_ids() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {
        "resident_id": {"source": "id"},
        "id_masked": {"source": "person.ids.0", "transforms": ["strip", {"mask": "id_number"}]},
        "full_name": {
            "transforms": [{"concat": {"fields": ["person.surname", "person.given"]}}, {"mask": "name"}]
        },
    }
    mapping = compile_mapping(DatasetConfig.model_validate(spec))
    record = {"id": 7, "person": {"ids": ["330102199001011234", "x"], "surname": "欧阳", "given": "娜娜"}}
    assert mapping(record) == ("7", "330102********1234", "欧***")
    assert mapping.redact_raw(record) == {
        "id": 7,
        "person": {"ids": ["330102********1234", None], "surname": "欧*", "given": "娜*"},
        LEFT_OUT: 1,
    }


def _without_clear_id(**columns: Any) -> DatasetConfig:
    """RESIDENTS without its clear id_number column (idCard then feeds only the hashed id_hash)."""
    spec = copy.deepcopy(RESIDENTS)
    del spec["columns"]["id_number"]
    spec["columns"].update(columns)
    return DatasetConfig.model_validate(spec)


def test_replay_goes_on_from_the_protected_values_and_maps_as_a_sync() -> None:
    """The quarantine keeps idCard hashed (without the upper the column applies before its hash):
    hashing it again gives another value. Replay takes the column's value as protect() computed it
    from the clear record, so the row is the one the mapping makes of the clear record."""
    dataset = _without_clear_id()
    mapping, replay = compile_mapping(dataset, CODE_TABLES), compile_replay(dataset, CODE_TABLES)
    redacted, protected = mapping.redact_raw(RECORD), mapping.protect(RECORD)
    assert protected is not None and set(protected) == {"id_hash", "emergency_contact", "phone"}
    assert replay(redacted, protected) == mapping(RECORD)
    assert replay.key_of_entry(redacted, protected) == mapping.key_record(RECORD)
    assert mapping(redacted) != mapping(RECORD)  # the plain mapping hashes the hash: another key
    # json round trip, as the quarantine table stores it
    assert replay(json.loads(json.dumps(redacted)), json.loads(json.dumps(protected))) == mapping(RECORD)


def test_replay_without_protected_values_masks_again_and_refuses_to_hash_again() -> None:
    dataset = _without_clear_id()
    mapping, replay = compile_mapping(dataset, CODE_TABLES), compile_replay(dataset, CODE_TABLES)
    redacted = mapping.redact_raw(RECORD)
    with pytest.raises(RecordError, match="id_hash: its source value is kept in the quarantine only hashed"):
        replay(redacted, None)  # an entry stored before protected values were kept
    no_id = {k: v for k, v in RECORD.items() if k != "idCard"}
    # nothing was hashed: the column maps as it does; the masks mask the masked values again
    assert replay(mapping.redact_raw(no_id), None) == mapping(no_id)
    # a salt changed since: the stored hash is not the one the column now computes
    salted = _without_clear_id(
        id_hash={
            "source": "idCard",
            "length": 64,
            "transforms": ["strip", "halfwidth", "upper", {"hash": {"salt": "another-salt"}}],
        }
    )
    with pytest.raises(RecordError, match="only hashed"):
        compile_replay(salted, CODE_TABLES)(redacted, mapping.protect(RECORD))


def test_merged_protected_values_of_entries_of_one_record_map_as_a_sync() -> None:
    """Entries of one record each holding part of its stored values (or a value computed under
    settings changed since): merged, the preferred entry's first, each column takes a value
    computed under its current settings, so the record maps as a sync of the clear one."""
    dataset = _without_clear_id()
    mapping, replay = compile_mapping(dataset, CODE_TABLES), compile_replay(dataset, CODE_TABLES)
    redacted, protected = mapping.redact_raw(RECORD), mapping.protect(RECORD)
    assert protected is not None
    stale = {**protected, "id_hash": ["0123456789abcdef", "a hash under another salt"]}
    only_hash = {"id_hash": protected["id_hash"]}
    merged = replay.merge_protected([stale, None, only_hash])
    assert merged == protected
    assert replay(redacted, merged) == mapping(RECORD)
    assert replay.merge_protected([stale]) == stale  # nothing usable instead: kept as stored
    assert replay.merge_protected([None, None]) is None


def test_replay_refuses_a_column_that_reads_a_redacted_field_in_clear(residents: CompiledMapping) -> None:
    """id_number maps idCard in clear; the quarantine keeps idCard only hashed (for id_hash):
    replay must not map the hash as if it were the ID number."""
    replay = compile_replay(DatasetConfig.model_validate(RESIDENTS), CODE_TABLES)
    with pytest.raises(RecordError, match="id_number: it reads idCard, which the quarantine keeps only"):
        replay(residents.redact_raw(RECORD), residents.protect(RECORD))
    concat = _without_clear_id(full={"transforms": [{"concat": {"fields": ["name", "idCard"]}}]})
    mapping, replay = compile_mapping(concat, CODE_TABLES), compile_replay(concat, CODE_TABLES)
    with pytest.raises(RecordError, match="full: it reads idCard"):
        replay(mapping.redact_raw(RECORD), mapping.protect(RECORD))
    record = {k: v for k, v in RECORD.items() if k != "idCard"}  # idCard absent: nothing redacted
    assert replay(mapping.redact_raw(record), mapping.protect(record)) == mapping(record)


def test_protect_keeps_only_what_passed_the_steps_before_the_mask() -> None:
    """A masked column whose validator fails on the clear value has no protected value: replay
    masks the masked value again, and the validator sees it masked (the entry stays)."""
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {
        "resident_id": {"source": "id"},
        "phone": {
            "source": "phone",
            "transforms": [{"mask": "phone"}],
            "validators": [{"regex": "1[0-9]{10}"}],
        },
        "names": {"transforms": [{"concat": {"fields": ["name", "alias"]}}, {"mask": "name"}]},
    }
    dataset = DatasetConfig.model_validate(spec)
    mapping, replay = compile_mapping(dataset), compile_replay(dataset)
    good = {"id": "R1", "phone": "13812345678", "name": "张三", "alias": "三儿"}
    assert mapping(good) == ("R1", "138****5678", "张***")
    assert replay(mapping.redact_raw(good), mapping.protect(good)) == mapping(good)
    bad = {**good, "phone": "2381234567"}
    assert set(mapping.protect(bad) or {}) == {"names"}
    with pytest.raises(RecordError, match=r"phone: .*'238\*\*\*4567' does not match"):
        replay(mapping.redact_raw(bad), mapping.protect(bad))


def test_quarantine_reason_of_a_masked_column_hides_the_value() -> None:
    spec = copy.deepcopy(RESIDENTS)
    spec["columns"] = {
        "resident_id": {"source": "id"},
        "phone": {
            "source": "phone",
            "transforms": [{"mask": "phone"}],
            "validators": [{"regex": "1[0-9]{10}"}],
        },
    }
    mapping = compile_mapping(DatasetConfig.model_validate(spec))
    with pytest.raises(RecordError) as caught:
        mapping({"id": 1, "phone": "2381234567"})
    assert "2381234567" not in str(caught.value)
    assert "'238***4567'" in caught.value.reason


def test_generated_records_all_map(residents: CompiledMapping) -> None:
    records = generate_records(3000, seed=11, start_time=datetime(2026, 1, 1))
    rows = [residents(r) for r in records]
    assert len({residents.key_of(row) for row in rows}) == len(rows)
    for row in rows:
        values = dict(zip(residents.columns, row, strict=True))
        assert len(values["id_number"]) == 18
        assert values["gender"] in {"男", "女", "未说明"}
        assert isinstance(values["birth_date"], date)
        assert values["phone"] is None or values["phone"][3:7] == "****"


def test_spoiled_records_all_fail(residents: CompiledMapping) -> None:
    records = generate_records(600, seed=12, start_time=datetime(2026, 1, 1), bad_ratio=1.0)
    columns = set()
    for record in records:
        with pytest.raises(RecordError) as caught:
            residents(record)
        columns.add(caught.value.column)
    assert columns == {"id_number", "birth_date"}


def test_inline_and_function_forms_agree_on_generated_records() -> None:
    spec = DatasetConfig.model_validate(RESIDENTS)
    fast, plain = compile_mapping(spec, CODE_TABLES), compile_mapping(spec, CODE_TABLES, inline=False)
    for record in generate_records(2000, seed=13, start_time=datetime(2026, 1, 1), bad_ratio=0.2):
        assert _outcome(fast, record) == _outcome(plain, record)


def _outcome(mapping: CompiledMapping, record: Any) -> Any:
    try:
        return mapping(record)
    except RecordError as exc:
        return (exc.column, exc.reason)


# --------------------------------------------------------------------------- properties

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="0123456789 .-+eEXx无/年月日:\u3000１２ａ𠮷张", max_size=20),
    st.sampled_from(
        [
            "无",
            "",
            " ",
            "1",
            "2",
            "9",
            "男",
            "3.60102E+17",
            "2024年1月2日",
            "20241102",
            "2024-11-02 00:00:00.0",
            "11010519491231002x",
            "13812345678",
            "3.0",
            "-0.005",
        ]
    ),
)
PROBE_COLUMNS: dict[str, Any] = {
    "k": {"transforms": [{"constant": 1}]},
    "s": {"source": "x", "length": 12, "transforms": ["strip", "halfwidth", "null_if", "upper"]},
    "i": {"source": "x", "type": "int", "transforms": ["strip", "null_if"]},
    "d": {"source": "x", "type": "decimal", "precision": 10, "scale": 2},
    "b": {"source": "x", "type": "bool"},
    "dt": {"source": "x", "type": "date", "transforms": ["halfwidth", {"date": DATES}]},
    "ts": {"source": "x", "type": "datetime"},
    "code": {"source": "x", "transforms": [{"code_table": {"table": "gender", "unknown": "null"}}]},
    "id": {
        "source": "x",
        "transforms": ["strip", {"mask": "id_number"}],
        "validators": ["not_excel_damaged", "id_number"],
    },
    "re": {"source": "x", "validators": [{"regex": "[0-9]+"}, "required"]},
    "h": {"source": "x", "transforms": [{"hash": {"salt": "s"}}]},
    "strict": {
        "source": "x",
        "length": 8,
        "transforms": ["strip", "halfwidth", "null_if", {"default": "无名"}, "upper"],
        "validators": ["required", "not_excel_damaged", {"type": "length", "max": 6}],
    },
    "masked": {"source": "x", "transforms": ["strip", "null_if", {"mask": "name"}], "nullable": False},
    "extract": {
        "source": "x",
        "transforms": ["strip", {"regex_extract": "([0-9]+)"}, "null_if", {"mask": "phone"}],
    },
}


@functools.cache
def probe_mappings() -> dict[str, tuple[CompiledMapping, CompiledMapping]]:
    """Per probe column: (inline, function-only) compiled mappings."""
    out = {}
    for name, column in PROBE_COLUMNS.items():
        spec = copy.deepcopy(RESIDENTS)
        spec["columns"] = {"k": PROBE_COLUMNS["k"], name: column}
        spec["target"]["key"] = ["k"]
        cfg = DatasetConfig.model_validate(spec)
        out[name] = (compile_mapping(cfg, CODE_TABLES), compile_mapping(cfg, CODE_TABLES, inline=False))
    return out


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(value=SCALARS)
def test_inline_and_function_forms_agree_on_any_value(value: Any) -> None:
    for name, (fast, plain) in probe_mappings().items():
        assert _outcome(fast, {"x": value}) == _outcome(plain, {"x": value}), name


FORMATS = [
    "%Y-%m-%d",
    "%Y%m%d",
    "%Y/%m/%d",
    "%Y年%m月%d日",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y%m%d%H%M%S",
    "%y%m%d",
    "%d.%m.%Y",
    "%Y-%m-%dT%H:%M",
    "%d %b %Y",
]
PIECES = st.one_of(
    st.integers(0, 3000).map(str),
    st.integers(0, 99).map(lambda n: f"{n:02d}"),
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    st.sampled_from(["-", "/", "年", "月", "日", " ", ":", ".", "T", "t", "0", " 1", "２", "Nov", "nov"]),
)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(pieces=st.lists(PIECES, max_size=9), fmt=st.sampled_from(FORMATS), fmt2=st.sampled_from(FORMATS))
def test_date_parsers_agree_with_strptime(pieces: list[str], fmt: str, fmt2: str) -> None:
    text = "".join(pieces)
    for want in (date, datetime):
        for formats in ([fmt], [fmt, fmt2]):
            expected = None
            for f in formats:
                try:
                    parsed = datetime.strptime(text, f)
                except ValueError:
                    continue
                expected = parsed.date() if want is date else parsed
                break
            assert build_parser(formats, want)(text) == expected, (text, formats)


@pytest.mark.parametrize("fmt", FORMATS)
def test_date_parsers_agree_with_strptime_on_real_dates(fmt: str) -> None:
    parse = build_parser([fmt], datetime)
    start = datetime(1920, 1, 1)
    for step in range(0, 38_000, 9):
        # every 97th day and an arbitrary time of day, across a century
        moment = start + timedelta(days=step * 0.97, microseconds=step * 7_919_000 % 86_400_000)
        text = moment.strftime(fmt)
        assert parse(text) == datetime.strptime(text, fmt), text


@pytest.mark.parametrize(
    "text",
    [
        "0999-01-02",
        "0001/01/01",
        "1799年12月31日",
        "2999年1月2日",
        "9999年12月31日",
        "2201-03-04",
        "9999-12-31",
    ],
)
@pytest.mark.parametrize("want", [date, datetime])
def test_years_outside_the_lookup_tables_parse_like_strptime(text: str, want: type[date]) -> None:
    # the fast tiers look years 1800-2200 and 9999 up in a table; others go on to int() or a slower tier
    formats = ["%Y-%m-%d", "%Y/%m/%d", "%Y年%m月%d日"]
    expected = next(p for f in formats if (p := _strptime_or_none(text, f)) is not None)
    assert build_parser(formats, want)(text) == (expected.date() if want is date else expected)


def _strptime_or_none(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        return None
