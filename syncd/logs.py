"""Logging: structlog for syncd's own events, stdlib records rendered through the same pipeline.

* JSON lines (one event per line, ``ensure_ascii=False``) when running under systemd
  (``JOURNAL_STREAM`` is set) or when the stream is not a terminal; a readable console rendering
  on a terminal. ``logging.format`` (auto | json | console) overrides the choice.
* Field names (stable: monitoring depends on them, see docs/logging.md): ``@timestamp`` (UTC,
  ISO 8601), ``log.level``, ``log.logger``, ``event`` (the event name, e.g. ``sync.finish``),
  then the event's own fields; ``exception`` holds a structured traceback WITHOUT local variables.
* Records of SQLAlchemy, urllib3 and APScheduler (stdlib ``logging``) go through the same
  processors; their text is the ``event``.
* Secrets: a field whose key looks secret (password, token, secret, sign …) is replaced by
  ``***`` at any depth (dicts, lists, tuples); passwords inside URLs are replaced in every string,
  exception messages and tracebacks included. Every secret value the configuration resolved
  (:func:`remember_secrets`, called by the loader) is replaced by ``***`` wherever it appears,
  in syncd's events and in other libraries' records alike (defence in depth).
* Records of other libraries (urllib3's request lines at DEBUG) have the values of secret-looking
  query parameters (``appKey``, ``sign``, ``access_token``…) and URL user info removed from their
  text (:func:`syncd.sources.http.redact.sanitize_url`) before anything renders them.

The cost is paid only for events that are written: nothing here runs when an event's level is off.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = [
    "configure_logging",
    "forget_secrets",
    "redact_text",
    "redact_value",
    "remember_secrets",
    "use_json",
]

_SECRET_KEY = re.compile(
    r"(pass(word)?|passwd|secret|token|api[_-]?key|app[_-]?secret|authorization|signature|sign|salt|credential)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@", re.I)
_REDACTED = "***"
_NOT_SECRET_KEYS = frozenset({"event", "log.logger", "logger"})
_SECRET_MIN = 4  # shorter values would blank out ordinary words (as the config loader's messages)
# a URL, or an absolute path, with a query string (urllib3: '"GET /api/q?appKey=… HTTP/1.1" 200 51')
_URL_WITH_QUERY = re.compile(r"(?:[a-z][a-z0-9+.\-]*://|/)[^\s\"'<>?]*\?[^\s\"'<>]+", re.I)

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secrets_pattern: re.Pattern[str] | None = None  # every known secret, longest first


def remember_secrets(values: Iterable[str]) -> None:
    """Add secret values (read by the configuration) that must never appear in a log line.

    Kept for the life of the process: after a reload that changed a secret, the old one is still
    hidden. Values shorter than 4 characters are not remembered (they would mangle ordinary text)."""
    global _secrets, _secrets_pattern  # noqa: PLW0603 - one registry per process, swapped atomically
    with _secrets_lock:
        known = _secrets | {v for v in values if len(v) >= _SECRET_MIN}
        if known != _secrets:
            ordered = sorted(known, key=len, reverse=True)
            _secrets_pattern = re.compile("|".join(map(re.escape, ordered)))
            _secrets = frozenset(known)


def forget_secrets() -> None:
    """Forget every remembered secret (tests: one test's secrets must not blank out another's text)."""
    global _secrets, _secrets_pattern
    with _secrets_lock:
        _secrets, _secrets_pattern = frozenset(), None


def redact_text(text: str) -> str:
    """Remove passwords embedded in URLs (``postgresql://u:pw@host`` → ``postgresql://u:***@host``) and
    every secret value the configuration resolved (:func:`remember_secrets`)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{_REDACTED}@", text)
    pattern = _secrets_pattern
    return pattern.sub(_REDACTED, text) if pattern is not None else text


def redact_value(key: str, value: Any) -> Any:
    """``value`` with secrets removed: by ``key`` name, inside URLs, in nested dicts and lists."""
    if key not in _NOT_SECRET_KEYS and _SECRET_KEY.search(key) and value not in (None, ""):
        return _REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value("", v) for v in value]
    return value


def _is_syncd(name: str) -> bool:
    return name == "syncd" or name.startswith("syncd.")


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # syncd's own event names are constants (``sync.finish``): a short secret must not mangle them;
    # another library's text (its record's ``event``, also when relayed by the read worker) is
    # scrubbed like every other value
    record = event_dict.get("_record")
    own = not isinstance(record, logging.LogRecord) or _is_syncd(record.name)
    for key in list(event_dict):
        if not (own and key == "event"):
            event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


def _sanitize_third_party(record: logging.LogRecord) -> bool:
    """Another library's record: the values of secret-looking query parameters and URL user info
    are removed from its text (urllib3 logs every request line, query string included, at DEBUG)."""
    if _is_syncd(record.name):
        return True  # syncd's events: redacted field by field by _redact_processor
    if isinstance(record.msg, dict):  # a library's line relayed as an event (the read worker's urllib3)
        event = record.msg.get("event")
        if isinstance(event, str):
            record.msg["event"] = _sanitize_urls(event)
        return True
    try:
        text = record.getMessage()
    except (TypeError, ValueError):  # a record whose arguments do not fit its format: left to logging
        return True
    clean = _sanitize_urls(text)
    if clean != text:
        record.msg, record.args = clean, None
    return True


def _sanitize_urls(text: str) -> str:
    if "?" not in text:
        return text
    from syncd.sources.http.redact import sanitize_url  # only when such a record is written

    return _URL_WITH_QUERY.sub(lambda m: sanitize_url(m[0]), text)


def _ecs_names(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ECS-style names, in a fixed order: ``@timestamp``, ``log.level``, ``log.logger``, ``event``, …"""
    head = {
        "@timestamp": event_dict.pop("timestamp", None),
        "log.level": event_dict.pop("level", None),
        "log.logger": event_dict.pop("logger", None),
        "event": event_dict.pop("event", None),
    }
    return {**head, **event_dict}


#: exceptions as data; show_locals=False: local variables may hold secrets (DESIGN §6)
_dict_tracebacks = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False, use_rich=False)
)


def use_json(fmt: Literal["auto", "json", "console"], stream: TextIO) -> bool:
    """JSON unless ``console`` is asked for, or ``auto`` on an interactive terminal outside systemd."""
    if fmt != "auto":
        return fmt == "json"
    if os.environ.get("JOURNAL_STREAM"):
        return True
    try:
        return not stream.isatty()
    except ValueError:  # a closed stream
        return True


# APScheduler's warnings of a run it did not start (busy, or too late); syncd.daemon.scheduler logs
# each as schedule.skipped with the dataset, the reason and what to change (docs/daemon.md)
_SKIP_WARNINGS = (
    'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
    'Run time of job "%s" was missed by %s',
)


def _said_by_syncd(record: logging.LogRecord) -> bool:
    """Drop APScheduler's own line for a skipped run: ``schedule.skipped`` says it better."""
    return not (record.name.startswith("apscheduler.") and record.msg in _SKIP_WARNINGS)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger to render through one pipeline.

    ``stream`` defaults to stderr (commands print their results on stdout); ``syncd run`` logs to
    stdout, which systemd sends to the journal.
    """
    out = stream if stream is not None else sys.stderr
    as_json = use_json(fmt, out)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    # exceptions become data or text first, so that redaction reaches their messages and frames;
    # redaction runs before the processors' meta keys go (it reads ``_from_structlog``)
    meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
    if as_json:
        tail: list[Any] = [_dict_tracebacks, _redact_processor, meta, _ecs_names]
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    else:
        tail = [structlog.processors.format_exc_info, _redact_processor, meta]
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[*tail, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_said_by_syncd)
    handler.addFilter(_sanitize_third_party)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # third-party chatter stays at WARNING unless we debug
    for noisy in ("urllib3", "sqlalchemy", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
