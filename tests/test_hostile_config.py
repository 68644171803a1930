"""Mutated configuration files: never a traceback, always a positioned ``file:line:column`` error.

A deterministic mutation loop over the shipped example (config/syncd.yaml and its residents
dataset): delete, duplicate or swap lines, change indentation, replace values with wrong types,
truncate the file. ``load_config`` must either load or raise :class:`ConfigError` whose every
issue names the file with a line and column (a missing file has none; not one of ours here).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
WRONG = [
    "[]",
    "{}",
    "-1",
    "3.5",
    "yes",
    "null",
    '"\\u0000"',
    "'; DROP TABLE x; --",
    "*anchor",
    "&a b",
    "!!binary x",
    "{{",
    "]",
    "0x1F",
    "2026-13-45",
    "1e999",
    '"${NOPE}"',
    "𠮷" * 300,
]
MUTATIONS = 120


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    kind = rng.randrange(6)
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[i])
    elif kind == 2:
        lines[i] = " " * rng.choice([1, 3, 5, 8]) + lines[i].lstrip()
    elif kind == 3 and ":" in lines[i]:
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {rng.choice(WRONG)}"
    elif kind == 4:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines = lines[: i + 1]
        lines[-1] = lines[-1][: rng.randrange(len(lines[-1]) + 1)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / "config" / "syncd.yaml", tmp_path / "syncd.yaml")
    (tmp_path / "datasets").mkdir()
    shutil.copy(ROOT / "config" / "datasets" / "residents.yaml", tmp_path / "datasets" / "residents.yaml")
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "gateway_app_secret").write_text("example-secret\n")
    (creds / "gateway_app_secret").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("SYNCD_TARGET_URL", f"sqlite:///{tmp_path / 't.db'}")
    return tmp_path


@pytest.mark.parametrize("target", ["syncd.yaml", "datasets/residents.yaml"])
def test_mutated_config_loads_or_fails_positioned(config_dir: Path, target: str) -> None:
    path = config_dir / target
    original = path.read_text(encoding="utf-8")
    load_config(config_dir / "syncd.yaml")  # the unmutated example loads
    rng = random.Random(f"mutate-{target}")
    failures = 0
    for n in range(MUTATIONS):
        text = original
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        path.write_text(text, encoding="utf-8")
        try:
            load_config(config_dir / "syncd.yaml")
        except ConfigError as exc:
            failures += 1
            assert exc.issues, f"mutation {n}: a ConfigError without issues"
            for issue in exc.issues:
                assert re.match(rf"{re.escape(str(config_dir))}/\S+:\d+:\d+: ", str(issue)), (
                    f"mutation {n}: not positioned: {issue}\n--- mutated file ---\n{text}"
                )
                assert issue.line > 0, f"mutation {n}: line unknown: {issue}"
        # any other exception propagates and fails the test with the traceback it should not have
    assert failures > MUTATIONS // 3, "the mutations were too gentle to prove anything"
