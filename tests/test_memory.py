"""Invariant 5: memory depends on batch and page size, never on dataset size.

The gateway runs in its own process so that only the sync's allocations are traced.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET_ENV, write_config


@contextmanager
def gateway_process(records: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.gateway", "--port", "0", "--records", str(records), "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert match, first
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def traced_peak(tmp_path: Path, records: int) -> tuple[int, int]:
    with gateway_process(records) as url:
        db = f"sqlite:///{tmp_path / f'm{records}.db'}"
        app = load_config(
            write_config(tmp_path / str(records), db_url=db, gateway_url=url, page_size=500, batch_size=500)
        )
        engine = create_target_engine(db)
        try:
            tracemalloc.start()
            result = run_dataset(app, app.datasets["residents"], StateStore(engine))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            engine.dispose()
    assert result.ok, result.error
    return result.counts.fetched, peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_dataset_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "demo-secret")  # the gateway process's default app secret
    small_n, small_peak = traced_peak(tmp_path, 1_000)
    large_n, large_peak = traced_peak(tmp_path, 10_000)
    assert (small_n, large_n) == (1_000, 10_000)
    # 10x the records; a sync that held the dataset would need ~10x the memory
    assert large_peak < 2 * small_peak, (small_peak, large_peak)
