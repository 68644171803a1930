"""Code generation: a dataset's compiled columns become ONE Python function.

``generate`` writes the source of ``_map(record) -> row`` from the columns' steps and
``exec``s it. Only syncd's own statement templates become source text; every value from the
configuration (keys, code tables, salts inside functions, formats) is bound as a global of
the generated function, never pasted, so a config value cannot inject code.

Per column, when its value is a ``str`` (the common case) the steps' ``on_str`` forms run
without type checks; everything else takes the general forms. The happy path has no
per-column bookkeeping: when a step raises, the line number of the statement tells which
column failed, and the error is re-raised as a :class:`~syncd.errors.RecordError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import CodeType
from typing import Any

import structlog

from syncd.errors import RecordError
from syncd.mapping.base import Step
from syncd.paths import MISSING, compile_path

__all__ = ["ColumnPlan", "compiled_source", "generate"]

log = structlog.get_logger(__name__)

Row = tuple[Any, ...]


@lru_cache(maxsize=256)
def compiled_source(source: str, filename: str) -> CodeType:
    """``compile(source, filename, "exec")``, kept for the same text: a mapping is compiled at
    every run (and once more when its configuration is loaded), each time to the same source,
    and Python's compiler took about half of it (4 of 9 ms a run). Code objects are immutable;
    every ``exec`` still gets a namespace of its own, so no state is shared between runs."""
    return compile(source, filename, "exec")


@dataclass(frozen=True)
class ColumnPlan:
    """One column, compiled: where its value comes from and its steps in order."""

    name: str
    source: str | None  # None: the first step is a generator
    steps: tuple[Step, ...]
    reads: tuple[str, ...]
    redactor: Callable[[Any], Any] | None
    sensitive: bool


def generate(
    dataset: str, plans: list[ColumnPlan], *, inline: bool
) -> tuple[str, Callable[[Mapping[str, Any]], Row]]:
    """Write the record function's source, bind every value it uses, ``exec`` it.

    The failing column is found from the line number of the statement that raised (a table
    from line to column), so the happy path carries no bookkeeping at all.
    """
    ns: dict[str, Any] = {"_RecordError": RecordError}
    lines = ["def _map(record):", "    try:", "        get = record.get"]
    line_columns: dict[int, int] = {}
    for index, plan in enumerate(plans):
        first_line = len(lines) + 1
        steps = plan.steps
        if plan.source is None and steps[0].reads_record:  # concat
            ns[f"_c{index}_gen"] = steps[0].fn
            lines.append(f"        v = _c{index}_gen(record)")
            steps = steps[1:]
        elif plan.source is None:  # constant: its own step sets v
            lines.append("        v = None")
        elif "." not in plan.source:
            ns[f"_c{index}_key"] = plan.source
            lines.append(f"        v = get(_c{index}_key)")
        else:
            lines.extend(_path_lines(plan.source, f"_c{index}_", ns))
        body = _step_lines(
            steps,
            f"_c{index}_",
            ns,
            inline=inline,
            branch=plan.source is not None or bool(plan.steps and plan.steps[0].reads_record),
        )
        lines.extend("        " + line for line in body)
        lines.append(f"        r{index} = v")
        line_columns.update(dict.fromkeys(range(first_line, len(lines) + 1), index))
    lines.append(f"        return ({''.join(f'r{i}, ' for i in range(len(plans)))})")
    lines.append("    except _RecordError as exc:")
    lines.append("        raise _relabel(exc, record) from None")
    lines.append("    except Exception as exc:")
    lines.append("        raise _relabel(exc, record) from exc")
    source = "\n".join(lines) + "\n"
    filename = f"<syncd mapping of dataset {dataset}>"
    ns["_relabel"] = _relabeller(plans, line_columns)
    exec(compiled_source(source, filename), ns)  # noqa: S102 - the source is syncd's own templates; config values are bound, not pasted
    fn: Callable[[Mapping[str, Any]], Row] = ns["_map"]
    return source, fn


def _step_lines(
    steps: tuple[Step, ...], prefix: str, ns: dict[str, Any], *, inline: bool, branch: bool
) -> list[str]:
    """The statements of a column's steps, operating on ``v``.

    With ``branch``, two versions are written: one for a ``str`` (the common case: each step's
    ``on_str`` form, with no type checks while ``v`` is known to be a ``str``, and one
    ``if v is not None:`` after a step that may yield None) and the general one for the rest.
    """
    bound: list[tuple[Step, str, dict[str, str]]] = []
    for j, step in enumerate(steps):
        names = {key: f"{prefix}{j}_{key}" for key in step.env}
        for key, value in step.env.items():
            ns[names[key]] = value
        ns[f"{prefix}{j}_f"] = step.fn
        bound.append((step, f"{prefix}{j}_f", names))
    if not inline:
        return [line for _, f, names in bound for line in _render("{v} = {f}({v})", f, names)]
    general = [
        line for step, f, names in bound for line in _render(step.inline or "{v} = {f}({v})", f, names)
    ]
    if not branch or not steps:
        return general
    for_str: list[str] = []
    indent, state, stripped = "", "str", False
    for i, (step, f, names) in enumerate(bound):
        if state != "str":
            for_str.extend(indent + line for line in _render(step.inline or "{v} = {f}({v})", f, names))
            continue
        if stripped and step.on_stripped is not None:
            on_str = step.on_stripped
        else:
            on_str = step.on_str if step.on_str is not None else "{v} = {f}({v})"
        for_str.extend(indent + line for line in _render(on_str, f, names))
        stripped = step.stripped_out == "yes" or (stripped and step.stripped_out == "keep")
        state = step.str_result
        rest = steps[i + 1 :]
        if state == "str|None" and all(s.none_safe for s in rest):
            for_str.append(indent + "if v is not None:")
            indent += "    "
            state = "str"
    while for_str and for_str[-1].strip() == "if v is not None:":  # nothing left to guard
        for_str.pop()
    return [
        "if v.__class__ is str:",
        *("    " + line for line in for_str or ["pass"]),
        "else:",
        *("    " + line for line in general or ["pass"]),
    ]


def _render(template: str, f: str, names: dict[str, str]) -> list[str]:
    code = template.format(v="v", f=f, **names)
    return code.split("\n") if code else []


def _path_lines(path: str, prefix: str, ns: dict[str, Any]) -> list[str]:
    """Statements reading a dotted path into ``v``: dict look-ups inline while the containers
    are dicts (a digit-only part is a key there too), :func:`compile_path`'s getter (missing ->
    None; list indexes) for anything else."""
    getter = compile_path(path)

    def slow(record: Any) -> Any:
        value = getter(record)
        return None if value is MISSING else value

    ns[prefix + "path"] = slow
    parts = path.split(".")
    for depth, part in enumerate(parts):
        ns[f"{prefix}p{depth}"] = part

    def descend(depth: int, indent: str) -> list[str]:
        if depth == len(parts):
            return []
        return [
            f"{indent}if v.__class__ is dict:",
            f"{indent}    v = v.get({prefix}p{depth})",
            *descend(depth + 1, indent + "    "),
            f"{indent}else:",
            f"{indent}    v = {prefix}path(record)",
        ]

    return [f"        v = get({prefix}p0)", *descend(1, "        ")]


def _relabeller(
    plans: list[ColumnPlan], line_columns: dict[int, int]
) -> Callable[[Exception, Any], RecordError]:
    names = [p.name for p in plans]
    sensitive = [p.sensitive for p in plans]

    def relabel(exc: Exception, record: Any) -> RecordError:
        # the first traceback entry is the generated function, at the statement that raised
        tb = exc.__traceback__
        index = line_columns.get(tb.tb_lineno) if tb is not None else None
        if isinstance(exc, RecordError):
            column = exc.column or (names[index] if index is not None else None)
            return RecordError(exc.reason, column=column)
        if not isinstance(record, Mapping):
            return RecordError(f"the record is not a JSON object (got {type(record).__name__})")
        if index is None:  # cannot happen: every statement after `get` belongs to a column
            return RecordError(f"could not map the record ({type(exc).__name__})")
        log.warning("mapping.unexpected_error", column=names[index], error=type(exc).__name__)
        detail = "" if sensitive[index] else f": {str(exc)[:200]}"
        return RecordError(f"could not map the value ({type(exc).__name__}{detail})", column=names[index])

    return relabel
