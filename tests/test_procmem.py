"""peak_rss_bytes: a process's own high-water mark, not the one Linux carries over execve;
fixed_mmap_threshold: page-sized blocks keep pages of their own."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

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
