"""Logging: structlog for syncd's own events, stdlib records rendered through the same pipeline.

JSON lines (one event per line, UTC timestamps, ECS-style names) when stdout is not a terminal —
journald and log shippers read them; a readable console rendering on a terminal. Secrets are
redacted by key name and passwords are removed from URLs before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["configure_logging", "redact_text", "redact_value"]

_SECRET_KEY = re.compile(
    r"(pass(word)?|passwd|secret|token|api[_-]?key|app[_-]?secret|authorization|signature|sign|salt|credential)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@", re.I)
_REDACTED = "***"


def redact_text(text: str) -> str:
    """Remove passwords embedded in URLs (``postgresql://u:pw@host`` → ``postgresql://u:***@host``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{_REDACTED}@", text)


def redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value not in (None, ""):
        return _REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    return value


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


def _ecs_names(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Rename structlog's keys to ECS-style names monitoring expects."""
    if "level" in event_dict:
        event_dict["log.level"] = event_dict.pop("level")
    if "logger" in event_dict:
        event_dict["log.logger"] = event_dict.pop("logger")
    if "timestamp" in event_dict:
        event_dict["@timestamp"] = event_dict.pop("timestamp")
    return event_dict


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger to render through one pipeline."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        _redact_processor,
    ]
    renderer: Any
    if use_json:
        shared_tail: list[Any] = [
            structlog.processors.dict_tracebacks,  # structured, and never with local variables
            _ecs_names,
        ]
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        shared_tail = []
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *shared_tail,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # third-party chatter stays at WARNING unless we debug
    for noisy in ("urllib3", "sqlalchemy", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
