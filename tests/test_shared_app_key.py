"""Two syncd processes sharing one app_key on a gateway that keeps one valid token per app_key.

Two nodes configured with the same app_key, or a ``syncd sync`` by hand beside the daemon: every
token one process fetches revokes the other's (the simulated gateway's ``revoke_on_issue``). Each
then gets 40101, fetches a token, and revokes the other's again. Without a bound on that, a
request whose fresh token was revoked before it was used failed the run ("rejected again right
after it was refreshed: check the auth settings"), a wrong lead for the operator. Both runs must
complete, and each process that saw a token revoked right after issue says so once, with the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.gateway import Gateway
from syncd.gateway.protocol import Request, Response
from tests.e2e import ROOT, SECRET, SECRET_ENV, target_rows, write_config

RECORDS = 1_500
PAGE_SIZE = 25  # 60 pages each


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with Gateway(records=RECORDS, seed=53, app_key="demo-app", app_secret=SECRET, revoke_on_issue=True) as gw:
        yield gw


def _overlapping(gateway: Gateway) -> threading.Event:
    """After the first page, serve no page before the second process holds a token (the two reads
    overlap, however long a start-up takes), and each page a little slowly, so that they stay
    interleaved. Returns the event set when the first page was served."""
    style = gateway.token_style
    issue, data = style._issue, style._data
    both, first = threading.Event(), threading.Event()

    def counted_issue(req: Request) -> Response:
        answer = issue(req)
        if style.issued >= 2:
            both.set()
        return answer

    def held_data(req: Request) -> Response:
        if first.is_set():
            both.wait(30)
        time.sleep(0.003)
        answer = data(req)
        first.set()
        return answer

    style._issue = counted_issue  # type: ignore[method-assign]
    style._data = held_data  # type: ignore[method-assign]
    return first


def _events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_two_processes_sharing_an_app_key_both_complete_and_are_told(
    tmp_path: Path, gateway: Gateway
) -> None:
    """The daemon's run is reading when a second run with the same app_key starts (a `syncd sync`
    by hand, or another node): both runs complete with every record, and the operator is told."""
    first_page = _overlapping(gateway)
    env = {**os.environ, SECRET_ENV: SECRET}
    runs = []
    for node in ("node-a", "node-b"):
        if runs:
            assert first_page.wait(30), "the first run read no page"
        root = tmp_path / node
        root.mkdir()
        config = write_config(
            root, db_url=f"sqlite:///{root}/target.db", gateway_url=gateway.url, page_size=PAGE_SIZE
        )
        command = [sys.executable, "-m", "syncd", "-c", str(config), "sync", "residents"]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        runs.append((root, process))
    outputs = []
    for _root, process in runs:
        out, err = process.communicate(timeout=120)
        outputs.append((process.returncode, out + err))

    for (root, _process), (code, text) in zip(runs, outputs, strict=True):
        assert code == 0, text[-3000:]
        assert len(target_rows(f"sqlite:///{root}/target.db")) == RECORDS
    warned = [[e for e in _events(text) if e["event"] == "auth.token_revoked_early"] for _, text in outputs]
    assert all(len(w) <= 1 for w in warned), warned  # once per run
    assert any(warned), "neither run said that another process uses its app_key"
    (warning, *_) = [w[0] for w in warned if w]
    assert warning["log.level"] == "warning"
    assert "another process appears to use the same app_key" in warning["message"]
    assert "connections.province_gateway.auth.app_key" in warning["message"]
    assert gateway.token_style.issued > 2  # they did evict each other
