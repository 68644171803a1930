"""Source kinds, registered by their YAML ``type``: http (gateways), sql (前置库), file (drop folders)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from syncd.sources.base import Page, ReadStats, Source, Window

__all__ = ["SOURCES", "Page", "ReadStats", "Source", "Window", "build_source"]

# type name -> factory(app_config, dataset_config) -> Source
SOURCES: dict[str, Callable[..., Source]] = {}


def _register_builtin() -> None:
    from syncd.sources.files import FileSource
    from syncd.sources.http.source import HttpSource
    from syncd.sources.sql import SqlSource

    SOURCES.setdefault("http", HttpSource.from_config)
    SOURCES.setdefault("sql", SqlSource.from_config)
    SOURCES.setdefault("file", FileSource.from_config)


def build_source(app: Any, dataset: Any) -> Source:
    if not SOURCES:
        _register_builtin()
    kind = dataset.source.type
    try:
        factory = SOURCES[kind]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise ValueError(f"unknown source type {kind!r}; known types: {known}") from None
    return factory(app, dataset)
