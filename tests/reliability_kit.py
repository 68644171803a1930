"""What the reliability tests share: the full/reduced switch, the databases, the figures report,
and the exact change log an upstream history must produce.

``SYNCD_RELIABILITY=1`` (``make reliability``) runs the full trials on SQLite, PostgreSQL and
MariaDB; otherwise each test runs its reduced form (``make test``). With ``SYNCD_REL_REPORT=<file>``
every test appends one JSON line of figures to it (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e import change_log

FULL = os.environ.get("SYNCD_RELIABILITY") == "1"
ALL_DBS: list[Any] = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def databases(reduced: int) -> list[Any]:
    """Every database in a full run; the first ``reduced`` of them (SQLite first) otherwise."""
    return ALL_DBS if FULL else ALL_DBS[:reduced]


def report(figures: dict[str, Any]) -> None:
    """Append one JSON line of figures to $SYNCD_REL_REPORT (if set)."""
    path = os.environ.get("SYNCD_REL_REPORT")
    if path:
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(figures, ensure_ascii=False) + "\n")


def active(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records not logically deleted, by id."""
    return {r["id"]: r for r in records if str(r.get("isDeleted", "0")) != "1"}


def real_changes(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> Counter[tuple[str, str]]:
    """The change-log entries an exact sync must produce for upstream going from ``before`` to ``after``."""
    out: Counter[tuple[str, str]] = Counter()
    for rid, rec in after.items():
        if rid not in before:
            out[(rid, "insert")] += 1
        elif before[rid] != rec:  # every touch moves updateTime, which is mapped (updated_at)
            out[(rid, "update")] += 1
    for rid in before.keys() - after.keys():
        out[(rid, "delete")] += 1
    return out


def target_state(db_url: str) -> dict[str, tuple[str | None, str]]:
    """resident_id -> (name, updated_at to the second) of the target table."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT resident_id, name, updated_at FROM resident_info")).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], str(r[2])[:19]) for r in rows}


def assert_converged(
    trial: int, db_url: str, after: dict[str, dict[str, Any]], expected: Counter[tuple[str, str]]
) -> None:
    """The target holds exactly the upstream's active records ``after`` with their current values,
    and the change log exactly the entries ``expected`` — none missing, none repeated."""
    state = target_state(db_url)
    assert state.keys() == after.keys(), f"trial {trial}: target keys differ from upstream"
    stale = [k for k, r in after.items() if state[k][1] != r["updateTime"]]
    assert not stale, f"trial {trial}: {len(stale)} rows hold stale values, e.g. {stale[:3]}"
    log = Counter((e["row_key"], e["op"]) for e in change_log(db_url))
    missing, repeated = expected - log, log - expected
    assert not missing and not repeated, (
        f"trial {trial}: change log off by {sum(missing.values())} missing, "
        f"{sum(repeated.values())} extra, e.g. {list(missing)[:3]} / {list(repeated)[:3]}"
    )
