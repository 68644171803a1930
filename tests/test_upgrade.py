"""An upgrade to another build of syncd with the same version string (docs/upgrade.md).

The stored record digests (row_state.record_digest) let a re-sync skip a record without mapping
it; they are keyed with the mapping fingerprint, which covers syncd's own source files
(:mod:`syncd.build`). A fix inside a transform or validator function changes no generated code
and no configuration, so without that digest the first sync after the upgrade, even ``--full``,
would skip the records and keep the values the old build wrote. These tests stand in another
build's source digest, as an upgrade does, and prove that the first run after it maps every
record once, writes no change where the values are the same, and corrects those that differ;
and that the read worker, another process, computes the same fingerprint as the run.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import syncd
from syncd import build
from syncd.config import load_config
from syncd.gateway import Gateway
from syncd.mapping import compile_mapping
from syncd.mapping import transforms as transforms_module
from syncd.sources.worker import child_environment
from tests.e2e import change_log, demo_gateway, target_rows, write_config
from tests.test_skip_unchanged import CountingSync, counting_sync, never_skipped

OLD_BUILD = "0123456789abcdef"
"""The source digest of the build "before the upgrade" (any value other than this process's)."""


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with demo_gateway(monkeypatch, records=400, seed=11) as gw:
        yield gw


@pytest.fixture
def sync(
    tmp_path: Path, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CountingSync]:
    yield from counting_sync(tmp_path, gateway, db_url, monkeypatch)


def test_the_first_run_after_an_upgrade_maps_every_record_once_and_records_no_change(
    sync: CountingSync, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as old:
        old.setattr(build, "source_digest", lambda: OLD_BUILD)
        sync.run()
        steady = sync.run()
        assert sync.mapped == never_skipped(gateway, steady)  # the old build skips as before
    entries = len(change_log(db_url))
    rows = target_rows(db_url)

    upgraded = sync.run()  # this process's own source digest: another build
    assert sync.mapped == upgraded.counts.fetched, "digests stored by another build must not be trusted"
    assert (upgraded.counts.inserted, upgraded.counts.updated, upgraded.counts.deleted) == (0, 0, 0)
    assert len(change_log(db_url)) == entries  # the row hashes find every row unchanged
    assert target_rows(db_url) == rows

    again = sync.run()  # the new digests were stored: skipped from then on
    assert sync.mapped == never_skipped(gateway, again)
    assert again.counts.unchanged == upgraded.counts.unchanged


def test_a_fix_in_a_transform_corrects_the_rows_on_the_first_sync_after_the_upgrade(
    sync: CountingSync, gateway: Gateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old build's ``null_if`` missed the placeholder 无 (a fix in the transform's code: the
    configuration and the generated statements are the same in both builds)."""
    defaults = dict(transforms_module._DEFAULTS)
    values = defaults["null_if"]["values"]
    assert "无" in values
    defaults["null_if"] = {"values": tuple(v for v in values if v != "无")}
    with monkeypatch.context() as old:
        old.setattr(build, "source_digest", lambda: OLD_BUILD)
        old.setattr(transforms_module, "_DEFAULTS", defaults)
        sync.run()
        wrong = sorted(k for k, r in target_rows(db_url).items() if r["remark"] == "无")
        assert wrong, "the generated data has no remark 无; pick another placeholder"
        assert sync.run().counts.updated == 0  # a re-sync of the old build keeps its values
    entries = len(change_log(db_url))

    upgraded = sync.run()
    assert sync.mapped == upgraded.counts.fetched
    assert (upgraded.counts.inserted, upgraded.counts.updated, upgraded.counts.deleted) == (0, len(wrong), 0)
    after = target_rows(db_url)
    assert [k for k in wrong if after[k]["remark"] is None] == wrong
    assert not [k for k, r in after.items() if r["remark"] == "无"]
    new = change_log(db_url)[entries:]
    assert sorted(e["row_key"] for e in new) == wrong
    assert {e["op"] for e in new} == {"update"}

    steady = sync.run()
    assert steady.counts.updated == 0
    assert sync.mapped == never_skipped(gateway, steady)


def test_the_read_worker_computes_the_run_s_fingerprint(tmp_path: Path, gateway: Gateway) -> None:
    """The worker (a new interpreter, ``python -P -m syncd.sources.worker`` with the run's
    environment) gets the configuration pickled and compiles the mapping itself: its fingerprint,
    the source digest included, must be the run's, or it would digest every record differently."""
    app = load_config(write_config(tmp_path, db_url="sqlite://", gateway_url=gateway.url))
    dataset = app.datasets["residents"]
    child = (
        "import pickle, sys\n"
        "from syncd.mapping import compile_mapping\n"
        "app, dataset = pickle.load(sys.stdin.buffer)\n"
        "print(compile_mapping(dataset, app.code_tables).fingerprint.hex())\n"
    )
    package_root = Path(syncd.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-P", "-c", child],
        input=pickle.dumps((app, dataset)),
        capture_output=True,
        env=child_environment(package_root, os.environ),
        cwd="/",
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == compile_mapping(dataset, app.code_tables).fingerprint.hex()


def test_the_source_digest_covers_every_source_file_and_nothing_else(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n", encoding="utf-8")
    (package / "sub" / "b.py").write_text("y = 2\n", encoding="utf-8")
    first = build._digest_of(str(package))
    assert first == build._digest_of(str(package) + "/")  # the spelling of the path does not count
    (package / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0")
    (package / "notes.txt").write_text("not code", encoding="utf-8")
    assert build._digest_of(str(package)) == first
    (package / "sub" / "b.py").write_text("y = 3\n", encoding="utf-8")  # a one-character fix
    assert build._digest_of(str(package)) != first
    (package / "sub" / "b.py").write_text("y = 2\n", encoding="utf-8")
    (package / "sub" / "b.py").rename(package / "b.py")  # the same bytes in another module
    assert build._digest_of(str(package)) != first


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    """`syncd --version` tells two builds with the same version number apart (docs/upgrade.md)."""
    from syncd.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"syncd {syncd.__version__} (source {build.SOURCE_DIGEST})"
    assert len(build.SOURCE_DIGEST) == 16 and int(build.SOURCE_DIGEST, 16) >= 0
