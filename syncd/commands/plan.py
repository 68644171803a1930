"""``syncd plan DATASET``: a dry run — what a run would insert, update, delete; writes nothing."""

from __future__ import annotations

import argparse
import sys
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
        lines.extend(f"      {json_text(sample)}" for sample in category.samples)
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError
    from syncd.ops.plan import plan_dataset

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    dataset = dataset_or_report(app, args.dataset, "plan")
    if dataset is None:
        return EXIT_CONFIG
    engine, _ = open_store(app)
    try:
        result = plan_dataset(app, dataset, engine, samples=max(0, args.samples))
    except SyncdError as exc:
        print(f"syncd plan: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    sys.stdout.write(render(result))
    return EXIT_FAILED if result.refused else EXIT_OK
