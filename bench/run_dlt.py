"""One measured dlt load, in its own process: the comparison side of the benchmark.

``python bench/run_dlt.py --gateway URL --db URL --workdir DIR [--since TIME]`` reads every page
of the simulated gateway (the same records, the same HTTP, pages of 1,000) with a plain
generator and loads the raw records with ``write_disposition="merge"`` on the primary key ``id``
— what a dlt user would write. SQLite and MariaDB go through dlt's ``sqlalchemy`` destination,
PostgreSQL through its ``postgres`` destination. ``--since`` reads only records updated from
then on (dlt's side of an incremental re-sync). Prints one JSON line like ``run_syncd.py``.
dlt is not a dependency of syncd: this runs in the benchmark's own venv (``.venv-bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import requests
from diskio import disk_read_mb, paged_in_bytes  # sibling module: the script's directory is on sys.path

from syncd.procmem import peak_rss_bytes

__all__ = ["main"]


def pages(gateway: str, since: str | None, counter: list[int]) -> Iterator[list[dict[str, Any]]]:
    """Every record of the gateway's style-1 API, a page at a time."""
    session = requests.Session()
    auth = session.post(f"{gateway}/auth/token", json={"appKey": "demo-app", "appSecret": "demo-secret"})
    session.headers["Authorization"] = "Bearer " + auth.json()["data"]["accessToken"]
    page_no = 1
    while True:
        params: dict[str, Any] = {"pageNo": page_no, "pageSize": 1000}
        if since:
            params["updateTimeStart"] = since
        body = session.get(f"{gateway}/api/residents/query", params=params, timeout=60).json()
        records = body["data"]["list"]
        if not records:
            return
        counter[0] += len(records)
        yield records
        page_no += 1


def destination(db_url: str) -> Any:
    import dlt

    if db_url.startswith("postgresql"):
        url = db_url.replace("+psycopg", "")
        if "@" in url and ":" not in url.split("://", 1)[1].split("@", 1)[0]:
            # dlt insists on a password; the benchmark's PostgreSQL trusts loopback and ignores it
            url = url.replace("@", ":unused@", 1)
        return dlt.destinations.postgres(credentials=url)
    return dlt.destinations.sqlalchemy(credentials=db_url)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gateway", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--since", default=None)
    args = p.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt

    counter = [0]
    paged_in = paged_in_bytes()
    started = time.perf_counter()
    resource_ = dlt.resource(
        pages(args.gateway, args.since, counter),
        name="resident_info",
        write_disposition="merge",
        primary_key="id",
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_residents",
        pipelines_dir=args.workdir,
        destination=destination(args.db),
        dataset_name="dlt_bench",
    )
    pipeline.run(resource_)
    wall = time.perf_counter() - started
    read_mb = disk_read_mb(paged_in, paged_in_bytes())
    print(
        json.dumps(
            {
                "status": "success",
                "wall_s": wall,
                "rows": counter[0],
                "peak_rss_mb": peak_rss_bytes() / 2**20,
                "disk_read_mb": read_mb,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
