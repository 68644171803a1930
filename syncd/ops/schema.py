"""JSON Schema of the configuration files, generated from the pydantic model.

``main_schema()`` describes ``syncd.yaml`` (AppConfig without the loader-filled ``datasets`` and
``source_file``); ``dataset_schema()`` describes one dataset file (DatasetConfig without
``source_file``). Editors use them through the ``# yaml-language-server: $schema=...`` modeline.

The schema follows what an operator writes, not pydantic's defaults:

- durations are ``30s``/``5m``/``2h``/``1d`` or a number of seconds (not ISO 8601), defaults too;
- secrets are plain strings whose description says to write ``${ENV}`` or ``${credential:NAME}``;
- transform and validator items may use the shorthands (``- strip``, ``- {null_if: [无]}``);
- every field carries a description (see :mod:`syncd.ops.fielddocs`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from syncd.config.model import AppConfig, DatasetConfig
from syncd.ops.fielddocs import SECRET_NOTE, describe_field

__all__ = [
    "DURATION_PATTERN",
    "LOADER_FIELDS",
    "dataset_schema",
    "human_duration",
    "main_schema",
    "schema_text",
]

LOADER_FIELDS: dict[str, tuple[str, ...]] = {
    "AppConfig": ("datasets", "source_file"),
    "DatasetConfig": ("source_file",),
}
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
_DURATION_NOTE = "a duration: 250ms, 30s, 5m, 2h, 1d or a number of seconds"
_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def human_duration(value: timedelta) -> str:
    """``timedelta(minutes=10)`` → ``10m``: the largest unit that divides the value exactly."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms else "0s"


class _OperatorSchema(GenerateJsonSchema):
    """Durations as the loader accepts them; defaults encoded as an operator would write them."""

    def timedelta_schema(self, schema: core_schema.TimedeltaSchema) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number", "minimum": 0}],
            "description": _DURATION_NOTE,
        }

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return human_duration(dft)
        return super().encode_default(dft)


def _models() -> dict[str, type[BaseModel]]:
    """Every model class reachable from AppConfig and DatasetConfig, by name."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ in found:
                return
            found[annotation.__name__] = annotation
            for info in annotation.model_fields.values():
                visit(info.annotation)
            return
        for arg in getattr(annotation, "__args__", ()) or ():
            visit(arg)
        origin = getattr(annotation, "__origin__", None)
        if origin is not None and origin is not annotation:
            visit(origin)

    visit(AppConfig)
    visit(DatasetConfig)
    return found


def _fix_secret(node: dict[str, Any]) -> None:
    if node.get("format") == "password":
        node.pop("format")
        node.pop("writeOnly", None)
        node["description"] = ". ".join(filter(None, [node.get("description"), SECRET_NOTE]))
    for key in ("anyOf", "oneOf"):
        for sub in node.get(key, ()):
            if isinstance(sub, dict) and sub.get("format") == "password":
                sub.pop("format")
                sub.pop("writeOnly", None)
                node["description"] = ". ".join(filter(None, [node.get("description"), SECRET_NOTE]))


def _describe(defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
    for name, definition in defs.items():
        model = models.get(name)
        for field, node in definition.get("properties", {}).items():
            own = model.model_fields[field].description if model and field in model.model_fields else None
            text = describe_field(name, field, own)
            note = node.get("description")
            if note and note not in text:
                text = f"{text}; {note}" if text else note
            if text:
                node["description"] = text
            _fix_secret(node)


def _shorthand_items(defs: dict[str, Any]) -> None:
    """Let transform/validator lists use ``- strip`` and ``- {name: argument}`` as the loader does."""
    column = defs.get("ColumnConfig", {}).get("properties", {})
    for field, ref in (("transforms", "TransformConfig"), ("validators", "ValidatorConfig")):
        if field in column:
            column[field]["items"] = {
                "anyOf": [
                    {"$ref": f"#/$defs/{ref}"},
                    {"type": "string", "description": "shorthand: just the type, e.g. strip"},
                    {
                        "type": "object",
                        "minProperties": 1,
                        "maxProperties": 1,
                        "description": "shorthand: {type: argument}, e.g. {null_if: [无, /]}",
                    },
                ]
            }


def _build(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_OperatorSchema)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    defs[model.__name__] = {k: v for k, v in schema.items() if k not in ("$defs",)}
    for name, hidden in LOADER_FIELDS.items():
        definition = defs.get(name)
        if definition is None:
            continue
        for field in hidden:
            definition.get("properties", {}).pop(field, None)
        if "required" in definition:
            definition["required"] = [r for r in definition["required"] if r not in hidden]
    # a dataset file never holds another dataset, and AppConfig.datasets was the only user
    _describe(defs, _models())
    _shorthand_items(defs)
    root = defs.pop(model.__name__)
    return {
        "$schema": _SCHEMA_URI,
        "$id": f"https://syncd.example.gov.cn/schema/{title}",
        **{k: v for k, v in root.items() if k != "title"},
        "title": title,
        "description": description,
        "$defs": dict(sorted(defs.items())),
    }


def main_schema() -> dict[str, Any]:
    """The JSON Schema of ``syncd.yaml``."""
    schema = _build(
        AppConfig,
        "syncd.schema.json",
        "syncd main configuration (syncd.yaml): target database, upstream connections, defaults, "
        "logging and shared code tables. Datasets live one per file in datasets_dir.",
    )
    return _prune(schema)


def dataset_schema() -> dict[str, Any]:
    """The JSON Schema of one dataset file (``datasets/*.yaml``)."""
    return _prune(
        _build(
            DatasetConfig,
            "syncd-dataset.schema.json",
            "one syncd dataset (datasets/NAME.yaml): source, authorization (授权), target table and "
            "column mapping.",
        )
    )


def _prune(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop ``$defs`` no longer referenced (e.g. DatasetConfig from the main schema)."""
    text = json.dumps({k: v for k, v in schema.items() if k != "$defs"})
    defs: dict[str, Any] = schema["$defs"]
    keep: set[str] = set()
    pending = [text]
    while pending:
        chunk = pending.pop()
        for name, definition in defs.items():
            if name not in keep and f'"#/$defs/{name}"' in chunk:
                keep.add(name)
                pending.append(json.dumps(definition))
    schema["$defs"] = {k: v for k, v in defs.items() if k in keep}
    return schema


def schema_text(*, dataset: bool = False) -> str:
    """The schema as committed under docs/ (sorted keys stay in model order; UTF-8, newline at end)."""
    schema = dataset_schema() if dataset else main_schema()
    return json.dumps(schema, ensure_ascii=False, indent=2) + "\n"
