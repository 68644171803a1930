"""Column types that behave the same on SQLite, PostgreSQL and MariaDB.

- :func:`column_type` turns a mapped column (``ColumnConfig``) into a SQLAlchemy type:
  string → VARCHAR(length) (TEXT/LONGTEXT without a length; a key is a :class:`KeyText`,
  VARCHAR(255) without a length), int → BIGINT, decimal → NUMERIC(precision, scale), date → DATE,
  datetime → TIMESTAMP (MariaDB: DATETIME(6), keeping microseconds), bool → BOOLEAN (MariaDB: BOOL).
- :class:`ExactSqliteNumeric`: SQLite has no exact decimal type, and SQLAlchemy's default is to
  bind decimals as floats. This type binds the value as text rounded to the column's scale and
  reads it back through ``repr(float)``, so any value of up to 15 significant digits survives
  exactly (SQLite's own limit for NUMERIC affinity; use PostgreSQL or MariaDB beyond that).
  :func:`sqlite_decimal_limit` is where a column's values stop surviving: the writer quarantines
  such a record instead of storing it rounded.
- :class:`UtcDateTime`: syncd's own timestamps, stored as naive UTC (DATETIME(6) on MariaDB),
  returned as aware UTC datetimes; an aware value is converted to UTC when bound.
- :class:`KeyText`: text keys (text key columns of target tables, row keys and dataset names of the
  state tables) that compare exactly on MariaDB/MySQL too: declared with the server's NO PAD
  binary collation (:func:`mysql_key_collation`), so neither ``'A001 '`` and ``'A001'`` nor
  ``'a001'`` and ``'A001'`` are one key there, whatever the database's default collation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles

from syncd.changes.detector import normaliser_for_type
from syncd.config.model import ColumnConfig
from syncd.mapping.casts import KEY_TEXT_LENGTH

__all__ = [
    "LONG_TEXT",
    "MARIADB_KEY_COLLATION",
    "MICRO_DATETIME",
    "MYSQL_KEY_COLLATION",
    "MYSQL_NAMES",
    "PAD_KEY_COLLATION",
    "SQLITE_EXACT_DIGITS",
    "ExactSqliteNumeric",
    "KeyChar",
    "KeyText",
    "UtcDateTime",
    "column_type",
    "declared_type",
    "exact_text",
    "key_collation_problem",
    "mysql_key_collation",
    "sqlite_decimal_limit",
]

MYSQL_NAMES = ("mysql", "mariadb")
LONG_TEXT: sa.types.TypeEngine[str] = sa.Text().with_variant(mysql.LONGTEXT(), *MYSQL_NAMES)
MICRO_DATETIME: sa.types.TypeEngine[datetime] = sa.DateTime().with_variant(
    mysql.DATETIME(fsp=6), *MYSQL_NAMES
)
KEY_STRING_LENGTH = KEY_TEXT_LENGTH  # the mapping's casts enforce it (syncd.mapping.casts)


MARIADB_KEY_COLLATION = "utf8mb4_nopad_bin"
"""MariaDB (10.2 and later): code-point order, NO PAD — trailing spaces count."""
MYSQL_KEY_COLLATION = "utf8mb4_0900_bin"
"""MySQL (8.0.17 and later): code-point order, NO PAD (MySQL 8's ``utf8mb4_bin`` is PAD SPACE)."""
PAD_KEY_COLLATION = "utf8mb4_bin"
"""Servers without a NO PAD binary collation (MariaDB before 10.2, MySQL before 8.0.17), and the
collation of every text column of the tables earlier versions of syncd made: case-sensitive, but
PAD SPACE (``'A001 '`` equals ``'A001'``)."""


def mysql_key_collation(dialect: sa.Dialect) -> str:
    """The collation of text keys on this MariaDB/MySQL server: its NO PAD binary collation, or
    :data:`PAD_KEY_COLLATION` where it has none. Known once the dialect has connected (a
    ``mariadb://`` URL is MariaDB before that; an unconnected ``mysql://`` one could be either)."""
    version = tuple(getattr(dialect, "server_version_info", None) or ())
    if getattr(dialect, "is_mariadb", False):
        return MARIADB_KEY_COLLATION if not version or version[:2] >= (10, 2) else PAD_KEY_COLLATION
    if version and version[:3] >= (8, 0, 17):
        return MYSQL_KEY_COLLATION
    return PAD_KEY_COLLATION


def key_collation_problem(collation: str | None) -> str | None:
    """Why keys in a MariaDB/MySQL column of ``collation`` would not compare exactly, or None
    (no collation: not a text column, or a binary one)."""
    if collation is None or collation == "binary":
        return None
    name = collation.lower()
    no_pad = "_nopad_" in name or "_0900_" in name
    if name.endswith("_bin"):
        if no_pad:
            return None
        return (
            f"{collation} is PAD SPACE: keys that differ only in trailing spaces ('A001' and 'A001 ') "
            "are one key"
        )
    if name.endswith("_ci") or "_ci_" in name:
        return f"{collation} is case-insensitive: keys such as 'a001' and 'A001' are one key"
    return (
        f"{collation} is a linguistic collation: keys that differ only in case, accents or width "
        "may be one key"
    )


class KeyText(sa.String):
    """VARCHAR(``length``) for a text key: on MariaDB/MySQL declared ``CHARACTER SET utf8mb4
    COLLATE`` the server's NO PAD binary collation (:func:`mysql_key_collation`), or
    ``mysql_collation`` when given (a temporary table joined with an existing column must have
    that column's collation: MariaDB refuses to compare two columns of different collations).
    Elsewhere a plain VARCHAR: SQLite and PostgreSQL compare equal keys exactly already."""

    def __init__(self, length: int, mysql_collation: str | None = None) -> None:
        super().__init__(length)
        self.mysql_collation = mysql_collation


class KeyChar(sa.CHAR):
    """CHAR(``length``) in the collation of :class:`KeyText`: the hash columns of ``row_state``,
    which a packed look-up reads with the row key in one ``JSON_ARRAY`` — MariaDB refuses to
    put text of two collations into one."""

    def __init__(self, length: int, mysql_collation: str | None = None) -> None:
        super().__init__(length)
        self.mysql_collation = mysql_collation


@compiles(KeyText, "mysql")
@compiles(KeyText, "mariadb")
@compiles(KeyChar, "mysql")
@compiles(KeyChar, "mariadb")
def _mysql_key_text(type_: KeyText | KeyChar, compiler: Any, **_kw: Any) -> str:
    collation = type_.mysql_collation or mysql_key_collation(compiler.dialect)
    kind = "CHAR" if isinstance(type_, sa.CHAR) else "VARCHAR"
    return f"{kind}({type_.length}) CHARACTER SET utf8mb4 COLLATE {collation}"


def exact_text(length: int, *, mysql_collation: str | None = None) -> sa.types.TypeEngine[str]:
    """VARCHAR(``length``) compared byte for byte, for the state tables' dataset names and row
    keys: ``COLLATE "C"`` on PostgreSQL, the NO PAD binary collation on MariaDB/MySQL
    (:class:`KeyText`). Those columns are only ever matched for equality and
    paged in key order, never shown sorted to a person; under a linguistic collation (a database
    created with zh_CN.UTF-8 or an ICU locale) every comparison in their indexes goes through
    the collation's rules — the thousand-key ``row_state`` look-ups of 10⁵ rows cost the server
    0.70-0.82 s under ``zh-x-icu`` and 0.40-0.48 s under "C". SQLite compares bytes already."""
    base = KeyText(length, mysql_collation=mysql_collation)
    return base.with_variant(sa.String(length, collation="C"), "postgresql")


class ExactSqliteNumeric(sa.Numeric[Decimal]):
    """NUMERIC(p, s) for SQLite that never goes through a binary float when binding."""

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        normalise = normaliser_for_type("decimal", self.scale or 0)

        def process(value: Any) -> Any:
            if value is None:
                return None
            number = normalise(value)
            return format(number, "f") if isinstance(number, Decimal) else number

        return process

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Callable[[Any], Any] | None:
        return normaliser_for_type("decimal", self.scale or 0)


SQLITE_EXACT_DIGITS = 15
"""Significant digits SQLite keeps of a number with a fraction: NUMERIC affinity turns the text bound
for it into a REAL (a binary float; SQLite's docs: "only the first 15 significant decimal digits of
the number are preserved"). A whole number (scale 0) is stored as an INTEGER, exact in 64 bits."""


def sqlite_decimal_limit(precision: int, scale: int) -> Decimal | None:
    """The magnitude from which a value of ``decimal(precision, scale)``, quantized to ``scale``, is
    no longer stored exactly in an SQLite NUMERIC column, or None when every value the column admits
    is. With ``scale`` > 0 that is 10**(15 - scale) (such a value has more than 15 significant
    digits); with scale 0, 2**63 (past a 64-bit INTEGER)."""
    if scale == 0:
        return None if 10**precision <= 2**63 else Decimal(2**63)
    return None if precision <= SQLITE_EXACT_DIGITS else Decimal(10) ** (SQLITE_EXACT_DIGITS - scale)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in MYSQL_NAMES:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def column_type(spec: ColumnConfig, *, key: bool = False) -> sa.types.TypeEngine[Any]:
    """The SQL type of a mapped column (see the module docstring)."""
    kind = spec.type
    if kind == "string":
        if key:
            return KeyText(spec.length if spec.length is not None else KEY_STRING_LENGTH)
        if spec.length is not None:
            return sa.String(spec.length)
        return LONG_TEXT
    if kind == "decimal":
        return sa.Numeric(spec.precision, spec.scale, asdecimal=True).with_variant(
            ExactSqliteNumeric(spec.precision, spec.scale), "sqlite"
        )
    simple: dict[str, sa.types.TypeEngine[Any]] = {
        "int": sa.BigInteger(),
        "date": sa.Date(),
        "datetime": MICRO_DATETIME,
        "bool": sa.Boolean(),
    }
    try:
        return simple[kind]
    except KeyError:
        raise ValueError(f"unknown column type {kind!r}") from None


def declared_type(spec: ColumnConfig) -> str:
    """How the mapping declares a column, for messages: ``string(20)``, ``decimal(18,2)``, ``date``."""
    if spec.type == "string" and spec.length is not None:
        return f"string({spec.length})"
    if spec.type == "decimal":
        return f"decimal({spec.precision},{spec.scale})"
    return spec.type
