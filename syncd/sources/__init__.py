"""Source kinds, registered by their YAML ``type``: http (gateways), sql (前置库), file (drop folders)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from syncd.sources.base import Page, ReadStats, Source, Window, digest_texts

__all__ = [
    "SOURCES",
    "Page",
    "ReadStats",
    "Source",
    "Window",
    "build_source",
    "digest_texts",
    "load_builtin_sources",
]

# type name -> factory(app_config, dataset_config) -> Source
SOURCES: dict[str, Callable[..., Source]] = {}

# the built-in kinds: module and class, imported when a dataset of the kind is first built, so a
# process reading an http dataset (the read worker, say) never imports SQLAlchemy for the sql kind
_BUILTIN: dict[str, tuple[str, str]] = {
    "http": ("syncd.sources.http.source", "HttpSource"),
    "sql": ("syncd.sources.sql", "SqlSource"),
    "file": ("syncd.sources.files", "FileSource"),
}


def _load_builtin(kind: str) -> Callable[..., Source]:
    module, name = _BUILTIN[kind]
    factory: Callable[..., Source] = getattr(importlib.import_module(module), name).from_config
    return SOURCES.setdefault(kind, factory)


def load_builtin_sources() -> None:
    """Import and register every built-in source kind (otherwise each is imported by the first
    :func:`build_source` of its kind: the HTTP stack's imports take about 0.1 s, which a caller
    may want to pay up front)."""
    for kind in _BUILTIN:
        _load_builtin(kind)


def build_source(app: Any, dataset: Any) -> Source:
    kind = dataset.source.type
    factory = SOURCES.get(kind)
    if factory is None:
        if kind not in _BUILTIN:
            known = ", ".join(sorted(set(SOURCES) | set(_BUILTIN)))
            raise ValueError(f"unknown source type {kind!r}; known types: {known}")
        factory = _load_builtin(kind)
    return factory(app, dataset)
