"""An SQLite database named by a relative path (``sqlite:///var/lib/syncd/syncd.db``, three
slashes) resolves against the working directory: ``/`` under systemd, the operator's shell
directory for `syncd check`/`plan`/`sync` run by hand, which then open (or miss) another file.
Loading such a configuration warns, with the file, line and field and the absolute form to write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd.config import load_config
from tests.e2e import SECRET, SECRET_ENV, write_config

EVENT = "config.sqlite_path_relative"


Logged = list[dict[str, object]]


def _warnings(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Logged]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    cfg = write_config(tmp_path, db_url=db_url, gateway_url="http://127.0.0.1:9")
    with capture_logs() as logs:
        load_config(cfg)
    return cfg, [e for e in logs if e["event"] == EVENT]


def test_a_relative_sqlite_path_is_warned_about_with_its_line_and_the_absolute_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg, warned = _warnings(tmp_path, "sqlite:///var/lib/syncd/syncd.db", monkeypatch)
    assert len(warned) == 1
    event = warned[0]
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "url: sqlite" in text)
    assert (event["log_level"], event["file"], event["line"], event["field"]) == (
        "warning", str(cfg), line, "target.url"
    )
    assert event["path"] == "var/lib/syncd/syncd.db"
    reason = str(event["reason"])
    assert "working directory" in reason and str(tmp_path / "var/lib/syncd/syncd.db") in reason
    assert "sqlite:////var/lib/syncd/syncd.db" in str(event["fix"])


@pytest.mark.parametrize("url", ["sqlite:////var/lib/syncd/syncd.db", "sqlite://", "'sqlite:///:memory:'"])
def test_an_absolute_or_in_memory_sqlite_database_is_not_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    assert _warnings(tmp_path, url, monkeypatch)[1] == []


def test_a_front_end_sqlite_database_with_a_relative_path_is_warned_about_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    cfg = write_config(tmp_path, db_url="sqlite:////var/lib/syncd/syncd.db", gateway_url="http://127.0.0.1:9")
    text = cfg.read_text(encoding="utf-8").replace(
        "connections:\n", "connections:\n  qzk: {type: sql, url: 'sqlite:///srv/qzk.db'}\n", 1
    )
    cfg.write_text(text, encoding="utf-8")
    with capture_logs() as logs:
        load_config(cfg)
    warned = [e for e in logs if e["event"] == EVENT]
    assert [(e["field"], e["path"]) for e in warned] == [("connections.qzk.url", "srv/qzk.db")]


def test_syncd_check_prints_the_warning(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, db_url="sqlite:///syncd.db", gateway_url="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "--log-format", "console", "-c", str(cfg), "check"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
        env={**os.environ, SECRET_ENV: SECRET},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert EVENT in out and "sqlite:////syncd.db" in out and "target.url" in out
