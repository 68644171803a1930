"""What every command shares: exit codes, the config path, loading with printed errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.config.model import AppConfig, DatasetConfig

if TYPE_CHECKING:
    import sqlalchemy as sa

    from syncd.daemon.locks import HeldLock
    from syncd.targets import StateStore

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "MAX_INT64",
    "check_limit",
    "config_path",
    "dataset_or_report",
    "load_or_report",
    "open_store",
    "run_locks",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "/etc/syncd/syncd.yaml"

MAX_INT64 = 2**63 - 1
"""The largest id, and LIMIT, every target database compares and takes (64-bit integers)."""


def check_limit(value: int | None, option: str = "--limit") -> None:
    """ValueError (a usage error) unless ``value``, when given, is a row count from 1 to
    :data:`MAX_INT64`: a larger one is no usage error the database would report, but a traceback."""
    if value is not None and not 1 <= value <= MAX_INT64:
        raise ValueError(f"{option} must be between 1 and {MAX_INT64}")


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("SYNCD_CONFIG") or DEFAULT_CONFIG)


def load_or_report(args: argparse.Namespace) -> AppConfig | None:
    """Load the configuration; on errors print every positioned issue to stderr and return None."""
    from syncd.config import load_config
    from syncd.errors import ConfigError

    path = config_path(args)
    try:
        app = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"configuration invalid: {len(exc.issues)} problem(s) in {path}", file=sys.stderr)
        return None
    from syncd.logs import configure_logging

    configure_logging(args.log_level or app.logging.level, args.log_format or app.logging.format)
    return app


def dataset_or_report(app: AppConfig, name: str, command: str) -> DatasetConfig | None:
    """The named dataset; None (after printing the configured names to stderr) when unknown."""
    dataset = app.datasets.get(name)
    if dataset is None:
        known = ", ".join(sorted(app.datasets)) or "none"
        print(f"syncd {command}: unknown dataset {name}; configured: {known}", file=sys.stderr)
    return dataset


def open_store(app: AppConfig) -> tuple[sa.Engine, StateStore]:
    """The target engine and the state store on it (the caller disposes of the engine)."""
    from syncd.targets import StateStore, create_target_engine

    engine = create_target_engine(app.target.url.get_secret_value(), pool_size=app.target.pool_size)
    return engine, StateStore(engine, app.target.table_prefix)


@contextmanager
def run_locks(
    app: AppConfig, command: str
) -> Iterator[Callable[[str], AbstractContextManager[HeldLock | None]]]:
    """The datasets' run locks for a command that writes them (``syncd sync``, ``syncd quarantine
    replay``): ``with locks(name) as held:``, as the daemon takes them (syncd.daemon.locks); hand
    ``held`` to the run, which checks it between batches. When ``held`` is None another syncd
    process is running the dataset; a line on stdout says so."""
    from syncd.daemon.locks import DatasetLocker

    locker = DatasetLocker(app.target.url.get_secret_value())

    @contextmanager
    def hold(name: str) -> Iterator[HeldLock | None]:
        with locker.take(name) as held:
            if held is None:
                print(
                    f"{name}: skipped  another syncd process is running this dataset now (the daemon, "
                    f"or another `syncd {command}`); nothing was read or written by this one. Run it "
                    f"again when that run has ended (`syncd runs {name}` shows it)",
                    flush=True,
                )
            yield held

    try:
        yield hold
    finally:
        locker.close()
