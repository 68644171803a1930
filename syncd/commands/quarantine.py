"""``syncd quarantine list|show|replay DATASET``: inspect and replay quarantined records."""

from __future__ import annotations

import argparse
import sys
from zoneinfo import ZoneInfo

from syncd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    dataset_or_report,
    load_or_report,
    open_store,
    run_locks,
)

NAME = "quarantine"
HELP = "list or show quarantined records (隔离区), or replay them after fixing the YAML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_list = sub.add_parser("list", help="the quarantined records of a dataset, newest first")
    p_list.add_argument("dataset", metavar="DATASET")
    p_list.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p_show = sub.add_parser("show", help="one quarantined record: reason and raw (redacted) payload")
    p_show.add_argument("dataset", metavar="DATASET")
    p_show.add_argument("hash", metavar="HASH", help="its raw hash, or the first characters of it")
    p_replay = sub.add_parser("replay", help="re-map every quarantined record with the current YAML")
    p_replay.add_argument("dataset", metavar="DATASET")


def run(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one exit per outcome
    from syncd.changes import json_text
    from syncd.errors import SyncdError
    from syncd.ops import quarantine as ops

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    dataset = dataset_or_report(app, args.dataset, "quarantine")
    if dataset is None:
        return EXIT_CONFIG
    zone = ZoneInfo(app.timezone)  # times as the other commands show them: local
    engine, store = open_store(app)
    try:
        if args.action == "list":
            entries = ops.list_entries(store, dataset.name, limit=args.limit)
            for e in entries:
                print(
                    f"{e['raw_hash']}  key={e['record_key'] or '-'}  seen={e['times']}x  "
                    f"last={e['last_seen'].astimezone(zone):%Y-%m-%d %H:%M:%S}  {e['reason']}"
                )
            print(f"{len(entries)} quarantined record(s) shown for {dataset.name}")
            return EXIT_OK
        if args.action == "show":
            found = ops.find_entry(store, dataset.name, args.hash)
            if len(found) != 1:
                what = "no record" if not found else f"{len(found)} records"
                print(f"syncd quarantine show: {what} of {dataset.name} match {args.hash!r}", file=sys.stderr)
                return EXIT_FAILED
            e = found[0]
            shown = ("raw_hash", "record_key", "row_key", "reason", "run_id", "first_seen", "last_seen")
            for name in (*shown, "times"):
                value = e[name].astimezone(zone).isoformat(sep=" ") if name.endswith("_seen") else e[name]
                print(f"{name}: {value}")
            print("raw (masked/hashed source fields are stored redacted):")
            print(json_text(e["raw"]))
            return EXIT_OK
        with run_locks(app, "quarantine replay") as lock, lock(dataset.name) as held:
            if held is None:
                return EXIT_FAILED
            result = ops.replay_quarantine(app, dataset, store, lock=held)
    except SyncdError as exc:
        print(f"syncd quarantine: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    print(
        f"{result.dataset}: replayed {result.examined} record(s): inserted={result.inserted} "
        f"updated={result.updated} deleted={result.deleted} unchanged={result.unchanged} "
        f"still quarantined={result.still_failing} superseded={result.superseded} (run {result.run_id})"
    )
    for reason, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n} x {reason}")
    return EXIT_OK
