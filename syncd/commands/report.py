"""``syncd report --month YYYY-MM``: the monthly usage report for the data bureau (使用留痕)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store

if TYPE_CHECKING:
    from syncd.config.model import AppConfig

NAME = "report"
HELP = "monthly usage report per dataset (使用留痕): runs, records, authorization"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--month", default=None, help="YYYY-MM (default: this month in the configured time zone)"
    )
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown", help="output format")


def this_month(timezone: str, now: datetime | None = None) -> str:
    """``YYYY-MM`` of ``now`` where the unit is (``timezone``), not where the server's clock says."""
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError
    from syncd.ops.report import month_bounds, render_csv, render_markdown, usage_report

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    if args.month is None:
        args.month = this_month(app.timezone)
    try:
        month_bounds(args.month)
    except ValueError as exc:
        print(f"syncd report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    engine, _ = open_store(app)
    try:
        items = usage_report(app, engine, args.month)
    except SyncdError as exc:
        print(f"syncd report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    sys.stdout.write(render_csv(items) if args.format == "csv" else render_markdown(args.month, items))
    warning = pruned_month_warning(app, args.month)
    if warning is not None:
        print(f"syncd report: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def pruned_month_warning(app: AppConfig, month: str, now: datetime | None = None) -> str | None:
    """Why the report of ``month`` may count fewer runs than were made: the daemon deletes runs
    older than ``runs.retention_days`` (docs/daemon.md §8), or None when it keeps this month whole."""
    from syncd.ops.prune import runs_before
    from syncd.ops.report import month_bounds

    cutoff = runs_before(app, now or datetime.now(UTC))
    if cutoff is None or month_bounds(month, app.timezone)[0] >= cutoff:
        return None
    shown = cutoff.astimezone(ZoneInfo(app.timezone)).strftime("%Y-%m-%d %H:%M")
    return (
        f"runs.retention_days is {app.run_retention_days()}: the records of runs that started before "
        f"{shown} ({app.timezone}) may have been deleted by the daemon's daily prune, so this report "
        f"of {month} may count fewer runs than were made (each dataset's latest run of every status is "
        "kept). Keep the monthly reports you must file: export each month before it ages out, e.g. "
        f"`syncd report --month {month} --format csv > {month}.csv` (docs/daemon.md §8)"
    )
