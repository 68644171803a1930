"""SQLite date/datetime binds: syncd's fast spelling is byte for byte SQLAlchemy's own.

The stored text matters beyond syncd: operators and local applications compare these columns as
strings in SQL (``WHERE updated_at >= '2026-11-01 00:00:00.000000'``), so a row written by the fast
path must read exactly like one SQLAlchemy would have written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from syncd.targets.dialects import _bind_processor

DIALECT = sqlite.dialect()


def _both(type_: sa.types.TypeEngine[Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    fast = _bind_processor(type_, DIALECT)
    reference = type_.dialect_impl(DIALECT).bind_processor(DIALECT)
    assert fast is not None and reference is not None and fast is not reference
    return fast, reference


@settings(max_examples=300, deadline=None)
@given(st.dates())
def test_date_text_is_sqlalchemys(value: date) -> None:
    fast, reference = _both(sa.Date())
    assert fast(value) == reference(value)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), st.just(timezone(timedelta(hours=8))))))
def test_datetime_text_is_sqlalchemys(value: datetime) -> None:
    fast, reference = _both(sa.DateTime())
    assert fast(value) == reference(value)
    assert fast(value.date()) == reference(value.date())


def test_none_and_other_formats_keep_sqlalchemys_processor() -> None:
    fast, _ = _both(sa.DateTime())
    assert fast(None) is None
    custom = sqlite.DATETIME(storage_format="%(year)04d/%(month)02d/%(day)02d")
    custom_proc = _bind_processor(custom, DIALECT)
    assert custom_proc is not None and custom_proc(datetime(2026, 1, 2)) == "2026/01/02"
    assert _bind_processor(sa.String(), DIALECT) is None
