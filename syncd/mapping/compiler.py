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

A quarantined record is stored reduced to the fields the dataset may hold and redacted
(:meth:`CompiledMapping.redact_raw`), with the values
its masked/hashed columns had right after their ``mask``/``hash`` step
(:meth:`CompiledMapping.protect`). :func:`compile_replay` maps such an entry again: those columns
go on from the stored values instead of masking or hashing a redacted value a second time.

Key columns are never NULL (a record without its key cannot be upserted): they get the same
check as ``nullable: false``, with the reason "required value missing (key column)".
"""

from __future__ import annotations

import copy
import hashlib
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from syncd import __version__, build
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
from syncd.mapping.casts import KEY_TEXT_LENGTH, ColumnLimit, build_cast, required_step
from syncd.mapping.codegen import ColumnPlan, generate
from syncd.mapping.masking import mask_function
from syncd.mapping.transforms import build_transform
from syncd.mapping.validators import FLOAT_CHECKED, build_validator, float_guard
from syncd.paths import MISSING, compile_path, list_index

__all__ = ["LEFT_OUT", "CompiledMapping", "ReplayMapping", "compile_mapping", "compile_replay"]

Row = tuple[Any, ...]
Place = tuple[Callable[[Any], Any], str]
"""Where a source path's value sits: the getter of its container, and its last part."""
HIDDEN = "(a hidden value)"
HASH_HEX_LENGTH = 64
LEFT_OUT = "syncd.fields_left_out"
"""In a quarantined record: how many fields upstream sent that the dataset may not hold were left
out. A top-level name with a dot, so no source path can read it (a path splits at dots)."""
Tree = dict[str, "Tree | None"]
"""The fields a dataset may hold, as a tree of path parts; None: the whole value under that part."""


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
    tables, the source kind, syncd's version and its source files (:mod:`syncd.build`: any code
    change, so an upgrade maps every record once). A stored digest of a raw record is only
    trusted under the same fingerprint (see :func:`syncd.changes.hashing.record_digester`)."""
    record_fields: tuple[str, ...] = field(repr=False)
    """The top-level record fields the mapping and the logical-delete rule read, sorted."""
    key_fields: tuple[str, ...] = field(repr=False)
    """The top-level record fields ``key_record`` reads, sorted: a dict of just these gives the key."""
    masked: bool = field(repr=False)
    """Whether a column is masked: a digest of the clear record must then be keyed with a secret
    (:func:`syncd.changes.digestkey.record_digest_key`), or the hidden characters could be
    recovered from it by trying every value they can have."""
    salted: bool = field(repr=False)
    """Whether a column is hashed: its salt (a secret) feeds :attr:`fingerprint`."""
    _key_getter: Callable[[Row], Row] = field(repr=False)
    _redactions: tuple[tuple[Place, Callable[[Any], Any]], ...] = field(repr=False)
    _protectors: tuple[_Protector, ...] = field(repr=False, default=())
    _held: Tree | None = field(repr=False, default=None)
    """The fields the dataset may hold (:func:`_held_fields`); None: all of them."""

    def __call__(self, record: Mapping[str, Any]) -> Row:
        """Map one raw record to the row tuple, or raise :class:`RecordError` naming the column."""
        return self.map_record(record)

    def key_of(self, row: Row) -> Row:
        """The key values of a mapped row (always a tuple, also for a one-column key)."""
        return self._key_getter(row)

    def redact_raw(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` for the quarantine, holding only what the dataset may hold: the
        fields of ``authorization.fields`` and those the mapping, the logical-delete rule, the
        source key and the update time read (DESIGN §4.7), so fields upstream sent beyond the
        approval are never stored; ``LEFT_OUT`` counts them, when there are any (their names and
        values are not kept). The fields feeding masked/hashed columns are masked/hashed the same
        way, so the payload never holds a clear ID number. ``record`` is left untouched."""
        out: dict[str, Any]
        if self._held is None:
            out = copy.deepcopy(dict(record))
        else:
            out, left_out = _kept(record, self._held)
            if left_out:
                out[LEFT_OUT] = left_out
        for place, redact in self._redactions:
            _replace_at(out, place, redact)
        return out

    def protect(self, record: Mapping[str, Any]) -> dict[str, list[Any]] | None:
        """For a record going to quarantine: each masked/hashed column's value right after its
        ``mask``/``hash`` step, computed from the clear ``record`` (its transforms and validators
        before that step included), as ``{column: [fingerprint, value]}``; the fingerprint names
        the settings it was computed under. A column whose steps up to there fail is left out.
        None when the mapping has no such column. Replay goes on from these values
        (:func:`compile_replay`): the stored raw record holds the source fields only redacted."""
        if not self._protectors:
            return None
        out: dict[str, list[Any]] = {}
        for p in self._protectors:
            try:
                out[p.column] = [p.fingerprint, p.value_of(record)]
            except Exception:  # noqa: BLE001, S112 - the column fails: nothing to keep for it
                continue
        return out


@dataclass(frozen=True, slots=True)
class _Protector:
    """A masked/hashed column's steps up to and including its ``mask``/``hash`` step."""

    column: str
    kind: str  # mask | hash
    fingerprint: str
    value_of: Callable[[Mapping[str, Any]], Any]
    reads: tuple[Callable[[Any], Any], ...]  # getters of the source fields it reads
    plan: ColumnPlan
    upto: int  # its first `upto` steps are the ones value_of runs


class _Unavailable:
    """In a replay record: a masked/hashed column whose value cannot be had (why: ``reason``)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _unwrap(value: Any) -> Any:
    if value.__class__ is _Unavailable:
        raise RecordError(value.reason)
    return value


HASHED_AWAY = (
    "its source value is kept in the quarantine only hashed, and this entry has no hash computed "
    "with the column's current settings (it was quarantined before syncd kept them, the column "
    "failed before its hash, or its steps up to the hash changed since): the record is written "
    "when upstream sends it again (e.g. syncd sync {dataset} --full)"
)
REDACTED_SOURCE = (
    "it reads {path}, which the quarantine keeps only masked/hashed (it feeds {feeds}): the record "
    "is written when upstream sends it again (e.g. syncd sync {dataset} --full)"
)


@dataclass(frozen=True, eq=False)
class ReplayMapping:
    """A dataset's mapping for quarantined entries (``syncd quarantine replay``).

    An entry's raw record is redacted: the fields feeding masked/hashed columns hold the masked or
    hashed value, never the clear one. So a masked/hashed column goes on from the entry's stored
    value (:meth:`CompiledMapping.protect`) when it was computed under the column's current
    settings — the same value a sync of the clear record computes, its key too. Without one, a
    masked column masks the masked value again (the same result for the same mask; a validator of
    the column sees the masked value and may fail: the entry stays), and a hashed column fails
    (a hash of a hash is a different value: the entry stays). Any other column reading such a
    field fails too: it would get the redacted value instead of the clear one."""

    mapping: CompiledMapping
    map_record: Callable[[Mapping[str, Any]], Row] = field(repr=False)
    key_record: Callable[[Mapping[str, Any]], Row] = field(repr=False)
    _slots: tuple[tuple[str, _Protector], ...] = field(repr=False)
    _hashed_away: str = field(repr=False)

    def record(self, raw: Any, protected: Mapping[str, Any] | None) -> Any:
        """``raw`` with each masked/hashed column's value where the replay functions read it."""
        if not self._slots or not isinstance(raw, dict):
            return raw
        record = dict(raw)
        for slot, p in self._slots:
            stored = protected.get(p.column) if protected else None
            if isinstance(stored, list) and len(stored) == 2 and stored[0] == p.fingerprint:
                record[slot] = stored[1]
            elif p.kind == "mask" or all(_absent(get(raw)) for get in p.reads):
                record[slot] = _recomputed(p, raw)  # masked again, or nothing was hashed
            else:
                record[slot] = _Unavailable(self._hashed_away)
        return record

    def __call__(self, raw: Any, protected: Mapping[str, Any] | None) -> Row:
        """The row of a quarantined entry, or RecordError naming the column."""
        return self.map_record(self.record(raw, protected))

    def key_of_entry(self, raw: Any, protected: Mapping[str, Any] | None) -> Row:
        """The key values of a quarantined entry (RecordError when its key columns cannot be had)."""
        return self.key_record(self.record(raw, protected))

    def merge_protected(self, stored: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
        """The stored masked/hashed values of entries of one record (the same redacted raw, so
        computed from the same clear record), the preferred entry's first, as one entry's: for
        each column the first value computed under its current settings, else the first stored.
        None when none of them stored any."""
        if all(values is None for values in stored):
            return None
        current = {p.column: p.fingerprint for _slot, p in self._slots}
        out: dict[str, Any] = {}
        for values in stored:  # values replay can use
            for column, value in (values or {}).items():
                usable = isinstance(value, list) and len(value) == 2 and value[0] == current.get(column)
                if usable and column not in out:
                    out[column] = value
        for values in stored:  # the others, kept as they were stored
            for column, value in (values or {}).items():
                out.setdefault(column, value)
        return out


def _absent(value: Any) -> bool:
    return value is MISSING or value is None


def _recomputed(p: _Protector, raw: Mapping[str, Any]) -> Any:
    try:
        return p.value_of(raw)
    except RecordError as exc:
        return _Unavailable(exc.reason)
    except Exception as exc:  # noqa: BLE001 - as the generated function reports it
        return _Unavailable(f"could not map the value ({type(exc).__name__})")


# --------------------------------------------------------------------------- compile


def compile_mapping(
    dataset: DatasetConfig,
    code_tables: Mapping[str, Mapping[str, str]] | None = None,
    *,
    inline: bool = True,
    today: date | None = None,
    limits: Mapping[str, ColumnLimit] | None = None,
) -> CompiledMapping:
    """Validate and compile ``dataset.columns``; raises :class:`MappingSpecError` with the path.

    ``inline=False`` calls every step's function instead of pasting its statement template
    (same results, slower): the tests use it to check that both forms agree. ``today`` is the
    date in the configured ``timezone:`` (the ``id_number`` validator's latest birth date); None:
    the host's date. ``limits`` are the target table's narrower columns
    (:func:`syncd.targets.verify.column_limits`); None: those of the table syncd creates (a text
    key column without ``length:`` holds 255 characters).
    """
    tables: Mapping[str, Mapping[str, str]] = code_tables or {}
    keys = set(dataset.target.key)
    limits = _default_limits(dataset) if limits is None else limits
    plans = [
        _plan_column(
            name, cfg, is_key=name in keys, code_tables=tables, today=today, limit=limits.get(name)
        )
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
    protectors = tuple(
        _protector(plan, cfg, tables) for plan, cfg in zip(plans, dataset.columns.values(), strict=True)
        if plan.sensitive
    )
    return CompiledMapping(
        columns=columns,
        key_indexes=key_indexes,
        specs=MappingProxyType(dict(dataset.columns)),
        source_paths=paths,
        map_record=fn,
        python_source=source,
        key_record=key_fn,
        fingerprint=_fingerprint(dataset, tables, source, limits),
        record_fields=tuple(sorted(fields)),
        key_fields=tuple(sorted({p.split(".", 1)[0] for i in key_indexes for p in plans[i].reads})),
        masked=any(t.type == "mask" for cfg in dataset.columns.values() for t in cfg.transforms),
        salted=any(t.type == "hash" for cfg in dataset.columns.values() for t in cfg.transforms),
        _key_getter=_key_getter(key_indexes),
        _redactions=redactions,
        _protectors=protectors,
        _held=_held_fields(dataset, paths),
    )


def compile_replay(
    dataset: DatasetConfig,
    code_tables: Mapping[str, Mapping[str, str]] | None = None,
    *,
    inline: bool = True,
    today: date | None = None,
    limits: Mapping[str, ColumnLimit] | None = None,
) -> ReplayMapping:
    """The mapping of ``dataset`` for its quarantined entries (see :class:`ReplayMapping`;
    ``today`` and ``limits`` as :func:`compile_mapping` takes them)."""
    tables: Mapping[str, Mapping[str, str]] = code_tables or {}
    mapping = compile_mapping(dataset, tables, inline=inline, today=today, limits=limits)
    keys = set(dataset.target.key)
    limits = _default_limits(dataset) if limits is None else limits
    plans = [
        _plan_column(
            name, cfg, is_key=name in keys, code_tables=tables, today=today, limit=limits.get(name)
        )
        for name, cfg in dataset.columns.items()
    ]
    protectors = {p.column: p for p in mapping._protectors}
    redacted: dict[str, list[str]] = {}  # source path → the masked/hashed columns reading it
    for p in protectors.values():
        for path in p.plan.reads:
            redacted.setdefault(path, []).append(p.column)
    slots: list[tuple[str, _Protector]] = []
    replay_plans = []
    for plan in plans:
        protector = protectors.get(plan.name)
        if protector is not None:
            slot = f"\x00{plan.name}"  # never a source path: those are validated names
            slots.append((slot, protector))
            steps = (Step(_unwrap), *plan.steps[protector.upto :])
            replay_plans.append(replace(plan, source=slot, steps=steps, reads=(slot,)))
        else:
            replay_plans.append(_blocked(plan, redacted, dataset.name))
    _, fn = generate(dataset.name, replay_plans, inline=inline)
    key_indexes = mapping.key_indexes
    _, key_fn = generate(dataset.name, [replay_plans[i] for i in key_indexes], inline=inline)
    return ReplayMapping(
        mapping=mapping,
        map_record=fn,
        key_record=key_fn,
        _slots=tuple(slots),
        _hashed_away=HASHED_AWAY.format(dataset=dataset.name),
    )


def _blocked(plan: ColumnPlan, redacted: Mapping[str, list[str]], dataset: str) -> ColumnPlan:
    """``plan`` for a replay: when it reads a field the quarantine keeps redacted, it fails while
    that field has a value (it would map the masked/hashed value as if it were the clear one)."""
    hidden = [path for path in plan.reads if path in redacted]
    if not hidden:
        return plan

    def why(path: str) -> str:
        return REDACTED_SOURCE.format(path=path, feeds=", ".join(redacted[path]), dataset=dataset)

    if plan.source is not None:
        reason = why(plan.source)

        def refuse(v: Any) -> Any:
            if v is None:
                return None
            raise RecordError(reason)

        return replace(plan, steps=(Step(refuse, none_safe=True), *plan.steps))
    generator = plan.steps[0]
    getters = tuple((compile_path(path), why(path)) for path in hidden)
    produce = generator.fn

    def checked(record: Any) -> Any:
        for get, reason in getters:
            if not _absent(get(record)):
                raise RecordError(reason)
        return produce(record)

    return replace(plan, steps=(Step(checked, reads_record=True), *plan.steps[1:]))


def _protector(plan: ColumnPlan, cfg: ColumnConfig, tables: Mapping[str, Mapping[str, str]]) -> _Protector:
    """The protector of a masked/hashed column (see :meth:`CompiledMapping.protect`)."""
    at = next(i for i, t in enumerate(cfg.transforms) if t.type in SENSITIVE)
    upto = at + len(cfg.validators) + 1  # the steps: transforms before it, validators, mask/hash
    steps = plan.steps[:upto]
    read: Callable[[Mapping[str, Any]], Any]
    if plan.source is not None:
        getter = compile_path(plan.source)

        def read(record: Mapping[str, Any]) -> Any:
            v = getter(record)
            return None if v is MISSING else v

        first = 0
    elif steps[0].reads_record:  # concat
        read, first = steps[0].fn, 1
    else:  # constant: its step sets the value
        read, first = (lambda _record: None), 0
    fns = tuple(step.fn for step in steps[first:])

    def value_of(record: Mapping[str, Any]) -> Any:
        v = read(record)
        for fn in fns:
            v = fn(v)
        return v

    prefix = cfg.transforms[: at + 1]
    parts: dict[str, Any] = {
        "protect": 1,  # this scheme
        "source": cfg.source,
        "type": cfg.type,
        "transforms": [_plain(t.model_dump()) for t in prefix],
        "validators": [_plain(v.model_dump()) for v in cfg.validators],
    }
    if any(t.type == "code_table" for t in prefix):
        parts["code_tables"] = _plain(tables)
    text = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False)
    fingerprint = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return _Protector(
        column=plan.name,
        kind=cfg.transforms[at].type,
        fingerprint=fingerprint,
        value_of=value_of,
        reads=tuple(compile_path(path) for path in plan.reads),
        plan=plan,
        upto=upto,
    )


KEY_LENGTH_FIX = (
    "a text key column without `length:` is VARCHAR({n}) in the table syncd creates: set `length:` "
    "to the longest key upstream sends (an existing table then needs the ALTER TABLE that "
    "`syncd check` shows)"
)


def _default_limits(dataset: DatasetConfig) -> dict[str, ColumnLimit]:
    """The limits of the table syncd creates for ``dataset``: its text key columns without ``length:``."""
    return {
        name: ColumnLimit(KEY_LENGTH_FIX.format(n=KEY_TEXT_LENGTH), length=KEY_TEXT_LENGTH)
        for name in dataset.target.key
        if (cfg := dataset.columns.get(name)) is not None and cfg.type == "string" and cfg.length is None
    }


def _plan_column(
    name: str,
    cfg: ColumnConfig,
    *,
    is_key: bool,
    code_tables: Mapping[str, Mapping[str, str]],
    today: date | None = None,
    limit: ColumnLimit | None = None,
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
    ctx = StepContext(column=name, config=cfg, code_tables=code_tables, describe=shown, today=today)

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
        cast = build_cast(cfg, shown, limit)
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
        _check_protected(name, cfg, base, is_key=is_key)

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


def _check_protected(name: str, cfg: ColumnConfig, base: SpecPath, *, is_key: bool) -> None:
    """A masked/hashed column: a hash fits its length, and a key column is not masked. A mask keeps
    a few characters of a value, so different values share the masked text: a masked key column
    would merge different records (people) into one row, each overwriting the last. A salted hash
    keeps them apart without storing the clear value."""
    transforms = cfg.transforms
    if transforms[-1].type == "hash" and cfg.length is not None and cfg.length < HASH_HEX_LENGTH:
        raise MappingSpecError(
            (*base, "length"),
            f"a hash is {HASH_HEX_LENGTH} hex characters but length is {cfg.length}: "
            f"set length to {HASH_HEX_LENGTH} or more",
        )
    at = next((i for i, t in enumerate(transforms) if t.type == "mask"), None)
    if not is_key or at is None:
        return
    raise MappingSpecError(
        (*base, "transforms", at),
        f"`{name}` is a target.key column and `mask` cannot be on it: different values with the same "
        "masked text (two ID numbers differing only in the hidden digits) would become one row, the "
        "second overwriting the first. To protect a key, replace the mask with a salted hash "
        "({hash: {salt: \"${credential:NAME}\"}}, length 64 or more), or key the table on another column",
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


def _fingerprint(
    dataset: DatasetConfig,
    code_tables: Mapping[str, Mapping[str, str]],
    source: str,
    limits: Mapping[str, ColumnLimit],
) -> bytes:
    """See :attr:`CompiledMapping.fingerprint`. Any doubt makes it differ, which only costs one
    run that maps every record again: a stale fingerprint would skip a real change."""
    parts = {
        "syncd": __version__,
        "build": build.source_digest(),  # a fix in a transform or validator changes no generated code
        "code": source,
        "columns": _plain({n: c.model_dump() for n, c in dataset.columns.items()}),
        "target": _plain(dataset.target.model_dump(include={"key", "logical_delete"})),
        "source": dataset.source.type,
        "code_tables": _plain(code_tables),
        "limits": {name: limit.key() for name, limit in sorted(limits.items())},
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


# --------------------------------------------------------------------------- fields the dataset may hold


def _held_fields(dataset: DatasetConfig, reads: frozenset[str]) -> Tree:
    """The tree of the paths a quarantined record keeps: ``authorization.fields``, plus what the
    mapping, the logical-delete rule, the source key and the update time read (the configuration
    check requires them to be authorized; a replay needs them either way)."""
    paths = set(dataset.authorization.fields) | reads
    if dataset.target.logical_delete is not None:
        paths.add(dataset.target.logical_delete.field)
    source = dataset.source
    if source.type != "file" and source.incremental is not None:
        paths.add(source.incremental.field)
    if source.type == "sql":
        paths.update(source.key)
    tree: Tree = {}
    for path in sorted(paths, key=lambda p: p.count(".")):  # a whole field before its parts
        node: Tree | None = tree
        parts = path.split(".")
        for i, part in enumerate(parts):
            if node is None:
                break  # held whole already
            if i == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})
    return tree


_DROP: Any = object()


def _kept(record: Mapping[str, Any], tree: Tree) -> tuple[dict[str, Any], int]:
    """``record`` reduced to ``tree`` (a deep copy), and how many values were left out."""
    left_out = 0

    def keep(value: Any, node: Tree | None) -> Any:
        nonlocal left_out
        if node is None:
            return copy.deepcopy(value)
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                kept = keep(v, node[k]) if k in node else _DROP
                if kept is _DROP:
                    left_out += 1
                else:
                    out[k] = kept
            return out
        if isinstance(value, list):
            # a path reads a list item by its position (``phones.0``, ``-1``): the items kept stay
            # where they were, the others become null
            items: list[Any] = []
            for i, v in enumerate(value):
                named = [node[p] for p in node if list_index(p) in (i, i - len(value))]
                kept = keep(v, _union(named)) if named else _DROP
                if kept is _DROP:
                    left_out += v is not None
                    kept = None
                items.append(kept)
            return items
        return _DROP  # a value where the held paths expect an object or a list

    out: dict[str, Any] = keep(dict(record), tree)
    return out, left_out


def _union(trees: list[Tree | None]) -> Tree | None:
    """One tree holding what each of ``trees`` holds (a list item named as ``1`` and as ``-1``)."""
    if any(t is None for t in trees):
        return None
    out: Tree = {}
    for t in trees:
        for part, sub in (t or {}).items():
            out[part] = _union([out[part], sub]) if part in out else sub
    return out
