"""docs/logging.md documents every log event syncd emits: monitoring depends on the list."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENT_CALL = re.compile(
    r"\b(?:log|logger|_log|LOG)\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z_]+\.[a-z_.]+)\""
)


def test_every_event_in_the_code_is_documented() -> None:
    events = {
        m.group(1)
        for path in (ROOT / "syncd").rglob("*.py")
        for m in EVENT_CALL.finditer(path.read_text(encoding="utf-8"))
    }
    assert len(events) > 20, "the event pattern no longer matches the code's logging calls"
    doc = (ROOT / "docs" / "logging.md").read_text(encoding="utf-8")
    missing = sorted(e for e in events if e not in doc)
    assert not missing, f"add these events to docs/logging.md: {missing}"
