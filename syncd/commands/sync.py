"""``syncd sync DATASET…|--all``: run datasets once now, one summary line each."""

from __future__ import annotations

import argparse
import sys

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store

NAME = "sync"
HELP = "run datasets once now and print a summary line each"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="dataset names (see `syncd check`)")
    parser.add_argument("--all", action="store_true", help="every enabled dataset")


def run(args: argparse.Namespace) -> int:
    from syncd.runner import run_dataset

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    if args.all == bool(args.datasets):
        print("syncd sync: name one or more datasets, or give --all (not both)", file=sys.stderr)
        return EXIT_CONFIG
    names = [n for n, d in app.datasets.items() if d.enabled] if args.all else list(args.datasets)
    unknown = [n for n in names if n not in app.datasets]
    if unknown:
        known = ", ".join(sorted(app.datasets)) or "none"
        print(f"syncd sync: unknown dataset(s) {', '.join(unknown)}; configured: {known}", file=sys.stderr)
        return EXIT_CONFIG
    engine, store = open_store(app)
    failed = 0
    try:
        for name in names:
            result = run_dataset(app, app.datasets[name], store)
            print(result.summary(), flush=True)
            failed += not result.ok
    finally:
        engine.dispose()
    return EXIT_FAILED if failed else EXIT_OK
