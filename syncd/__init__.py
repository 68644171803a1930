"""syncd — 数据回流同步守护进程.

Pulls the datasets a grassroots unit is authorized to receive from provincial data-sharing
gateways, maps their fields onto local tables and records exactly what changed.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
