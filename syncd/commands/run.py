"""``syncd run``: the long-running daemon (scheduler, supervision, /metrics and /healthz).

Logs go to stdout (journald under systemd). Exit codes: 0 after SIGTERM/SIGINT, 1 when the start
failed, the scheduler died, an unexpected error ended the daemon or runs did not stop in time
(systemd restarts the service), 2 when the configuration is invalid at start-up (no restart:
``RestartPreventExitStatus=2``). :meth:`Daemon.serve` handles the failures after the daemon began
to start; the ones caught here come earlier (creating the daemon: nothing to stop yet).
"""

from __future__ import annotations

import argparse
import os
import sys

from syncd.commands.common import EXIT_CONFIG, EXIT_FAILED, config_path, load_or_report

NAME = "run"
HELP = "run the daemon: every scheduled dataset on its schedule, until SIGTERM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the configuration file


def run(args: argparse.Namespace) -> int:
    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    import structlog

    from syncd.daemon.service import Daemon
    from syncd.errors import SyncdError
    from syncd.logs import configure_logging

    configure_logging(args.log_level or app.logging.level, args.log_format or app.logging.format, sys.stdout)
    log = structlog.get_logger("syncd.commands.run")
    try:
        daemon = Daemon(config_path(args).resolve(), app)
        code = daemon.serve(then_exit=True)
    except (SyncdError, OSError) as exc:
        log.critical("daemon.start_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILED
    if daemon.unfinished:
        # a run ignored the stop request past daemon.stop_timeout: its worker thread would keep the
        # interpreter alive; the run is marked "abandoned" when the dataset next runs
        sys.stdout.flush()
        os._exit(code)
    return code
