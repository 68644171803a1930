"""Source kinds, registered by their YAML ``type``: http (gateways), sql (前置库), file (drop folders)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from syncd.sources.base import Page, ReadStats, Source, Window

__all__ = ["SOURCES", "Page", "ReadStats", "Source", "Window", "build_source", "load_builtin_sources"]

# type name -> factory(app_config, dataset_config) -> Source
SOURCES: dict[str, Callable[..., Source]] = {}


def load_builtin_sources() -> None:
    """Import and register the built-in source kinds (done by the first :func:`build_source`;
    the HTTP stack's imports take about 0.1 s, which a caller may want to pay up front)."""
    from syncd.sources.files import FileSource
    from syncd.sources.http.source import HttpSource
    from syncd.sources.sql import SqlSource

    SOURCES.setdefault("http", HttpSource.from_config)
    SOURCES.setdefault("sql", SqlSource.from_config)
    SOURCES.setdefault("file", FileSource.from_config)


def build_source(app: Any, dataset: Any) -> Source:
    if not SOURCES:
        load_builtin_sources()
    kind = dataset.source.type
    try:
        factory = SOURCES[kind]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise ValueError(f"unknown source type {kind!r}; known types: {known}") from None
    return factory(app, dataset)
