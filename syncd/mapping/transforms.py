"""The transforms: each ``type:`` of a column's ``transforms:`` list is a factory in the registry.

A factory receives its :class:`~syncd.config.model.TransformConfig` and the column's
:class:`~syncd.mapping.base.StepContext`, validates the options (raising
:class:`~syncd.mapping.base.MappingSpecError` positioned relative to the transform) and
returns a :class:`~syncd.mapping.base.Step`. Factories run once per compile; the functions
they return run once per record and do no configuration work.

Every function passes ``None`` through (except ``default`` and the generators) and accepts
numbers as well as strings (numbers are read as text without ``.0`` artefacts).

Generators (``constant``, ``concat``) produce the value instead of reading ``source:``; they
must be the first transform of a column without ``source:``. ``mask`` and ``hash`` live in
:mod:`syncd.mapping.masking`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from syncd.config.model import TransformConfig
from syncd.errors import RecordError
from syncd.mapping import masking  # noqa: F401 - importing it registers mask and hash
from syncd.mapping.base import (
    GENERATORS,
    SENSITIVE,
    STRIP_CHARS,
    TRANSFORM_OPTIONS,
    TRANSFORMS,
    MappingSpecError,
    Step,
    StepContext,
    TransformFactory,
    lookup_factory,
    register_transform,
    suggest,
    text_of,
)
from syncd.mapping.dates import (
    DEFAULT_DATE_FORMATS,
    DEFAULT_DATETIME_FORMATS,
    build_parser,
    check_format,
)
from syncd.paths import MISSING, compile_path

__all__ = [
    "DEFAULT_NULL_VALUES",
    "GENERATORS",
    "PARSE_CACHE_SIZE",
    "SENSITIVE",
    "STRIP_CHARS",
    "TRANSFORMS",
    "TRANSFORM_OPTIONS",
    "TransformFactory",
    "build_transform",
    "with_defaults",
]

PARSE_CACHE_SIZE = 4_096
"""Entries kept per date/datetime transform (cleared when full: memory stays bounded). Small on
purpose: parsing a known format is about as cheap as a miss in a large dict, and 65,536 entries
(the first choice) held 4-5 MB per column of mostly unique update stamps while mapping more slowly
(8.1 against 6.9 µs per benchmark record, 200,000 records); 4,096 still catches a run of equal
values (a batch registered on one day)."""

DEFAULT_NULL_VALUES: tuple[str, ...] = ("无", "/", "-", "--", "null", "NULL", "None", "N/A", "")

_HALFWIDTH = {0xFF01 + i: 0x21 + i for i in range(0x5E)} | {0x3000: 0x20}


def build_transform(cfg: TransformConfig, ctx: StepContext) -> Step:
    """Validate ``cfg`` and build its step (errors are positioned relative to the transform)."""
    factory = lookup_factory(TRANSFORMS, TRANSFORM_OPTIONS, "transform", cfg)
    return factory(with_defaults(cfg), ctx)


_DEFAULTS: dict[str, dict[str, Any]] = {
    "null_if": {"values": DEFAULT_NULL_VALUES},
    "date": {"formats": DEFAULT_DATE_FORMATS},
    "datetime": {"formats": DEFAULT_DATETIME_FORMATS},
    "code_table": {"unknown": "keep"},
    "concat": {"separator": ""},
    "hash": {"algorithm": "sha256"},
}


def with_defaults(cfg: TransformConfig) -> TransformConfig:
    """``cfg`` with each option it leaves out set to the value the transform then uses, so that
    writing a default out and leaving it out give the same configuration: the factories build
    their steps from it (:func:`build_transform`) and the stored key definition digests it
    (:mod:`syncd.targets.keydef`). The one place these defaults are decided.

    ``regex_extract``'s ``group`` becomes the group number it reads (1 when the pattern has a
    group, else 0; a digit string as its number); ``mask`` kind ``keep`` gets ``keep_first`` and
    ``keep_last`` 0 (the other kinds are fixed and take neither). An option the transform cannot
    use is left as it is (the factory rejects it)."""
    update = {k: v for k, v in _DEFAULTS.get(cfg.type, {}).items() if getattr(cfg, k) is None}
    if cfg.type == "mask" and cfg.kind == "keep":
        update.update({k: 0 for k in ("keep_first", "keep_last") if getattr(cfg, k) is None})
    elif cfg.type == "regex_extract" and cfg.pattern is not None:
        group = cfg.group
        if group is None:
            with contextlib.suppress(re.error):  # the factory names the pattern's error
                group = 1 if re.compile(cfg.pattern).groups else 0
        elif isinstance(group, str) and group.isdigit():
            group = int(group)
        if group != cfg.group:
            update["group"] = group
    return cfg.model_copy(update=update) if update else cfg


def _single_value(value: Any, what: str) -> None:
    if isinstance(value, dict | list | tuple):
        raise MappingSpecError(("value",), f"the {what} value must be a single value, not a list or mapping")


# --------------------------------------------------------------------------- text clean-up


@register_transform("strip")
def _strip(cfg: TransformConfig, ctx: StepContext) -> Step:
    chars = STRIP_CHARS

    def strip(v: Any) -> Any:
        return v.strip(chars) if v.__class__ is str else v

    return Step(
        strip,
        "if {v}.__class__ is str: {v} = {v}.strip({chars})",
        {"chars": chars},
        on_str="{v} = {v}.strip({chars})",
        str_result="str",
        none_safe=True,
        on_stripped="",
        stripped_out="yes",
    )


@register_transform("halfwidth")
def _halfwidth(cfg: TransformConfig, ctx: StepContext) -> Step:
    table = _HALFWIDTH

    def halfwidth(v: Any) -> Any:
        return v.translate(table) if v.__class__ is str and not v.isascii() else v

    return Step(
        halfwidth,
        "if {v}.__class__ is str and not {v}.isascii(): {v} = {v}.translate({table})",
        {"table": table},
        on_str="if not {v}.isascii(): {v} = {v}.translate({table})",
        str_result="str",
        none_safe=True,
        stripped_out="keep",  # U+3000 becomes a space only inside the text
    )


@register_transform("upper")
def _upper(cfg: TransformConfig, ctx: StepContext) -> Step:
    def upper(v: Any) -> Any:
        return v.upper() if v.__class__ is str else v

    return Step(
        upper,
        "if {v}.__class__ is str: {v} = {v}.upper()",
        on_str="{v} = {v}.upper()",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


@register_transform("lower")
def _lower(cfg: TransformConfig, ctx: StepContext) -> Step:
    def lower(v: Any) -> Any:
        return v.lower() if v.__class__ is str else v

    return Step(
        lower,
        "if {v}.__class__ is str: {v} = {v}.lower()",
        on_str="{v} = {v}.lower()",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


@register_transform("null_if", "values")
def _null_if(cfg: TransformConfig, ctx: StepContext) -> Step:
    if cfg.values is not None and not cfg.values:
        raise MappingSpecError(("values",), "null_if lists no values: omit `values` for the default list")
    raw = DEFAULT_NULL_VALUES if cfg.values is None else cfg.values
    chars = STRIP_CHARS
    values = frozenset(x.strip(chars) for x in raw)

    def null_if(v: Any) -> Any:
        if v is None:
            return None
        if v.__class__ is str:
            return None if v.strip(chars) in values else v
        if isinstance(v, int | float | date):
            return None if text_of(v) in values else v
        if isinstance(v, Decimal):  # SQL NUMERIC: -1.00 matches "-1.00" and, like -1.0, "-1"
            text = format(v, "f")
            return None if text in values or ("." in text and text.rstrip("0").rstrip(".") in values) else v
        return v

    return Step(
        null_if,
        "if {v}.__class__ is str:\n"
        "    if {v}.strip({chars}) in {values}: {v} = None\n"
        "elif {v} is not None: {v} = {f}({v})",
        {"chars": chars, "values": values},
        on_str="if {v}.strip({chars}) in {values}: {v} = None",
        str_result="str|None",
        none_safe=True,
        on_stripped="if {v} in {values}: {v} = None",
        stripped_out="keep",
    )


# --------------------------------------------------------------------------- values


@register_transform("default", "value")
def _default(cfg: TransformConfig, ctx: StepContext) -> Step:
    if "value" not in cfg.model_fields_set or cfg.value is None:
        raise MappingSpecError((), "default needs a `value` to use when the field is empty")
    _single_value(cfg.value, "default")
    value = cfg.value

    def default(v: Any) -> Any:
        return value if v is None else v

    return Step(
        default,
        "if {v} is None: {v} = {value}",
        {"value": value},
        on_str="",
        str_result="str",
        stripped_out="keep",
    )


@register_transform("constant", "value")
def _constant(cfg: TransformConfig, ctx: StepContext) -> Step:
    if "value" not in cfg.model_fields_set:
        raise MappingSpecError((), "constant needs a `value` (write value: null for an always-empty column)")
    _single_value(cfg.value, "constant")
    value = cfg.value

    def constant(v: Any) -> Any:
        return value

    return Step(constant, "{v} = {value}", {"value": value})


def _date_step(cfg: TransformConfig, ctx: StepContext, want: type[date]) -> Step:
    name = "date" if want is date else "datetime"
    if cfg.formats is not None and not cfg.formats:
        raise MappingSpecError(("formats",), f"{name} lists no formats: omit `formats` for the defaults")
    formats = cfg.formats or (DEFAULT_DATE_FORMATS if want is date else DEFAULT_DATETIME_FORMATS)
    for i, fmt in enumerate(formats):
        problem = check_format(fmt)
        if problem is not None:
            raise MappingSpecError(("formats", i), problem)
    parse = build_parser(formats, want)
    chars = STRIP_CHARS
    describe = ctx.describe
    tried = ", ".join(formats)
    noun = "date" if want is date else "date-time"

    cache: dict[str, Any] = {}  # upstream text -> parsed value: birth dates and stamps repeat a lot

    def to_date(v: Any) -> Any:
        if v.__class__ is str:
            text = v.strip(chars)
            if not text:
                return None
            result = parse(text)
            if result is None:
                raise RecordError(f"{describe(v)} is not a valid {noun} in any of the formats tried: {tried}")
            if len(cache) >= PARSE_CACHE_SIZE:
                cache.clear()
            cache[v] = result
            return result
        if v is None:
            return None
        if isinstance(v, datetime):
            return v.date() if want is date else v
        if isinstance(v, date):
            return v if want is date else datetime(v.year, v.month, v.day)
        if isinstance(v, int) and not isinstance(v, bool):
            return to_date(str(v))
        raise RecordError(f"{describe(v)} is not a {noun}: expected text such as 2024-11-02")

    # a date or datetime is always truthy, so `or` falls through to the parser only on a miss
    return Step(
        to_date,
        "if {v}.__class__ is str: {v} = {cache}.get({v}) or {f}({v})\nelif {v} is not None: {v} = {f}({v})",
        {"cache": cache},
        on_str="{v} = {cache}.get({v}) or {f}({v})",
        none_safe=True,
    )


@register_transform("date", "formats")
def _date(cfg: TransformConfig, ctx: StepContext) -> Step:
    return _date_step(cfg, ctx, date)


@register_transform("datetime", "formats")
def _datetime(cfg: TransformConfig, ctx: StepContext) -> Step:
    return _date_step(cfg, ctx, datetime)


@register_transform("code_table", "table", "unknown")
def _code_table(cfg: TransformConfig, ctx: StepContext) -> Step:
    table = cfg.table
    if table is None:
        raise MappingSpecError(
            (), "code_table needs `table`: an inline mapping, or the name of a table under code_tables"
        )
    mapping: Mapping[str, str]
    if isinstance(table, str):
        if table not in ctx.code_tables:
            known = ", ".join(sorted(ctx.code_tables)) or "none are defined"
            raise MappingSpecError(
                ("table",),
                f"unknown code table {table!r}{suggest(table, ctx.code_tables)}: define it under "
                f"code_tables in syncd.yaml or write the mapping inline (known tables: {known})",
            )
        mapping, label = ctx.code_tables[table], table
    else:
        mapping, label = table, "(inline)"
    if not mapping:
        raise MappingSpecError(("table",), f"code table {label} is empty")
    lookup = {str(k): v for k, v in mapping.items()}
    unknown = cfg.unknown or "keep"
    chars = STRIP_CHARS
    describe = ctx.describe
    sample = ", ".join(list(lookup)[:10]) + (" …" if len(lookup) > 10 else "")
    miss = object()

    def code_table(v: Any) -> Any:
        if v is None:
            return None
        key = v if v.__class__ is str else text_of(v)
        result = lookup.get(key, miss)
        if result is miss:
            result = lookup.get(key.strip(chars), miss)
            if result is miss:
                if unknown == "keep":
                    return v
                if unknown == "null":
                    return None
                raise RecordError(f"{describe(v)} is not in code table {label} (known codes: {sample})")
        return result

    return Step(
        code_table,
        "if {v}.__class__ is str and {v} in {lookup}: {v} = {lookup}[{v}]\n"
        "elif {v} is not None: {v} = {f}({v})",
        {"lookup": lookup},
        on_str="{v} = {lookup}[{v}] if {v} in {lookup} else {f}({v})",
        str_result="str|None" if unknown == "null" else "str",
        none_safe=True,
    )


@register_transform("regex_extract", "pattern", "group")
def _regex_extract(cfg: TransformConfig, ctx: StepContext) -> Step:
    if cfg.pattern is None:
        raise MappingSpecError((), "regex_extract needs a `pattern`")
    try:
        rx = re.compile(cfg.pattern)
    except re.error as exc:
        raise MappingSpecError(
            ("pattern",), f"{cfg.pattern!r} is not a valid regular expression: {exc}"
        ) from None
    group: int | str = cfg.group if cfg.group is not None else (1 if rx.groups else 0)
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if isinstance(group, int) and not 0 <= group <= rx.groups:
        raise MappingSpecError(
            ("group",), f"group {group} does not exist: the pattern has {rx.groups} group(s)"
        )
    if isinstance(group, str) and group not in rx.groupindex:
        raise MappingSpecError(("group",), f"the pattern has no group named {group!r}")
    search = rx.search

    def regex_extract(v: Any) -> Any:
        if v is None:
            return None
        m = search(v if v.__class__ is str else text_of(v))
        return None if m is None else m.group(group)

    return Step(regex_extract, str_result="str|None", none_safe=True)


@register_transform("concat", "fields", "separator")
def _concat(cfg: TransformConfig, ctx: StepContext) -> Step:
    if not cfg.fields:
        raise MappingSpecError(("fields",), "concat needs `fields`: the dotted source paths to join")
    getters = tuple(compile_path(p) for p in cfg.fields)
    sep = cfg.separator or ""

    def concat(record: Any) -> Any:
        parts = []
        for get in getters:
            x = get(record)
            if x is None or x is MISSING:
                continue
            text = x if x.__class__ is str else text_of(x)
            if text:
                parts.append(text)
        return sep.join(parts) if parts else None

    return Step(concat, reads_record=True)
