"""syncd's configuration: YAML files → a validated, frozen :class:`AppConfig`.

:func:`load_config` reads the main file (``syncd.yaml``) and one file per dataset; every
mistake comes back as ``file:line:column: path: message`` in one :class:`~syncd.errors.ConfigError`.
The model lives in :mod:`syncd.config.model`.
"""

from __future__ import annotations

from syncd.config.loader import load_config, load_dataset_file
from syncd.config.model import AppConfig, DatasetConfig

__all__ = ["AppConfig", "DatasetConfig", "load_config", "load_dataset_file"]
