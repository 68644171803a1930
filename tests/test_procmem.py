"""peak_rss_bytes: a process's own high-water mark, not the one Linux carries over execve;
fixed_mmap_threshold: page-sized blocks keep pages of their own."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from http_server import Recorded, Reply, serve

from syncd.gateway.data import generate_records
from syncd.procmem import peak_rss_bytes

CHILD = "from syncd.procmem import peak_rss_bytes; import resource; " \
    "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and execve's carry-over")


def test_a_small_child_of_a_large_process_reports_its_own_peak() -> None:
    ballast = bytearray(300 * 2**20)
    for i in range(0, len(ballast), 4096):  # touch every page: resident
        ballast[i] = 1
    assert peak_rss_bytes() >= 300 * 2**20
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    own, ru_maxrss = (int(v) for v in done.stdout.split())
    assert ru_maxrss >= 300 * 2**20  # the parent's figure, carried over execve
    assert own < 150 * 2**20  # the child's: an interpreter and one small module
    del ballast


def test_the_peak_is_at_least_what_is_resident_now() -> None:
    with Path("/proc/self/status").open(encoding="ascii") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    assert peak_rss_bytes() >= rss
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


# a read of 550 KB pages, each record digested by its text (syncd.sources.http.texts), in a process
# of its own: how much more it holds at the end than after its first page
READER = """
import sys
sys.path.insert(0, sys.argv[3])
from http_server import app_config, connection, dataset_config
from syncd.procmem import fixed_mmap_threshold
from syncd.sources.base import Window
from syncd.sources.http.source import HttpSource

if sys.argv[2] == "fixed":
    assert fixed_mmap_threshold()
source = HttpSource.from_config(
    app_config(connection(sys.argv[1])),
    dataset_config({"path": "/p", "pagination": {"type": "page_number", "page_size": 1000}}),
)
assert source.digest_texts(bytes(16))
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
pages = source.read(Window(None, None))
next(pages)
base = rss()
count = sum(len(page.digests or ()) for page in pages)
print(count, round(rss() - base, 1))
"""


def test_page_sized_blocks_do_not_fragment_the_heap_once_the_threshold_is_fixed() -> None:
    """glibc raises its mmap threshold with every large free; the page-sized blocks of a read then
    come from the heap and leave holes it never returns (procmem.fixed_mmap_threshold)."""
    records = generate_records(10_000, seed=3, start_time=datetime(2026, 1, 1))
    bodies = [
        orjson.dumps({"code": "0", "msg": "ok", "data": {"total": 150_000, "list": records[i : i + 1000]}})
        for i in range(0, 10_000, 1000)
    ]

    def handle(req: Recorded) -> Reply:
        page = int(req.query.get("pageNo", 1))
        return Reply(body=bodies[page % len(bodies)], headers={"Content-Type": "application/json"})

    for server in serve():
        server.handler = handle
        grown = {}
        for mode in ("fixed", "glibc"):
            done = subprocess.run(
                [sys.executable, "-c", READER, server.url, mode, str(Path(__file__).parent)],
                capture_output=True,
                text=True,
                check=True,
            )
            count, megabytes = done.stdout.split()
            assert int(count) == 149_000
            grown[mode] = float(megabytes)
        # 2026-12-07: 2.6 MB fixed, 9.4 MB with glibc's own threshold (13 MB over a 10^5-record run)
        assert grown["fixed"] < 5, grown


def test_the_threshold_is_set_once_and_an_operators_setting_is_kept() -> None:
    code = (
        "from syncd import procmem\n"
        "from syncd.gcpolicy import fewer_collections\n"
        "with fewer_collections():\n"
        "    pass\n"
        "print(procmem._state.get('fixed'), procmem.fixed_mmap_threshold())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert ours.stdout.split() == ["True", "True"]  # set by the run's collector policy, once
    env["MALLOC_MMAP_THRESHOLD_"] = "262144"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert theirs.stdout.split() == ["False", "False"]
