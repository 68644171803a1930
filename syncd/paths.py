"""Dotted paths into nested records (``address.divisionCode``, ``data.list``).

Compiled once into a getter so that the per-record cost is a few dict look-ups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MISSING", "compile_path", "get_path"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""Returned when a path does not exist (distinct from an explicit JSON null)."""


def compile_path(path: str) -> Callable[[Any], Any]:
    """Return ``getter(obj)`` for a dotted path; list items are addressed by integer parts."""
    if path in ("", "."):
        return lambda obj: obj
    parts = tuple(int(p) if p.lstrip("-").isdigit() else p for p in path.split("."))
    if len(parts) == 1:
        (key,) = parts

        def get1(obj: Any) -> Any:
            try:
                return obj[key]
            except (KeyError, IndexError, TypeError):
                return MISSING

        return get1

    def get(obj: Any) -> Any:
        cur = obj
        for part in parts:
            try:
                cur = cur[part]
            except (KeyError, IndexError, TypeError):
                return MISSING
        return cur

    return get


def get_path(obj: Any, path: str) -> Any:
    return compile_path(path)(obj)
