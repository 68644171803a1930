"""``syncd changes DATASET``: the change feed (变更记录) for local applications and operators.

``--since TIME`` (changed_at, inclusive; local time in the configured zone unless an offset is
given) and/or ``--after-id N`` (for polling consumers: remember the last ``id`` you processed).
Output: a table, or JSON lines (``--format jsonl``) in feed order.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from syncd.commands._tables import render_table
from syncd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    dataset_or_report,
    load_or_report,
    open_store,
)

NAME = "changes"
HELP = "print a dataset's change feed as a table or JSON lines (reads the target DB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET")
    parser.add_argument(
        "--since", metavar="TIME", help="changes at or after TIME, e.g. '2025-03-01 08:00' (local time)"
    )
    parser.add_argument("--after-id", type=int, metavar="N", help="changes with an id greater than N")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many changes (default: 1000)")
    parser.add_argument("--format", choices=["table", "jsonl"], default="table")


def _parse_since(text: str, zone: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"--since {text!r} is not a time such as 2025-03-01 08:00 or 2025-03-01") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _check_args(args: argparse.Namespace, zone: ZoneInfo) -> datetime | None:
    """The ``--since`` time in UTC (None without it); ValueError for a wrong command line."""
    since = _parse_since(args.since, zone) if args.since else None
    if since is None and args.after_id is None:
        raise ValueError("give --since TIME or --after-id N")
    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    return since


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    zone = ZoneInfo(app.timezone)
    try:
        since = _check_args(args, zone)
    except ValueError as exc:
        print(f"syncd changes: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    engine, store = open_store(app)
    try:
        store.ensure_schema()
        rows = store.changes(args.dataset, since, args.limit, after_id=args.after_id)
    except SyncdError as exc:
        print(f"syncd changes: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    if not rows and args.dataset not in app.datasets:  # a removed dataset's feed is still shown
        dataset_or_report(app, args.dataset, "changes")
        return EXIT_CONFIG
    if args.format == "jsonl":
        for row in rows:
            row["changed_at"] = row["changed_at"].isoformat()
            print(json.dumps(row, ensure_ascii=False, default=str))
        return EXIT_OK
    for row in rows:
        row["changed_at"] = row["changed_at"].astimezone(zone).isoformat(sep=" ", timespec="seconds")
        row["changed_columns"] = ",".join(row["changed_columns"] or [])
    print(render_table(rows, ["id", "changed_at", "op", "row_key", "changed_columns", "run_id"]))
    return EXIT_OK
