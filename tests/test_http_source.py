"""HttpSource end to end against a loopback gateway: config wiring, paging, incremental, stats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from http_server import (
    LoopbackServer,
    Recorded,
    Reply,
    app_config,
    connection,
    dataset_config,
    envelope,
    serve,
)
from ruamel.yaml import YAML

from syncd.errors import ConfigError
from syncd.sources import build_source
from syncd.sources.base import Window
from syncd.sources.http.source import HttpSource


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


ALL = Window(None, None)


def residents(total: int) -> Any:
    """A page_number gateway over ``total`` residents updated one second apart."""

    def handle(req: Recorded) -> Reply:
        params = req.json() if req.method == "POST" else req.query
        page, size = int(params.get("pageNo", 1)), int(params.get("pageSize", 100))
        ids = range((page - 1) * size, min(page * size, total))
        rows = [{"id": i, "updateTime": f"2026-11-01 08:00:{i % 60:02d}"} for i in ids]
        return envelope(rows, total=total)

    return handle


def make(server: LoopbackServer, source: dict[str, Any] | None = None, **conn: Any) -> HttpSource:
    return HttpSource.from_config(
        app_config(connection(server.url, **conn)),
        dataset_config({"path": "/api/residents", **(source or {})}),
    )


# --------------------------------------------------------------------------- wiring


def test_build_source_registry_resolves_the_connection(server: LoopbackServer) -> None:
    server.handler = residents(3)
    app = app_config(connection(server.url))
    source = build_source(app, dataset_config({"path": "/api/residents"}))
    assert isinstance(source, HttpSource)
    assert [r["id"] for p in source.read(ALL) for r in p.records] == [0, 1, 2]
    source.close()


def test_an_http_source_imports_only_its_own_kind() -> None:
    """The read worker builds one http source: the sql kind's SQLAlchemy (about 10 MB of the
    worker's memory) must not come with it."""
    code = (
        "import sys\n"
        "from syncd.sources import SOURCES, _load_builtin, load_builtin_sources\n"
        "_load_builtin('http')\n"
        "print(sorted(SOURCES), 'sqlalchemy' in sys.modules)\n"
        "load_builtin_sources()\n"
        "print(sorted(SOURCES), 'sqlalchemy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["['http'] False", "['file', 'http', 'sql'] True"]


def test_an_unknown_source_type_names_the_known_ones() -> None:
    app = app_config(connection("http://127.0.0.1:9"))
    dataset = dataset_config({"path": "/x"})
    odd = dataset.model_copy(update={"source": dataset.source.model_copy(update={"type": "ftp"})})
    with pytest.raises(ValueError, match="unknown source type 'ftp'; known types: file, http, sql"):
        build_source(app, odd)


def test_unknown_connection_is_a_config_error(server: LoopbackServer) -> None:
    app = app_config(connection(server.url), name="province")
    with pytest.raises(ConfigError) as info:
        HttpSource.from_config(app, dataset_config({"path": "/x"}, connection_name="provnce"))
    issue = info.value.issues[0]
    assert issue.path == "source.connection"
    assert "'provnce'" in issue.message
    assert "known: province" in issue.message


def test_dataset_envelope_overrides_the_connection_envelope(server: LoopbackServer) -> None:
    server.queue(Reply(json={"errcode": 0, "result": {"rows": [{"id": 7}]}}))
    source = make(
        server,
        {"envelope": {"code_path": "errcode", "records_path": "result.rows", "total_path": None}},
        envelope={"code_path": "status", "records_path": "items"},
    )
    assert [p.records for p in source.read(ALL)] == [[{"id": 7}]]
    source.close()


def test_configured_from_yaml(server: LoopbackServer) -> None:
    """Shandong style, written as an operator would: hmac headers, STARTNUM/PAGENUM, string payload."""
    secret = "sd-secret-value"

    def gateway(req: Recorded) -> Reply:
        text = f"{req.header('X-Client-Id')}{req.header('X-Timestamp')}{req.header('X-Nonce')}"
        expected = base64.b64encode(
            hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
        ).decode()
        if req.header("X-Signature") != expected:
            return Reply(json={"code": "401", "msg": "签名错误"})
        start, count = int(req.query["STARTNUM"]), int(req.query["PAGENUM"])
        rows = [
            {"XM": f"居民{i}", "SFZH": f"37010219900101{i:04d}"} for i in range(start, min(start + count, 8))
        ]
        return Reply(json={"code": "200", "msg": "ok", "data": json.dumps({"count": 7, "rows": rows})})

    server.handler = gateway
    yaml = YAML(typ="safe")
    conn = yaml.load(
        f"""
        type: http
        base_url: {server.url}
        auth: {{type: hmac_headers, client_id: sd-county, secret: {secret}}}
        envelope:
          decode_strings: [data]
          records_path: data.rows
          total_path: data.count
        retry: {{attempts: 2, backoff_initial: 10ms}}
        """
    )
    source_yaml = yaml.load(
        """
        path: /gateway/rkxx
        pagination:
          {type: offset, offset_param: STARTNUM, limit_param: PAGENUM, page_size: 3, first_offset: 1}
        """
    )
    source = HttpSource.from_config(app_config(conn), dataset_config(source_yaml))
    pages = list(source.read(ALL))
    source.close()
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert pages[0].records[0] == {"XM": "居民1", "SFZH": "370102199001010001"}
    assert [r.query["STARTNUM"] for r in server.requests] == ["1", "4", "7"]
    assert source.stats.complete and source.stats.reported_total == 7


# --------------------------------------------------------------------------- reading and stats


def test_pages_are_read_lazily_one_at_a_time(server: LoopbackServer) -> None:
    server.handler = residents(250)
    source = make(server)
    pages = source.read(ALL)
    assert server.requests == []
    first = next(pages)
    assert (first.number, len(first.records), first.reported_total) == (1, 100, 250)
    assert len(server.requests) == 1
    assert not source.stats.complete
    rest = list(pages)
    assert [p.number for p in rest] == [2, 3]
    stats = source.stats
    assert (stats.requests, stats.retries, stats.pages, stats.records) == (3, 0, 3, 250)
    assert stats.reported_total == 250
    assert stats.bytes > 250 * 20
    assert stats.complete
    assert stats.warnings == []
    source.close()


def test_an_abandoned_read_is_not_complete(server: LoopbackServer) -> None:
    server.handler = residents(250)
    source = make(server)
    pages = source.read(ALL)
    next(pages)
    pages.close()
    assert not source.stats.complete
    source.close()


def test_stats_restart_with_each_read_and_count_retries(server: LoopbackServer) -> None:
    server.queue(Reply(status=503))
    server.handler = residents(5)
    source = make(server)
    list(source.read(ALL))
    assert (source.stats.requests, source.stats.retries) == (2, 1)
    list(source.read(ALL))
    assert (source.stats.requests, source.stats.retries, source.stats.records) == (1, 0, 5)
    source.close()


def test_a_changing_total_is_a_warning(server: LoopbackServer) -> None:
    totals = iter([250, 251, 251])

    def handle(req: Recorded) -> Reply:
        page = int(req.query["pageNo"])
        count = 100 if page < 3 else 51
        return envelope([{"id": (page, i)} for i in range(count)], total=next(totals))

    server.handler = handle
    source = make(server)
    list(source.read(ALL))
    source.close()
    assert source.stats.reported_total == 250
    assert source.stats.complete
    assert any("changed while paging (from 250 to 251" in w for w in source.stats.warnings)


def test_cursor_paging_end_to_end(server: LoopbackServer) -> None:
    chain = {"": ("a", [1, 2]), "a": ("b", [3]), "b": (None, [4, 5])}

    def handle(req: Recorded) -> Reply:
        nxt, ids = chain[req.query.get("scroll", "")]
        return Reply(json={"code": 0, "data": {"list": [{"id": i} for i in ids], "next": nxt}})

    server.handler = handle
    source = make(
        server,
        {
            "pagination": {"type": "cursor", "cursor_param": "scroll", "page_size": 2},
            "envelope": {"cursor_path": "data.next", "total_path": None},
        },
    )
    assert [r["id"] for p in source.read(ALL) for r in p.records] == [1, 2, 3, 4, 5]
    source.close()


# --------------------------------------------------------------------------- resuming a read


def paged(total: int, *, drift_after: int | None = None) -> Any:
    """A gateway over ``total`` records in all three paging styles (page_number's pageNo, offset's
    offset, cursor's cursor = the next offset as text); with ``drift_after``, the reported total
    grows by one from that record on."""

    def handle(req: Recorded) -> Reply:
        q = req.query
        size = int(q.get("pageSize") or q.get("limit") or 10)
        if "pageNo" in q:
            start = (int(q["pageNo"]) - 1) * size
        else:
            start = int(q.get("offset") or q.get("cursor") or 0)
        ids = list(range(start, min(start + size, total)))
        shown = total + (1 if drift_after is not None and start >= drift_after else 0)
        nxt = str(start + size) if start + size < total else None
        data = {"list": [{"id": i} for i in ids], "total": shown, "next": nxt}
        return Reply(json={"code": 0, "data": data})

    return handle


STYLES = {
    "page_number": {"pagination": {"type": "page_number", "page_size": 10}},
    "offset": {"pagination": {"type": "offset", "page_size": 10}},
    "cursor": {
        "pagination": {"type": "cursor", "page_size": 10},
        "envelope": {"cursor_path": "data.next"},
    },
}


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_read_resumed_after_a_page_reads_on_from_the_next(
    server: LoopbackServer, style: str, stop_after: int
) -> None:
    """The read worker takes over a first load at a page boundary (syncd.runner._Reading): a
    second source, given the ResumePoint of page k (pickled, as it travels), reads pages k+1… and
    ends with the statistics of one whole read; nothing is read twice or skipped."""
    server.handler = paged(95)
    first = make(server, STYLES[style])
    first.offer_resume = True
    pages = first.read(ALL)
    taken = [next(pages) for _ in range(stop_after)]
    assert all(p.resume is not None for p in taken)
    next(pages)  # read ahead, as the runner's Prefetcher does: the point must not move with the read
    point = pickle.loads(pickle.dumps(taken[-1].resume))  # noqa: S301 - our own object, as the worker gets it
    first.close()

    second = make(server, STYLES[style])
    rest = list(second.read(ALL, resume=point))
    second.close()
    assert all(p.resume is None for p in rest)  # only a source asked to offers resume points
    seen = [r["id"] for p in taken + rest for r in p.records]
    assert seen == list(range(95))
    assert [p.number for p in rest] == list(range(stop_after + 1, 11))
    stats = second.stats
    assert (stats.pages, stats.records, stats.complete, stats.total_changed) == (10, 95, True, False)
    assert stats.reported_total == 95
    assert stats.requests == 10 - stop_after  # its own requests only: the first source counts its own


def test_a_total_that_changes_at_the_resumed_page_is_noticed(server: LoopbackServer) -> None:
    """The total of the page after the resume point is compared with the last one before it."""
    server.handler = paged(95, drift_after=30)
    first = make(server, STYLES["page_number"])
    first.offer_resume = True
    pages = first.read(ALL)
    point = [next(pages) for _ in range(3)][-1].resume
    first.close()
    assert point is not None and not point.stats.total_changed
    second = make(server, STYLES["page_number"])
    list(second.read(ALL, resume=point))
    second.close()
    assert second.stats.total_changed and second.stats.reported_total == 95
    assert any("from 95 to 96 at page 4" in w for w in second.stats.warnings)


def test_the_last_page_offers_no_resume_point(server: LoopbackServer) -> None:
    server.handler = paged(25)
    source = make(server, STYLES["offset"])
    source.offer_resume = True
    pages = list(source.read(ALL))
    source.close()
    assert [p.resume is not None for p in pages] == [True, True, False]


# --------------------------------------------------------------------------- parameters


INCREMENTAL = {"field": "updateTime"}


def test_incremental_window_and_static_params_go_into_the_query(server: LoopbackServer) -> None:
    server.handler = residents(1)
    source = make(server, {"incremental": INCREMENTAL, "params": {"regionCode": "330102", "valid": True}})
    window = Window(datetime(2026, 11, 1, 8, 0, 0), datetime(2026, 11, 2, 7, 59, 30))
    list(source.read(window))
    source.close()
    query = server.requests[0].query
    assert query == {
        "regionCode": "330102",
        "valid": "true",
        "updateTimeStart": "2026-11-01 08:00:00",
        "updateTimeEnd": "2026-11-02 07:59:30",
        "pageNo": "1",
        "pageSize": "100",
    }


def test_full_read_sends_no_range(server: LoopbackServer) -> None:
    server.handler = residents(1)
    source = make(server, {"incremental": INCREMENTAL})
    list(source.read(ALL))
    source.close()
    assert "updateTimeStart" not in server.requests[0].query


def test_aware_window_is_formatted_in_the_app_time_zone(server: LoopbackServer) -> None:
    server.handler = residents(1)
    inc = {"field": "updateTime", "start_param": "begin", "end_param": None, "format": "%Y%m%d%H%M%S"}
    source = make(server, {"incremental": inc})
    list(source.read(Window(datetime(2026, 11, 1, 0, 0, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))))
    source.close()
    assert server.requests[0].query["begin"] == "20261101080000"
    assert "updateTimeEnd" not in server.requests[0].query


def test_post_sources_send_paging_and_range_in_the_json_body(server: LoopbackServer) -> None:
    server.handler = residents(150)
    source = make(
        server,
        {
            "method": "POST",
            "body": {"resourceCode": "R-001", "pageSize": 5},
            "params": {"appId": "county"},
            "incremental": INCREMENTAL,
        },
    )
    list(source.read(Window(datetime(2026, 11, 1, 8), None)))
    source.close()
    first, second = server.requests
    assert first.method == "POST"
    assert first.query == {"appId": "county"}
    assert first.json() == {
        "resourceCode": "R-001",
        "pageSize": 100,
        "pageNo": 1,
        "updateTimeStart": "2026-11-01 08:00:00",
    }
    assert second.json()["pageNo"] == 2


# --------------------------------------------------------------------------- update_time


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01 08:00:05", datetime(2026, 11, 1, 8, 0, 5)),
        (" 2026-11-01 08:00:05 ", datetime(2026, 11, 1, 8, 0, 5)),
        ("2026-11-01 08:00:05.0", datetime(2026, 11, 1, 8, 0, 5)),
        ("2026-11-01 08:00:05.123456", datetime(2026, 11, 1, 8, 0, 5, 123456)),
        ("20261101080005", datetime(2026, 11, 1, 8, 0, 5)),
        ("2026-11-1 8:00:05", datetime(2026, 11, 1, 8, 0, 5)),
        (1793491205000, datetime(2026, 11, 1, 8, 0, 5)),  # epoch ms, shown in Asia/Shanghai
        (1793491205, datetime(2026, 11, 1, 8, 0, 5)),
        ("2026-11-01", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        ({"nested": 1}, None),
    ],
)
def test_update_time_parsing(server: LoopbackServer, value: Any, expected: datetime | None) -> None:
    source = make(server, {"incremental": INCREMENTAL})
    assert source.update_time({"updateTime": value}) == expected
    source.close()


def test_update_time_dotted_path_and_custom_formats(server: LoopbackServer) -> None:
    inc = {"field": "meta.gxsj", "value_formats": ["%Y/%m/%d %H:%M", "%Y-%m-%dT%H:%M:%S%z"]}
    source = make(server, {"incremental": inc})
    assert source.update_time({"meta": {"gxsj": "2026/11/01 08:30"}}) == datetime(2026, 11, 1, 8, 30)
    assert source.update_time({"meta": {"gxsj": "2026-11-01T00:30:00+00:00"}}) == datetime(2026, 11, 1, 8, 30)
    assert source.update_time({"meta": {}}) is None
    assert source.update_time({}) is None
    source.close()


def test_update_time_without_incremental_is_none(server: LoopbackServer) -> None:
    source = make(server)
    assert source.update_time({"updateTime": "2026-11-01 08:00:05"}) is None
    source.close()
