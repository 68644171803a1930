"""Operator tools beside the sync itself: schema, plan (dry run), quarantine replay, usage report.

Each module holds the logic of one ``syncd`` subcommand (the command modules in
:mod:`syncd.commands` only parse arguments and print):

- :mod:`.schema`      JSON Schema of the configuration files (``syncd schema``)
- :mod:`.fielddocs`   descriptions of configuration fields (schema and docs/configuration.md)
- :mod:`.configdoc`   the generated configuration reference (``tools/gen_docs.py``)
- :mod:`.plan`        what a run would do, read-only (``syncd plan``)
- :mod:`.quarantine`  list, show and replay quarantined records (``syncd quarantine``)
- :mod:`.report`      monthly usage report for the data bureau (``syncd report``)
"""

from __future__ import annotations

__all__: list[str] = []
