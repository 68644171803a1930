"""Shared building blocks of the mapping compiler.

* :class:`MappingSpecError` — a configuration mistake found while compiling, with its exact
  position inside the dataset document.
* :class:`Step` — one compiled stage of a column pipeline (a transform, a cast, a validator):
  a plain ``value -> value`` function, optionally with a statement template that the compiler
  pastes into the generated record function to save a call on the hot path.
* :class:`StepContext` — what a step factory may know about the column it is built for.
* the transform registry (:data:`TRANSFORMS`, :func:`register_transform`), filled by
  :mod:`.transforms` and :mod:`.masking`.
* value helpers used by several stages: :func:`text_of` (numbers as text without ``.0``
  artefacts), :func:`describe` (a value for an error message, truncated) and
  :func:`check_options` (reject options a transform or validator does not use).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from syncd.config.model import ColumnConfig, TransformConfig
from syncd.errors import RecordError

__all__ = [
    "DESCRIBE_LIMIT",
    "GENERATORS",
    "SENSITIVE",
    "STRIP_CHARS",
    "TRANSFORMS",
    "TRANSFORM_OPTIONS",
    "MappingSpecError",
    "SpecPath",
    "Step",
    "StepContext",
    "StrResult",
    "TransformFactory",
    "check_options",
    "describe",
    "float_text",
    "lookup_factory",
    "register_transform",
    "render_path",
    "suggest",
    "text_of",
]

# Every character str.isspace() strips, plus the zero-width characters and BOM that Excel
# and Windows tools leave around values (U+3000 ideographic space is among the former).
STRIP_CHARS = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace()) + "\u200b\u200c\u200d\u2060\ufeff"

SpecPath = tuple[str | int, ...]
StrResult = Literal["str", "str|None", "any"]
DESCRIBE_LIMIT = 50


def render_path(path: SpecPath) -> str:
    """``("columns", "birth", "transforms", 2)`` -> ``columns.birth.transforms.2``."""
    return ".".join(str(p) for p in path)


class MappingSpecError(ValueError):
    """A mistake in a dataset's mapping found while compiling it (before any record is read).

    ``path`` is the position inside the dataset document, e.g.
    ``("columns", "birth", "transforms", 2, "formats", 0)``; ``message`` says what is wrong and
    how to fix it.
    """

    def __init__(self, path: SpecPath, message: str) -> None:
        self.path: SpecPath = tuple(path)
        self.message = message
        super().__init__(f"{render_path(self.path)}: {message}" if self.path else message)

    def within(self, *prefix: str | int) -> MappingSpecError:
        """The same error, positioned below ``prefix``."""
        return MappingSpecError((*prefix, *self.path), self.message)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a transform, cast or validator factory knows about its column."""

    column: str
    config: ColumnConfig
    code_tables: Mapping[str, Mapping[str, str]]
    describe: Callable[[Any], str]
    """Renders a value for an error message; hides it on masked or hashed columns."""
    today: date | None = None
    """Today in the configured ``timezone:`` (None: the host's date): the latest birth date."""


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled stage of a column pipeline.

    ``fn`` maps a value to a value (or raises :class:`RecordError` without a column name: the
    compiler adds it). ``inline`` optionally gives the same behaviour as Python statements
    operating on the variable ``{v}``; the names ``{f}`` (``fn`` itself) and every key of
    ``env`` are bound by the compiler. Templates are written by syncd's own code only; config
    values reach generated code solely through ``env`` bindings, never as source text.
    """

    fn: Callable[[Any], Any]
    inline: str | None = None
    env: Mapping[str, Any] = field(default_factory=dict)
    reads_record: bool = False
    """True for generators (``concat``) whose ``fn`` takes the whole record."""
    on_str: str | None = None
    """A template valid when ``{v}`` is known to be a ``str`` ("" for no statement at all);
    None means ``{v} = {f}({v})``."""
    str_result: StrResult = "any"
    """What ``{v}`` is after the step when it was a ``str``: still a ``str``, a ``str`` or
    ``None``, or anything."""
    none_safe: bool = False
    """True when the step maps ``None`` to ``None`` and never raises for it."""
    on_stripped: str | None = None
    """Like ``on_str``, for a ``str`` known to carry no surrounding blanks (after ``strip``)."""
    stripped_out: Literal["yes", "keep", "no"] = "no"
    """Whether a ``str`` result has no surrounding blanks: always, when the input had none, or
    not known."""


TransformFactory = Callable[[TransformConfig, StepContext], Step]

TRANSFORMS: dict[str, TransformFactory] = {}
"""The transform registry: ``type:`` name -> factory (filled by the modules defining them)."""
TRANSFORM_OPTIONS: dict[str, frozenset[str]] = {}
"""``type:`` name -> the options that transform accepts (everything else is rejected)."""

GENERATORS = frozenset({"constant", "concat"})
"""Transforms that produce the value instead of reading ``source:``."""
SENSITIVE = frozenset({"mask", "hash"})
"""Transforms that protect personal data (validation happens before them)."""


def register_transform(name: str, *options: str) -> Callable[[TransformFactory], TransformFactory]:
    """Decorator: register a transform factory under ``name`` with the options it takes."""

    def add(factory: TransformFactory) -> TransformFactory:
        TRANSFORMS[name] = factory
        TRANSFORM_OPTIONS[name] = frozenset(options)
        return factory

    return add


def float_text(value: float) -> str:
    """A float as text without binary or ``.0`` artefacts: 3.0 -> "3", 1e-05 -> "0.00001"."""
    if value.is_integer():
        return str(int(value))
    text = repr(value)
    if "e" in text:
        return format(Decimal(text), "f")
    return text


_TEXT_CONVERTERS: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (bool, lambda v: "true" if v else "false"),
    (str, str),
    (int, lambda v: str(int(v))),
    (float, lambda v: float_text(float(v))),
    (Decimal, lambda v: format(v, "f")),
    (datetime, lambda v: v.isoformat(sep=" ")),
    (date, lambda v: v.isoformat()),
)


def text_of(value: Any) -> str:
    """The text of a scalar upstream value: numbers without ``.0`` artefacts, dates in ISO.

    Raises :class:`RecordError` for JSON objects and arrays, which have no single text.
    """
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]
    if cls is int:
        return str(value)
    if cls is float:
        return float_text(value)
    for kind, convert in _TEXT_CONVERTERS:
        if isinstance(value, kind):
            return convert(value)
    if isinstance(value, Mapping):
        raise RecordError("expected a single value, got a JSON object")
    if isinstance(value, list | tuple):
        raise RecordError("expected a single value, got a JSON array")
    raise RecordError(f"expected a single value, got {type(value).__name__}")


def describe(value: Any) -> str:
    """A value for an error message, truncated to 50 characters (strings keep their quotes)."""
    if isinstance(value, str):
        if len(value) > DESCRIBE_LIMIT:
            return repr(value[:DESCRIBE_LIMIT]) + "…"
        return repr(value)
    text = repr(value)
    if len(text) > DESCRIBE_LIMIT:
        return text[:DESCRIBE_LIMIT] + "…"
    return text


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'upper'?)`` when ``name`` is close to a known name, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


F = TypeVar("F")


def lookup_factory(
    registry: Mapping[str, F], options: Mapping[str, frozenset[str]], kind: str, cfg: Any
) -> F:
    """The factory registered for ``cfg.type``, its options checked; unknown types name the known ones."""
    factory = registry.get(cfg.type)
    if factory is None:
        raise MappingSpecError(
            (),
            f"unknown {kind} {cfg.type!r}{suggest(cfg.type, registry)}; "
            f"known {kind}s are: {', '.join(sorted(registry))}",
        )
    check_options(cfg, kind, cfg.type, options[cfg.type])
    return factory


def check_options(cfg: BaseModel, kind: str, name: str, allowed: Iterable[str]) -> None:
    """Reject options that the ``name`` transform/validator does not use.

    Raises :class:`MappingSpecError` positioned at the first unused option.
    """
    allowed_set = set(allowed)
    unused = sorted(k for k in cfg.model_fields_set if k != "type" and k not in allowed_set)
    if not unused:
        return
    takes = f"it takes: {', '.join(sorted(allowed_set))}" if allowed_set else "it takes no options"
    raise MappingSpecError(
        (unused[0],),
        f"option{'s' if len(unused) > 1 else ''} {', '.join(unused)} "
        f"{'are' if len(unused) > 1 else 'is'} not used by the `{name}` {kind}; {takes}",
    )
