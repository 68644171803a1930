"""The operator docs, followed literally, install and upgrade a syncd that runs.

Each test names a step a reviewer took from the docs that failed: the program the unit's
ExecStart= names never created, check/plan run as an account that cannot read the root-only
credentials, an in-place `pip install --upgrade` that keeps the old files of a build with the
same version number, an SQLite example with a path relative to the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "syncd.service"
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def _shell_lines(path: Path) -> list[str]:
    """The lines of the fenced sh/bash/shell blocks of a Markdown file (indented ones included)."""
    lines: list[str] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            inside = not inside and fence[3:].strip() in ("sh", "bash", "shell", "console")
            continue
        if inside:
            lines.append(fence)
    return lines


def test_install_creates_the_program_the_unit_starts() -> None:
    match = re.search(r"^ExecStart=(\S+) ", UNIT.read_text(encoding="utf-8"), re.MULTILINE)
    assert match
    program = match[1]
    for doc in ("install.md", "systemd.md"):
        links = [
            line for line in _shell_lines(REPO / "docs" / doc) if line.startswith("ln -s") and program in line
        ]
        assert links, f"docs/{doc} never creates {program}, which ExecStart= runs"


def test_no_doc_runs_syncd_as_an_account_that_cannot_read_the_credentials() -> None:
    bad = [
        f"{doc.name}: {line}"
        for doc in DOCS
        for line in _shell_lines(doc)
        if re.search(r"\bsudo\s+-u\s+\S+.*\bsyncd\b", line)
    ]
    assert not bad, bad


def test_no_doc_upgrades_in_place_with_pip_upgrade() -> None:
    """`pip install --upgrade syncd` keeps the old files when the version number is unchanged."""
    bad = [
        f"{doc.name}: {line}"
        for doc in DOCS
        for line in _shell_lines(doc)
        if re.search(r"\bpip\b.*\binstall\b", line) and re.search(r"(\s--upgrade|\s-U)\b", line)
    ]
    assert not bad, bad


def test_every_sqlite_example_names_an_absolute_path() -> None:
    """`sqlite:///var/lib/…` (three slashes) is relative to the working directory; examples use four."""
    places = [*DOCS, *sorted((REPO / "docs").glob("*.json")), *sorted((REPO / "config").rglob("*.yaml")),
              *sorted((REPO / "systemd").iterdir()), REPO / "syncd" / "config" / "model.py"]
    relative = re.compile(r"sqlite:///(?![/{$]|x\.db is relative)")
    explained = ("三个斜杠", "three slashes")  # a line that shows the mistake to say why it is one
    bad = [
        f"{path.relative_to(REPO)}:{n}"
        for path in places
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if relative.search(line) and not any(words in line for words in explained)
    ]
    assert not bad, bad
