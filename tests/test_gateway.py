"""The simulated provincial gateway, exercised over real HTTP on loopback.

Covers the record generator (determinism, GB 11643 check digits, dirt), the store (range
queries, ordering, mutations), the three wire styles, every fault kind as a client sees it,
the page cache and the command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import syncd.gateway as gateway_pkg
from syncd.gateway import (
    ALL_KINDS,
    CODE_TABLES,
    FaultPlan,
    Gateway,
    ResidentStore,
    generate_records,
    id_check_digit,
    is_valid_id_number,
    iter_records,
    md5_sign,
)

START = datetime(2024, 3, 1, 8, 0, 0)
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
SD_SECRET = "sd-secret"
ZJ_SECRET = "zj-secret"
BIRTH_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y年%m月%d日", "%Y-%m-%d %H:%M:%S.%f")


def parse_birth(value: str) -> date:
    for fmt in BIRTH_FORMATS:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise AssertionError(f"unparseable date {value!r}")


def birth_format(value: str) -> str:
    for fmt in BIRTH_FORMATS:
        try:
            datetime.strptime(value, fmt)
        except ValueError:
            continue
        return fmt
    return "impossible"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def gw() -> Iterator[Gateway]:
    store = ResidentStore(seed=7)
    store.generate(300, START)
    with Gateway(store) as g:
        yield g


@pytest.fixture(scope="module")
def big_gw() -> Iterator[Gateway]:
    """A read-only gateway with enough records for paging tests (never mutated)."""
    store = ResidentStore(seed=11)
    store.generate(5000, START)
    with Gateway(store) as g:
        yield g


def token(session: requests.Session, g: Gateway) -> dict[str, str]:
    r = session.post(f"{g.url}/auth/token", json={"appKey": "demo-app", "appSecret": "demo-secret"})
    body = r.json()
    assert r.status_code == 200 and body["code"] == "0", body
    return {"Authorization": f"Bearer {body['data']['accessToken']}"}


def query(
    session: requests.Session, g: Gateway, headers: dict[str, str], timeout: float = 10, **params: Any
) -> requests.Response:
    return session.get(f"{g.url}/api/residents/query", params=params, headers=headers, timeout=timeout)


def style1_all(session: requests.Session, g: Gateway, page_size: int, **params: Any) -> tuple[list[str], int]:
    headers = token(session, g)
    ids: list[str] = []
    page = 1
    while True:
        body = query(session, g, headers, pageNo=page, pageSize=page_size, **params).json()
        assert body["code"] == "0", body
        assert body["data"]["pageNo"] == page and body["data"]["pageSize"] == page_size
        rows = body["data"]["list"]
        ids += [row["id"] for row in rows]
        if len(rows) < page_size:
            return ids, body["data"]["total"]
        page += 1


def sd_headers(client_id: str = "sd-client", secret: str = SD_SECRET, *, skew_ms: int = 0) -> dict[str, str]:
    ts = str(int(time.time() * 1000) + skew_ms)
    nonce = uuid.uuid4().hex
    digest = hmac.new(secret.encode(), (client_id + ts + nonce).encode(), hashlib.sha256).digest()
    return {
        "X-Client-Id": client_id,
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": base64.b64encode(digest).decode(),
    }


def zj_params(secret: str, app_key: str = "zj-app", **extra: Any) -> dict[str, Any]:
    now = str(int(time.time() * 1000))
    sign = hashlib.md5((app_key + secret + now).encode(), usedforsecurity=False).hexdigest()
    return {"appKey": app_key, "requestTime": now, "sign": sign, **extra}


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_prefix_stable() -> None:
    a = generate_records(400, 5, START)
    assert a == generate_records(400, 5, START)
    assert generate_records(150, 5, START) == a[:150]
    assert a != generate_records(400, 6, START)
    assert list(iter_records(50, 5, START)) == a[:50]


def test_generated_records_look_like_real_resident_data() -> None:
    records = generate_records(3000, 1, START)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"R\d{8}", i) for i in ids)
    assert all(len(r) >= 15 for r in records)

    genders = Counter(r["gender"] for r in records)
    assert {"1", "2", "男", "女"} <= set(genders) <= set(CODE_TABLES["gender"])
    for r in records:
        card = r["idCard"]
        assert is_valid_id_number(card), card
        assert card[:6] == r["address"]["divisionCode"][:6]
        assert card[6:14] == parse_birth(r["birthDate"]).strftime("%Y%m%d")
        if r["gender"] in ("1", "男"):
            assert int(card[16]) % 2 == 1
        elif r["gender"] in ("2", "女"):
            assert int(card[16]) % 2 == 0
        assert re.fullmatch(r"\d{12}", r["address"]["divisionCode"])
        assert TIME_RE.match(r["updateTime"])
        assert r["isDeleted"] == "0"
        assert r["ethnicity"] in CODE_TABLES["ethnicity"]
        assert r["education"] in CODE_TABLES["education"]
        assert r["maritalStatus"] in CODE_TABLES["marital_status"]
        assert r["relation"] in CODE_TABLES["relation"]
        assert set(r["contact"]) == {"emergencyName", "emergencyPhone"}

    assert any(c.endswith("X") for c in (r["idCard"] for r in records))
    rare = [r["name"] for r in records if any(ord(ch) > 0xFFFF for ch in r["name"])]
    assert 0.01 < len(rare) / len(records) < 0.06
    assert any(r["name"] != r["name"].strip() for r in records)
    assert any("\u3000" in r["name"] for r in records)
    assert {birth_format(r["birthDate"]) for r in records} == set(BIRTH_FORMATS)
    assert {birth_format(r["registerDate"]) for r in records} == set(BIRTH_FORMATS)
    phones = [r["phone"] for r in records]
    assert any(re.fullmatch(r"[０-９]{11}", p) for p in phones)
    assert all(re.fullmatch(r"1\d{10}|[１][０-９]{10}", p) for p in phones)
    assert {type(r["income"]) for r in records} >= {str, float}
    assert {type(r["householdSize"]) for r in records} == {int, str}
    assert {"无", "/", "", None} <= {r["remark"] for r in records}
    households = Counter(r["householdId"] for r in records)
    assert max(households.values()) > 1

    times = [r["updateTime"] for r in records]
    assert times == sorted(times)
    assert max(Counter(times).values()) >= 3  # many records share a second
    assert datetime.strptime(times[-1], "%Y-%m-%d %H:%M:%S") - START <= timedelta(seconds=2 * len(records))


def test_bad_ratio_spoils_records_beyond_repair() -> None:
    good = generate_records(600, 3, START)
    bad = generate_records(600, 3, START, bad_ratio=0.3)
    spoiled = [b for g, b in zip(good, bad, strict=True) if g != b]
    assert 0.2 < len(spoiled) / len(bad) < 0.4
    excel = [b for b in spoiled if re.fullmatch(r"\d\.\d{5}E\+17", b["idCard"])]
    checksum = [b for b in spoiled if len(b["idCard"]) == 18 and not is_valid_id_number(b["idCard"])]
    impossible = [b for b in spoiled if birth_format(b["birthDate"]) == "impossible"]
    assert excel and checksum and impossible
    assert len(excel) + len(checksum) + len(impossible) == len(spoiled)
    # records left alone are exactly the same as without bad_ratio
    assert sum(g == b for g, b in zip(good, bad, strict=True)) == len(good) - len(spoiled)


def test_id_check_digit_matches_gb11643() -> None:
    assert id_check_digit("11010519491231002") == "X"
    assert is_valid_id_number("11010519491231002X")
    assert not is_valid_id_number("110105194912310021")
    assert not is_valid_id_number("3.30102E+17")
    with pytest.raises(ValueError, match="17 ASCII digits"):
        id_check_digit("1234")


def test_code_tables_file_matches_export() -> None:
    shipped = json.loads((Path(gateway_pkg.__file__).parent / "code_tables.json").read_text("utf-8"))
    assert shipped == CODE_TABLES
    assert CODE_TABLES["ethnicity"]["01"] == "汉族" and len(CODE_TABLES["ethnicity"]) >= 56
    assert CODE_TABLES["gender"] == {"1": "男", "2": "女", "9": "未说明", "男": "男", "女": "女"}
    assert set(CODE_TABLES) >= {"ethnicity", "education", "marital_status", "gender", "relation"}


# --------------------------------------------------------------------------- store


def test_store_query_orders_filters_inclusively_and_slices() -> None:
    store = ResidentStore(seed=2)
    store.generate(500, START)
    everything = store.records()
    keys = [(r["updateTime"], r["id"]) for r in everything]
    assert keys == sorted(keys)

    lo, hi = everything[100]["updateTime"], everything[300]["updateTime"]
    expected = [r["id"] for r in everything if lo <= r["updateTime"] <= hi]
    result = store.query(lo, hi, 0, 10_000)
    assert result.total == len(expected)
    assert [orjson.loads(raw)["id"] for raw in result.rows] == expected
    # both bounds inclusive: records at exactly lo and hi are in
    assert sum(r["updateTime"] == lo for r in everything) <= sum(
        orjson.loads(raw)["updateTime"] == lo for raw in result.rows
    )
    page = store.query(lo, None, 7, 5)
    assert [orjson.loads(raw)["id"] for raw in page.rows] == [
        r["id"] for r in everything if r["updateTime"] >= lo
    ][7:12]
    assert store.query(hi, lo, 0, 10).total == 0 or lo == hi
    assert store.query(None, None, 10_000, 10).rows == []


def test_store_mutations_stamp_update_time_and_keep_order() -> None:
    store = ResidentStore(seed=4)
    store.generate(400, START)
    v0 = store.version
    later = datetime(2024, 6, 1, 12, 0, 0)
    store.set_time(later)
    stamp = "2024-06-01 12:00:00"
    first, second = store.ids()[:2]

    store.update([first], phone="13800000000")
    assert store.get(first)["phone"] == "13800000000"  # type: ignore[index]
    assert store.get(first)["updateTime"] == stamp  # type: ignore[index]
    assert store.version > v0

    store.update([second], lambda r: {**r, "remark": "地址变更"})
    assert store.get(second)["remark"] == "地址变更"  # type: ignore[index]
    assert store.ids()[-2:] == sorted([first, second])  # newest last, ties by id

    new = store.insert(3)
    assert len(new) == 3 and len(store) == 403 and not set(new) & set(store.ids()[:400])
    assert all(store.get(i)["updateTime"] == stamp for i in new)  # type: ignore[index]

    store.logical_delete([new[0]])
    assert store.get(new[0])["isDeleted"] == "1"  # type: ignore[index]

    store.hard_delete([new[1], "R-missing"])
    assert new[1] not in store and len(store) == 402

    explicit = store.ids()[5]
    store.update([explicit], updateTime="2024-05-05 05:05:05")
    assert store.get(explicit)["updateTime"] == "2024-05-05 05:05:05"  # type: ignore[index]

    with pytest.raises(KeyError, match="R-nope"):
        store.update(["R-nope"], phone="1")
    with pytest.raises(ValueError, match="YYYY-MM-DD HH:MM:SS"):
        store.update([first], updateTime="2024/01/01")
    keys = [(r["updateTime"], r["id"]) for r in store.records()]
    assert keys == sorted(keys)


def test_store_put_late_row_and_bulk_reindex_agree_with_brute_force() -> None:
    store = ResidentStore(seed=9)
    store.generate(1200, START)
    late = {**store.records()[0], "id": "R99999999", "updateTime": "2024-03-01 07:00:00"}
    store.put(late)
    assert store.query(None, "2024-03-01 07:00:00", 0, 10).rows == [orjson.dumps(late)]

    store.set_time(datetime(2024, 7, 1))
    many = store.ids()[::3]  # 400 changes: the bulk re-sort path
    store.update(many, remark="批量核实")
    store.hard_delete(store.ids()[:300])
    brute = sorted((r["updateTime"], r["id"]) for r in store.records())
    assert [(t, i) for t, i in brute] == [(r["updateTime"], r["id"]) for r in store.records()]
    assert len(brute) == len(store) == 901
    assert store.query("2024-07-01 00:00:00", None, 0, 2000).total == sum(
        1 for i in many if i in store
    )


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["update", "insert", "logical_delete", "hard_delete", "put_late"]),
            st.integers(min_value=0, max_value=400),  # how many records the operation touches
            st.integers(min_value=0, max_value=10_000),  # which ones (offset into the id list)
            st.integers(min_value=0, max_value=3),  # clock: minutes after the generated data
        ),
        max_size=8,
    )
)
def test_store_index_matches_a_brute_force_model(ops: list[tuple[str, int, int, int]]) -> None:
    store = ResidentStore(seed=13)
    store.generate(600, START)
    model = {r["id"]: r for r in store.records()}
    for op, count, offset, minutes in ops:
        store.set_time(START + timedelta(hours=1, minutes=minutes))
        ids = store.ids()
        chosen = [ids[(offset + k * 7) % len(ids)] for k in range(min(count, len(ids)))] if ids else []
        chosen = list(dict.fromkeys(chosen))
        if op == "update":
            store.update(chosen, remark=f"op{offset}")
        elif op == "insert":
            store.insert(count % 300)
        elif op == "logical_delete":
            store.logical_delete(chosen)
        elif op == "hard_delete":
            store.hard_delete(chosen)
        elif chosen:
            store.put({**model[chosen[0]], "updateTime": "2024-03-01 07:59:59", "remark": "late"})
        model = {r["id"]: r for r in store.records()}
    brute = sorted(model.values(), key=lambda r: (r["updateTime"], r["id"]))
    assert [r["id"] for r in brute] == store.ids()
    assert len(store) == len(store.ids()) == len(brute)  # no record missing from the index
    lo, hi = "2024-03-01 08:00:00", (START + timedelta(hours=1, minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    window = [r["id"] for r in brute if lo <= r["updateTime"] <= hi]
    result = store.query(lo, hi, 3, 50)
    assert result.total == len(window)
    assert [orjson.loads(raw)["id"] for raw in result.rows] == window[3:53]


# --------------------------------------------------------------------------- style 1


def test_token_flow_and_expiry(gw: Gateway, session: requests.Session) -> None:
    r = session.post(f"{gw.url}/auth/token", json={"appKey": "demo-app", "appSecret": "wrong"})
    assert r.status_code == 200 and r.json() == {"code": "40001", "msg": "appKey 或 appSecret 错误"}
    assert query(session, gw, {}).json()["code"] == "40101"
    assert query(session, gw, {"Authorization": "Bearer forged"}).json()["code"] == "40101"

    headers = token(session, gw)
    body = query(session, gw, headers, pageSize=10).json()
    assert body["code"] == "0" and body["msg"] == "success"
    assert body["data"]["total"] == 300 and len(body["data"]["list"]) == 10

    form = session.post(f"{gw.url}/auth/token", data={"appKey": "demo-app", "appSecret": "demo-secret"})
    alt = form.json()["data"]["accessToken"]
    assert query(session, gw, {"X-Access-Token": alt}).json()["code"] == "0"

    gw.expire_tokens()
    expired = query(session, gw, headers).json()
    assert expired == {"code": "40101", "msg": "token 已过期或无效"}
    assert query(session, gw, token(session, gw)).json()["code"] == "0"


def test_revoke_on_issue_keeps_one_valid_token(session: requests.Session) -> None:
    """Many provincial gateways keep one valid token per appKey: issuing a new one revokes the
    earlier ones. Off by default (earlier tokens live out their TTL); both count what they issue."""
    with Gateway(records=5) as lenient:
        first, second = token(session, lenient), token(session, lenient)
        assert query(session, lenient, first).json()["code"] == "0"
        assert query(session, lenient, second).json()["code"] == "0"
        assert lenient.credentials_issued == {"token": 2, "two_tier": 0}
    with Gateway(records=5, revoke_on_issue=True) as strict:
        first = token(session, strict)
        assert query(session, strict, first).json()["code"] == "0"
        second = token(session, strict)
        assert query(session, strict, first).json() == {"code": "40101", "msg": "token 已过期或无效"}
        assert query(session, strict, second).json()["code"] == "0"
        zj_refresh(session, strict)
        assert strict.credentials_issued == {"token": 2, "two_tier": 1}


def test_token_ttl_runs_out(session: requests.Session) -> None:
    with Gateway(records=5, token_ttl=1) as g:
        headers = token(session, g)
        assert query(session, g, headers).json()["code"] == "0"
        time.sleep(1.05)
        assert query(session, g, headers).json()["code"] == "40101"


def test_paging_covers_every_record_once_in_stable_order(big_gw: Gateway, session: requests.Session) -> None:
    ids, total = style1_all(session, big_gw, 1000)
    assert total == 5000 and len(ids) == 5000 and len(set(ids)) == 5000
    assert ids == big_gw.store.ids()
    again, _ = style1_all(session, big_gw, 333)
    assert again == ids


def test_range_filter_is_inclusive(big_gw: Gateway, session: requests.Session) -> None:
    records = big_gw.store.records()
    times = [r["updateTime"] for r in records]
    # bounds on seconds shared by several records, so that inclusiveness shows on both ends
    lo = next(times[i] for i in range(1000, 2000) if times[i - 1] == times[i])
    hi = next(times[i] for i in range(3000, 4000) if times[i + 1] == times[i])
    expected = [r["id"] for r in records if lo <= r["updateTime"] <= hi]
    assert times.count(lo) > 1 and times.count(hi) > 1
    ids, total = style1_all(session, big_gw, 100, updateTimeStart=lo, updateTimeEnd=hi)
    assert ids == expected and total == len(expected)
    only_start, _ = style1_all(session, big_gw, 1000, updateTimeStart=hi)
    assert only_start == [r["id"] for r in records if r["updateTime"] >= hi]


def test_style1_parameter_errors(gw: Gateway, session: requests.Session) -> None:
    headers = token(session, gw)
    over = query(session, gw, headers, pageSize=1001).json()
    assert over == {"code": "40000", "msg": "pageSize 超过上限 1000"}
    assert query(session, gw, headers, pageSize=1000).json()["code"] == "0"
    assert query(session, gw, headers, updateTimeStart="2024-03-01T08:00:00").json()["code"] == "40000"
    assert query(session, gw, headers, pageNo="x").json()["code"] == "40000"
    assert query(session, gw, headers, pageNo=0).json()["code"] == "40000"
    other = session.get(f"{gw.url}/api/households/query", headers=headers).json()
    assert other == {"code": "40403", "msg": "无权访问该资源"}
    assert session.get(f"{gw.url}/nowhere").status_code == 404
    assert session.get(f"{gw.url}/health").json() == {"status": "ok", "records": 300}


def test_keep_alive_serves_many_requests_on_one_connection(gw: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.version == 11 and resp.getheader("Content-Length")
            assert json.loads(resp.read())["status"] == "ok"
            assert not resp.will_close
        assert conn.sock is not None
    finally:
        conn.close()


def test_mutations_are_visible_to_the_next_query(gw: Gateway, session: requests.Session) -> None:
    headers = token(session, gw)
    gw.store.set_time(datetime(2030, 1, 1, 9, 0, 0))
    target = gw.store.ids()[0]
    gw.store.update([target], remark="已核实")
    gw.store.logical_delete([gw.store.ids()[1]])
    body = query(session, gw, headers, updateTimeStart="2030-01-01 09:00:00").json()
    rows = body["data"]["list"]
    assert body["data"]["total"] == 2 and {r["updateTime"] for r in rows} == {"2030-01-01 09:00:00"}
    assert {r["id"]: r["remark"] for r in rows}[target] == "已核实"
    assert sorted(r["isDeleted"] for r in rows) == ["0", "1"]


# --------------------------------------------------------------------------- faults


def test_each_fault_kind_is_observable_from_the_client(gw: Gateway, session: requests.Session) -> None:
    headers = token(session, gw)
    url = f"{gw.url}/api/residents/query"
    gw.faults = FaultPlan(retry_after=3, slow_seconds=0.6)

    gw.faults.fail_next("http_502")
    assert session.get(url, headers=headers).status_code == 502

    gw.faults.fail_next("http_429")
    r = session.get(url, headers=headers)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"

    gw.faults.fail_next("busy")
    r = session.get(url, headers=headers)
    assert r.status_code == 200 and r.json() == {"code": "50001", "msg": "系统繁忙，请稍后再试"}

    gw.faults.fail_next("truncated")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(url, headers=headers, params={"pageSize": 200})

    gw.faults.fail_next("invalid_json")
    r = session.get(url, headers=headers)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        r.json()

    gw.faults.fail_next("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(url, headers=headers)

    gw.faults.fail_next("slow")
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(url, headers=headers, timeout=0.2)

    gw.faults.fail_next("total_drift")
    drifted = session.get(url, headers=headers).json()
    assert drifted["code"] == "0" and drifted["data"]["total"] == 300 + gw.faults.drift

    gw.faults.fail_next("token_expire")
    assert session.get(url, headers=headers).json()["code"] == "40101"
    assert session.get(url, headers=headers).json()["code"] == "40101"  # that token is gone for good
    fresh = token(session, gw)
    assert session.get(url, headers=fresh).json()["data"]["total"] == 300

    assert gw.faults.injected == dict.fromkeys(ALL_KINDS, 1)
    assert gw.faults.pending == 0


def test_faults_spare_the_token_endpoint_unless_asked(gw: Gateway, session: requests.Session) -> None:
    gw.faults.fail_next("http_502")
    headers = token(session, gw)  # not affected
    assert query(session, gw, headers).status_code == 502
    gw.faults = FaultPlan(on_auth=True)
    gw.faults.fail_next("http_502")
    r = session.post(f"{gw.url}/auth/token", json={"appKey": "demo-app", "appSecret": "demo-secret"})
    assert r.status_code == 502


def test_random_faults_follow_rate_and_seed(gw: Gateway, session: requests.Session) -> None:
    headers = token(session, gw)

    def outcomes(seed: int) -> list[str]:
        gw.faults = FaultPlan(0.5, ("http_502", "busy"), seed=seed)
        return [observe(session, gw, headers) for _ in range(40)]

    first = outcomes(3)
    assert first == outcomes(3)
    assert set(first) == {"ok", "502", "50001"}
    assert gw.faults.total_injected == first.count("502") + first.count("50001")


def observe(session: requests.Session, g: Gateway, headers: dict[str, str]) -> str:
    r = query(session, g, headers, pageSize=1)
    if r.status_code != 200:
        return str(r.status_code)
    code = r.json()["code"]
    return "ok" if code == "0" else code


def test_fault_plan_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'boom'"):
        FaultPlan(0.1, ("boom",))
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultPlan().fail_next("http_503")
    with pytest.raises(ValueError, match="probability"):
        FaultPlan(1.5)


# --------------------------------------------------------------------------- style 2


def sd_get(session: requests.Session, g: Gateway, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    r = session.get(f"{g.url}/sd/rkxx", params=params, headers=headers, timeout=10)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def test_style2_signed_offset_paging_with_string_data(big_gw: Gateway, session: requests.Session) -> None:
    records = big_gw.store.records()
    lo, hi = records[200]["updateTime"], records[640]["updateTime"]
    expected = [r for r in records if lo <= r["updateTime"] <= hi]
    compact = lo.replace("-", "").replace(" ", "").replace(":", "")
    seen: list[dict[str, Any]] = []
    start = 1
    while True:
        body = sd_get(
            session, big_gw, sd_headers(), STARTNUM=start, PAGENUM=100, GXSJ_START=compact, GXSJ_END=hi
        )
        assert body["code"] == "200" and body["msg"] == "成功"
        assert isinstance(body["data"], str)
        data = json.loads(body["data"])
        assert data["total"] == len(expected)
        seen += data["rows"]
        if len(data["rows"]) < 100:
            break
        start += 100
    assert [row["ID"] for row in seen] == [r["id"] for r in expected]
    row, rec = seen[0], expected[0]
    assert set(row) == {"ID", "XM", "SFZH", "XB", "CSRQ", "LXDH", "HJDZ", "SCBZ", "GXSJ"}
    assert row["XM"] == rec["name"] and row["SFZH"] == rec["idCard"] and row["SCBZ"] == "0"
    assert row["HJDZ"] == rec["address"]["divisionCode"]
    assert row["GXSJ"] == rec["updateTime"].replace("-", "").replace(" ", "").replace(":", "")


def test_style2_refuses_bad_signatures_skew_and_replays(gw: Gateway, session: requests.Session) -> None:
    assert sd_get(session, gw, {})["code"] == "401"
    bad = sd_get(session, gw, sd_headers(secret="not-the-secret"))
    assert bad == {"code": "401", "msg": "签名错误"}
    assert sd_get(session, gw, sd_headers(client_id="stranger"))["code"] == "401"

    skewed = sd_get(session, gw, sd_headers(skew_ms=-11 * 60 * 1000))
    assert skewed["code"] == "401" and skewed["msg"] == "时间戳超出允许范围"
    assert abs(skewed["serverTime"] - time.time() * 1000) < 60_000
    assert sd_get(session, gw, sd_headers(skew_ms=9 * 60 * 1000))["code"] == "200"

    headers = sd_headers()
    assert sd_get(session, gw, headers)["code"] == "200"
    replay = sd_get(session, gw, headers)
    assert replay["code"] == "401" and "nonce" in replay["msg"]

    over = sd_get(session, gw, sd_headers(), PAGENUM=101)
    assert over == {"code": "400", "msg": "PAGENUM 不能超过 100"}
    assert sd_get(session, gw, sd_headers(), GXSJ_START="yesterday")["code"] == "400"


def test_style2_faults_apply_where_they_make_sense(gw: Gateway, session: requests.Session) -> None:
    gw.faults.fail_next("token_expire")  # a signed gateway has no token: the fault waits
    assert sd_get(session, gw, sd_headers())["code"] == "200"
    assert gw.faults.pending == 1
    gw.faults = FaultPlan()
    gw.faults.fail_next("busy")
    assert sd_get(session, gw, sd_headers())["code"] == "50001"
    gw.faults.fail_next("total_drift")
    assert json.loads(sd_get(session, gw, sd_headers())["data"])["total"] == 300 + gw.faults.drift


def test_style2_server_clock_offset_is_reported() -> None:
    with Gateway(records=3, server_time_offset=3600) as g, requests.Session() as s:
        body = sd_get(s, g, sd_headers())
        assert body["code"] == "401"
        assert body["serverTime"] - time.time() * 1000 > 3500 * 1000


# --------------------------------------------------------------------------- style 3


def zj_refresh(session: requests.Session, g: Gateway, secret: str = ZJ_SECRET) -> dict[str, Any]:
    r = session.get(f"{g.url}/zj/refreshTokenByKey", params=zj_params(secret), timeout=10)
    body: dict[str, Any] = r.json()
    return body


def zj_data(session: requests.Session, g: Gateway, secret: str, **params: Any) -> dict[str, Any]:
    r = session.get(f"{g.url}/zj/api/residents", params=zj_params(secret, **params), timeout=10)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def test_style3_two_tier_flow(gw: Gateway, session: requests.Session) -> None:
    assert zj_refresh(session, gw, "wrong")["code"] == "14"
    unknown = session.get(f"{gw.url}/zj/refreshTokenByKey", params=zj_params("zj-secret", app_key="x")).json()
    assert unknown["code"] == "12"

    body = zj_refresh(session, gw)
    assert body["code"] == "00"
    datas = body["datas"]
    now_ms = time.time() * 1000
    assert 14 * 60_000 < datas["requestSecretEndTime"] - now_ms <= 15 * 60_000
    assert 47 * 3_600_000 < datas["refreshSecretEndTime"] - now_ms <= 48 * 3_600_000
    request_secret, refresh_secret = datas["requestSecret"], datas["refreshSecret"]

    page = zj_data(session, gw, request_secret, pageNo=2, pageSize=50)
    assert page["code"] == "00" and page["dataCount"] == 300
    rows = json.loads(page["datas"])
    assert [r["id"] for r in rows] == gw.store.ids()[50:100]
    assert zj_data(session, gw, "forged")["code"] == "14"
    assert zj_data(session, gw, request_secret, pageSize=1001)["code"] == "10"
    assert zj_data(session, gw, request_secret, updateTimeEnd="bad")["code"] == "10"
    forbidden = session.get(f"{gw.url}/zj/api/secrets", params=zj_params(request_secret)).json()
    assert forbidden["code"] == "403"

    gw.expire_tokens()
    assert zj_data(session, gw, request_secret) == {"code": "11", "msg": "requestSecret 已过期"}

    renewed = session.get(f"{gw.url}/zj/refreshTokenBySec", params=zj_params(refresh_secret)).json()
    assert renewed["code"] == "00" and renewed["datas"]["refreshSecret"] == refresh_secret
    new_secret = renewed["datas"]["requestSecret"]
    assert new_secret != request_secret
    assert zj_data(session, gw, new_secret)["code"] == "00"
    assert zj_data(session, gw, request_secret)["code"] == "11"  # the superseded one

    gw.faults.fail_next("token_expire")
    assert zj_data(session, gw, new_secret)["code"] == "11"
    assert zj_data(session, gw, new_secret)["code"] == "11"
    log_params = [entry.params for entry in gw.request_log]
    assert log_params and all("sign" not in p for p in log_params)


def test_style3_request_secret_ttl_and_quota(session: requests.Session) -> None:
    with Gateway(records=20, zj_request_ttl=0.3, zj_daily_quota=3) as g:
        secret = zj_refresh(session, g)["datas"]["requestSecret"]
        assert zj_data(session, g, secret)["code"] == "00"
        time.sleep(0.35)
        assert zj_data(session, g, secret)["code"] == "11"
        secret = zj_refresh(session, g)["datas"]["requestSecret"]
        assert zj_data(session, g, secret)["code"] == "00"
        assert zj_data(session, g, secret)["code"] == "00"
        quota = zj_data(session, g, secret)
        assert quota["code"] == "18"


# --------------------------------------------------------------------------- cache, log, lifecycle, CLI


def test_prerender_cache_serves_and_invalidates(session: requests.Session) -> None:
    store = ResidentStore(seed=5)
    store.generate(50, START)
    with Gateway(store, prerender=True) as g:
        headers = token(session, g)
        first = query(session, g, headers, pageSize=20).content
        assert query(session, g, headers, pageSize=20).content == first
        target = orjson.loads(first)["data"]["list"][0]["id"]
        g.store.update([target], updateTime=store.get(target)["updateTime"], remark="缓存失效")  # type: ignore[index]
        changed = query(session, g, headers, pageSize=20).json()
        assert changed["data"]["list"][0]["remark"] == "缓存失效"


def test_prerender_cache_shares_pages_between_windows_of_the_same_records(
    session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load's window ends at its start, a text that differs every second: its pages are the
    unwindowed read's while both select the same records (the benchmark warms them up front)."""
    store = ResidentStore(seed=5)
    store.generate(50, START)
    rendered: list[tuple[str | None, str | None]] = []
    query_of = store.query

    def counting(start: str | None, end: str | None, offset: int, limit: int) -> Any:
        rendered.append((start, end))
        return query_of(start, end, offset, limit)

    monkeypatch.setattr(store, "query", counting)
    with Gateway(store, prerender=True) as g:
        headers = token(session, g)
        whole = query(session, g, headers, pageSize=20).content
        later = query(session, g, headers, pageSize=20, updateTimeEnd="2099-01-01 00:00:00").content
        assert later == whole and len(rendered) == 1  # same records: the cached page
        times = sorted(r["updateTime"] for r in orjson.loads(whole)["data"]["list"])
        part = query(session, g, headers, pageSize=20, updateTimeEnd=times[4]).json()["data"]
        assert len(rendered) == 2 and part["total"] == sum(t <= times[4] for t in times) < 50  # its own page
        assert query(session, g, headers, pageSize=20, updateTimeStart=times[0]).content == whole
        assert len(rendered) == 2


def test_request_log_keeps_no_secrets(gw: Gateway, session: requests.Session) -> None:
    headers = token(session, gw)
    query(session, gw, headers, pageNo=2, pageSize=5)
    session.get(f"{gw.url}/api/residents/query", params={"access_token": "abc", "pageNo": "1"})
    entries = gw.request_log
    assert entries[0] == ("GET", "/api/residents/query", {"pageNo": "2", "pageSize": "5"})
    assert entries[1].params == {"pageNo": "1"}
    assert "demo-secret" not in repr(gw) + repr(gw.token_style)


def test_stop_closes_keep_alive_connections(session: requests.Session) -> None:
    before = threading.active_count()
    g = Gateway(records=10)
    url = g.start()
    assert session.get(f"{url}/health").status_code == 200
    g.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{url}/health", timeout=2)
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before


def test_command_line_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "syncd.gateway", "--port", "0", "--records", "25", "--seed", "2"),
            "--revoke-on-issue",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        while "listening on" not in banner:  # structlog's own start line may come first
            banner = proc.stdout.readline()
            assert banner, proc.stderr.read() if proc.stderr else ""
        url = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert url and "25 records" in banner
        rest = "".join(proc.stdout.readline() for _ in range(3))
        assert "demo-app" in rest and "demo-secret" in rest and "sd-client" in rest
        assert requests.get(f"{url.group(0)}/health", timeout=5).json()["records"] == 25
        with requests.Session() as session:  # --revoke-on-issue: the second token revokes the first
            creds = {"appKey": "demo-app", "appSecret": "demo-secret"}
            tokens = [
                session.post(f"{url.group(0)}/auth/token", json=creds).json()["data"]["accessToken"]
                for _ in range(2)
            ]
            codes = [
                session.get(f"{url.group(0)}/api/residents/query", headers={"Authorization": f"Bearer {t}"})
                .json()["code"]
                for t in tokens
            ]
        assert codes == ["40101", "0"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_public_api_is_listed() -> None:
    for name in gateway_pkg.__all__:
        assert hasattr(gateway_pkg, name), name
    assert md5_sign("a", "b", "1") == hashlib.md5(b"ab1", usedforsecurity=False).hexdigest()
