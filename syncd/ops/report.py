"""Monthly usage report for the data bureau (使用留痕): who pulled what, when, under which approval.

Built from syncd's ``runs`` table (one row per run: counts, approval code, purpose, node) in one
grouped query per month: one line per dataset and approval code the month's runs were recorded under
(an approval renewed mid-month gives two lines), with the purpose recorded on them. The resource
code and validity come from the dataset's configuration, on the line of the approval it declares
now only: an older approval's are not known to syncd, and the current ones would misreport them.
A configured dataset without runs in the month gets one line with its configured authorization;
runs of datasets no longer configured are reported too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from syncd.config.model import AppConfig
from syncd.targets import state_tables

__all__ = ["DatasetUsage", "month_bounds", "render_csv", "render_markdown", "usage_report"]

_COUNTERS = ("fetched", "inserted", "updated", "deleted", "quarantined")


@dataclass
class DatasetUsage:
    """One dataset's use in the month under one approval code (``""``: runs that recorded none)."""

    dataset: str
    runs: dict[str, int] = field(default_factory=dict)  # status → number of runs
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    quarantined: int = 0
    first_run: datetime | None = None
    last_run: datetime | None = None
    approval_code: str = ""
    resource_code: str = ""
    purpose: str = ""
    valid_from: str = ""
    valid_until: str = ""

    @property
    def total_runs(self) -> int:
        return sum(self.runs.values())


def month_bounds(month: str, timezone: str = "UTC") -> tuple[datetime, datetime]:
    """``2026-11`` → (first instant of the month, first instant of the next) in ``timezone``,
    returned in UTC (the runs table stores UTC)."""
    zone = ZoneInfo(timezone)
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=zone)
    except ValueError:
        raise ValueError(f"{month!r} is not a month: write YYYY-MM, e.g. 2026-11") from None
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return start.astimezone(UTC), end.astimezone(UTC)


def usage_report(app: AppConfig, engine: sa.Engine, month: str) -> list[DatasetUsage]:
    """Per dataset and recorded approval code: runs by status, record counts, first/last run, and
    the authorization (see the module docstring). Sorted by dataset, then first run."""
    start, end = month_bounds(month, app.timezone)
    runs = state_tables(sa.MetaData(), app.target.table_prefix).runs
    usage: dict[tuple[str, str], DatasetUsage] = {}
    if sa.inspect(engine).has_table(runs.name):
        query = (
            sa.select(
                runs.c.dataset,
                runs.c.status,
                sa.func.count().label("n"),
                *(sa.func.coalesce(sa.func.sum(runs.c[c]), 0).label(c) for c in _COUNTERS),
                sa.func.min(runs.c.started_at).label("first"),
                sa.func.max(runs.c.started_at).label("last"),
                runs.c.approval_code,
                sa.func.max(runs.c.purpose).label("purpose"),
            )
            .where(runs.c.started_at >= start, runs.c.started_at < end)
            .group_by(runs.c.dataset, runs.c.approval_code, runs.c.status)
        )
        with engine.connect() as conn:
            for row in conn.execute(query).mappings():
                key = (row["dataset"], row["approval_code"] or "")
                _add(usage.setdefault(key, DatasetUsage(key[0], approval_code=key[1])), row)
    recorded = {name for name, _ in usage}
    for name, ds in app.datasets.items():
        auth = ds.authorization
        if name not in recorded:  # no run this month: the authorization it runs under
            usage[name, auth.approval_code] = DatasetUsage(name, approval_code=auth.approval_code,
                                                           purpose=auth.purpose or "")
        current = usage.get((name, auth.approval_code))
        if current is not None:  # only the line of the approval configured now
            current.resource_code = auth.resource_code or ""
            current.valid_from = auth.valid_from.isoformat()
            current.valid_until = auth.valid_until.isoformat()
    return sorted(usage.values(), key=_order)


def _order(item: DatasetUsage) -> tuple[str, bool, datetime, str]:
    """Dataset, then its lines by first run (a line without runs last)."""
    never = datetime.max.replace(tzinfo=UTC)
    return (item.dataset, item.first_run is None, item.first_run or never, item.approval_code)


def _add(item: DatasetUsage, row: Any) -> None:
    item.runs[row["status"]] = item.runs.get(row["status"], 0) + int(row["n"])
    for name in _COUNTERS:
        setattr(item, name, getattr(item, name) + int(row[name]))
    first, last = row["first"], row["last"]
    item.first_run = first if item.first_run is None or first < item.first_run else item.first_run
    item.last_run = last if item.last_run is None or last > item.last_run else item.last_run
    item.purpose = max(item.purpose, row["purpose"] or "")  # the query's max() across statuses


_COLUMNS = (
    ("dataset", "数据集"), ("runs", "运行次数"), ("fetched", "接收记录"), ("inserted", "新增"),
    ("updated", "修改"), ("deleted", "删除"), ("quarantined", "隔离"), ("approval_code", "审批单号"),
    ("resource_code", "资源编码"), ("purpose", "用途"), ("validity", "授权有效期"),
    ("first_run", "首次运行(UTC)"), ("last_run", "末次运行(UTC)"),
)


def _cells(item: DatasetUsage) -> dict[str, str]:
    def when(value: datetime | None) -> str:
        return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")

    runs = ", ".join(f"{status} {n}" for status, n in sorted(item.runs.items()))
    validity = f"{item.valid_from} ~ {item.valid_until}" if item.valid_from else ""
    return {
        "dataset": item.dataset, "runs": f"{item.total_runs} ({runs})" if runs else "0",
        "fetched": str(item.fetched), "inserted": str(item.inserted), "updated": str(item.updated),
        "deleted": str(item.deleted), "quarantined": str(item.quarantined),
        "approval_code": item.approval_code, "resource_code": item.resource_code, "purpose": item.purpose,
        "validity": validity, "first_run": when(item.first_run), "last_run": when(item.last_run),
    }


def render_markdown(month: str, items: list[DatasetUsage]) -> str:
    """The report as a Markdown table (中文表头), ready to paste into a submission."""
    lines = [f"# syncd 数据使用情况 {month} / usage report", "",
             "| " + " | ".join(zh for _, zh in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for item in items:
        cells = _cells(item)
        lines.append("| " + " | ".join(cells[k].replace("|", "\\|") for k, _ in _COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def render_csv(items: list[DatasetUsage]) -> str:
    """The report as CSV (English header row; UTF-8)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([k for k, _ in _COLUMNS])
    for item in items:
        cells = _cells(item)
        writer.writerow([cells[k] for k, _ in _COLUMNS])
    return out.getvalue()
