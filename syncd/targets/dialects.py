"""Per-dialect SQL: native upserts and bind-parameter budgets.

An upsert is built once per table and executed with executemany (one round of statements per
batch, never one per row):

- SQLite and PostgreSQL: ``INSERT … ON CONFLICT (key) DO UPDATE SET col = excluded.col``
- MariaDB/MySQL: ``INSERT … ON DUPLICATE KEY UPDATE col = VALUES(col)``; assignments run in
  the order given and see the columns already assigned, so callers list the ones that read the
  old row first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from syncd.targets.engine import Family, dialect_family

__all__ = ["SetBuilder", "chunked", "param_budget", "upsert_statement"]

T = TypeVar("T")

SetBuilder = Callable[[Any], list[tuple[str, Any]]]
"""Given the incoming-row accessor (``excluded`` / ``inserted``), the ordered SET assignments."""

_SERVER_BUDGET = 30_000  # PostgreSQL caps a statement at 65,535 parameters; MariaDB's packets at MBs


def param_budget(engine: sa.Engine) -> int:
    """How many bind parameters one statement may carry on this database (with headroom)."""
    if dialect_family(engine) != "sqlite":
        return _SERVER_BUDGET
    import sqlite3

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if raw is not None else 999
    return max(100, min(limit - 50, 100_000))


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert_statement(
    bind: sa.Engine | sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    update: Sequence[str] | SetBuilder,
) -> sa.Insert:
    """INSERT that updates the row when ``key`` already exists.

    ``update`` names the columns overwritten with the incoming values, or is a SetBuilder for
    computed assignments. No columns to update means "insert, or leave the existing row alone".
    """
    family: Family = dialect_family(bind)
    if family == "mysql":
        stmt = mysql.insert(table)
        assignments = _assignments(update, stmt.inserted)
        if not assignments:  # a no-op assignment keeps ON DUPLICATE KEY from failing
            assignments = [(key[0], table.c[key[0]])]
        return stmt.on_duplicate_key_update(assignments)
    dialect_insert = postgresql.insert if family == "postgresql" else sqlite.insert
    pg_or_lite = dialect_insert(table)
    assignments = _assignments(update, pg_or_lite.excluded)
    if not assignments:
        return pg_or_lite.on_conflict_do_nothing(index_elements=list(key))
    return pg_or_lite.on_conflict_do_update(index_elements=list(key), set_=dict(assignments))


def _assignments(update: Sequence[str] | SetBuilder, incoming: Any) -> list[tuple[str, Any]]:
    if callable(update):
        return update(incoming)
    return [(name, incoming[name]) for name in update]
