"""``syncd runs DATASET``: the run history of a dataset (the audit trail, 使用留痕), newest first.

The table names each run by its ``run_id`` (what a change-feed entry names, docs/changes.md §2) and
approval code, its times in the configured ``timezone`` as ``status`` and ``changes`` show them;
``--json`` keeps every stored column, times in UTC."""

from __future__ import annotations

import argparse
import json
import sys
from zoneinfo import ZoneInfo

from syncd.commands._tables import render_table
from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, check_limit, load_or_report, open_store

NAME = "runs"
HELP = "show the run history of a dataset, newest first (reads the target DB)"

COLUMNS = (
    "run_id",
    "started_at",
    "finished_at",
    "status",
    "trigger",
    "approval_code",
    "fetched",
    "inserted",
    "updated",
    "deleted",
    "unchanged",
    "quarantined",
    "watermark_after",
    "node",
    "error",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET")
    parser.add_argument("--limit", type=int, default=20, help="how many runs (default: 20)")
    parser.add_argument("--json", action="store_true", help="JSON lines, one run per line")


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    try:
        check_limit(args.limit)
    except ValueError as exc:
        print(f"syncd runs: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    engine, store = open_store(app)
    try:
        store.ensure_schema()
        rows = store.last_runs(args.dataset, limit=args.limit)
    except SyncdError as exc:
        print(f"syncd runs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    if args.dataset not in app.datasets and not rows:
        known = ", ".join(sorted(app.datasets)) or "none"
        print(f"syncd runs: unknown dataset {args.dataset}; configured: {known}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
        return EXIT_OK
    zone = ZoneInfo(app.timezone)
    for row in rows:
        for name in ("started_at", "finished_at"):
            if row[name] is not None:
                row[name] = row[name].astimezone(zone).isoformat(sep=" ", timespec="seconds")
    print(render_table(rows, COLUMNS))
    return EXIT_OK
