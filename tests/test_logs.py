"""Log pipeline: JSON lines with ECS names, stdlib records, redaction, tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import structlog

from syncd.logs import configure_logging, redact_value, use_json


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
