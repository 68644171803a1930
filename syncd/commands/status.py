"""``syncd status``: per dataset, the last run, its counts, the watermark, the next run and the
authorization. Reads the target database; works whether or not the daemon is running."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from syncd.commands._tables import render_table
from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load_or_report, open_store
from syncd.config.model import AppConfig

NAME = "status"
HELP = "show every dataset's last run, watermark, next run and authorization (reads the target DB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def collect(
    app: AppConfig,
    last: dict[str, dict[str, Any]],
    now: datetime,
    watermarks: Mapping[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per configured dataset (``last``: its latest run row, if any; ``watermarks``: the
    stored watermark of each dataset, the one in force — without it, the one the last run recorded)."""
    from syncd.daemon.scheduler import build_trigger

    zone = ZoneInfo(app.timezone)
    today = now.astimezone(zone).date()
    rows = []
    for name, ds in sorted(app.datasets.items()):
        run = last.get(name) or {}
        next_run = None
        if ds.enabled and ds.schedule is not None:
            fire = build_trigger(ds.schedule, zone).get_next_fire_time(None, now.astimezone(zone))
            next_run = fire.isoformat() if fire else None
        auth = ds.authorization
        rows.append(
            {
                "dataset": name,
                "enabled": ds.enabled,
                "last_run": run["started_at"].astimezone(zone).isoformat() if run.get("started_at") else None,
                "status": run.get("status"),
                "fetched": run.get("fetched"),
                "inserted": run.get("inserted"),
                "updated": run.get("updated"),
                "deleted": run.get("deleted"),
                "quarantined": run.get("quarantined"),
                "watermark": (
                    watermarks.get(name) if watermarks is not None
                    else run.get("watermark_after") or run.get("watermark_before")
                ),
                "next_run": next_run,
                "authorization_until": auth.valid_until.isoformat(),
                "days_left": (auth.valid_until - today).days,
                "error": run.get("error"),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    engine, store = open_store(app)
    try:
        store.ensure_schema()
        last = {name: runs[0] for name in app.datasets if (runs := store.last_runs(name, limit=1))}
        # the one in force: a run row may not name it (a refusal recorded by an earlier syncd)
        watermarks = {name: store.get_watermark(name) for name in app.datasets}
    except SyncdError as exc:
        print(f"syncd status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    rows = collect(app, last, datetime.now(UTC), watermarks)
    if args.json:
        print(json.dumps({"datasets": rows}, ensure_ascii=False, indent=2))
        return EXIT_OK
    columns = [
        "dataset",
        "status",
        "last_run",
        "fetched",
        "inserted",
        "updated",
        "deleted",
        "quarantined",
        "watermark",
        "next_run",
        "authorization_until",
        "days_left",
    ]
    print(render_table(rows, columns))
    return EXIT_OK
