"""The benchmark's upstream: the simulated gateway in its own process, driven over stdin/stdout.

Run by :mod:`bench.harness` as ``python bench/gateway_proc.py --records N --seed S``; the
gateway's CPU and memory stay out of the measured processes. Pages are pre-rendered
(``prerender=True``) so the server's own cost stays small. One command per line on stdin, one
JSON answer per line on stdout:

``url``                the base URL
``now``                the gateway clock (``YYYY-mm-dd HH:MM:SS``), for a dlt incremental window
``update FRACTION``    change that share of records (phone and remark), stamped now
``delete FRACTION``    logically delete that share of records (``isDeleted = "1"``), stamped now
``remove FRACTION``    remove that share of the records not flagged deleted: they vanish upstream
``quit``               stop

Before it says it is ready, and after every change, the process reads every page of the whole
dataset (``pageSize`` 1,000, no time window) from itself over HTTP, eight pages at a time, so that
those pages are in the gateway's cache before a measured run asks for them. The cache is keyed by
the records a window selects (:meth:`syncd.gateway.store.ResidentStore.span`): a first load's window
("until the run's start") and a snapshot read (no window) select the same records as the warm-up
read, and get its pages. Without it the first measurement after each change rendered the pages
itself, on the same two cores: 0.10-0.16 s of the gateway's CPU per 10⁵ records, against 0.04 s for
cached pages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from config import APP_SECRET  # sibling module: the script's directory is on sys.path
from syncd.gateway import Gateway, shanghai_now
from syncd.gateway.data import format_time

__all__ = ["main"]


def _pick(gateway: Gateway, fraction: float, rng: random.Random, *, flagged: bool = True) -> list[str]:
    """A seeded sample of ``fraction`` of the records (``flagged=False``: of those not flagged
    deleted, so that each one removed is a live row the run must delete)."""
    store = gateway.store
    ids = store.ids()
    if not flagged:
        ids = [rid for rid in ids if (store.get(rid) or {}).get("isDeleted") != "1"]
    return rng.sample(ids, max(1, round(len(ids) * fraction)))


PAGE_SIZE = 1000
APP_KEY = "demo-app"  # the demo's published credentials (APP_SECRET: bench/config.py), given to the gateway


WARM_CONNECTIONS = 8  # the pages are read this many at a time: with --latency-ms, the waits overlap


def _get(conn: http.client.HTTPConnection, path: str, token: str) -> Any:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"warm-up: {path} answered HTTP {response.status}")
    return json.loads(body)["data"]


def warm(url: str, connections: int = WARM_CONNECTIONS) -> int:
    """Read every page of the unwindowed dataset from the gateway at ``url``, on up to
    ``connections`` connections at once; returns the number of pages read. Each page is asked for
    once: the first to learn the total, the rest spread over the connections (each page still pays
    the gateway's ``--latency-ms``, but the waits overlap: 100 pages at 50 ms took 6 s one by one)."""
    address = urllib.parse.urlsplit(url)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=60)

    def page_path(number: int) -> str:
        return "/api/residents/query?" + urllib.parse.urlencode({"pageNo": number, "pageSize": PAGE_SIZE})

    conn = connect()
    try:
        body = json.dumps({"appKey": APP_KEY, "appSecret": APP_SECRET})
        conn.request("POST", "/auth/token", body=body, headers={"Content-Type": "application/json"})
        token = json.loads(conn.getresponse().read())["data"]["accessToken"]
        pages = max(1, -(-int(_get(conn, page_path(1), token)["total"]) // PAGE_SIZE))
    finally:
        conn.close()
    rest = list(range(2, pages + 1))
    if not rest:
        return pages

    def read(numbers: list[int]) -> None:
        own = connect()
        try:
            for number in numbers:
                _get(own, page_path(number), token)
        finally:
            own.close()

    lanes = max(1, min(connections, len(rest)))
    with ThreadPoolExecutor(lanes) as pool:
        for done in [pool.submit(read, rest[i::lanes]) for i in range(lanes)]:
            done.result()  # a failed read fails the warm-up (and the benchmark's start) loudly
    return pages


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer (a distant gateway)")
    args = p.parse_args()
    # stdout is the command channel: the gateway's own log lines go to stderr, warnings only
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(30),
    )
    gateway = Gateway(
        records=args.records,
        seed=args.seed,
        prerender=True,
        prerender_max_bytes=4 << 30,
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        latency=args.latency_ms / 1000,
    )
    url = gateway.start()
    warm(url)
    rng = random.Random(args.seed)
    print(json.dumps({"ready": url}), flush=True)
    try:
        for line in sys.stdin:
            cmd, *rest = line.split()
            answer: dict[str, Any]
            if cmd == "url":
                answer = {"url": url}
            elif cmd == "now":
                answer = {"now": format_time(shanghai_now())}
            elif cmd == "update":
                ids = _pick(gateway, float(rest[0]), rng)

                def touch(record: dict[str, Any]) -> None:
                    record["phone"] = f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"
                    record["remark"] = rng.choice(("信息已核实", "地址变更", "户口迁入"))

                gateway.store.update(ids, touch)
                warm(url)
                answer = {"updated": len(ids)}
            elif cmd == "delete":
                ids = _pick(gateway, float(rest[0]), rng)
                gateway.store.logical_delete(ids)
                warm(url)
                answer = {"deleted": len(ids)}
            elif cmd == "remove":
                ids = _pick(gateway, float(rest[0]), rng, flagged=False)
                gateway.store.hard_delete(ids)
                warm(url)
                answer = {"removed": len(ids)}
            elif cmd == "quit":
                break
            else:
                answer = {"error": f"unknown command {cmd!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
