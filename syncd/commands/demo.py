"""``syncd demo``: the simulated gateway on loopback into a local SQLite file."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the demo: a simulated gateway on loopback into a local SQLite file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default="syncd-demo", help="where the demo database goes (default: ./syncd-demo)"
    )
    parser.add_argument("--records", type=int, default=500, help="number of upstream records (default: 500)")


def run(args: argparse.Namespace) -> int:
    from syncd.demo import run_demo

    return run_demo(Path(args.workdir), records=args.records)
