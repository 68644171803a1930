"""Log pipeline: JSON lines with ECS names, stdlib records, redaction, tracebacks without locals;
no secret in any line: other libraries' URLs are sanitized, the configuration's secret values hidden."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.logs import configure_logging, redact_value, remember_secrets, use_json
from syncd.runner import run_dataset
from syncd.targets import StateStore, create_target_engine
from tests.e2e import SECRET_ENV, write_config


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    yield out
    configure_logging("INFO", "console", io.StringIO())
    logging.getLogger().handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_with_ecs_names_and_utc(stream: io.StringIO) -> None:
    structlog.get_logger("syncd.x").info("sync.finish", dataset="residents", fetched=3)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "a")
    first, second = lines(stream)
    assert list(first)[:4] == ["@timestamp", "log.level", "log.logger", "event"]
    assert first["event"] == "sync.finish" and first["log.level"] == "info" and first["fetched"] == 3
    assert str(first["@timestamp"]).endswith("Z")
    assert (
        second["event"] == "Run time of job a was missed" and second["log.logger"] == "apscheduler.scheduler"
    )


def test_secrets_redacted_at_any_depth(stream: io.StringIO) -> None:
    structlog.get_logger("t").info(
        "http.request",
        url="postgresql://syncd:hunter2@db/x",
        params={"appSecret": "abc", "nested": [{"token": "t0k"}, "mysql://u:pw9@h/db"]},
        password="pw",
    )
    text = stream.getvalue()
    for secret in ("hunter2", "abc", "t0k", "pw9", '"pw"'):
        assert secret not in text
    assert redact_value("x", ("a://u:p@h",)) == ["a://u:***@h"]


def test_exceptions_are_structured_without_locals(stream: io.StringIO) -> None:
    def fail() -> None:
        app_secret = "l0cal-s3cret"  # a local variable that must never be rendered
        raise RuntimeError(f"cannot reach postgresql://u:pw7@db ({len(app_secret)})")

    try:
        fail()
    except RuntimeError:
        structlog.get_logger("t").error("sync.failed", exc_info=True)
    (entry,) = lines(stream)
    exc = entry["exception"]
    assert isinstance(exc, list) and exc[0]["exc_type"] == "RuntimeError"
    assert "l0cal-s3cret" not in stream.getvalue() and "pw7" not in stream.getvalue()
    assert all("locals" not in frame or not frame["locals"] for frame in exc[0]["frames"])


def test_json_under_systemd_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not use_json("auto", Tty())
    assert use_json("auto", io.StringIO())
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert use_json("auto", Tty())
    assert not use_json("console", io.StringIO())


def test_a_skipped_run_is_logged_once_by_syncd_not_again_by_apscheduler(stream: io.StringIO) -> None:
    # APScheduler warns of a run it skips itself; syncd's schedule.skipped says the same with the
    # dataset, why and what to change: the journal gets that one line, not both
    from datetime import timedelta

    from syncd.config.model import IntervalSchedule
    from syncd.daemon.scheduler import DatasetScheduler

    busy = threading.Event()

    def run(name: str) -> None:
        if not busy.is_set():
            busy.set()
            time.sleep(2.5)  # the job is still running when it is due again

    sched = DatasetScheduler(run, timezone="Asia/Shanghai", max_concurrent=1, misfire_grace_time=timedelta(0))
    sched.start()
    try:
        sched.apply({"a": IntervalSchedule(type="interval", every=timedelta(seconds=1))})
        time.sleep(3.5)
    finally:
        sched.shutdown()
    events = [str(e["event"]) for e in lines(stream)]
    assert "schedule.skipped" in events, events
    assert not [e for e in events if e.startswith(("Execution of job", "Run time of job"))], events


# ----------------------------------------------------------------------------- secrets in other texts


def test_secret_query_values_are_removed_from_other_libraries_records(stream: io.StringIO) -> None:
    # urllib3's request line at DEBUG: the values of secret-looking query keys go, the rest stays
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug(
        '%s://%s:%s "%s %s %s" %s %s', "https", "gw.example.gov.cn", 443, "GET",
        "/api/q?appKey=Ak-77x&requestTime=1700000000&sign=9f8e7d6c&pageNo=2", "HTTP/1.1", 200, 51,
    )
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying after connection broken: https://u:Pw-55q@gw.example.gov.cn/api/q?access_token=T0k-1"
    )
    # the read worker relays its urllib3 lines as events of the same logger name (sources/worker.py)
    relay = structlog.get_logger("urllib3.connectionpool")
    relay.debug('https://gw:443 "GET /api/q?sign=0a1b2c3d HTTP/1.1" 200')
    first, second, relayed = (str(e["event"]) for e in lines(stream))
    for secret in ("Ak-77x", "9f8e7d6c", "Pw-55q", "T0k-1", "0a1b2c3d"):
        assert secret not in stream.getvalue()
    assert "/api/q?appKey=***&requestTime=1700000000&sign=***&pageNo=2" in first
    assert second.endswith("https://gw.example.gov.cn/api/q?access_token=***")
    assert relayed == 'https://gw:443 "GET /api/q?sign=*** HTTP/1.1" 200'


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_remembered_secret_is_hidden_in_every_event_and_traceback(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", fmt, out)  # type: ignore[arg-type]
    remember_secrets(["Zz9!@Qw8e", "Zz9%21%40Qw8e", "abc"])  # "abc": too short to hide
    structlog.get_logger("syncd.x").warning("sync.failed", error="login Zz9!@Qw8e refused",
                                            n=["Zz9%21%40Qw8e"])
    logging.getLogger("sqlalchemy.engine").warning("connect failed for password Zz9!@Qw8e")
    try:
        raise RuntimeError("bad password Zz9!@Qw8e")
    except RuntimeError:
        structlog.get_logger("syncd.x").exception("sync.crashed")
    text = out.getvalue()
    assert "Qw8e" not in text, text
    assert "sync.failed" in text and "sync.crashed" in text and "RuntimeError" in text


def test_a_secret_that_looks_like_part_of_an_event_name_leaves_the_name_alone(stream: io.StringIO) -> None:
    remember_secrets(["sync"])
    structlog.get_logger("syncd.x").info("sync.finish", note="resync done")
    (entry,) = lines(stream)
    assert entry["event"] == "sync.finish" and entry["note"] == "re*** done"


def test_the_configuration_hands_its_secrets_to_the_log_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: io.StringIO
) -> None:
    app_secret = "app-S3cret-only-here"  # not the canary: pytest's own capture sees records unredacted
    monkeypatch.setenv(SECRET_ENV, app_secret)
    monkeypatch.setenv("LOGS_TEST_DB_PASSWORD", "Pw@with:chars")
    monkeypatch.setenv("LOGS_TEST_DB_HOST", "db.example.gov.cn")
    url = "postgresql+psycopg://syncd:${LOGS_TEST_DB_PASSWORD}@${LOGS_TEST_DB_HOST}:5432/jcsj?sslmode=disable"
    load_config(write_config(tmp_path, db_url=url, gateway_url="http://127.0.0.1:9"))
    shown = (app_secret, "Pw%40with%3Achars", "Pw@with:chars")
    logging.getLogger("somelib").warning("echo %s / %s / %s", *shown)
    logging.getLogger("somelib").warning("connected to db.example.gov.cn")  # not a secret: shown
    first, second = (str(e["event"]) for e in lines(stream))
    assert first == "echo *** / *** / ***"
    assert second == "connected to db.example.gov.cn"


def test_a_query_key_is_not_logged_at_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    # logging.level: DEBUG, the documented way to troubleshoot, lets urllib3's request lines through
    key = "K3y-Very-Secret-42"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text(key)
    (creds / "api_key").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    gw = Gateway(records=5, seed=1)
    gw.start()
    out = io.StringIO()
    try:
        main = write_config(tmp_path, db_url=sqlite_url, gateway_url=gw.url, retry="{attempts: 1}")
        text = re.sub(r"    auth:\n(      .*\n)+", "    auth: {type: static_key, name: appKey, "
                      "value: '${credential:api_key}', placement: query}\n", main.read_text(encoding="utf-8"))
        main.write_text(text.replace("level: INFO", "level: DEBUG"), encoding="utf-8")
        app = load_config(main)
        configure_logging(app.logging.level, "json", stream=out)
        engine = create_target_engine(sqlite_url)
        try:
            run_dataset(app, app.datasets["residents"], StateStore(engine))
        finally:
            engine.dispose()
    finally:
        gw.stop()
    requests = [line for line in out.getvalue().splitlines() if '"GET /' in line or '"POST /' in line]
    assert requests, out.getvalue()[-2000:]  # urllib3's request lines are there…
    assert key not in out.getvalue()  # …without the key
    assert "appKey=***" in requests[0]
