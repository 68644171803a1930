"""Upstream faults at 10–20 % rates: every run completes or fails with a message naming the cause,
and the next clean run converges with nothing lost and nothing repeated (DESIGN §4.1, §4.6).

The simulated gateway injects every fault kind it knows (``syncd.gateway.ALL_KINDS``): HTTP 502,
429 with Retry-After, "system busy" business codes, truncated bodies, invalid JSON, answers slower
than the read timeout, TCP resets, tokens expiring mid-run and a total that drifts while paging.
Retry waits are kept tiny (backoff in ms, Retry-After 0) so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.gateway import ALL_KINDS, FaultPlan, Gateway
from tests.e2e import SECRET, SECRET_ENV, Syncer, change_log, target_rows, write_config
from tests.reliability_kit import FULL, active, databases, real_changes

ROUNDS = int(os.environ.get("SYNCD_REL_FAULT_ROUNDS", "12" if FULL else "4"))
RECORDS = 2000 if FULL else 1200
DBS = databases(1)

FULL_WINDOW = ("lookback: 10m ", "lookback: 3650d ")  # the dataset file's own lookback

# what a failed run's message must name, per cause (any one of them for the run's faults)
CAUSE = re.compile(
    r"502|429|busy|繁忙|50001|time(d )?out|truncat|incomplete|IncompleteRead|JSON|json|reset|"
    r"connection|Connection|token|40101|expired|total",
)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    gw = Gateway(records=RECORDS, seed=17, app_key="demo-app", app_secret=SECRET)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("rate", [0.10, 0.20])
@pytest.mark.parametrize("db_url", DBS, indirect=True)
def test_every_fault_kind_fails_clearly_or_completes_then_converges(
    tmp_path: Path, gateway: Gateway, db_url: str, rate: float
) -> None:
    cfg = write_config(
        tmp_path,
        db_url=db_url,
        gateway_url=gateway.url,
        page_size=50,
        batch_size=100,
        read_timeout="250ms",
        lookback="3650d",
        replace=[FULL_WINDOW],  # every run re-reads everything: many pages, many faults
        retry="{attempts: 4, backoff_initial: 5ms, backoff_max: 20ms, deadline: 20s}",
    )
    syncer = Syncer(cfg)
    rng = random.Random(int(rate * 100))
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    before: dict[str, dict[str, Any]] = {}
    expected: Counter[tuple[str, str]] = Counter()
    plan = FaultPlan(rate=rate, kinds=ALL_KINDS, seed=int(rate * 1000), retry_after=0, slow_seconds=0.4)
    try:
        for round_no in range(ROUNDS):
            if round_no:
                gateway.store.churn(RECORDS // 10, rng)
            after = active(gateway.store.records())
            expected += real_changes(before, after)
            for _attempt in range(2):  # runs under faults: each completes or fails clearly
                gateway.faults = plan
                result = syncer.run()
                outcomes[result.status] += 1
                if not result.ok:
                    assert result.status == "failed", result
                    assert result.error, "a failed run must say why"
                    assert CAUSE.search(result.error), f"the message does not name the cause: {result.error}"
                    assert SECRET not in result.error
                    errors.append(result.error)
            gateway.faults = FaultPlan()  # the upstream recovers: the next run converges
            final = syncer.run()
            assert final.ok, final.error
            rows = target_rows(db_url)
            assert rows.keys() == after.keys(), f"round {round_no}: target differs from upstream"
            stale = [k for k, r in after.items() if str(rows[k]["updated_at"])[:19] != r["updateTime"]]
            assert not stale, f"round {round_no}: stale rows {stale[:3]}"
            log = Counter((e["row_key"], e["op"]) for e in change_log(db_url))
            assert log == expected, (
                f"round {round_no}: missing {list(expected - log)[:3]}, repeated {list(log - expected)[:3]}"
            )
            before = after
    finally:
        syncer.close()
    injected = plan.injected
    assert len(injected) >= (len(ALL_KINDS) if FULL else 6), f"too few fault kinds were exercised: {injected}"
    path = os.environ.get("SYNCD_REL_REPORT")
    if path:
        with Path(path).open("a", encoding="utf-8") as fh:
            fh.write(
                json.dumps(
                    {
                        "test": "upstream_faults",
                        "db": db_url.split(":", maxsplit=1)[0].split("+", maxsplit=1)[0],
                        "rate": rate,
                        "rounds": ROUNDS,
                        "records": RECORDS,
                        "runs": dict(outcomes),
                        "injected": injected,
                        "distinct_errors": sorted({re.sub(r"\d+", "N", e)[:120] for e in errors}),
                        "held": True,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


# kind -> what the run's error must say when the fault outlasts every retry
EXHAUSTED = {
    "http_502": r"502",
    "http_429": r"429",
    "busy": r"50001|busy|繁忙",
    "truncated": r"truncat|incomplete",
    "invalid_json": r"JSON|json",
    "slow": r"time(d )?out",
    "reset": r"reset|connection|Connection",
}


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_fault_outlasting_retries_fails_naming_the_cause_then_converges(
    tmp_path: Path, gateway: Gateway, sqlite_url: str, kind: str
) -> None:
    cfg = write_config(
        tmp_path,
        db_url=sqlite_url,
        gateway_url=gateway.url,
        page_size=200,
        batch_size=200,
        read_timeout="200ms",
        retry="{attempts: 3, backoff_initial: 5ms, backoff_max: 10ms, deadline: 10s}",
    )
    syncer = Syncer(cfg)
    try:
        assert syncer.run().ok
        gateway.store.churn(100, random.Random(3))
        gateway.faults = FaultPlan(retry_after=0, slow_seconds=0.3)
        gateway.faults.fail_next(kind, 6)  # more than the 3 attempts (and the one token refresh)
        result = syncer.run()
        if kind in EXHAUSTED:
            assert result.status == "failed", f"{kind}: {result}"
            assert result.error and re.search(EXHAUSTED[kind], result.error), f"{kind}: {result.error}"
        else:  # an expired token is refreshed; a drifting total is reported but the page data is whole
            assert result.error is None or CAUSE.search(result.error), f"{kind}: {result.error}"
        assert SECRET not in (result.error or "")
        gateway.faults = FaultPlan()
        assert syncer.run().ok
        rows = target_rows(sqlite_url)
        upstream = active(gateway.store.records())
        assert rows.keys() == upstream.keys()
        assert all(str(rows[k]["updated_at"])[:19] == r["updateTime"] for k, r in upstream.items())
        inserts = Counter(e["row_key"] for e in change_log(sqlite_url) if e["op"] == "insert")
        assert max(inserts.values()) == 1
    finally:
        syncer.close()
