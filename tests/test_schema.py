"""JSON Schema and the generated configuration reference: committed files match the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
from ruamel.yaml import YAML

from syncd.ops.configdoc import configuration_reference
from syncd.ops.fielddocs import FIELD_DOCS
from syncd.ops.schema import dataset_schema, human_duration, main_schema, schema_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
STALE = "is stale: the configuration model changed — run `make schema` (or `make docs`) and commit the result"


def test_committed_main_schema_matches_the_model() -> None:
    committed = (DOCS / "syncd.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), f"docs/syncd.schema.json {STALE}"


def test_committed_dataset_schema_matches_the_model() -> None:
    committed = (DOCS / "syncd-dataset.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(dataset=True), f"docs/syncd-dataset.schema.json {STALE}"


def test_committed_configuration_reference_matches_the_model() -> None:
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == configuration_reference(), f"docs/configuration.md {STALE}"


def test_loader_fields_are_not_in_the_schemas() -> None:
    main, dataset = main_schema(), dataset_schema()
    assert "datasets" not in main["properties"]
    assert "source_file" not in main["properties"]
    assert "source_file" not in dataset["properties"]
    assert "DatasetConfig" not in main["$defs"]
    assert set(dataset["required"]) >= {"name", "source", "authorization", "target", "columns"}


def test_secrets_are_strings_that_say_how_to_write_them() -> None:
    defs = main_schema()["$defs"]
    secrets = [("DatabaseConfig", "url"), ("TokenAuth", "app_secret"), ("HmacHeadersAuth", "secret")]
    for model, field in secrets:
        node = defs[model]["properties"][field]
        assert node["type"] == "string"
        assert "format" not in node and "writeOnly" not in node
        assert "${ENV} or ${credential:NAME}" in node["description"]


def test_durations_are_written_as_operators_write_them() -> None:
    lookback = main_schema()["$defs"]["Defaults"]["properties"]["lookback"]
    assert lookback["default"] == "10m"
    assert {s.get("type") for s in lookback["anyOf"]} == {"string", "number"}
    assert human_duration(__import__("datetime").timedelta(seconds=90)) == "90s"
    assert human_duration(__import__("datetime").timedelta(milliseconds=250)) == "250ms"


def test_field_docs_name_real_fields_and_cover_the_core_models() -> None:
    """The supplement names only real fields; the core models are fully described.

    Models added later by other features are documented as they land; the generated reference
    shows an empty cell for an undescribed field rather than failing here.
    """
    defs = {**main_schema()["$defs"], **dataset_schema()["$defs"]}
    unknown = []
    for key in FIELD_DOCS:
        model, field = key.split(".")
        if model not in ("AppConfig", "DatasetConfig") and field not in defs[model]["properties"]:
            unknown.append(key)
    assert unknown == [], "FIELD_DOCS names fields the model no longer has"
    core = ("Defaults", "HttpConnection", "TokenAuth", "EnvelopeConfig", "ColumnConfig")
    missing = [f"{m}.{f}" for m in core for f, n in defs[m]["properties"].items() if not n.get("description")]
    assert missing == []


def _validate(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def _yaml(path: Path) -> Any:
    return json.loads(json.dumps(YAML(typ="safe").load(path.read_text(encoding="utf-8")), default=str))


def test_shipped_configs_validate_against_the_schemas() -> None:
    """The example files editors check against these schemas must not show false errors."""
    mains = [ROOT / "config" / "syncd.yaml", *sorted((ROOT / "config" / "examples").glob("*/syncd.yaml"))]
    datasets = [*sorted((ROOT / "config").glob("datasets/*.yaml"))]
    datasets += sorted((ROOT / "config" / "examples").glob("*/datasets/*.yaml"))
    problems: list[str] = []
    for path in mains:
        problems += [f"{path.name}: {p}" for p in _validate(main_schema(), _yaml(path))]
    for path in datasets:
        problems += [f"{path.name}: {p}" for p in _validate(dataset_schema(), _yaml(path))]
    assert problems == []


def test_schema_command_prints_both_schemas() -> None:
    for extra, title in (([], "syncd.schema.json"), (["--dataset"], "syncd-dataset.schema.json")):
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "schema", *extra], capture_output=True, text=True, check=True
        ).stdout
        assert json.loads(out)["title"] == title


def test_gen_docs_check_reports_fresh_files() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
