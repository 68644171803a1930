"""``syncd sync DATASET…|--all [--from TIME [--to TIME] | --full]``: run datasets once now.

One summary line per dataset on stdout; progress of long runs on stderr (a live line on a
terminal, a line every 10 s otherwise). ``--from/--to`` re-read a window of an incremental
dataset and ``--full`` re-reads everything (backfill); change tracking applies as always, so
re-reading unchanged data writes nothing, and the watermark never moves backwards.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store, run_locks
from syncd.errors import SyncdError

if TYPE_CHECKING:
    from syncd.config.model import AppConfig
    from syncd.runner import Backfill

NAME = "sync"
HELP = "run datasets once now and print a summary line each"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help="dataset names (see `syncd check`)")
    parser.add_argument("--all", action="store_true", help="every enabled dataset")
    parser.add_argument(
        "--from",
        dest="since",
        metavar="TIME",
        help="backfill: re-read from TIME (upstream local time, e.g. '2026-11-01' or '2026-11-01 08:00:00')",
    )
    parser.add_argument(
        "--to", dest="until", metavar="TIME", help="backfill: re-read up to TIME (with --from)"
    )
    parser.add_argument("--full", action="store_true", help="backfill: re-read everything")
    parser.add_argument(
        "--progress",
        choices=["auto", "live", "lines", "off"],
        default="auto",
        help="progress on stderr: a live line on a terminal (auto), periodic lines, or none",
    )


def _time(option: str, text: str, timezone: str) -> datetime:
    """A local wall-clock time in ``timezone`` (upstream update times are local); a time written
    with an offset (``2026-11-01T10:00:00+00:00``) is that instant there."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is not a time such as 2026-11-01 or '2026-11-01 08:00:00'"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(ZoneInfo(timezone))
    return value.replace(tzinfo=None)


def _names(args: argparse.Namespace, app: AppConfig) -> list[str]:
    if args.all == bool(args.datasets):
        raise ValueError("name one or more datasets, or give --all (not both)")
    names = [n for n, d in app.datasets.items() if d.enabled] if args.all else list(args.datasets)
    unknown = [n for n in names if n not in app.datasets]
    if unknown:
        known = ", ".join(sorted(app.datasets)) or "none"
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; configured: {known}")
    return names


def _backfill(args: argparse.Namespace, app: AppConfig, names: list[str]) -> Backfill | None:
    from syncd.runner import Backfill

    if args.full and (args.since or args.until):
        raise ValueError("--full re-reads everything: leave out --from/--to")
    if args.until and not args.since:
        raise ValueError("--to needs --from")
    if args.full:
        return Backfill(full=True)
    if not args.since:
        return None
    since = _time("--from", args.since, app.timezone)
    until = _time("--to", args.until, app.timezone) if args.until else None
    if until is not None and until <= since:
        raise ValueError("--to must be later than --from")
    not_incremental = [n for n in names if getattr(app.datasets[n].source, "incremental", None) is None]
    if not_incremental:
        raise ValueError(
            f"--from/--to need an incremental dataset; {', '.join(not_incremental)} always read(s) "
            "everything (use a plain `syncd sync`)"
        )
    return Backfill(since=since, until=until)


def run(args: argparse.Namespace) -> int:
    from syncd.progress import ProgressReporter
    from syncd.runner import run_dataset

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    try:
        names = _names(args, app)
        backfill = _backfill(args, app, names)
    except ValueError as exc:
        print(f"syncd sync: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    reporter = None
    if args.progress != "off":
        live = None if args.progress == "auto" else args.progress == "live"
        reporter = ProgressReporter(sys.stderr, live=live)
    engine, store = open_store(app)
    failed = 0
    config_errors = 0  # runs that failed on a configuration error only found as they read: exit 2
    try:
        with run_locks(app, NAME) as lock:
            for name in names:
                try:
                    with lock(name) as held:
                        if held is None:
                            failed += 1
                            continue
                        result = run_dataset(
                            app,
                            app.datasets[name],
                            store,
                            trigger="backfill" if backfill else "manual",
                            backfill=backfill,
                            on_progress=reporter,
                            lock=held,
                        )
                except SyncdError as exc:  # the lock itself (database unreachable, directory read-only)
                    print(f"{name}: failed  error: {exc}", flush=True)
                    failed += 1
                    continue
                if reporter is not None:
                    reporter.done()
                print(result.summary(), flush=True)
                failed += not result.ok
                config_errors += result.config_error
    finally:
        engine.dispose()
    return EXIT_CONFIG if config_errors else EXIT_FAILED if failed else EXIT_OK
