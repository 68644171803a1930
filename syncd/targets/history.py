"""What the runs table says of every dataset's latest runs, read in one bounded query.

The daemon reads it at start and on each reload (:meth:`syncd.targets.StateStore.run_times`): the
scheduler plans a dataset's first run from it, and the ``syncd_last_run_timestamp_seconds`` /
``syncd_last_success_timestamp_seconds`` gauges start from it instead of from nothing.

Times after now (plus :data:`FUTURE_TOLERANCE`) are not trusted: a run stamped by a clock that was
ahead (a hardware clock kept in Beijing time and read as UTC is 8 h fast until NTP steps it back)
would otherwise make an interval dataset wait hours after a restart and a stale-data alert never
fire. They are set apart in :attr:`RunTimes.future`, for the scheduler to warn about.

The query is bounded by a statement timeout where the database has one (PostgreSQL
``statement_timeout``, MariaDB ``max_statement_time``, MySQL ``max_execution_time``), so a table
locked by a maintenance statement costs the caller seconds, not its watchdog.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from syncd.targets.sqltypes import MYSQL_NAMES, UtcDateTime

__all__ = ["FUTURE_TOLERANCE", "RunTimes", "read_run_times", "statement_timeout"]

FUTURE_TOLERANCE = timedelta(minutes=1)
"""A run may start this far after now (the clocks of two nodes sharing a state store never agree to
the second) and still count; later than that it is from a clock that was ahead."""

ENDED = ("success", "failed", "refused")  # the runs a schedule counts from
RAN = (*ENDED, "interrupted")  # the runs syncd_last_run_timestamp_seconds counts (not abandoned)


@dataclass(frozen=True, slots=True)
class RunTimes:
    """One dataset's latest runs, as aware UTC datetimes (None: there is none)."""

    started: datetime | None = None
    """Start of the latest success, failure or refusal that did not start after now."""
    finished: datetime | None = None
    """End of the latest run that ended (an interrupted one too; not an abandoned one)."""
    succeeded: datetime | None = None
    """End of the latest success."""
    future: datetime | None = None
    """Start of the latest success, failure or refusal stamped after now (+ the tolerance)."""


@contextlib.contextmanager
def statement_timeout(conn: sa.Connection, timeout: timedelta) -> Iterator[None]:
    """Statements run on ``conn`` inside the block are cancelled after ``timeout`` where the
    database can do that (PostgreSQL: for the transaction only; MariaDB/MySQL: for the session,
    restored after the block, the connection thrown away when that fails); SQLite waits at most
    its busy timeout anyway."""
    dialect = conn.dialect
    if dialect.name == "postgresql":  # set_config(..., true): until the transaction ends
        ms = str(max(1, int(timeout.total_seconds() * 1000)))
        conn.execute(sa.select(sa.func.set_config("statement_timeout", ms, True)))
        yield
        return
    if dialect.name not in MYSQL_NAMES:
        yield
        return
    if getattr(dialect, "is_mariadb", False):
        variable, value = "max_statement_time", f"{max(0.001, timeout.total_seconds()):.3f}"
    else:  # MySQL: SELECT statements only, which is what is bounded here
        variable, value = "max_execution_time", str(max(1, int(timeout.total_seconds() * 1000)))
    conn.execute(sa.text(f"SET SESSION {variable} = {value}"))  # constants only
    try:
        yield
    finally:
        try:
            conn.execute(sa.text(f"SET SESSION {variable} = DEFAULT"))
        except sa.exc.SQLAlchemyError:
            conn.invalidate()  # never hand a connection with the short timeout back to the pool


def read_run_times(conn: sa.Connection, runs: sa.Table, now: datetime) -> dict[str, RunTimes]:
    """:class:`RunTimes` of every dataset with an ended run, in one ``GROUP BY dataset`` query."""
    bound = now + FUTURE_TOLERANCE
    c = runs.c
    trusted = sa.and_(c.started_at <= bound, c.finished_at <= bound)

    def latest(column: sa.Column[datetime], when: sa.ColumnElement[bool]) -> sa.ColumnElement[datetime]:
        return sa.type_coerce(sa.func.max(sa.case((when, column))), UtcDateTime())

    query = (
        sa.select(
            c.dataset,
            latest(c.started_at, sa.and_(c.status.in_(ENDED), c.started_at <= bound)).label("started"),
            latest(c.finished_at, trusted).label("finished"),
            latest(c.finished_at, sa.and_(c.status == "success", trusted)).label("succeeded"),
            latest(c.started_at, sa.and_(c.status.in_(ENDED), c.started_at > bound)).label("future"),
        )
        .where(c.status.in_(RAN))
        .group_by(c.dataset)
    )
    return {
        str(r.dataset): RunTimes(r.started, r.finished, r.succeeded, r.future) for r in conn.execute(query)
    }
