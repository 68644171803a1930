"""Pieces of the long-running daemon (``syncd run``).

* :mod:`syncd.daemon.notify` — ``SystemdNotifier``: sd_notify (READY/STATUS/WATCHDOG/STOPPING/RELOADING).
* :mod:`syncd.daemon.http` — ``HealthServer``: ``GET /metrics`` and ``GET /healthz`` on loopback.
* :mod:`syncd.metrics` — ``Metrics``: the Prometheus metrics the daemon exports.

Import the submodules directly; this package stays empty so ``syncd --help`` starts fast.
"""

from __future__ import annotations

__all__: list[str] = []
