"""The garbage collector's setting while a run reads (syncd.gcpolicy)."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.config import load_config
from syncd.gcpolicy import YOUNG_THRESHOLD, fewer_collections
from syncd.runner import run_dataset
from syncd.sources import Page, Window
from syncd.targets import StateStore, create_target_engine
from tests.e2e import ListSource, demo_gateway, write_config


@pytest.fixture
def default_collector() -> Iterator[None]:
    """CPython's defaults around the test, whatever the test process had."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


class _WatchingSource(ListSource):
    """One page of the demo's records; notes the collector's setting while it is read."""

    def __init__(self, records: list[dict[str, Any]], seen: list[tuple[int, int]]) -> None:
        super().__init__([records])
        self.seen = seen

    def read(self, window: Window) -> Iterator[Page]:
        self.seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        yield from super().read(window)


def test_a_run_reads_with_fewer_collections_and_restores_them(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, default_collector: None
) -> None:
    with demo_gateway(monkeypatch, records=20, seed=3) as gw:
        app = load_config(write_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url))
        records = gw.store.records()
    engine = create_target_engine(sqlite_url)
    seen: list[tuple[int, int]] = []
    try:
        result = run_dataset(
            app,
            app.datasets["residents"],
            StateStore(engine, app.target.table_prefix),
            source_factory=lambda _app, _ds: _WatchingSource(records, seen),
        )
    finally:
        engine.dispose()
    assert result.ok, result.error
    ((threshold, frozen),) = seen
    assert threshold == YOUNG_THRESHOLD
    assert frozen > 0  # the heap of before the run is left out of its collections
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_overlapping_runs_restore_the_setting_when_the_last_one_ends(default_collector: None) -> None:
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()
    during: list[int] = []

    def second() -> None:
        first_in.wait()
        with fewer_collections():
            second_in.set()
            first_out.wait()
            during.append(gc.get_threshold()[0])  # the first run has ended: still this run's

    thread = threading.Thread(target=second)
    thread.start()
    with fewer_collections():
        first_in.set()
        second_in.wait()
    first_out.set()
    thread.join()
    assert during == [YOUNG_THRESHOLD]
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_switched_off_collector_stays_off() -> None:
    saved = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == 0
            assert gc.get_freeze_count() == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)


def test_the_read_worker_settles_its_collector_once() -> None:
    code = (
        "import gc\n"
        "from syncd.gcpolicy import YOUNG_THRESHOLD, settle_worker\n"
        "settle_worker()\n"
        "assert gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
