"""Code tables (字典) and ID-number arithmetic shared by the simulated gateway's data.

``CODE_TABLES`` is loaded from ``code_tables.json`` (package data), so the demo configuration
can reference the same tables by name: ``ethnicity`` (民族, GB/T 3304), ``education``
(文化程度, GB/T 4658 top level), ``marital_status`` (婚姻状况, GB/T 2261.2), ``gender``
(性别: codes 1/2/9 and the labels 男/女 that some gateways send instead) and ``relation``
(与户主关系, GB/T 4761 main codes).

The ID-number helpers implement the GB 11643-1999 check digit (ISO 7064 MOD 11-2).
"""

from __future__ import annotations

import json
from importlib import resources
from operator import mul
from typing import Final

__all__ = [
    "CODE_TABLES",
    "CODE_TABLES_FILE",
    "id_check_digit",
    "is_valid_id_number",
    "load_code_tables",
]

CODE_TABLES_FILE: Final = "code_tables.json"

_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ASCII_ZERO_SUM: Final = ord("0") * sum(_WEIGHTS)
_CHECK: Final = "10X98765432"


def load_code_tables() -> dict[str, dict[str, str]]:
    """Read ``code_tables.json`` from the package (a fresh, mutable copy)."""
    text = resources.files(__package__).joinpath(CODE_TABLES_FILE).read_text(encoding="utf-8")
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise TypeError(f"{CODE_TABLES_FILE} must hold an object of tables")
    tables: dict[str, dict[str, str]] = {}
    for name, table in raw.items():
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items()
        ):
            raise TypeError(f"{CODE_TABLES_FILE}: table {name!r} must map code strings to label strings")
        tables[str(name)] = dict(table)
    return tables


CODE_TABLES: Final[dict[str, dict[str, str]]] = load_code_tables()
"""The code tables by name; treat as read-only (use :func:`load_code_tables` for a copy)."""


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character ("0"-"9" or "X") of the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("an ID number's body is exactly 17 ASCII digits")
    # weighted sum of the digits, computed on their ASCII codes (hot path of the generator)
    total = sum(map(mul, first17.encode("ascii"), _WEIGHTS)) - _ASCII_ZERO_SUM
    return _CHECK[total % 11]


def is_valid_id_number(value: str) -> bool:
    """True for an 18-character ID number whose check character matches (upper-case X only)."""
    if len(value) != 18 or not value[:17].isascii() or not value[:17].isdigit():
        return False
    return id_check_digit(value[:17]) == value[17]
