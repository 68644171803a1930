"""The configuration reference ``docs/configuration.md``, generated from the JSON Schema.

Every section is one model of the configuration, every row one field with its type, default
and description, so the reference can never drift from the model: ``tools/gen_docs.py`` writes
it and a test fails when the committed file is stale (run ``make docs``).
"""

from __future__ import annotations

import json
from typing import Any

from syncd.ops.schema import dataset_schema, main_schema

__all__ = ["configuration_reference", "type_text"]

_HEADER = """\
# 配置参考 / Configuration reference

> 本文件由 `tools/gen_docs.py` 根据配置模型自动生成，请勿手工修改；模型变化后运行 `make docs`。
> Generated from the configuration model by `tools/gen_docs.py` — do not edit; run `make docs`.

syncd 有两类配置文件 / two kinds of files:

- **主配置文件** `syncd.yaml`（通常为 `/etc/syncd/syncd.yaml`）：目标库、上游连接、默认值、日志、共享字典。
  JSON Schema: [`syncd.schema.json`](syncd.schema.json)
- **数据集文件** `datasets/<名称>.yaml`：每个数据集一个文件，包括来源、授权、目标表和字段映射。
  JSON Schema: [`syncd-dataset.schema.json`](syncd-dataset.schema.json)

在 YAML 文件第一行写上 `# yaml-language-server: $schema=...`，VS Code 等编辑器即可补全和检查。
密钥字段（标注 *secret*）只能写 `${环境变量}` 或 `${credential:名称}`，不能写明文；
syncd 不读取 `~/.netrc`（请求网关时不会从中带上用户名口令）。
时长（duration）写作 `250ms`、`30s`、`5m`、`2h`、`1d` 或秒数。

类型列中 `A | B` 表示两者之一，`[X]` 表示列表，`{名称: X}` 表示映射，链接指向下文对应的小节。
"""


def _anchor(name: str) -> str:
    return name.lower()


def type_text(node: dict[str, Any]) -> str:  # noqa: PLR0911 - one answer per schema shape
    """A short, readable type of a JSON Schema node (links to sections for models)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "const" in node:
        return f"`{json.dumps(node['const'], ensure_ascii=False)}`"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            if "pattern" in json.dumps(node[key]) and any(s.get("type") == "number" for s in node[key]):
                return "duration"
            parts = [type_text(s) for s in node[key] if s.get("type") != "null"]
            optional = any(s.get("type") == "null" for s in node[key])
            text = " \\| ".join(dict.fromkeys(parts))
            return f"{text} \\| null" if optional else text
    kind = node.get("type")
    if kind == "array":
        items = node.get("items") or (node.get("prefixItems") or [{}])[0]
        return f"[{type_text(items)}]"
    if kind == "object":
        extra = node.get("additionalProperties")
        return f"{{名称: {type_text(extra)}}}" if isinstance(extra, dict) else "object"
    if kind == "string" and node.get("format"):
        return str(node["format"])
    return str(kind or "any")


def _default_text(node: dict[str, Any], required: bool) -> str:
    if required:
        return "**必填**"
    if "default" not in node:
        return ""
    value = node["default"]
    if value is None:
        return "空 (null)"
    if value in ({}, []):
        return "`" + json.dumps(value) + "`"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 60:
        return "（见下文小节）" if isinstance(value, dict) else f"`{text[:57]}…`"
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _section(name: str, definition: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if definition.get("description"):
        lines += [" ".join(definition["description"].split()), ""]
    props: dict[str, Any] = definition.get("properties", {})
    required = set(definition.get("required", ()))
    lines += ["| 字段 field | 类型 type | 默认 default | 说明 description |", "|---|---|---|---|"]
    for field, node in props.items():
        secret = "Secret:" in node.get("description", "")
        kind = type_text(node) + (" *secret*" if secret else "")
        lines.append(
            f"| `{field}` | {kind} | {_default_text(node, field in required)} | "
            f"{_cell(node.get('description', ''))} |"
        )
    return [*lines, ""]


def _document(title: str, schema: dict[str, Any], done: set[str]) -> list[str]:
    lines = [f"## {title}", ""]
    root: dict[str, Any] = {k: schema[k] for k in ("description", "properties", "required") if k in schema}
    lines += _section(schema["title"].removesuffix(".schema.json"), root)
    for name, definition in schema["$defs"].items():
        if name not in done:
            done.add(name)
            lines += _section(name, definition)
    return lines


def configuration_reference() -> str:
    """The full text of ``docs/configuration.md``."""
    done: set[str] = set()
    lines = [_HEADER]
    lines += _document("主配置文件 syncd.yaml", main_schema(), done)
    lines += _document("数据集文件 datasets/*.yaml", dataset_schema(), done)
    return "\n".join(lines).rstrip() + "\n"
