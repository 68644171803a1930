"""``syncd check``: validate the whole configuration."""

from __future__ import annotations

import argparse

from syncd.commands.common import EXIT_CONFIG, EXIT_OK, config_path, load_or_report

NAME = "check"
HELP = "validate the whole configuration; exit 2 on any error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    names = ", ".join(sorted(app.datasets)) or "none"
    print(f"configuration OK: {config_path(args)} ({len(app.datasets)} datasets: {names})")
    return EXIT_OK
