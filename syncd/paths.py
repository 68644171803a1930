"""Dotted paths into nested records (``address.divisionCode``, ``data.list``).

Compiled once into a getter so that the per-record cost is a few dict look-ups.

A part made only of digits (optionally after a ``-``) is a key like any other inside an
object — ``stats.2024`` reads ``{"stats": {"2024": …}}`` — and an index inside a list
(``data.list.0`` is the first record; ``-1`` the last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MISSING", "compile_path", "get_path", "list_index"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""Returned when a path does not exist (distinct from an explicit JSON null)."""


def list_index(part: str) -> int | None:
    """The list index a path part stands for (``"0"``, ``"-1"``), or None for a plain key."""
    return int(part) if part.lstrip("-").isdigit() else None


def compile_path(path: str) -> Callable[[Any], Any]:
    """Return ``getter(obj)`` for a dotted path: object keys, and list items by number."""
    if path in ("", "."):
        return lambda obj: obj
    keys = tuple(path.split("."))
    if all(list_index(k) is None for k in keys):
        return _key_getter(keys)
    steps = tuple((k, list_index(k)) for k in keys)

    def get(obj: Any) -> Any:
        cur = obj
        for key, index in steps:
            try:
                cur = cur[index] if index is not None and isinstance(cur, list | tuple) else cur[key]
            except (KeyError, IndexError, TypeError):
                return MISSING
        return cur

    return get


def _key_getter(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    """The getter of a path without list indexes (the common case: no per-part test)."""
    if len(keys) == 1:
        (key,) = keys

        def get1(obj: Any) -> Any:
            try:
                return obj[key]
            except (KeyError, IndexError, TypeError):
                return MISSING

        return get1

    def get(obj: Any) -> Any:
        cur = obj
        for part in keys:
            try:
                cur = cur[part]
            except (KeyError, IndexError, TypeError):
                return MISSING
        return cur

    return get


def get_path(obj: Any, path: str) -> Any:
    return compile_path(path)(obj)
