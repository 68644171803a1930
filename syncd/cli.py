"""The ``syncd`` command line. Each subcommand is a module in :mod:`syncd.commands`.

Exit codes (documented in README.md; scripts and systemd rely on them):

    0  everything asked for succeeded
    1  at least one dataset run failed or was refused (expired authorization)
    2  the configuration is invalid, or the command line is wrong
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncd import __version__
from syncd.build import SOURCE_DIGEST
from syncd.commands import discover
from syncd.commands.common import DEFAULT_CONFIG, EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd",
        description=(
            "syncd — 数据回流同步: pull authorized datasets from data-sharing gateways into local tables."
        ),
    )
    p.add_argument(
        "--version", action="version", version=f"syncd {__version__} (source {SOURCE_DIGEST})",
        help="show the version and the digest of the installed source files (which build runs), then exit",
    )
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
    for module in discover():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from syncd.logs import configure_logging

    # warnings raised while the configuration loads (e.g. a credential file readable by others) need a
    # logger before the configuration's own logging settings are known; reconfigured once it has loaded
    configure_logging(args.log_level or "INFO", args.log_format or "auto")
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
