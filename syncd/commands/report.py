"""``syncd report --month YYYY-MM``: the monthly usage report for the data bureau (使用留痕)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store

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
    return EXIT_OK
