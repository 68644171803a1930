"""``syncd plan DATASET``: a dry run — what a run would insert, update, delete; writes nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    dataset_or_report,
    load_or_report,
    open_store,
)

if TYPE_CHECKING:
    from syncd.ops.plan import PlanResult

NAME = "plan"
HELP = "dry run: pull and compare, show what a run would change, write nothing"

_LABELS = {
    "insert": "would insert (新增)",
    "update": "would update (修改)",
    "delete": "would delete (删除)",
    "unchanged": "unchanged (未变化)",
    "quarantine": "would quarantine (隔离)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset name (see `syncd check`)")
    parser.add_argument("--samples", type=int, default=5, metavar="N", help="sample rows per category")


def render(result: PlanResult) -> str:
    """The plan as operators read it."""
    from syncd.changes import json_text

    window = result.window
    lines = [
        f"plan for {result.dataset} (nothing was written)",
        f"  watermark: {result.watermark or 'none (first run)'}; window: "
        f"{window.since or 'beginning'} .. {window.until or 'now'}",
    ]
    if result.refused:
        lines.append(f"  a run would be REFUSED: {result.refused}")
        return "\n".join(lines) + "\n"
    total = f" (upstream reports {result.reported_total})" if result.reported_total is not None else ""
    lines.append(f"  records received: {result.fetched}{total}")
    for name, category in result.categories.items():
        lines.append(f"  {_LABELS[name]}: {category.count}")
        if name == "unchanged":
            continue
        if name == "delete":
            lines.extend(_snapshot_lines(result))
        lines.extend(f"      {json_text(sample)}" for sample in category.samples)
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines) + "\n"


def _snapshot_lines(result: PlanResult) -> list[str]:
    """Of the deletes, those a full-snapshot dataset infers (target.snapshot_delete)."""
    snap = result.snapshot
    if snap is None or snap.refused is not None:
        return []  # not a snapshot read, or the guard refuses (a warning says so)
    lines = [f"      of which gone upstream (快照删除, target.snapshot_delete): {snap.due} "
             f"of {snap.live} stored rows"]
    if snap.missing > snap.due:
        lines.append(
            f"      {snap.missing - snap.due} more stored rows were not in this read: deleted once missing "
            f"from {result.missing_runs} complete reads in a row (missing_runs)"
        )
    return lines


def _sqlite_file_missing(url: str) -> bool:
    """True for an SQLite target whose database file does not exist yet (connecting creates it)."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return False  # open_store reports it
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or parsed.query.get("uri"):
        return False
    return not Path(path).exists()


def run(args: argparse.Namespace) -> int:
    from syncd.errors import ConfigError, SyncdError
    from syncd.ops.plan import plan_dataset

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    dataset = dataset_or_report(app, args.dataset, "plan")
    if dataset is None:
        return EXIT_CONFIG
    if _sqlite_file_missing(app.target.url.get_secret_value()):
        # nothing to read yet (a first run) and a dry run must not create the database file
        from syncd.targets import create_target_engine

        engine = create_target_engine("sqlite://")
    else:
        engine, _ = open_store(app)
    try:
        result = plan_dataset(app, dataset, engine, samples=max(0, args.samples))
    except ConfigError as exc:  # found only once the source was read (a SQL update column's values)
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"syncd plan: configuration invalid: {len(exc.issues)} problem(s) found reading "
              f"{dataset.name}'s source", file=sys.stderr)
        return EXIT_CONFIG
    except SyncdError as exc:
        print(f"syncd plan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    sys.stdout.write(render(result))
    return EXIT_FAILED if result.refused else EXIT_OK
