"""Run the simulated gateway from the command line until Ctrl-C or SIGTERM.

    python -m syncd.gateway --port 8765 --records 1000 --seed 1

Prints the base URL and the demo credentials of each style. ``--churn-every`` makes the
upstream change by itself (updates, inserts, logical deletes), so a running syncd has
something to pick up.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
from types import FrameType

from syncd.gateway.faults import ALL_KINDS, DEFAULT_KINDS, FaultPlan
from syncd.gateway.server import Gateway

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m syncd.gateway",
        description="Simulated provincial data-sharing gateway (模拟省级网关) on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0 = any free port; default 8765)")
    p.add_argument("--records", type=int, default=1000, help="records to generate (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the data (default 1)")
    p.add_argument("--bad-ratio", type=float, default=0.0, help="share of records dirty beyond repair")
    p.add_argument("--page-size-cap", type=int, default=1000, help="largest pageSize allowed (default 1000)")
    p.add_argument("--token-ttl", type=int, default=7200, help="Style 1 token lifetime in seconds")
    p.add_argument(
        "--revoke-on-issue",
        action="store_true",
        help="Style 1: a new token revokes every earlier one (one valid token per appKey, as many gateways)",
    )
    p.add_argument("--fault-rate", type=float, default=0.0, help="probability of a fault per data request")
    p.add_argument(
        "--fault-kinds",
        default=",".join(DEFAULT_KINDS),
        help=f"comma-separated fault kinds among {', '.join(ALL_KINDS)}",
    )
    p.add_argument("--prerender", action="store_true", help="cache rendered pages (benchmark mode)")
    p.add_argument(
        "--churn-every", type=float, default=0.0, help="seconds between rounds of upstream changes (0 = none)"
    )
    p.add_argument("--churn-size", type=int, default=20, help="records updated per churn round (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = FaultPlan(args.fault_rate, [k for k in args.fault_kinds.split(",") if k], seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gateway = Gateway(
        records=args.records,
        seed=args.seed,
        host=args.host,
        port=args.port,
        page_size_cap=args.page_size_cap,
        token_ttl=args.token_ttl,
        revoke_on_issue=args.revoke_on_issue,
        faults=plan,
        prerender=args.prerender,
        bad_ratio=args.bad_ratio,
    )
    # handlers before the banner: whoever reads the banner may signal us at once
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        url = gateway.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"syncd simulated gateway listening on {url} with {len(gateway.store)} records", flush=True)
    print(f"  Style 1 (token):    POST {url}/auth/token  appKey=demo-app appSecret=demo-secret;"
          f" GET {url}/api/residents/query", flush=True)
    print(f"  Style 2 (HMAC):     GET {url}/sd/rkxx  clientId=sd-client secret=sd-secret", flush=True)
    print(f"  Style 3 (two-tier): {url}/zj/refreshTokenByKey, {url}/zj/api/residents"
          "  appKey=zj-app appSecret=zj-secret", flush=True)
    print("Ctrl-C to stop.", flush=True)

    rng = random.Random(args.seed)
    try:
        while not stop.wait(args.churn_every if args.churn_every > 0 else 3600):
            if args.churn_every > 0:
                done = gateway.store.churn(args.churn_size, rng)
                print(f"churn: {done['updated']} updated, {done['inserted']} inserted, "
                      f"{done['deleted']} logically deleted", flush=True)
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
