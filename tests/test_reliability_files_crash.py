"""Crash safety of the file source (DESIGN §4.1): ``kill -9`` of ``syncd sync`` reading a drop
folder of successive deliveries, each of which changes every row.

File ``k`` sets every key's amount to ``k``: an exact sync writes each key's insert once and then
one update per later file, whatever the kills. A kill lands once a random number of change entries
committed (anywhere in a file, at its end, or in ``finish``), two or three times in a row, each
later than the last, then a sync runs to the end. Reading a committed file again would write its
rows back to older values: two extra update entries per key and file, which the change log shows.

The default suite runs it on SQLite; ``SYNCD_RELIABILITY=1`` on PostgreSQL and MariaDB too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e import change_log
from tests.reliability_kit import databases
from tests.sources_kit import file_config

ROOT = Path(__file__).resolve().parent.parent
FILES = 6
ROWS = 1500
DBS = databases(1)


def _drop(drop: Path) -> None:
    drop.mkdir()
    for k in range(1, FILES + 1):
        path = drop / f"{k:02d}.csv"
        path.write_text(
            "id,name,amount\r\n" + "".join(f"p{i:05d},名{i},{k}\r\n" for i in range(ROWS)), encoding="utf-8"
        )
        os.utime(path, (1_700_000_000 + k, 1_700_000_000 + k))
        path.with_name(path.name + ".ok").touch()


def _committed(engine: sa.Engine) -> int:
    """Change entries committed so far."""
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM syncd_changes")).scalar() or 0)
    except sa.exc.DBAPIError:  # not created yet, or locked by the writer for a moment
        return 0


def _sync(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "people"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_after(cfg: Path, engine: sa.Engine, entries: int) -> bool:
    """Start a sync and SIGKILL it once ``entries`` change entries committed; False when it ended first."""
    proc = _sync(cfg)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _committed(engine) < entries:
        assert time.monotonic() < deadline, "the sync stalled"
        time.sleep(0.005)
    ended = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not ended


@pytest.mark.slow
@pytest.mark.parametrize("db_url", DBS, indirect=True)
def test_kill_9_while_reading_files_converges_exactly(tmp_path: Path, db_url: str) -> None:
    rng = random.Random(20261207)
    drop = tmp_path / "drop"
    _drop(drop)
    cfg = file_config(tmp_path / "cfg", db_url, drop)
    engine = sa.create_engine(db_url)
    try:
        kills = 0
        for _ in range(rng.choice((2, 3))):
            kills += _kill_after(cfg, engine, _committed(engine) + rng.randint(ROWS // 2, 2 * ROWS))
        assert kills, "no kill landed before the sync ended"
        done = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(cfg), "sync", "people"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with engine.connect() as conn:
            amounts = Counter(conn.execute(sa.text("SELECT amount FROM people_local")).scalars())
        assert amounts == {FILES: ROWS}
        log = Counter((e["row_key"], e["op"]) for e in change_log(db_url, "people"))
        expected = Counter({(f"p{i:05d}", "insert"): 1 for i in range(ROWS)})
        expected.update({(f"p{i:05d}", "update"): FILES - 1 for i in range(ROWS)})
        missing, repeated = expected - log, log - expected
        off = (sum(missing.values()), sum(repeated.values()), list(repeated)[:3])
        assert not missing and not repeated, f"change log off: missing, repeated, e.g.: {off}"
        assert sorted(p.name for p in (drop / "processed").glob("*.csv")) == [
            f"{k:02d}.csv" for k in range(1, FILES + 1)
        ]
    finally:
        engine.dispose()
