"""The simulated provincial gateway (模拟省级数据共享网关) used by the demo, tests and benchmark.

A real HTTP server on loopback serving seeded, realistically dirty resident records in three
wire styles, with injectable faults::

    from syncd.gateway import Gateway, FaultPlan

    with Gateway(records=1000, seed=1) as gw:
        print(gw.url)                      # http://127.0.0.1:<port>
        gw.store.update(ids, remark="地址变更")
        gw.faults.fail_next("http_502")

From the command line: ``python -m syncd.gateway --port 8765 --records 1000 --seed 1``.
"""

from __future__ import annotations

from syncd.gateway.codes import CODE_TABLES, id_check_digit, is_valid_id_number
from syncd.gateway.data import TIME_FORMAT, RecordFactory, generate_records, iter_records
from syncd.gateway.faults import ALL_KINDS, DEFAULT_KINDS, FaultPlan
from syncd.gateway.protocol import RequestLogEntry
from syncd.gateway.server import Gateway
from syncd.gateway.store import ResidentStore, shanghai_now
from syncd.gateway.styles.hmac_style import sign as hmac_sign
from syncd.gateway.styles.hmac_style import to_pinyin_fields
from syncd.gateway.styles.twotier_style import md5_sign

__all__ = [
    "ALL_KINDS",
    "CODE_TABLES",
    "DEFAULT_KINDS",
    "TIME_FORMAT",
    "FaultPlan",
    "Gateway",
    "RecordFactory",
    "RequestLogEntry",
    "ResidentStore",
    "generate_records",
    "hmac_sign",
    "id_check_digit",
    "is_valid_id_number",
    "iter_records",
    "md5_sign",
    "shanghai_now",
    "to_pinyin_fields",
]
