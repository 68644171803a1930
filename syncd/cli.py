"""The ``syncd`` command line.

Exit codes (documented in README.md and docs/cli.md; scripts and systemd rely on them):

    0  everything asked for succeeded
    1  at least one dataset run failed or was refused (expired authorization)
    2  the configuration is invalid, or the command line is wrong
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from syncd import __version__

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "/etc/syncd/syncd.yaml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("SYNCD_CONFIG") or DEFAULT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd",
        description=(
            "syncd — 数据回流同步: pull authorized datasets from data-sharing gateways into local tables."
        ),
    )
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"main configuration file (default: $SYNCD_CONFIG, else {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level"
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"], help="override logging.format")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("check", help="validate the whole configuration; exit 2 on any error")

    s = sub.add_parser("sync", help="run datasets once now and print a summary line each")
    s.add_argument("datasets", nargs="*", metavar="DATASET", help="dataset names (see `syncd check`)")
    s.add_argument("--all", action="store_true", help="every enabled dataset")

    d = sub.add_parser("demo", help="run the demo: a simulated gateway on loopback into a local SQLite file")
    d.add_argument(
        "--workdir", default="syncd-demo", help="where the demo database goes (default: ./syncd-demo)"
    )
    d.add_argument("--records", type=int, default=500, help="number of upstream records (default: 500)")
    return p


def cmd_check(args: argparse.Namespace) -> int:
    from syncd.config import load_config
    from syncd.errors import ConfigError

    path = _config_path(args)
    try:
        app = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"configuration invalid: {len(exc.issues)} problem(s) in {path}", file=sys.stderr)
        return EXIT_CONFIG
    names = ", ".join(sorted(app.datasets)) or "none"
    print(f"configuration OK: {path} ({len(app.datasets)} datasets: {names})")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from syncd.config import load_config
    from syncd.errors import ConfigError
    from syncd.logs import configure_logging
    from syncd.runner import run_dataset
    from syncd.targets import StateStore, create_target_engine

    path = _config_path(args)
    try:
        app = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or app.logging.level, args.log_format or app.logging.format)
    if args.all == bool(args.datasets):
        print("syncd sync: name one or more datasets, or give --all (not both)", file=sys.stderr)
        return EXIT_CONFIG
    names = [n for n, d in app.datasets.items() if d.enabled] if args.all else list(args.datasets)
    unknown = [n for n in names if n not in app.datasets]
    if unknown:
        known = ", ".join(sorted(app.datasets)) or "none"
        print(f"syncd sync: unknown dataset(s) {', '.join(unknown)}; configured: {known}", file=sys.stderr)
        return EXIT_CONFIG
    engine = create_target_engine(app.target.url.get_secret_value(), pool_size=app.target.pool_size)
    store = StateStore(engine, app.target.table_prefix)
    failed = 0
    try:
        for name in names:
            result = run_dataset(app, app.datasets[name], store)
            print(result.summary(), flush=True)
            failed += not result.ok
    finally:
        engine.dispose()
    return EXIT_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from syncd.demo import run_demo

    return run_demo(Path(args.workdir), records=args.records)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from syncd.logs import configure_logging

    # warnings raised while the configuration loads (e.g. a credential file readable by others) need a
    # logger before the configuration's own logging settings are known; reconfigured once it has loaded
    configure_logging(args.log_level or "INFO", args.log_format or "auto")
    handlers = {"check": cmd_check, "sync": cmd_sync, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
