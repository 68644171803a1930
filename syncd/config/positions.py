"""YAML text → plain Python values, with the line and column of every key and value.

The loader works on plain ``dict``/``list``/scalar values (what pydantic validates) but every
message must point at ``file:line:column``. :func:`parse_yaml` therefore composes the ruamel.yaml
node graph (YAML 1.2) and builds the plain tree itself, recording a :class:`Position` for every
key and value under its document path (``("columns", "xm", "transforms", 0)``).

Building from nodes rather than from ruamel's round-trip objects keeps the original text of
every scalar: ``success_codes: [00]`` and ``{01: 汉族}`` are codes, and YAML 1.2 would turn them
into the integers 0 and 1. Integers written with a leading zero stay text, mapping keys are
always text, and :attr:`Document.scalar_text` keeps the text of the remaining numbers and
booleans so that a field typed ``str`` receives exactly what the operator wrote.

Duplicate keys, YAML tags other than the core ones (``!!python/object`` …), an empty file and a
top level that is not a mapping are positioned errors; syntax errors keep ruamel's position.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from syncd.config.docpath import Path, format_path
from syncd.errors import ConfigError, ConfigIssue

__all__ = ["Document", "Path", "Position", "format_path", "parse_yaml"]

_CORE = "tag:yaml.org,2002:"
_MAX_NODES = 1_000_000  # alias expansion ("billion laughs") guard
_TRUE = frozenset({"true", "yes", "on", "y"})
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column."""

    line: int
    column: int


@dataclass(slots=True)
class Document:
    """One parsed YAML file: plain values plus where each key and value was written."""

    file: str
    data: Any
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    scalar_text: dict[Path, str] = field(default_factory=dict)
    #: the text of each ``${...}`` templated value as written, before interpolation: references are
    #: names, never values, so it can be shown where the value (holding a secret) cannot
    written: dict[Path, str] = field(default_factory=dict)

    def position(self, path: Path, *, on_key: bool = False) -> Position:
        """Where ``path`` was written; the nearest written ancestor when it was not (e.g. missing)."""
        if on_key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def issue(self, path: Path, message: str, *, on_key: bool = False) -> ConfigIssue:
        pos = self.position(path, on_key=on_key)
        return ConfigIssue(self.file, pos.line, pos.column, format_path(path), message)


def parse_yaml(text: str, file: str) -> Document:
    """Parse one configuration file; raises :class:`ConfigError` with every problem found."""
    try:
        root = YAML(typ="rt").compose(io.StringIO(text))
    except MarkedYAMLError as exc:
        raise ConfigError([_syntax_issue(exc, file)]) from None
    except YAMLError as exc:  # unmarked errors are rare (e.g. a reader error without a mark)
        raise ConfigError([ConfigIssue(file, 1, 1, "", f"YAML error: {exc}")]) from None
    if root is None:
        raise ConfigError([ConfigIssue(
            file, 1, 1, "", "the file is empty: it must hold `key: value` lines"
        )])
    if not isinstance(root, MappingNode):
        pos = _mark(root)
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise ConfigError([ConfigIssue(
            file, pos.line, pos.column, "",
            f"the top level must be a mapping of `key: value` lines, but this file holds {kind}",
        )])
    builder = _Builder(Document(file, None))
    builder.doc.data = builder.build(root, ())
    if builder.issues:
        raise ConfigError(builder.issues)
    return builder.doc


# --------------------------------------------------------------------------- building


def _mark(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _tag(node: Node) -> str:
    tag = str(node.tag)
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.issues: list[ConfigIssue] = []
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, pos: Position, path: Path, message: str) -> None:
        self.issues.append(ConfigIssue(self.doc.file, pos.line, pos.column, format_path(path), message))

    def build(self, node: Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            if self.count == _MAX_NODES + 1:
                self.fail(_mark(node), path, "the file expands to too many values (aliases of aliases?)")
            return None
        self.doc.values[path] = _mark(node)
        if id(node) in self.stack:
            self.fail(_mark(node), path, "an alias refers to the mapping or list that contains it")
            return None
        tag = _tag(node)
        if isinstance(node, ScalarNode):
            return self.scalar(node, tag, path)
        self.stack.add(id(node))
        try:
            if isinstance(node, SequenceNode) and tag == "!!seq":
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode) and tag == "!!map":
                return self.mapping(node, path)
        finally:
            self.stack.discard(id(node))
        self.fail(_mark(node), path, f"the YAML tag `{tag}` is not allowed: remove it")
        return None

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            if _tag(key_node) == "!!merge":
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            pos = _mark(key_node)
            if key in first_seen:
                self.fail(pos, (*path, key), f"duplicate key `{key}` (first written at line "
                          f"{first_seen[key].line}): delete one of them or merge their contents")
                continue
            first_seen[key] = pos
            self.doc.keys[(*path, key)] = pos
            out[key] = self.build(value_node, (*path, key))
        for key_node, value_node in self.merged(node, path, set()):  # explicit keys win
            key = self.key(key_node, path)
            if key is not None and key not in out:
                self.doc.keys[(*path, key)] = _mark(key_node)
                out[key] = self.build(value_node, (*path, key))
        return out

    def merged(self, node: MappingNode, path: Path, seen: set[int]) -> list[tuple[Node, Node]]:
        """The entries ``<<: *defaults`` brings into ``node``, the earlier merges first."""
        entries: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if _tag(key_node) != "!!merge":
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode) or id(source) in seen:
                    self.fail(_mark(key_node), path, "`<<:` must refer to a mapping (e.g. <<: *defaults)")
                    continue
                entries += [(k, v) for k, v in source.value if _tag(k) != "!!merge"]
                entries += self.merged(source, path, seen | {id(source)})
        return entries

    def key(self, node: Node, path: Path) -> str | None:
        if not isinstance(node, ScalarNode) or _tag(node) not in _SCALAR_TAGS:
            self.fail(_mark(node), path, "a key must be plain text (a name followed by a colon)")
            return None
        text = str(node.value)
        if text == "" or (_tag(node) == "!!null" and text == "~"):
            self.fail(_mark(node), path, "empty key: write a name before the colon")
            return None
        return text

    def scalar(self, node: ScalarNode, tag: str, path: Path) -> Any:
        text = str(node.value)
        if tag in ("!!str", "!!timestamp"):  # dates stay text: pydantic parses them per field type
            return text
        if tag == "!!null":
            return None
        if tag not in _SCALAR_TAGS:
            self.fail(_mark(node), path, f"the YAML tag `{tag}` is not allowed: remove it")
            return None
        value: Any
        try:
            value = _SCALAR_TAGS[tag](text)
        except ValueError:
            self.fail(_mark(node), path, f"{text!r} cannot be read as {tag}: quote it to keep it as text")
            return None
        if isinstance(value, str):
            return value
        self.doc.scalar_text[path] = text
        return value


def _int(text: str) -> int | str:
    if _LEADING_ZERO.match(text):
        return text  # 0101 is a code, not the number 101
    return int(text.replace("_", ""), 0)


def _float(text: str) -> float:
    t = text.lower().replace("_", "")
    if t.lstrip("+-") in (".inf", ".nan"):
        t = t.replace(".", "")
    return float(t)


_SCALAR_TAGS: dict[str, Any] = {
    "!!str": str,
    "!!null": lambda _t: None,
    "!!bool": lambda t: t.lower() in _TRUE,
    "!!int": _int,
    "!!float": _float,
    "!!timestamp": str,
}


# --------------------------------------------------------------------------- syntax errors

_HINTS = (
    ("mapping values are not allowed", "a `key: value` is written where it cannot go: check this line's "
     "indentation against the lines above, and quote values that contain `: `"),
    ("could not find expected ':'", "a line is missing the colon after its key, or a quote is not closed"),
    ("expected <block end>", "this line's indentation does not match the lines above: indent entries of "
     "the same mapping or list by the same number of spaces"),
    ("found undefined alias", "an alias (*name) refers to an anchor (&name) that is not defined above it"),
    ("but found another document", "the file holds more than one document: remove the `---` line"),
    ("found unexpected end of stream", "a quote is opened but never closed"),
)


def _syntax_issue(exc: MarkedYAMLError, file: str) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = str(exc.problem or exc.context or "invalid YAML")
    if "'\\t'" in problem or "\t" in problem:
        return ConfigIssue(file, line, column, "", "a tab character is used for indentation: "
                           "YAML allows only spaces, replace the tab with spaces")
    hint = next((h for needle, h in _HINTS if needle in problem), "")
    context = ""
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
    message = f"YAML syntax error: {problem}{context}"
    return ConfigIssue(file, line, column, "", f"{message}: {hint}" if hint else message)
