"""Pydantic validation errors → positioned messages in the operator's terms.

Pydantic reports a location in the *model* (``("source", "http", "pagination")``, with the
discriminator tag inside it); the operator needs the line in the *file*. :func:`locate` walks the
model's annotations alongside the document to turn one into the other: it drops discriminator
tags and union member labels, follows the transform shorthand (``- {hash: ${SALT}}`` is the
model's ``salt``) and knows which mapping key an error is about. :func:`iter_leaves` is the same
walk over every scalar of a document, used by the loader to find secret fields.

:func:`translate` then words each error: ``required key `x` is missing``, ``unknown key `colum`:
did you mean `columns`?``, ``unknown type 'htp'; known types: http``, ``must be one of …``.
A secret field's value is never quoted back.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from syncd.config.model import AppConfig, DatasetConfig
from syncd.config.positions import Document, Path
from syncd.errors import ConfigIssue

__all__ = ["LOADER_FIELDS", "Leaf", "Located", "iter_leaves", "locate", "scalar_types", "translate"]

LOADER_FIELDS: dict[type[BaseModel], frozenset[str]] = {
    AppConfig: frozenset({"datasets", "source_file"}),
    DatasetConfig: frozenset({"source_file"}),
}
"""Model fields the loader fills: an operator may not write them, and they are never suggested."""

_Before = tuple[Callable[[Any], Any], ...]

# --------------------------------------------------------------------------- the annotation walk


@dataclass(frozen=True, slots=True)
class _Shape:
    tp: Any  # the bare type, Annotated layers removed
    before: _Before = ()
    discriminator: str | None = None


def _split(tp: Any, before: _Before = (), discriminator: str | None = None) -> _Shape:
    while get_origin(tp) is Annotated:
        tp, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, BeforeValidator):
                before = (*before, m.func)  # type: ignore[arg-type]
            elif isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                discriminator = m.discriminator
    return _Shape(tp, before, discriminator)


def _field(info: FieldInfo) -> _Shape:
    before = tuple(m.func for m in info.metadata if isinstance(m, BeforeValidator))
    disc = info.discriminator if isinstance(info.discriminator, str) else None
    return _split(info.annotation, before, disc)  # type: ignore[arg-type]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _members(shape: _Shape) -> list[Any] | None:
    """The non-None members of a union (a discriminated single model counts as one), else None."""
    if get_origin(shape.tp) in (Union, types.UnionType):
        return [m for m in get_args(shape.tp) if m is not type(None)]
    return [shape.tp] if shape.discriminator else None


def _tags(members: list[Any], discriminator: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in members:
        cls = _split(m).tp
        if _is_model(cls) and discriminator in cls.model_fields:
            for tag in get_args(cls.model_fields[discriminator].annotation):
                out[str(tag)] = m
    return out


def _fits(member: Any, data: Any) -> bool:
    bare = _split(member).tp
    origin = get_origin(bare) or bare
    if isinstance(data, dict):
        return origin is dict or _is_model(origin) or bare is Any
    if isinstance(data, list):
        return origin in (tuple, list) or bare is Any
    return not (origin in (dict, tuple, list) or _is_model(origin))


def _label_member(members: list[Any], label: str) -> Any:
    for m in members:
        bare = _split(m).tp
        origin = get_origin(bare)
        if (origin is None and getattr(bare, "__name__", None) == label) or (
            origin is not None and label.startswith(f"{getattr(origin, '__name__', '')}[")
        ):
            return m
    return None


def _normalize(shape: _Shape, data: Any) -> tuple[Any, dict[str, Path]]:
    """Apply a model's before-validators (the shorthand forms) and trace each new key to the file."""
    if not shape.before or not (_is_model(shape.tp) or _members(shape)):
        return data, {}
    new = data
    for func in shape.before:
        try:
            new = func(new)
        except (ValueError, TypeError, AssertionError):
            return data, {}
    if new is data or not isinstance(new, dict):
        return new, {}
    return new, {k: _trace(data, k, v) for k, v in new.items()}


def _trace(raw: Any, key: str, value: Any) -> Path:
    if not isinstance(raw, dict):
        return ()
    if raw.get(key, object()) is value:
        return (key,)
    for k, v in raw.items():
        if v is value:
            return (k,)
        if isinstance(v, dict) and key in v and v[key] is value:
            return (k, key)
    return ()


@dataclass(frozen=True, slots=True)
class _At:
    """A point of the walk: the expected shape, the value there and its document path."""

    shape: _Shape
    data: Any
    path: Path
    origin: dict[str, Path] = field(default_factory=dict)  # model key → path, after a shorthand
    owner: type[BaseModel] | None = None
    field: str | None = None


def _enter(at: _At) -> _At:
    data, traced = _normalize(at.shape, at.data)
    return replace(at, data=data, origin=traced or at.origin) if traced or data is not at.data else at


def _choose(shape: _Shape, members: list[Any], data: Any, label: str | None) -> tuple[Any, bool, bool]:
    """The union member for ``data``: (member or None, ``label`` consumed, error is off-branch)."""
    if shape.discriminator:
        tags = _tags(members, shape.discriminator)
        if label is not None and label in tags:
            return tags[label], True, False
        tag = data.get(shape.discriminator) if isinstance(data, dict) else None
        return (tags.get(str(tag)) if tag is not None else None), False, False
    if len(members) == 1:
        return members[0], False, False
    fit = [m for m in members if _fits(m, data)]
    shaped = fit[0] if len(fit) == 1 else None
    if label is None:
        return shaped, False, False
    labelled = _label_member(members, label)
    return labelled, True, shaped is not None and labelled is not shaped


def _child(at: _At, elem: str | int) -> _At | None:
    """One step into a model field, mapping entry or list item; None when the model has none."""
    bare, generic, data = at.shape.tp, get_origin(at.shape.tp), at.data
    if _is_model(bare) and isinstance(elem, str):
        info = bare.model_fields.get(elem)
        if info is None or elem in LOADER_FIELDS.get(bare, ()):
            return None
        value = data.get(elem) if isinstance(data, dict) else None
        return _At(_field(info), value, at.path + at.origin.get(elem, (elem,)), owner=bare, field=elem)
    if generic is dict and isinstance(elem, str):
        value = data.get(elem) if isinstance(data, dict) else None
        return _At(_split(get_args(bare)[1]), value, (*at.path, elem), owner=at.owner, field=at.field)
    if generic in (tuple, list) and isinstance(elem, int):
        args = get_args(bare)
        item_t = args[0] if generic is list or args[-1] is Ellipsis else args[min(elem, len(args) - 1)]
        value = data[elem] if isinstance(data, list) and 0 <= elem < len(data) else None
        return _At(_split(item_t), value, (*at.path, elem), owner=at.owner, field=at.field)
    return None


def _literals(tp: Any) -> tuple[str, ...]:
    return tuple(str(a) for a in get_args(tp)) if get_origin(tp) is Literal else ()


@dataclass(frozen=True, slots=True)
class Located:
    """Where a model location is in the document, and what the model expects there."""

    path: Path
    annotation: Any = None  # the bare type at ``path``; None once the walk left the model
    owner: type[BaseModel] | None = None  # the model whose field the last step named
    on_key: bool = False  # the location is a mapping key (pydantic's ``[key]``)
    choices: tuple[str, ...] = ()  # discriminator tags or Literal values expected at ``path``
    union: Path | None = None  # document path of an (undiscriminated) union crossed on the way
    off_branch: bool = False  # the error came from a union member the value's shape does not fit


def locate(
    model: type[BaseModel], data: Any, loc: tuple[str | int, ...], *, pydantic_loc: bool = True
) -> Located:
    """Map ``loc`` (pydantic's, or a plain model path with ``pydantic_loc=False``) to the document."""
    at = _At(_Shape(model), data, ())
    union: Path | None = None
    off_branch = False
    i = 0

    def here(choices: tuple[str, ...] = ()) -> Located:
        return Located(at.path, at.shape.tp, at.owner, choices=choices, union=union, off_branch=off_branch)

    while True:
        at = _enter(at)
        members = _members(at.shape)
        if members is not None:
            nxt = loc[i] if pydantic_loc and i < len(loc) else None
            chosen, consumed, off = _choose(at.shape, members, at.data, nxt if isinstance(nxt, str) else None)
            i += consumed
            off_branch |= off
            multi = len(members) > 1
            if consumed and multi and not at.shape.discriminator:
                union = at.path
            if chosen is None or (multi and i == len(loc)):
                return here(tuple(_tags(members, at.shape.discriminator)) if at.shape.discriminator else ())
            at = replace(at, shape=_split(chosen))
            continue
        if i == len(loc):
            return here(_literals(at.shape.tp))
        elem = loc[i]
        i += 1
        if elem == "[key]":
            return Located(at.path, None, at.owner, on_key=True, union=union, off_branch=off_branch)
        child = _child(at, elem)
        if child is None:
            step = at.origin.get(elem, (elem,)) if isinstance(elem, str) else (elem,)
            owner = at.shape.tp if _is_model(at.shape.tp) else at.owner
            return Located(at.path + step + loc[i:], None, owner, union=union, off_branch=off_branch)
        at = child


@dataclass(frozen=True, slots=True)
class Leaf:
    """A scalar value of the document, with the type the model expects there."""

    path: Path
    annotation: Any  # the bare type (a union stays a union)
    owner: type[BaseModel] | None
    field: str | None
    value: Any


def scalar_types(annotation: Any) -> frozenset[Any]:
    """The bare types a leaf annotation accepts besides None: ``SecretStr | None`` → {SecretStr}."""
    members = _members(_Shape(annotation)) or [annotation]
    return frozenset(_split(m).tp for m in members)


def iter_leaves(model: type[BaseModel], data: Any) -> Iterator[Leaf]:
    """Every scalar value of ``data`` that the model types, with its document path."""
    return _leaves(_At(_Shape(model), data, ()))


def _leaves(at: _At) -> Iterator[Leaf]:
    at = _enter(at)
    members = _members(at.shape)
    nested = isinstance(at.data, dict | list)
    if members is not None and (nested or at.shape.discriminator):
        chosen, _, _ = _choose(at.shape, members, at.data, None)
        if chosen is not None:
            yield from _leaves(replace(at, shape=_split(chosen)))
    elif nested:
        bare = at.shape.tp
        keys: list[str | int]
        if isinstance(at.data, list):
            keys = [*range(len(at.data))]
        else:
            keys = [k for k in bare.model_fields if k in at.data] if _is_model(bare) else [*at.data]
        for key in keys:
            child = _child(at, key)
            if child is not None:
                yield from _leaves(child)
    elif at.shape.tp is not Any:
        yield Leaf(at.path, at.shape.tp, at.owner, at.field, at.data)


# --------------------------------------------------------------------------- wording

_KINDS = {
    "string_type": "text", "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true/false", "bool_parsing": "true/false", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list",
}
_EXPECT = {
    "int": "expected a whole number", "float": "expected a number", "decimal": "expected a number",
    "bool": "expected true or false", "date": "expected a date like 2026-12-31",
    "datetime": "expected a date and time like 2026-01-01 08:00:00",
    "time_delta": "expected a duration such as 30s, 5m, 2h or 1d",
}
_SHAPES = {
    "string_type": "expected text", "dict_type": "expected a mapping (indented `key: value` lines)",
    "model_type": "expected a mapping (indented `key: value` lines)",
    "model_attributes_type": "expected a mapping (indented `key: value` lines)",
    "list_type": "expected a list (`- item` lines, or [a, b])",
    "tuple_type": "expected a list (`- item` lines, or [a, b])",
}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most"),
           "greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}
_LENGTHS: dict[str, Callable[[dict[str, Any]], str]] = {
    "string_too_short": lambda c: "must not be empty" if c.get("min_length") == 1
    else f"needs at least {c.get('min_length')} characters",
    "string_too_long": lambda c: f"is too long: at most {c.get('max_length')} characters",
    "too_short": lambda c: f"must not be empty: give at least {c.get('min_length')} item(s)",
    "too_long": lambda c: f"has too many items: at most {c.get('max_length')}",
}
_SCALARS = (str, int, float, bool, Decimal, date, datetime, timedelta)


def _describe(value: Any, *, secret: bool) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if secret:
        return "a value (not shown: secret)"
    return repr(value) if isinstance(value, _SCALARS) else type(value).__name__


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


def _family(kind: str) -> str:
    if not kind.endswith(("_parsing", "_type", "_from_float", "_inexact")):
        return ""
    for family in ("datetime", "date", "time_delta", "int", "float", "decimal", "bool"):
        if kind.startswith(family + "_"):
            return family
    return ""


def _word(err: ErrorDetails, where: Located, *, secret: bool) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    got = _describe(err["input"], secret=secret)
    if kind == "literal_error":
        choices = where.choices or (str(ctx.get("expected", "")),)
        return f"must be one of {', '.join(choices)} (got {got})"
    if kind in _SHAPES:
        return f"{_SHAPES[kind]}, got {got}"
    if family := _family(kind):
        return f"{_EXPECT[family]}, got {got}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(key)}" + ("" if secret else f", got {got}")
    if kind in _LENGTHS:
        return _LENGTHS[kind](ctx)
    return str(ctx.get("error", err["msg"]))  # value_error / assertion_error: the validator's words


def translate(
    doc: Document, model: type[BaseModel], errors: list[ErrorDetails], *,
    skip: Collection[Path] = (), secrets: Collection[Path] = (),
) -> list[ConfigIssue]:
    """Positioned issues for ``errors`` from validating ``doc.data`` as ``model``.

    ``skip``: paths that already have an issue (e.g. interpolation); ``secrets``: secret fields.
    """
    issues: list[ConfigIssue] = []
    unions: dict[Path, list[ErrorDetails]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        at = getattr((err.get("ctx") or {}).get("error"), "at", None)
        if isinstance(at, tuple):
            loc = (*loc, *at)
        where = locate(model, doc.data, loc)
        if where.off_branch or any(where.path[: len(s)] == s for s in skip):
            continue
        if where.union is not None and where.path == where.union:
            unions.setdefault(where.path, []).append(err)
            continue
        issues.append(_issue(doc, model, err, loc=loc, where=where, secret=where.path in secrets))
    for path, group in unions.items():
        kinds = list(dict.fromkeys(_KINDS.get(e["type"], str(e["msg"])) for e in group))
        expected = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        got = _describe(group[0]["input"], secret=path in secrets)
        issues.append(doc.issue(path, f"expected {expected}, got {got}"))
    return list(dict.fromkeys(issues))


def _issue(
    doc: Document, model: type[BaseModel], err: ErrorDetails, *, loc: tuple[str | int, ...], where: Located,
    secret: bool,
) -> ConfigIssue:
    kind = err["type"]
    if kind == "missing":
        name = str(loc[-1])
        parent = locate(model, doc.data, loc[:-1]).path
        info = where.owner.model_fields.get(name) if where.owner else None
        note = f" ({info.description})" if info is not None and info.description else ""
        return doc.issue(parent, f"required key `{name}` is missing{note}", on_key=True)
    if kind == "extra_forbidden":
        name = str(loc[-1])
        owner = where.owner
        allowed = [f for f in owner.model_fields if f not in LOADER_FIELDS.get(owner, ())] if owner else []
        hint = _suggest(name, allowed) or f"allowed keys are {', '.join(allowed)}"
        return doc.issue(where.path, f"unknown key `{name}`: {hint}", on_key=True)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = str((err.get("ctx") or {}).get("discriminator", "'type'")).strip("'")
        known = ", ".join(where.choices)
        value = err["input"]
        tag = value.get(disc) if isinstance(value, dict) else None
        if tag is None:
            return doc.issue(where.path, f"add `{disc}:` (one of {known})", on_key=True)
        close = _suggest(str(tag), where.choices)
        return doc.issue((*where.path, disc), f"unknown {disc} {str(tag)!r}; known {disc}s: {known}"
                         + (f" ({close})" if close else ""))
    return doc.issue(where.path, _word(err, where, secret=secret), on_key=where.on_key)
