"""One measured dlt load, in its own process: the comparison side of the benchmark.

``python bench/run_dlt.py --gateway URL --db URL --workdir DIR [--since TIME] [--replace]`` reads
every page of the simulated gateway (the same records, the same HTTP, pages of 1,000) with a plain
generator and loads the raw records with ``write_disposition="merge"`` on the primary key ``id``
— what a dlt user would write. The upstream's deletion flag ``isDeleted`` (``"1"``) is turned into
a boolean and given dlt's ``hard_delete`` column hint, so a merge deletes the rows flagged upstream
as syncd's mapping does (``snapshot-del``). ``--replace`` loads with ``write_disposition="replace"``
instead: dlt's way to make the table hold exactly what the source returned, rows that vanished
upstream included (``snapshot-gone``). SQLite and MariaDB go through dlt's ``sqlalchemy``
destination, PostgreSQL through its ``postgres`` destination. ``--since`` reads only records
updated from then on (dlt's side of an incremental re-sync). Prints one JSON line like
``run_syncd.py``, with ``table_rows``: the rows in dlt's table after the load (counted after the
clock stopped), so the results show that the deletes happened.
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

TABLE = "resident_info"


def pages(
    gateway: str, since: str | None, counter: list[int], *, live_only: bool = False
) -> Iterator[list[dict[str, Any]]]:
    """Every record of the gateway's style-1 API, a page at a time; with ``live_only`` without the
    records flagged as deleted (a replace load has no hard_delete: they are simply not loaded)."""
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
        for record in records:  # the deletion flag as dlt's hard_delete hint wants it: a boolean
            record["isDeleted"] = record.get("isDeleted") == "1"
        yield [r for r in records if not r["isDeleted"]] if live_only else records
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
    p.add_argument("--replace", action="store_true", help='write_disposition="replace" instead of merge')
    args = p.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt

    counter = [0]
    paged_in = paged_in_bytes()
    started = time.perf_counter()
    resource_ = dlt.resource(
        pages(args.gateway, args.since, counter, live_only=args.replace),
        name=TABLE,
        write_disposition="replace" if args.replace else "merge",
        primary_key="id",
        columns={"isDeleted": {"data_type": "bool", "hard_delete": True}},
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
    with pipeline.sql_client() as client:  # after the clock: what the table holds now
        query = f"SELECT count(*) FROM {client.make_qualified_table_name(TABLE)}"  # noqa: S608 - our own name
        table_rows = client.execute_sql(query)[0][0]
    print(
        json.dumps(
            {
                "status": "success",
                "wall_s": wall,
                "rows": counter[0],
                "peak_rss_mb": peak_rss_bytes() / 2**20,
                "disk_read_mb": read_mb,
                "table_rows": table_rows,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
