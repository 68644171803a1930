"""Records as their JSON text (syncd/sources/http/texts.py): the splitter, the pages an http source
gives with it, the digests taken over the texts, and every shape that falls back to orjson."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
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

from syncd.changes.hashing import record_digester, text_digester
from syncd.sources.base import Window
from syncd.sources.http import texts
from syncd.sources.http.source import HttpSource
from syncd.sources.http.texts import RecordTexts, TextSplitter

ALL = Window(None, None)
KEY = b"k" * 16

RECORDS: list[dict[str, Any]] = [
    {
        "id": "R1",
        "name": "张三",
        "amount": 1.5,
        "n": 7,
        "flag": True,
        "none": None,
        "addr": {"code": "330105"},
    },
    {"id": "R2", "name": "\u9fa6 rare", "amount": -0.0, "tags": ["a", {"b": 1}], "esc": 'q"\\\n\t/'},
    {"id": "R3", "big": 18446744073709551615, "small": -9223372036854775808, "e": 1e-7, "x": 123456.789},
]


DIGEST = text_digester(KEY)


def splitter(path: str) -> TextSplitter:
    return TextSplitter(path, DIGEST)


def test_the_texts_decode_to_the_records_and_the_rest_of_the_body_is_python() -> None:
    body = {"code": "0", "msg": "ok", "data": {"total": 3, "list": RECORDS, "extra": [1, {"a": None}]}}
    split = splitter("data.list").split(orjson.dumps(body), ("id",))
    assert split is not None
    found = split["data"]["list"]
    assert isinstance(found, RecordTexts)
    assert [orjson.loads(t) for t in found.texts] == RECORDS
    assert found.digests == [DIGEST(t) for t in found.texts]
    assert {k: v for k, v in split["data"].items() if k != "list"} == {"total": 3, "extra": [1, {"a": None}]}
    assert (split["code"], split["msg"]) == ("0", "ok")


def test_digests_alone_are_the_digests_of_the_texts() -> None:
    raw = orjson.dumps({"data": {"list": RECORDS}})
    split = splitter("data.list").split(raw, ())
    assert split is not None
    assert splitter("data.list").digests(raw) == split["data"]["list"].digests


def test_equal_records_give_equal_texts_whatever_their_spelling() -> None:
    """The digest's input: escapes, whitespace and number spellings upstream may vary."""
    spelled = [
        b'{"list":[{"id":"A","v":1.10,"s":"\\u4e2d\\/x"}]}',
        b'{ "list" : [ { "id" : "A" , "v" : 1.1 , "s" : "\xe4\xb8\xad/x" } ] }',
        b'{"list":[{"id":"A","v":11e-1,"s":"\\u4E2D/x"}]}',
    ]
    found = [splitter("list").split(raw, ()) for raw in spelled]
    assert all(f is not None for f in found)
    assert len({f["list"].texts[0] for f in found if f is not None}) == 1
    assert len({tuple(splitter("list").digests(raw) or ()) for raw in spelled}) == 1


def test_heads_hold_the_fields_asked_for_as_python() -> None:
    raw = orjson.dumps({"data": {"list": RECORDS}})
    split = splitter("data.list").split(raw, ("id", "addr", "missing"))
    assert split is not None
    heads = split["data"]["list"].heads
    assert heads == [{"id": "R1", "addr": {"code": "330105"}}, {"id": "R2"}, {"id": "R3"}]


def test_the_body_itself_as_the_list() -> None:
    split = splitter("").split(orjson.dumps(RECORDS), ())
    assert isinstance(split, RecordTexts)
    assert [orjson.loads(t) for t in split.texts] == RECORDS
    assert splitter("").digests(orjson.dumps(RECORDS)) == split.digests


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("data.list", b'{"data":{"list":null}}'),  # the envelope reports an empty page
        ("data.list", b'{"data":{"list":[{"id":1},2]}}'),  # an item that is no object
        ("data.list", b'{"data":{"list":"[]"}}'),  # a JSON string (envelope.decode_strings)
        ("data.list", b'{"data":{}}'),  # missing: the envelope names the path
        ("data.list", b'{"data":{"list":[]},"data":{"list":[{"id":1}]}}'),  # a name twice
        ("data.list", b'{"data":{"list":[],"list":[{"id":1}]}}'),
        ("data.list", b'{"data":{"list":[{"id":123456789012345678901234}]}}'),  # beyond 64 bits
        ("data.list", b'{"data":{"list":[{"id":"\\ud800"}]}}'),  # a lone surrogate
        ("data.list", b'{"data":{"list":[{"id":"\xff"}]}}'),  # not UTF-8 (a GBK body, say)
        ("data.list", b"<html>login</html>"),
        ("data.0.list", b'{"data":[{"list":[{"id":1}]}]}'),  # through a list index
    ],
)
def test_what_the_texts_cannot_carry_exactly_falls_back(path: str, raw: bytes) -> None:
    assert splitter(path).split(raw, ("id",)) is None
    assert splitter(path).digests(raw) is None


def test_a_parse_after_a_fallback_still_works() -> None:
    split = splitter("list")
    assert split.split(b'{"list":[{"a":1},2]}', ()) is None
    assert split.digests(b'{"list":[{"a":1},2]}') is None
    again = split.split(b'{"list":[{"a":2}]}', ())
    assert again is not None and again["list"].texts == [b'{"a":2}']
    assert split.digests(b'{"list":[{"a":2}]}') == [DIGEST(b'{"a":2}')]


def test_text_and_value_digests_never_meet() -> None:
    """Stored digests of either kind only ever match their own kind (hashing.py)."""
    by_values = record_digester(["id", "name"], KEY)
    record = {"id": "R1", "name": "张三"}
    (digest,) = splitter("").digests(orjson.dumps([record])) or []
    assert digest != by_values(record)
    assert digest == DIGEST(b'{"id":"R1","name":"\xe5\xbc\xa0\xe4\xb8\x89"}')
    assert digest != text_digester(b"j" * 16)(b'{"id":"R1","name":"\xe5\xbc\xa0\xe4\xb8\x89"}')


# --------------------------------------------------------------------------- an http source


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from serve()


def make(server: LoopbackServer, source: dict[str, Any] | None = None) -> HttpSource:
    return HttpSource.from_config(
        app_config(connection(server.url)), dataset_config({"path": "/api/people", **(source or {})})
    )


def pages_of(server: LoopbackServer, replies: list[Reply]) -> None:
    answers = iter(replies)
    server.handler = lambda req: next(answers)


def test_a_source_digests_each_record_by_its_text(server: LoopbackServer) -> None:
    pages_of(server, [envelope(RECORDS, total=3)])
    source = make(server)
    try:
        assert source.digest_texts(KEY)
        (page,) = list(source.read(ALL))
    finally:
        source.close()
    assert page.records == RECORDS and page.texts is None and page.heads is None
    # orjson writes the first two as simdjson does (not 1e-7, which it writes as "1e-7")
    assert page.digests is not None
    assert page.digests[:2] == [DIGEST(orjson.dumps(r)) for r in RECORDS[:2]]
    assert page.digests == splitter("").digests(orjson.dumps(RECORDS))


def test_a_source_read_by_heads_decodes_no_record(server: LoopbackServer) -> None:
    pages_of(server, [envelope(RECORDS, total=3)])
    source = make(server, {"incremental": {"field": "updateTime", "start_param": "since"}})
    try:
        assert source.digest_texts(KEY) and source.read_heads(("id",))
        (page,) = list(source.read(ALL))
    finally:
        source.close()
    assert page.records == []
    assert page.heads == [{"id": "R1"}, {"id": "R2"}, {"id": "R3"}]  # no updateTime in these records
    assert [orjson.loads(t) for t in page.texts or []] == RECORDS
    assert page.digests == [DIGEST(t) for t in page.texts or []]


def test_a_page_the_texts_cannot_carry_is_decoded_as_before(server: LoopbackServer) -> None:
    huge = [{"id": "R9", "n": 123456789012345678901234}]
    pages_of(
        server,
        [
            Reply(
                body=b'{"code":"0","msg":"ok","data":{"total":1,"list":[{"id":"R9","n":123456789012345678901234}]}}'
            )
        ],
    )
    source = make(server)
    try:
        assert source.digest_texts(KEY) and source.read_heads(("id",))
        (page,) = list(source.read(ALL))
    finally:
        source.close()
    assert page.records == [{"id": "R9", "n": float(huge[0]["n"])}]  # orjson's reading, as always
    assert page.digests is None and page.heads is None  # the caller digests by values


def test_decode_strings_keeps_the_orjson_path(server: LoopbackServer) -> None:
    body = {"code": "0", "msg": "ok", "data": orjson.dumps({"total": 1, "list": RECORDS[:1]}).decode()}
    pages_of(server, [Reply(json=body)])
    source = make(server, {"envelope": {"decode_strings": ["data"]}})
    try:
        assert not source.digest_texts(KEY)
        (page,) = list(source.read(ALL))
    finally:
        source.close()
    assert page.records == RECORDS[:1] and page.digests is None


def test_a_byte_order_mark_is_no_obstacle(server: LoopbackServer) -> None:
    raw = b"\xef\xbb\xbf" + orjson.dumps(
        {"code": "0", "msg": "ok", "data": {"total": 1, "list": RECORDS[:1]}}
    )
    pages_of(server, [Reply(body=raw, headers={"Content-Type": "application/json"})])
    source = make(server)
    try:
        source.digest_texts(KEY)
        (page,) = list(source.read(ALL))
    finally:
        source.close()
    assert page.records == RECORDS[:1] and page.digests is not None


def test_the_paginator_sees_a_repeated_page_through_the_texts(server: LoopbackServer) -> None:
    same = [{"id": f"R{i}"} for i in range(2)]

    def handle(req: Recorded) -> Reply:
        return envelope(same, total=10)

    server.handler = handle
    source = make(server, {"pagination": {"type": "page_number", "page_size": 2}})
    try:
        source.digest_texts(KEY)
        source.read_heads(("id",))
        with pytest.raises(Exception, match="repeats page 1"):
            list(source.read(ALL))
    finally:
        source.close()


def test_without_pysimdjson_pages_are_decoded_whole() -> None:
    code = (
        "import sys; sys.modules['simdjson'] = None\n"
        "from syncd.sources.http import texts\n"
        "print(texts.AVAILABLE)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert texts.AVAILABLE  # installed with syncd (pyproject.toml)


@pytest.mark.parametrize("first_value", [b'"A"', b"null"], ids=["another-key", "null"])
def test_a_key_field_twice_in_a_record_does_not_break_last_wins(
    server: LoopbackServer, tmp_path: Path, first_value: bytes
) -> None:
    """A head reads a name's first value, orjson (the mapping) its last: a record that names its key
    field twice waits under one key and is written under the other. A later record of the key it is
    written under must still not be skipped, or the earlier record would win. With the first value
    null the head has no key at all: the record waits under the key of its decoded text."""
    from syncd.config.model import AppConfig, DatasetConfig
    from syncd.runner import run_dataset
    from syncd.targets import StateStore, create_target_engine

    url = f"sqlite:///{tmp_path / 'target.db'}"
    app = AppConfig.model_validate(
        {"target": {"url": url}, "connections": {"gw": connection(server.url)}, "timezone": "Asia/Shanghai"}
    )
    dataset = DatasetConfig.model_validate(
        {
            "name": "people",
            "source": {"type": "http", "connection": "gw", "path": "/p"},
            "authorization": {
                "approval_code": "T-1",
                "fields": ["id", "remark"],
                "valid_from": "2026-01-01",
                "valid_until": "2027-12-31",
            },
            "target": {"table": "people", "key": ["id"]},
            "columns": {"id": {"source": "id", "length": 8}, "remark": {"source": "remark", "length": 16}},
        }
    )
    first = (
        b'{"code":"0","msg":"ok","data":{"total":2,"list":'
        b'[{"id":"B","remark":"stored"},{"id":"A","remark":"a"}]}}'
    )
    again = (
        b'{"code":"0","msg":"ok","data":{"total":2,"list":'
        b'[{"id":' + first_value + b',"remark":"x","id":"B"},{"id":"B","remark":"stored"}]}}'
    )
    bodies = iter([first, again])
    server.handler = lambda req: Reply(body=next(bodies), headers={"Content-Type": "application/json"})
    engine = create_target_engine(url)
    try:
        store = StateStore(engine, app.target.table_prefix)
        assert run_dataset(app, dataset, store).ok
        second = run_dataset(app, dataset, store)
        assert second.ok, second.error
        with engine.connect() as conn:
            rows = dict(conn.exec_driver_sql("SELECT id, remark FROM people").fetchall())
    finally:
        engine.dispose()
    assert rows == {"A": "a", "B": "stored"}  # the last record of B is what is stored
    assert (second.counts.inserted, second.counts.updated) == (0, 0)
