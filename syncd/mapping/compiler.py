"""Compile a dataset's ``columns:`` into one fast record function.

Per column the pipeline is: read ``source`` (a dotted path; missing -> ``None``) or run the
generator (``constant`` / ``concat``), the ordered transforms, the cast to the column type,
the ``nullable: false`` / key-column check, then the validators. On a column that is masked
or hashed the validators run on the value just *before* the first ``mask``/``hash`` step, so
that an ID number is checksummed while it is still readable and stored masked; the error
messages of such a column never show the clear value. On other columns ``not_excel_damaged``
and ``id_number`` also check a float before the cast makes it digit text
(:func:`~syncd.mapping.validators.float_guard`), so a damaged number is caught either way.

All columns then become Python statements of ONE generated function (:mod:`.codegen`), so
a record costs one call plus the real work, and a failing record raises a
:class:`~syncd.errors.RecordError` naming its column.

Key columns are never NULL (a record without its key cannot be upserted): they get the same
check as ``nullable: false``, with the reason "required value missing (key column)".
"""

from __future__ import annotations

import copy
import hashlib
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from syncd import __version__
from syncd.config.model import ColumnConfig, DatasetConfig, TransformConfig
from syncd.errors import RecordError
from syncd.mapping.base import (
    GENERATORS,
    SENSITIVE,
    STRIP_CHARS,
    MappingSpecError,
    SpecPath,
    Step,
    StepContext,
    describe,
    text_of,
)
from syncd.mapping.casts import build_cast, required_step
from syncd.mapping.codegen import ColumnPlan, generate
from syncd.mapping.masking import mask_function
from syncd.mapping.transforms import build_transform
from syncd.mapping.validators import FLOAT_CHECKED, build_validator, float_guard
from syncd.paths import compile_path, list_index

__all__ = ["CompiledMapping", "compile_mapping"]

Row = tuple[Any, ...]
Place = tuple[Callable[[Any], Any], str]
"""Where a source path's value sits: the getter of its container, and its last part."""
HIDDEN = "(a hidden value)"
HASH_HEX_LENGTH = 64


@dataclass(frozen=True, eq=False)
class CompiledMapping:
    """A dataset's mapping, compiled once per run. Call it with a raw record to get the row."""

    columns: tuple[str, ...]
    """Target column names, in ``dataset.columns`` order (the order of the row tuple)."""
    key_indexes: tuple[int, ...]
    """Positions of ``dataset.target.key`` columns in the row tuple."""
    specs: Mapping[str, ColumnConfig]
    """Column name -> its config (type, length, precision, scale, nullable)."""
    source_paths: frozenset[str]
    """Every dotted source path the mapping reads (``source:`` and concat ``fields:``)."""
    map_record: Callable[[Mapping[str, Any]], Row] = field(repr=False)
    """The generated record function itself (what ``__call__`` calls; bind it in tight loops)."""
    python_source: str = field(repr=False)
    """The generated source of ``map_record``, for debugging."""
    key_record: Callable[[Mapping[str, Any]], Row] = field(repr=False)
    """The key columns alone, mapped from a raw record (their own generated function): what a
    record's row key will be without mapping the whole record. Raises RecordError like ``map_record``."""
    fingerprint: bytes = field(repr=False)
    """16 bytes that change whenever anything the mapping's result depends on changes: the
    columns and their transforms (salts included), the key, the logical-delete rule, the code
    tables, the source kind and syncd's version. A stored digest of a raw record is only
    trusted under the same fingerprint (see :func:`syncd.changes.hashing.record_digester`)."""
    record_fields: tuple[str, ...] = field(repr=False)
    """The top-level record fields the mapping and the logical-delete rule read, sorted."""
    key_fields: tuple[str, ...] = field(repr=False)
    """The top-level record fields ``key_record`` reads, sorted: a dict of just these gives the key."""
    _key_getter: Callable[[Row], Row] = field(repr=False)
    _redactions: tuple[tuple[Place, Callable[[Any], Any]], ...] = field(repr=False)

    def __call__(self, record: Mapping[str, Any]) -> Row:
        """Map one raw record to the row tuple, or raise :class:`RecordError` naming the column."""
        return self.map_record(record)

    def key_of(self, row: Row) -> Row:
        """The key values of a mapped row (always a tuple, also for a one-column key)."""
        return self._key_getter(row)

    def redact_raw(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A deep copy of ``record`` whose fields feeding masked/hashed columns are masked/hashed
        the same way, so a quarantined payload never holds a clear ID number. ``record`` is
        left untouched."""
        out: dict[str, Any] = copy.deepcopy(dict(record))
        for place, redact in self._redactions:
            _replace_at(out, place, redact)
        return out


# --------------------------------------------------------------------------- compile


def compile_mapping(
    dataset: DatasetConfig,
    code_tables: Mapping[str, Mapping[str, str]] | None = None,
    *,
    inline: bool = True,
) -> CompiledMapping:
    """Validate and compile ``dataset.columns``; raises :class:`MappingSpecError` with the path.

    ``inline=False`` calls every step's function instead of pasting its statement template
    (same results, slower): the tests use it to check that both forms agree.
    """
    tables: Mapping[str, Mapping[str, str]] = code_tables or {}
    keys = set(dataset.target.key)
    plans = [
        _plan_column(name, cfg, is_key=name in keys, code_tables=tables)
        for name, cfg in dataset.columns.items()
    ]
    source, fn = generate(dataset.name, plans, inline=inline)
    columns = tuple(dataset.columns)
    key_indexes = tuple(columns.index(k) for k in dataset.target.key)
    _, key_fn = generate(dataset.name, [plans[i] for i in key_indexes], inline=inline)
    paths = frozenset(p for plan in plans for p in plan.reads)
    fields = {p.split(".", 1)[0] for p in paths}
    if dataset.target.logical_delete is not None:
        fields.add(dataset.target.logical_delete.field.split(".", 1)[0])
    redactions = tuple(
        (_place(p), plan.redactor) for plan in plans if plan.redactor is not None for p in plan.reads
    )
    return CompiledMapping(
        columns=columns,
        key_indexes=key_indexes,
        specs=MappingProxyType(dict(dataset.columns)),
        source_paths=paths,
        map_record=fn,
        python_source=source,
        key_record=key_fn,
        fingerprint=_fingerprint(dataset, tables, source),
        record_fields=tuple(sorted(fields)),
        key_fields=tuple(sorted({p.split(".", 1)[0] for i in key_indexes for p in plans[i].reads})),
        _key_getter=_key_getter(key_indexes),
        _redactions=redactions,
    )


def _plan_column(
    name: str, cfg: ColumnConfig, *, is_key: bool, code_tables: Mapping[str, Mapping[str, str]]
) -> ColumnPlan:
    base: SpecPath = ("columns", name)
    transforms = cfg.transforms
    for i, t in enumerate(transforms):
        if t.type in GENERATORS and i > 0:
            raise MappingSpecError(
                (*base, "transforms", i),
                f"`{t.type}` produces the column's value, so it must be the first transform "
                "(the steps before it would have no effect)",
            )
    generator = transforms[0] if transforms and transforms[0].type in GENERATORS else None
    if generator is not None and cfg.source is not None:
        raise MappingSpecError(
            (*base, "source"),
            f"`source` is not read when the first transform is `{generator.type}`: remove it"
            + (" and list the field under the concat `fields`" if generator.type == "concat" else ""),
        )
    sensitive_at = next((i for i, t in enumerate(transforms) if t.type in SENSITIVE), None)
    if sensitive_at is not None and cfg.type != "string":
        raise MappingSpecError(
            (*base, "type"), f"a {transforms[sensitive_at].type}ed value is text: use type: string"
        )
    shown = _hiding_describe(transforms[sensitive_at]) if sensitive_at is not None else describe
    ctx = StepContext(column=name, config=cfg, code_tables=code_tables, describe=shown)

    built: list[tuple[SpecPath, Step]] = []
    for i, t in enumerate(transforms):
        try:
            built.append(((*base, "transforms", i), build_transform(t, ctx)))
        except MappingSpecError as exc:
            raise exc.within(*base, "transforms", i) from None
    checks: list[tuple[SpecPath, Step]] = []
    for i, v in enumerate(cfg.validators):
        try:
            checks.append(((*base, "validators", i), build_validator(v, ctx)))
        except MappingSpecError as exc:
            raise exc.within(*base, "validators", i) from None
    try:
        cast = build_cast(cfg, shown)
    except MappingSpecError as exc:
        raise exc.within(*base) from None
    tail: list[tuple[SpecPath, Step]] = [((*base, "type"), cast)]
    if is_key or not cfg.nullable:
        reason = "required value missing" + (" (key column)" if is_key and cfg.nullable else "")
        tail.append(((*base, "nullable"), required_step(reason)))

    if sensitive_at is None:
        guards = [
            (path, float_guard(step))
            for (path, step), v in zip(checks, cfg.validators, strict=True)
            if v.type in FLOAT_CHECKED
        ]
        body = [*built, *guards, *tail, *checks]
    else:
        body = [*built[:sensitive_at], *checks, *built[sensitive_at:], *tail]
        _check_hash_length(cfg, transforms, base)

    _check_fixed_values(cfg, transforms, body, shown, base)
    steps = tuple(step for _, step in body)
    reads = (cfg.source,) if cfg.source is not None else tuple(generator.fields or ()) if generator else ()
    redactor = _redactor(built[sensitive_at][1]) if sensitive_at is not None else None
    return ColumnPlan(
        name=name,
        source=cfg.source,
        steps=steps,
        reads=reads,
        redactor=redactor,
        sensitive=sensitive_at is not None,
    )


def _hiding_describe(t: TransformConfig) -> Callable[[Any], str]:
    """Error-message rendering for a masked column: the value as it would be stored."""
    if t.type != "mask" or t.kind is None:
        return lambda _v: HIDDEN
    mask = mask_function(t.kind, max(t.keep_first or 0, 0), max(t.keep_last or 0, 0))

    def shown(v: Any) -> str:
        try:
            return describe(mask(text_of(v)))
        except RecordError:
            return HIDDEN

    return shown


def _check_hash_length(cfg: ColumnConfig, transforms: tuple[TransformConfig, ...], base: SpecPath) -> None:
    if transforms[-1].type == "hash" and cfg.length is not None and cfg.length < HASH_HEX_LENGTH:
        raise MappingSpecError(
            (*base, "length"),
            f"a hash is {HASH_HEX_LENGTH} hex characters but length is {cfg.length}: "
            f"set length to {HASH_HEX_LENGTH} or more",
        )


def _check_fixed_values(
    cfg: ColumnConfig,
    transforms: tuple[TransformConfig, ...],
    body: list[tuple[SpecPath, Step]],
    shown: Callable[[Any], str],
    base: SpecPath,
) -> None:
    """A ``constant`` or ``default`` value must survive the rest of its column's pipeline."""
    for i, t in enumerate(transforms):
        if t.type not in ("constant", "default"):
            continue
        position = next(n for n, (path, _) in enumerate(body) if path == (*base, "transforms", i))
        value: Any = t.value
        try:
            for _, step in body[position + 1 :]:
                value = step.fn(value)
        except RecordError as exc:
            raise MappingSpecError(
                (*base, "transforms", i, "value"),
                f"the {t.type} value {shown(t.value)} does not fit this {cfg.type} column: {exc.reason}",
            ) from None


def _redactor(step: Step) -> Callable[[Any], Any]:
    protect = step.fn
    chars = STRIP_CHARS

    def redact(raw: Any) -> Any:
        if raw is None:
            return None
        try:
            return protect(text_of(raw).strip(chars))
        except (RecordError, ValueError):  # ValueError: e.g. a lone surrogate the hash cannot encode
            return "[redacted]"

    return redact


# --------------------------------------------------------------------------- fingerprint


def _plain(value: Any) -> Any:
    """``value`` with secrets revealed (they feed a digest, never any output) and tuples as lists."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return value


def _fingerprint(dataset: DatasetConfig, code_tables: Mapping[str, Mapping[str, str]], source: str) -> bytes:
    """See :attr:`CompiledMapping.fingerprint`. Any doubt makes it differ, which only costs one
    run that maps every record again: a stale fingerprint would skip a real change."""
    parts = {
        "syncd": __version__,
        "code": source,
        "columns": _plain({n: c.model_dump() for n, c in dataset.columns.items()}),
        "target": _plain(dataset.target.model_dump(include={"key", "logical_delete"})),
        "source": dataset.source.type,
        "code_tables": _plain(code_tables),
    }
    text = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# --------------------------------------------------------------------------- keys and redaction


def _key_getter(indexes: tuple[int, ...]) -> Callable[[Row], Row]:
    if len(indexes) == 1:
        (i,) = indexes

        def one(row: Row) -> Row:
            return (row[i],)

        return one
    getter = operator.itemgetter(*indexes)

    def many(row: Row) -> Row:
        result: Row = getter(row)
        return result

    return many


def _place(path: str) -> Place:
    """``path`` split as :func:`syncd.paths.compile_path` reads it (a digit-only part is a key
    in a dict, an index in a list), so redaction finds exactly what the mapping read."""
    parent, _, last = path.rpartition(".")
    return compile_path(parent), last


def _replace_at(obj: Any, place: Place, redact: Callable[[Any], Any]) -> None:
    """Replace the value at ``place`` inside ``obj`` (dicts and lists) with ``redact(value)``."""
    parent_of, last = place
    cur = parent_of(obj)
    if isinstance(cur, dict):
        if last in cur:
            cur[last] = redact(cur[last])
    elif isinstance(cur, list):
        index = list_index(last)
        if index is not None and -len(cur) <= index < len(cur):
            cur[index] = redact(cur[index])
