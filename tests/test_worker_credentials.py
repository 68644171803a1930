"""The read worker and the run's process share one upstream credential.

Many provincial gateways keep one valid token (request secret) per appKey: issuing a new one
revokes the previous one (docs/GATEWAYS styles 1 and 3; the simulated gateway's
``revoke_on_issue``). The run's process shares its credential between every source using it
(``shared_state``); the read worker is another interpreter. These tests show that the worker
uses the run process's credential instead of fetching its own, that the run process uses what
was fetched for the worker, and that two runs reading through workers at the same time on one
connection do not evict each other: one credential issued, no rejected request, no failed run.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd.config import load_config
from syncd.gateway import FaultPlan, Gateway
from syncd.logs import configure_logging
from syncd.runner import Backfill, RunResult
from syncd.sources import build_source
from syncd.sources.base import Window
from syncd.sources.worker import ReadWorker
from tests.e2e import SECRET, SECRET_ENV, read_whole_with_snapshot_deletes, sync_once, write_config

RECORDS = 600


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The demo gateway, revoking every earlier credential when it issues one."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=RECORDS, seed=31, app_key="demo-app", app_secret=SECRET, revoke_on_issue=True) as gw:
        yield gw


def _config(root: Path, db_url: str, gateway_url: str, mode: str, *, two_tier: bool = False) -> Path:
    cfg = write_config(root, db_url=db_url, gateway_url=gateway_url, page_size=100, batch_size=250)
    text = cfg.read_text(encoding="utf-8").replace("defaults:\n", f"defaults:\n  read_worker: {mode}\n", 1)
    if two_tier:
        text = text.replace(
            "    auth:\n      type: token\n      url: /auth/token\n",
            "    auth:\n      type: two_tier_secret\n      refresh_by_key_url: /zj/refreshTokenByKey\n"
            "      refresh_by_secret_url: /zj/refreshTokenBySec\n",
        )
        for old, new in (
            ('success_codes: ["0"]', 'success_codes: ["00"]'),
            ('auth_expired_codes: ["40101"]', 'auth_expired_codes: ["11"]\n      decode_strings: [datas]'),
            ("records_path: data.list", "records_path: datas"),
            ("total_path: data.total", "total_path: dataCount"),
        ):
            assert old in text, old
            text = text.replace(old, new, 1)
        assert "two_tier_secret" in text and "dataCount" in text
        dataset = root / "datasets" / "residents.yaml"
        text_ds = dataset.read_text(encoding="utf-8")
        dataset.write_text(text_ds.replace("path: /api/residents/query", "path: /zj/api/residents"), "utf-8")
    cfg.write_text(text, encoding="utf-8")
    return cfg


def _rejected(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests the gateway refused for an expired credential (in either process: the worker's
    events reach the run's log when it logs at INFO)."""
    return [e for e in logs if e["event"] == "http.auth_refresh"]


@pytest.fixture(autouse=True)
def _info_level() -> None:
    configure_logging("INFO", "json", io.StringIO())  # the worker logs at the run process's level


def _hand_over_after_first_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("syncd.runner.WORKER_MIN_RECORDS", RECORDS // 2)
    ready = ReadWorker.wait_ready
    monkeypatch.setattr(ReadWorker, "wait_ready", lambda self, timeout=0.0: ready(self, 60))


def test_a_handed_over_read_keeps_the_run_processs_token(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto``: the run reads the first page with its token, then the worker reads on with the
    same token; the next run of the process (a re-sync, read in-process) still has a valid one."""
    _hand_over_after_first_page(monkeypatch)
    cfg = _config(tmp_path, sqlite_url, gateway.url, "auto")
    with capture_logs() as logs:
        first = sync_once(cfg)
        assert first.ok, first.error
        assert first.counts.fetched == RECORDS
        assert [e for e in logs if e["event"] == "sync.read_worker_took_over"]
        assert gateway.credentials_issued["token"] == 1
        again = sync_once(cfg, backfill=Backfill(full=True))  # no worker: a re-sync reads in-process
    assert again.ok, again.error
    assert gateway.credentials_issued["token"] == 1
    assert _rejected(logs) == []


def test_the_run_process_rereads_with_the_workers_token(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """``always``: the worker's read is followed by the run's own second read (the reported total
    moved while paging) and the snapshot deletes: one token for all of it."""
    cfg = _config(tmp_path, sqlite_url, gateway.url, "always")
    read_whole_with_snapshot_deletes(tmp_path)
    gateway.faults = FaultPlan(drift=-7)
    gateway.faults.fail_next("total_drift")
    with capture_logs() as logs:
        result = sync_once(cfg)
    assert result.ok, result.error
    assert [e["event"] for e in logs if e["event"] == "sync.reread"] == ["sync.reread"]
    assert gateway.credentials_issued["token"] == 1
    assert _rejected(logs) == []


@pytest.mark.parametrize("two_tier", [False, True], ids=["token", "two_tier"])
def test_concurrent_runs_through_workers_share_one_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_tier: bool
) -> None:
    """The daemon runs datasets of one connection at the same time (``max_workers``), here two,
    each read by its own worker. Fetching a credential per worker made them revoke each other
    page after page: a flood of credential requests, and a run failed when the other side's
    refresh landed between its own refresh and retry."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(
        records=3_000,
        seed=37,
        app_key="demo-app",
        app_secret=SECRET,
        zj_app_key="demo-app",
        zj_app_secret=SECRET,
        revoke_on_issue=True,
    ) as gw:
        gw.latency = 0.005
        cfgs = [
            _config(tmp_path / name, f"sqlite:///{tmp_path / name}.db", gw.url, "always", two_tier=two_tier)
            for name in ("a", "b")
        ]
        results: dict[int, RunResult] = {}
        start = threading.Barrier(2)

        def run(i: int) -> None:
            start.wait()
            results[i] = sync_once(cfgs[i])

        with capture_logs() as logs:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        issued = gw.credentials_issued["two_tier" if two_tier else "token"]
    for result in results.values():
        assert result.ok, result.error
        assert result.counts.fetched == 3_000
    assert len(results) == 2
    assert issued == 1
    assert _rejected(logs) == []


def test_the_worker_takes_the_run_processs_token_over_its_stdin(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """The run's process already holds a token (another dataset, an earlier run): the worker reads
    with it. It reaches the worker over the private pipe only: never in the worker's command line
    or environment (``/proc/<pid>/cmdline``, ``environ`` are readable by the same user)."""
    cfg = _config(tmp_path, sqlite_url, gateway.url, "always")
    app = load_config(cfg)
    ds = app.datasets["residents"]
    source = build_source(app, ds)
    try:
        assert next(iter(source.read(Window(None, None)))).records  # the run process's token
    finally:
        source.close()
    assert gateway.credentials_issued["token"] == 1
    (token,) = gateway.token_style._tokens  # the one valid token
    worker = ReadWorker(app, ds, Window(None, None))
    try:
        pages = worker.pages()
        assert next(pages).fetched == 100
        for part in ("cmdline", "environ"):
            assert token.encode() not in Path(f"/proc/{worker.pid}/{part}").read_bytes()
        assert sum(page.fetched for page in pages) == RECORDS - 100
    finally:
        worker.close()
    assert gateway.credentials_issued["token"] == 1


def test_a_token_refused_in_the_worker_is_renewed_by_the_run_process(
    tmp_path: Path, gateway: Gateway, sqlite_url: str
) -> None:
    """The gateway revokes the token while the worker reads: the worker asks the run's process,
    which fetches the new token and keeps it, so the next run of the process (in-process) reads
    with it instead of being refused with the revoked one and fetching a third."""
    cfg = _config(tmp_path, sqlite_url, gateway.url, "always")
    gateway.faults.fail_next("token_expire")  # the worker's first data request: 40101, token revoked
    with capture_logs() as logs:
        first = sync_once(cfg)
        assert first.ok, first.error
        assert gateway.credentials_issued["token"] == 2
        assert len(_rejected(logs)) == 1
        again = sync_once(cfg, backfill=Backfill(full=True))  # a re-sync: read in the run's process
    assert again.ok, again.error
    assert gateway.credentials_issued["token"] == 2
    assert len(_rejected(logs)) == 1


def test_a_token_the_run_process_renews_reaches_the_worker_without_another(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reverse direction: while the worker reads, the gateway revokes the token and another
    source of the run's process renews it first. The worker's next request is refused once and
    the worker is given the run process's new token: no third token, no failure."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with Gateway(records=3_000, seed=41, app_key="demo-app", app_secret=SECRET, revoke_on_issue=True) as gw:
        gw.latency = 0.01  # the worker reads slower than the run writes: it is still reading
        cfg = _config(tmp_path, sqlite_url, gw.url, "always")
        app = load_config(cfg)
        other = build_source(app, app.datasets["residents"])  # another dataset on the connection

        def renew_at_page_two(progress: Any) -> None:
            if progress.pages == 2:
                gw.expire_tokens()
                pages = other.read(Window(None, None))
                assert next(iter(pages)).records  # refused, renewed, read
                pages.close()  # type: ignore[attr-defined]

        try:
            with capture_logs() as logs:
                result = sync_once(cfg, on_progress=renew_at_page_two)
        finally:
            other.close()
        issued = gw.credentials_issued["token"]
    assert result.ok, result.error
    assert result.counts.fetched == 3_000
    assert issued == 2
    assert len(_rejected(logs)) == 2  # the other source's request, then the worker's
