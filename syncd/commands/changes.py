"""``syncd changes DATASET`` and ``syncd changes prune``: the change feed (变更记录).

Reading, for local applications and operators: ``--since TIME`` (changed_at, inclusive; local time
in the configured zone unless an offset is given) and/or ``--after-id N`` (for polling consumers:
remember the last ``id`` you processed). Output: a table, or JSON lines (``--format jsonl``) in
feed order. When entries the reader asked for have been pruned, a warning on stderr says so.

Pruning (``prune``, docs/changes.md §5): delete the entries of the named datasets (or ``--all``
configured ones) written before ``--before TIME`` / more than ``--keep-days N`` days ago, and/or
with an id of at most ``--upto-id N`` (one dataset: a reader's checkpoint), ``--batch-size``
entries a transaction; each dataset's newest entry stays. ``--dry-run`` counts only. ``prune``
is the action unless ``--since`` or ``--after-id`` is given: then it is a dataset's name.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from syncd.commands._tables import render_table
from syncd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    MAX_INT64,
    check_limit,
    dataset_or_report,
    load_or_report,
    open_store,
)

if TYPE_CHECKING:
    from syncd.config.model import AppConfig
    from syncd.ops.prune import PruneOutcome
    from syncd.targets import StateStore
    from syncd.targets.prune import PruneBound

NAME = "changes"
HELP = "print a dataset's change feed as a table or JSON lines; `changes prune` deletes old entries"
USAGE = (
    "syncd changes DATASET (--since TIME | --after-id N) [--limit N] [--format table|jsonl]\n"
    "       syncd changes prune (DATASET... | --all) (--before TIME | --keep-days N) [--upto-id N] "
    "[--dry-run] [--batch-size N]"
)
PRUNE = "prune"
_MAX_BATCH = 100_000
_MAX_KEEP_DAYS = 36_500  # a century, as changes.retention_days
_EARLIEST = "1900-01-01"  # no change entry is older; earlier times overflow a datetime in some zones
_MAX_ID = MAX_INT64  # change-feed ids are 64-bit integers in every target database
_SHOW_ONLY = ("limit", "format")
_PRUNE_ONLY = ("names", "all", "before", "keep_days", "upto_id", "dry_run", "batch_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from syncd.targets.prune import PRUNE_BATCH

    parser.usage = USAGE
    parser.add_argument("dataset", metavar="DATASET|prune", help="the dataset to show, or prune")
    parser.add_argument("names", nargs="*", metavar="DATASET", help="prune: the datasets to prune")
    show = parser.add_argument_group("showing the feed")
    show.add_argument(
        "--since", metavar="TIME", help="changes at or after TIME, e.g. '2025-03-01 08:00' (local time)"
    )
    show.add_argument("--after-id", type=int, metavar="N", help="changes with an id greater than N")
    show.add_argument("--limit", type=int, metavar="N", help="at most this many changes (default: 1000)")
    show.add_argument("--format", choices=["table", "jsonl"], help="table (default) or JSON lines")
    prune = parser.add_argument_group("prune: deleting old entries (each dataset's newest entry stays)")
    prune.add_argument("--all", action="store_true", help="every configured dataset")
    prune.add_argument(
        "--before", metavar="TIME", help="entries written before TIME, e.g. 2025-03-01 (local time)"
    )
    prune.add_argument("--keep-days", type=int, metavar="N", help="entries written more than N days ago")
    prune.add_argument(
        "--upto-id", type=int, metavar="N", help="entries with an id of at most N (a reader is done)"
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    prune.add_argument(
        "--batch-size",
        type=int,
        default=PRUNE_BATCH,
        metavar="N",
        help=f"entries deleted per transaction (default: {PRUNE_BATCH})",
    )


def _parse_time(option: str, text: str, zone: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{option} {text!r} is not a time such as 2025-03-01 08:00 or 2025-03-01") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    earliest = datetime.fromisoformat(_EARLIEST).replace(tzinfo=zone)
    if value < earliest:
        raise ValueError(f"{option} {text!r} is too early: give a time from {_EARLIEST} on")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # the last hours of year 9999 in a zone east of UTC
        raise ValueError(f"{option} {text!r} is out of range: give a time before 9999-12-31") from exc


def _check_id(option: str, value: int | None, lowest: int) -> None:
    """ValueError when ``value`` (given) is not a number the database can compare ids with."""
    if value is not None and not lowest <= value <= _MAX_ID:
        raise ValueError(f"{option} must be between {lowest} and {_MAX_ID} (change-feed ids are 64-bit)")


def _parse_since(text: str, zone: ZoneInfo) -> datetime:
    return _parse_time("--since", text, zone)


def _is_prune(args: argparse.Namespace) -> bool:
    """``prune`` is the action, unless the options are a reader's (a dataset named prune)."""
    return bool(args.dataset == PRUNE and args.since is None and args.after_id is None)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    defaults = {"names": [], "all": False, "dry_run": False, "batch_size": _default_batch()}
    return [
        "--" + n.replace("_", "-") if n != "names" else "another DATASET"
        for n in names
        if getattr(args, n) not in (None, defaults.get(n))
    ]


def _default_batch() -> int:
    from syncd.targets.prune import PRUNE_BATCH

    return PRUNE_BATCH


def _check_args(args: argparse.Namespace, zone: ZoneInfo) -> datetime | None:
    """The ``--since`` time in UTC (None without it); ValueError for a wrong command line."""
    misplaced = _given(args, _PRUNE_ONLY)
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} go with `syncd changes prune`, not with showing a feed")
    since = _parse_since(args.since, zone) if args.since else None
    if since is None and args.after_id is None:
        raise ValueError("give --since TIME or --after-id N")
    _check_id("--after-id", args.after_id, -_MAX_ID)
    check_limit(args.limit)
    return since


def run(args: argparse.Namespace) -> int:
    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    if _is_prune(args):
        return _prune(args, app)
    return _show(args, app)


# --------------------------------------------------------------------------- showing


def _gap_warning(app: AppConfig, store: StateStore, args: argparse.Namespace, since: datetime | None) -> None:
    """A warning on stderr when entries after ``--after-id`` / from ``--since`` were pruned."""
    from syncd.targets.prune import FeedPruner

    mark = FeedPruner(store).pruned(args.dataset)
    if mark is None:
        return
    zone = ZoneInfo(app.timezone)
    gone_after = args.after_id is not None and args.after_id < mark.upto_id
    gone_since = since is not None and since <= mark.upto_changed_at
    if not (gone_after or gone_since):
        return
    asked = f"after id {args.after_id}" if gone_after else f"from {args.since}"
    dataset = app.datasets.get(args.dataset)
    table = f"the table {dataset.target.table}" if dataset is not None else "the dataset's table"
    print(
        f"syncd changes: warning: change entries of {args.dataset} up to id {mark.upto_id} (written up to "
        f"{mark.upto_changed_at.astimezone(zone):%Y-%m-%d %H:%M:%S}) were deleted by a prune on "
        f"{mark.pruned_at.astimezone(zone):%Y-%m-%d %H:%M:%S} (`syncd changes prune` or "
        f"changes.retention_days); those {asked} are gone and not printed. Whatever reads this feed "
        f"{asked} has missed them: bring it up to date from {table} itself, then go on from here "
        "(docs/changes.md §5)",
        file=sys.stderr,
    )


def _show(args: argparse.Namespace, app: AppConfig) -> int:
    from syncd.errors import SyncdError

    zone = ZoneInfo(app.timezone)
    try:
        since = _check_args(args, zone)
    except ValueError as exc:
        print(f"syncd changes: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    limit = 1000 if args.limit is None else args.limit
    engine, store = open_store(app)
    try:
        store.ensure_schema()
        rows = store.changes(args.dataset, since, limit, after_id=args.after_id)
        _gap_warning(app, store, args, since)
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


# --------------------------------------------------------------------------- pruning


def _prune_bound(args: argparse.Namespace, zone: ZoneInfo, now: datetime) -> PruneBound:
    """The bound the command line asks for; ValueError when it is wrong."""
    from syncd.targets.prune import PruneBound

    misplaced = [f"--{n}" for n in _SHOW_ONLY if getattr(args, n) is not None]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} go with showing a feed, not with prune")
    if args.all == bool(args.names):
        raise ValueError("name the datasets to prune, or give --all (not both)")
    if args.before is not None and args.keep_days is not None:
        raise ValueError("give --before TIME or --keep-days N, not both")
    if args.before is None and args.keep_days is None and args.upto_id is None:
        raise ValueError("say what to delete: --before TIME, --keep-days N and/or --upto-id N")
    if not 1 <= args.batch_size <= _MAX_BATCH:
        raise ValueError(f"--batch-size must be between 1 and {_MAX_BATCH}")
    before = _time_bound(args, zone, now)
    if args.upto_id is not None:
        _check_id("--upto-id", args.upto_id, 0)
        if args.all or len(args.names) != 1:
            raise ValueError(
                "--upto-id is one reader's checkpoint, and ids are in order only within one dataset "
                "(docs/changes.md §1): name exactly one dataset"
            )
    return PruneBound(before=before, upto_id=args.upto_id)


def _time_bound(args: argparse.Namespace, zone: ZoneInfo, now: datetime) -> datetime | None:
    """The time ``--before`` or ``--keep-days`` asks for (None: neither); ValueError when it is wrong."""
    if args.before is not None:
        before = _parse_time("--before", args.before, zone)
        if before > now:
            raise ValueError(f"--before {args.before!r} is in the future: that would delete every entry")
        return before
    if args.keep_days is None:
        return None
    if args.keep_days < 1:
        raise ValueError("--keep-days must be at least 1 (use --before for an exact time)")
    if args.keep_days > _MAX_KEEP_DAYS:
        raise ValueError(f"--keep-days must be at most {_MAX_KEEP_DAYS} (a century, as retention_days)")
    return now - timedelta(days=args.keep_days)


def _describe(bound: PruneBound, zone: ZoneInfo) -> str:
    parts = []
    if bound.before is not None:
        parts.append(f"written before {bound.before.astimezone(zone):%Y-%m-%d %H:%M:%S} ({zone.key})")
    if bound.upto_id is not None:
        parts.append(f"with an id of at most {bound.upto_id}")
    return " and ".join(parts)


def _unknown(app: AppConfig, store: StateStore, names: list[str]) -> list[str]:
    """Names neither configured nor in the feed (a removed dataset's entries may still be pruned)."""
    return [n for n in names if n not in app.datasets and not store.changes(n, limit=1)]


def _prune(args: argparse.Namespace, app: AppConfig) -> int:
    from syncd.daemon.locks import DatasetLocker
    from syncd.errors import SyncdError
    from syncd.ops.prune import prune_datasets
    from syncd.targets.prune import PruneResult

    zone = ZoneInfo(app.timezone)
    try:
        bound = _prune_bound(args, zone, datetime.now(UTC))
    except ValueError as exc:
        print(f"syncd changes prune: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    names = sorted(app.datasets) if args.all else list(dict.fromkeys(args.names))
    engine, store = open_store(app)
    locker = DatasetLocker(app.target.url.get_secret_value())
    deleted: dict[str, int] = {}
    verb = "would delete" if args.dry_run else "deleted"

    def batch(name: str, n: int) -> None:
        deleted[name] = deleted.get(name, 0) + n

    def done(result: PruneResult) -> None:
        if result.newest_id is None:
            print(f"{result.dataset}: no change entries", flush=True)
        elif not result.deleted:
            print(f"{result.dataset}: nothing to delete (newest entry: id {result.newest_id})", flush=True)
        else:
            batches = "" if args.dry_run else f" in {result.batches} batch(es)"
            print(
                f"{result.dataset}: {verb} {result.deleted} change entries{batches} "
                f"(newest entry kept: id {result.newest_id})",
                flush=True,
            )

    try:
        store.ensure_schema()
        unknown = _unknown(app, store, names)
        if unknown:
            known = ", ".join(sorted(app.datasets)) or "none"
            print(
                f"syncd changes prune: unknown dataset(s) {', '.join(unknown)}: neither configured nor in "
                f"the change feed; configured: {known}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        dry = " (dry run: nothing is deleted)" if args.dry_run else ""
        print(f"pruning change entries {_describe(bound, zone)}; each dataset's newest entry stays{dry}")
        outcome = prune_datasets(
            store,
            locker,
            dict.fromkeys(names, bound),
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            on_batch=batch,
            on_result=done,
            zone=zone,
        )
    except KeyboardInterrupt:
        total = sum(deleted.values())
        print(
            f"interrupted: {total} change entries deleted before the interruption (every batch commits on "
            "its own); run the same command again to carry on",
            file=sys.stderr,
        )
        raise
    except SyncdError as exc:
        print(f"syncd changes prune: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        locker.close()
        engine.dispose()
    return _report(outcome, verb)


def _report(outcome: PruneOutcome, verb: str) -> int:
    """The end of the command's output, and its exit code."""
    if outcome.refused is not None:
        print(f"syncd changes prune: refused: {outcome.refused}", file=sys.stderr)
        return EXIT_FAILED
    if outcome.locked:
        print(
            "skipped: another syncd process is pruning the change feed now (the daemon's retention, of "
            "the change feed or of the runs table, or another `syncd changes prune`); nothing was "
            "deleted by this one. Run it again when that one has ended",
            flush=True,
        )
        return EXIT_FAILED
    for name, error in outcome.failures.items():
        print(f"{name}: failed  {error}", flush=True)
    datasets = sum(1 for r in outcome.results if r.deleted)
    print(f"{verb} {outcome.deleted} change entries of {datasets} dataset(s)")
    return EXIT_FAILED if outcome.failures else EXIT_OK
