"""The raw ceiling, in its own process: already-mapped tuples bulk-written, nothing else.

``python bench/run_ceiling.py CONFIG DATASET --records N --seed S`` generates the same records
as the gateway (same generator and seed), maps them with the dataset's compiled mapping (not
timed), and times only the database work: into a fresh copy of the target table (same column
types, same primary key), one transaction per 10,000 rows —

- SQLite and MariaDB: DB-API ``executemany`` of one upsert statement;
- PostgreSQL: ``COPY … FROM STDIN`` (psycopg 3, binary-free text protocol).

No HTTP, no change tracking, no row state, no change feed. Prints one JSON line like
``run_syncd.py`` (``wall_s`` is the write time only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from diskio import disk_read_mb, paged_in_bytes  # sibling module: the script's directory is on sys.path

from syncd.procmem import peak_rss_bytes

__all__ = ["main"]

CHUNK = 10_000


def main() -> int:  # noqa: PLR0915 - one linear recipe per database family
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", type=Path)
    p.add_argument("dataset")
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    import sqlalchemy as sa

    from syncd.config import load_config
    from syncd.errors import RecordError
    from syncd.gateway.data import RecordFactory
    from syncd.mapping import compile_mapping
    from syncd.targets import create_target_engine
    from syncd.targets.engine import dialect_family
    from syncd.targets.schema import target_table

    app = load_config(args.config)
    ds = app.datasets[args.dataset]
    mapping = compile_mapping(ds, app.code_tables)
    engine = create_target_engine(app.target.url.get_secret_value())
    family = dialect_family(engine)
    ceiling = ds.model_copy(update={"target": ds.target.model_copy(update={"table": "bench_ceiling"})})
    table = target_table(sa.MetaData(), ceiling, mapping)
    table.drop(engine, checkfirst=True)
    table.create(engine)
    cols = list(mapping.columns)
    keys = [cols[i] for i in mapping.key_indexes]
    names = ", ".join(cols)
    marks = ", ".join(["?" if family == "sqlite" else "%s"] * len(cols))
    non_key = [c for c in cols if c not in keys]
    if family == "sqlite":
        sets = ", ".join(f"{c} = excluded.{c}" for c in non_key)
        sql = f"INSERT INTO bench_ceiling ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"  # noqa: S608,E501 - names from validated config
    elif family == "mysql":
        sets = ", ".join(f"{c} = VALUES({c})" for c in non_key)
        sql = f"INSERT INTO bench_ceiling ({names}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {sets}"  # noqa: S608
    else:
        sql = f"COPY bench_ceiling ({names}) FROM STDIN"

    # values as the driver receives them (e.g. Decimal → text on SQLite), converted before timing
    procs = [table.c[c].type.bind_processor(engine.dialect) for c in cols]
    factory = RecordFactory(args.seed)
    first = datetime(2026, 1, 1) - timedelta(seconds=2 * args.records + 60)
    written = 0
    spent = 0.0
    read_mb: float | None = 0.0  # over the timed writes only, as the wall time
    raw = engine.raw_connection()
    try:
        chunk: list[tuple[Any, ...]] = []

        def flush() -> None:
            nonlocal spent, written, read_mb
            paged_in = paged_in_bytes()
            t0 = time.perf_counter()
            cur = raw.cursor()
            if family == "postgresql":
                with cur.copy(sql) as copy:
                    for row in chunk:
                        copy.write_row(row)
            else:
                if family == "sqlite":
                    cur.execute("BEGIN")
                cur.executemany(sql, chunk)
            raw.commit()
            cur.close()
            spent += time.perf_counter() - t0
            read = disk_read_mb(paged_in, paged_in_bytes())
            read_mb = None if read is None or read_mb is None else read_mb + read
            written += len(chunk)
            chunk.clear()

        for record in factory.stream(args.records, first):
            try:
                row = mapping(record)
                chunk.append(tuple(v if f is None else f(v) for f, v in zip(procs, row, strict=True)))
            except RecordError:
                continue
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    finally:
        raw.close()
        with engine.begin() as conn:
            table.drop(conn)
        engine.dispose()
    print(
        json.dumps(
            {
                "status": "success",
                "wall_s": spent,
                "rows": written,
                "peak_rss_mb": peak_rss_bytes() / 2**20,
                "disk_read_mb": read_mb,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
