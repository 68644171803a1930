"""The benchmark's syncd configuration: the demo's main file and its residents dataset, adjusted.

:func:`write_config` writes ``syncd.yaml`` and ``datasets/residents.yaml`` into a directory. The
dataset is the demo's own (date parsing in four spellings, code tables, masking, ID checksum
validation, logical deletes by ``isDeleted``) with pages of 1,000. ``incremental=False`` drops the
``incremental:`` block, so every run reads the whole snapshot and compares every row (the diff
path). Both variants keep the dataset name, so they share one table and one row state.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["APP_SECRET", "DEMO_DIR", "SECRET_ENV", "write_config"]

DEMO_DIR = Path(__file__).resolve().parent.parent / "syncd" / "demo"
APP_SECRET = "demo-secret"  # noqa: S105 - the simulated gateway's published demo credential
SECRET_ENV = "SYNCD_DEMO_APP_SECRET"  # noqa: S105 - a variable name: the harness sets it for its children


def write_config(
    root: Path,
    *,
    db_url: str,
    gateway_url: str,
    incremental: bool = True,
    batch_size: int = 1000,
    snapshot_delete: bool = False,
) -> Path:
    """Write the config under ``root``; returns the path of ``syncd.yaml``. ``snapshot_delete``
    (with ``incremental=False``): rows whose records vanished upstream are deleted
    (``target.snapshot_delete`` with its defaults)."""
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    main = (DEMO_DIR / "syncd.yaml").read_text(encoding="utf-8")
    main = main.replace("${SYNCD_DEMO_DB}", db_url)
    main = main.replace("${SYNCD_DEMO_GATEWAY}", gateway_url)
    main = re.sub(r"batch_size: \d+", f"batch_size: {batch_size}", main)
    main = main.replace("safety_lag: 1s", "safety_lag: 0s")
    # a run of 10⁶ records must not stop at the default error limit because of the spoiled share
    main = main.replace("logging:", "  error_limit: {count: 1000000000, ratio: 0.5}\n\nlogging:", 1)
    dataset = (DEMO_DIR / "datasets" / "residents.yaml").read_text(encoding="utf-8")
    dataset = re.sub(r"page_size: \d+", "page_size: 1000", dataset)
    if not incremental:
        dataset = re.sub(r"\n  incremental:.*?\n(?=\S)", "\n", dataset, flags=re.S)
        if "incremental:" in dataset:  # pragma: no cover - the demo file changed shape
            raise RuntimeError("could not drop the incremental block from the demo dataset")
    if snapshot_delete:
        block = "\n  key: \\1\n  snapshot_delete: {enabled: true}\n"
        dataset, found = re.subn(r"\n  key: (\[.*?\])\n", block, dataset, count=1)
        if not found:  # pragma: no cover - the demo file changed shape
            raise RuntimeError("could not find the target key in the demo dataset")
    (root / "datasets" / "residents.yaml").write_text(dataset, encoding="utf-8")
    path = root / "syncd.yaml"
    path.write_text(main, encoding="utf-8")
    return path
