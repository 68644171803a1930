"""``syncd report --month YYYY-MM``: the monthly usage report for the data bureau (使用留痕)."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store

NAME = "report"
HELP = "monthly usage report per dataset (使用留痕): runs, records, authorization"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--month", default=date.today().strftime("%Y-%m"), help="YYYY-MM (default: this month)"
    )
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown", help="output format")


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError
    from syncd.ops.report import month_bounds, render_csv, render_markdown, usage_report

    try:
        month_bounds(args.month)
    except ValueError as exc:
        print(f"syncd report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    app = load_or_report(args)
    if app is None:
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
