"""``syncd reset DATASET --yes [--truncate-target]``: forget a dataset's synced state, so that its
next run loads everything again as a first load.

For a dataset whose key definition changed (:mod:`syncd.targets.keydef` refuses to run it):
clears its row state, watermark, stored key definition, snapshot miss counts and (a file source)
its processed files in the file ledger in one transaction, under the dataset's run lock. A file
source reads no file twice by itself: the operator drops the files again (from ``processed/``),
which the output says. Quarantined records stay (``syncd quarantine replay``
re-maps them). The target table keeps its rows unless ``--truncate-target`` deletes them in the
same transaction; without it the statement that would is printed, for the operator to decide.
The change feed is not touched. Without ``--yes`` only what would be done is printed: it only
reads (syncd's state tables are not created either; one that does not exist counts as empty).
"""

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
    run_locks,
)

if TYPE_CHECKING:
    from syncd.config.model import DatasetConfig

NAME = "reset"
HELP = "forget a dataset's row state and watermark (after a key change) so its next run loads everything"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET")
    parser.add_argument("--yes", action="store_true", help="do it (without: only say what would be done)")
    parser.add_argument(
        "--truncate-target",
        action="store_true",
        help="also delete every row of the dataset's target table (in the same transaction)",
    )


def run(args: argparse.Namespace) -> int:
    from syncd.errors import SyncdError

    app = load_or_report(args)
    if app is None:
        return EXIT_CONFIG
    dataset = dataset_or_report(app, args.dataset, "reset")
    if dataset is None:
        return EXIT_CONFIG
    table = dataset.target.table
    engine, store = open_store(app)
    try:
        if not args.yes:
            counts = store.reset_counts(dataset)
            rows = "does not exist" if counts.target_rows is None else f"has {counts.target_rows} row(s)"
            print(f"syncd reset {dataset.name} would forget {counts.row_keys} row key(s) and the watermark "
                  f"{counts.watermark or '(none)'}; the next run loads everything again as a first load.")
            keep = "keep them (add --truncate-target to delete them)"
            truncate = "delete them too" if args.truncate_target else keep
            print(f"table {table} {rows}: it would {truncate}; "
                  f"{counts.quarantined} quarantined record(s) stay; the change feed is not touched.")
            _files_note(dataset, counts.files, done=False)
            print("nothing was changed: run it again with --yes", file=sys.stderr)
            return EXIT_CONFIG
        with run_locks(app, "reset") as lock, lock(dataset.name) as held:
            if held is None:
                return EXIT_FAILED
            counts = store.reset_dataset(dataset, truncate_target=args.truncate_target)
    except SyncdError as exc:
        print(f"syncd reset: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    print(f"{dataset.name}: reset: forgot {counts.row_keys} row key(s) and the watermark "
          f"{counts.watermark or '(none)'}; the next run loads everything again")
    if counts.target_rows is None:
        pass
    elif args.truncate_target:
        print(f"table {table}: deleted its {counts.target_rows} row(s)")
    elif counts.target_rows:
        empty = "DELETE FROM " + store.quote(table)  # noqa: S608 - printed for the operator, never executed
        print(f"table {table} keeps its {counts.target_rows} row(s), keyed the old way: rows the next run "
              f"writes under the new key come beside them. To empty it: {empty};")
    _files_note(dataset, counts.files, done=True)
    print("a running daemon whose configuration still has the old key: reload it (systemctl reload syncd) "
          f"before its next run of {dataset.name}, or it records the old key definition and loads everything "
          "under the old key")
    return EXIT_OK


def _files_note(dataset: DatasetConfig, files: int, *, done: bool) -> None:
    """A file source: its processed files are forgotten, and must be dropped again to load again."""
    from syncd.config.model import FileSourceConfig

    source = dataset.source
    if not isinstance(source, FileSourceConfig):
        return
    folder = source.path
    verb = "forgot" if done else "would forget"
    print(f"file ledger: {verb} {files} processed file(s) of {dataset.name}; the files are not read "
          f"again by themselves: to load them again, copy them back from {folder}/processed/ into "
          f"{folder} (with their marker files, when complete_when is marker)")
