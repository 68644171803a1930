"""syncd's configuration: YAML files → a validated, frozen :class:`AppConfig`.

:func:`load_config` reads the main file (``syncd.yaml``) and one file per dataset; every
mistake comes back as ``file:line:column: path: message`` in one :class:`~syncd.errors.ConfigError`.
The model lives in :mod:`syncd.config.model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncd.config.model import AppConfig, DatasetConfig

if TYPE_CHECKING:
    from syncd.config.loader import load_config, load_dataset_file

__all__ = ["AppConfig", "DatasetConfig", "load_config", "load_dataset_file"]


def __getattr__(name: str) -> Any:
    # the loader (ruamel.yaml, the message tables) is imported on first use: the read worker
    # receives a validated AppConfig and never parses YAML
    if name in ("load_config", "load_dataset_file"):
        from syncd.config import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'syncd.config' has no attribute {name!r}")
