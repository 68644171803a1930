"""A location inside a configuration document and how messages write it.

Kept apart from :mod:`syncd.config.positions` (which parses YAML with ruamel.yaml) so that code
which only names a location — an auth scheme built in the read worker, which never parses YAML —
does not import the parser.
"""

from __future__ import annotations

__all__ = ["Path", "format_path"]

Path = tuple[str | int, ...]
"""A location inside a document: mapping keys and 0-based list indexes."""


def format_path(path: Path) -> str:
    """``("columns", "xm", "transforms", 0)`` → ``columns.xm.transforms[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
