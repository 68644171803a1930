"""The operator docs, followed literally, install and upgrade a syncd that runs.

Each test names a step a reviewer took from the docs that failed: the program the unit's
ExecStart= names never created, check/plan run as an account that cannot read the root-only
credentials, an in-place `pip install --upgrade` that keeps the old files of a build with the
same version number, an SQLite example with a path relative to the working directory, a drop
folder made writable with ReadWritePaths= alone (syncd moves the files it took).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_systemd_unit import MAX_EXPOSURE, exposure, verify_copy

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


def _drop_folder_section() -> str:
    text = (REPO / "docs" / "systemd.md").read_text(encoding="utf-8")
    start = text.index("## 10. 文件落地目录")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_the_drop_folder_layout_gives_syncd_write_access_and_a_valid_unit(tmp_path: Path) -> None:
    """syncd moves every file it took into processed/ or failed/: the documented drop-in runs it
    under a static account whose primary group owns the folder (a DynamicUser cannot be given
    write access to another account's folder, and supplementary groups do not survive
    PrivateUsers=yes), and the unit with it still verifies and keeps its exposure level."""
    section = _drop_folder_section()
    assert "processed/" in section and "failed/" in section
    blocks = re.findall(r"```ini\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "one drop-in"
    lines = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert lines[0] == "[Service]"
    settings = dict(line.split("=", 1) for line in lines[1:])
    assert settings.get("DynamicUser") == "no" and settings.get("User") and settings.get("Group")
    assert "SupplementaryGroups" not in settings
    assert settings.get("ReadWritePaths")
    mode = re.search(r"install -d -o root -g " + re.escape(settings["Group"]) + r" -m (\d+) " +
                     re.escape(settings["ReadWritePaths"]) + r"\n", section)
    assert mode, "the folder is created for the service's group"
    bits = int(mode[1], 8)
    assert bits & 0o070 == 0o070 and not bits & 0o1007, "group rwx; no sticky bit, nothing for others"

    unit = UNIT.read_text(encoding="utf-8")
    merged = unit.replace("\n[Install]", "\n" + "\n".join(lines[1:]) + "\n\n[Install]", 1)
    res = verify_copy(tmp_path, merged)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")
    copy = tmp_path / "with-drop-in" / "syncd.service"
    copy.parent.mkdir()
    copy.write_text(merged, encoding="utf-8")
    assert exposure(copy) <= MAX_EXPOSURE
