"""``syncd schema [--dataset]``: print the JSON Schema of the main file or of a dataset file."""

from __future__ import annotations

import argparse
import sys

from syncd.commands.common import EXIT_OK

NAME = "schema"
HELP = "print the JSON Schema of syncd.yaml (or, with --dataset, of a dataset file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", action="store_true", help="the schema of a dataset file (datasets/*.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    from syncd.ops.schema import schema_text

    sys.stdout.write(schema_text(dataset=args.dataset))
    return EXIT_OK
