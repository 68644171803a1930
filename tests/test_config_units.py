"""Unit tests of the loader's parts: templates, the secrets rule, YAML values and model locations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from syncd.config.interpolate import (
    DEFAULT_MESSAGE,
    LITERAL_MESSAGE,
    URL_MESSAGE,
    InterpolationError,
    Interpolator,
    Reference,
    parse_template,
    secret_problem,
)
from syncd.config.messages import locate, translate
from syncd.config.model import AppConfig, DatasetConfig
from syncd.config.positions import Position, format_path, parse_yaml
from syncd.errors import ConfigError

# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize(("text", "parts"), [
    ("plain", ("plain",)),
    ("${A}", (Reference("A"),)),
    ("x${A:-d}y", ("x", Reference("A", "d"), "y")),
    ("${A:-}", (Reference("A", ""),)),
    ("${A:-a:-b}", (Reference("A", "a:-b"),)),
    ("$${A}", ("${A}",)),
    ("cost $5 $", ("cost $5 $",)),
    ("${credential:db.pass-1}", (Reference("db.pass-1", credential=True),)),
    ("p:${A}@${B}", ("p:", Reference("A"), "@", Reference("B"))),
])
def test_parse_template(text: str, parts: tuple[object, ...]) -> None:
    assert parse_template(text) == parts


@pytest.mark.parametrize(("text", "words"), [
    ("${A", "is not closed"),
    ("${}", "malformed"),
    ("${1A}", "malformed `${1A...}`"),
    ("${A-default}", "malformed"),
    ("${A:default}", "malformed `${A...}`"),
    ("${credential:}", "needs the credential's name"),
    ("${credential:../etc/passwd}", "needs the credential's name"),
    ("${A:-${B}}", "cannot contain another"),
])
def test_malformed_templates(text: str, words: str) -> None:
    with pytest.raises(InterpolationError, match=words.replace("$", r"\$").replace("{", r"\{")):
        parse_template(text)


def test_render_strips_one_newline_and_caches(tmp_path: Path) -> None:
    (tmp_path / "pw").write_bytes(b"line1\nline2\r\n\r\n")
    (tmp_path / "pw").chmod(0o600)
    interp = Interpolator({"CREDENTIALS_DIRECTORY": str(tmp_path), "E": ""})
    assert interp.render(parse_template("${credential:pw}")) == "line1\nline2\r\n"
    (tmp_path / "pw").unlink()
    assert interp.render(parse_template("[${credential:pw}]")) == "[line1\nline2\r\n]"  # read once
    assert interp.secrets == {"line1\nline2\r\n"}
    assert interp.render(parse_template("${E}|${E:-d}")) == "|d"


# --------------------------------------------------------------------------- the secrets rule

T = parse_template


@pytest.mark.parametrize(("template", "value", "url", "problem"), [
    (None, "s3cret", False, LITERAL_MESSAGE),
    (None, 12345, False, LITERAL_MESSAGE),
    (None, None, False, None),
    (T("${S}"), "x", False, None),
    (T("${credential:s}"), "x", False, None),
    (T("${A}${B}"), "x", False, None),
    (T("${S:-}"), "x", False, None),
    (T("${S:-fallback}"), "x", False, DEFAULT_MESSAGE),
    (T("Bearer ${S}"), "x", False, LITERAL_MESSAGE),
    (T("$${S}"), "${S}", False, LITERAL_MESSAGE),
    (None, "sqlite:////var/lib/syncd/syncd.db", True, None),
    (None, "postgresql+psycopg://syncd@db:5432/x", True, None),
    (None, "postgresql+psycopg://syncd:pw@db:5432/x", True, URL_MESSAGE),
    (None, "postgresql+psycopg://syncd:p/w@db:5432/x", True, URL_MESSAGE),
    (None, "mysql+pymysql://db/x?user=a&password=pw", True, URL_MESSAGE),
    (None, 5, True, URL_MESSAGE),
    (T("postgresql://syncd:${PW}@db/x"), "x", True, None),
    (T("postgresql://syncd:${PW:-}@db/x"), "x", True, None),
    (T("postgresql://syncd:x${PW}@db/x"), "x", True, URL_MESSAGE),
    (T("postgresql://syncd:${PW:-pw}@db/x"), "x", True, URL_MESSAGE),
    (T("${URL:-postgresql://u:pw@db/x}"), "x", True, URL_MESSAGE),
    (T("${URL:-sqlite:///x.db}"), "x", True, None),
    (T("postgresql://${USER}@db/x"), "x", True, None),
])
def test_secret_problem(
    template: tuple[object, ...] | None, value: object, url: bool, problem: str | None
) -> None:
    assert secret_problem(template, value, url=url) == problem  # type: ignore[arg-type]


# --------------------------------------------------------------------------- YAML values


def test_scalars_keep_what_the_operator_wrote() -> None:
    doc = parse_yaml(
        "a: 0101\nb: 00\nc: 12\nd: 1.10\ne: 2026-12-31\nf: yes\ng: true\nh: ~\ni: !!str 12\n"
        "j: {01: x, 1: y, true: z}\nk: 0x1F\nl: .inf\n",
        "f.yaml",
    )
    assert doc.data == {
        "a": "0101", "b": "00", "c": 12, "d": 1.1, "e": "2026-12-31", "f": "yes", "g": True, "h": None,
        "i": "12", "j": {"01": "x", "1": "y", "true": "z"}, "k": 31, "l": float("inf"),
    }
    assert doc.scalar_text[("d",)] == "1.10"
    assert doc.scalar_text[("k",)] == "0x1F"
    assert doc.values[("j", "1")] == Position(10, 15)
    assert doc.keys[("j", "1")] == Position(10, 12)


def test_merge_keys_and_positions() -> None:
    doc = parse_yaml("base: &b\n  x: 1\n  y: 2\nm:\n  <<: *b\n  y: 3\n", "f.yaml")
    assert doc.data["m"] == {"y": 3, "x": 1}
    assert doc.values[("m", "x")] == Position(2, 6)  # where the merged value is written
    assert doc.values[("m", "y")] == Position(6, 6)
    nested = parse_yaml("a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: [*b], z: 3}\n", "f.yaml")
    assert nested.data["c"] == {"z": 3, "y": 2, "x": 1}


@pytest.mark.parametrize(("text", "issue"), [
    ("a: 1\na: 2\n", "f.yaml:2:1: a: duplicate key `a` (first written at line 1)"),
    ("a: {b: 1, b: 2}\n", "f.yaml:1:11: a.b: duplicate key `b` (first written at line 1)"),
    ("? [a]\n: 1\n", "f.yaml:1:3: a key must be plain text"),
    ("x: &a [*a]\n", "f.yaml:1:4: x[0]: an alias refers to the mapping or list that contains it"),
    ("a: !!int abc\n", "f.yaml:1:4: a: 'abc' cannot be read as !!int"),
    ("a: !!binary aGk=\n", "f.yaml:1:4: a: the YAML tag `!!binary` is not allowed"),
    ("a: !secret x\n", "f.yaml:1:4: a: the YAML tag `!secret` is not allowed"),
    ("a: [1, 2\n", "f.yaml:2:1: YAML syntax error: expected ',' or ']'"),
    ("a: 'open\n", "f.yaml:2:1: YAML syntax error: found unexpected end of stream"),
    ("a: 1\n--- \nb: 2\n", "f.yaml:2:1: YAML syntax error: but found another document"),
    ("a: *nope\n", "f.yaml:1:4: YAML syntax error: found undefined alias"),
    ("a: 1\nb: {<<: 5}\n", "f.yaml:2:5: b: `<<:` must refer to a mapping"),
    ("42\n", "f.yaml:1:1: the top level must be a mapping of `key: value` lines, but this file holds a"),
])
def test_yaml_problems(text: str, issue: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "f.yaml")
    assert str(info.value.issues[0]).startswith(issue)


def test_several_yaml_problems_in_one_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\na: 2\nb: !!python/name:os.system x\nc: {d: 1, d: 2}\n", "f.yaml")
    assert [(i.line, i.path) for i in info.value.issues] == [(2, "a"), (3, "b"), (4, "c.d")]


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("columns", "xm", "transforms", 0, "salt")) == "columns.xm.transforms[0].salt"


# --------------------------------------------------------------------------- model locations


def test_locate_strips_discriminator_tags_and_follows_shorthand() -> None:
    data = {
        "source": {"type": "http", "pagination": {"type": "offset"}},
        "columns": {"id": {"transforms": ["strip", {"hash": "${S}"}, {"code_table": {"table": "g"}}]}},
    }
    where = locate(DatasetConfig, data, ("source", "http", "pagination", "offset", "page_size"))
    assert where.path == ("source", "pagination", "page_size")
    assert locate(DatasetConfig, data, ("columns", "id", "transforms", 1, "salt")).path == (
        "columns", "id", "transforms", 1, "hash")
    model_path = ("columns", "id", "transforms", 2, "table")
    assert locate(DatasetConfig, data, model_path, pydantic_loc=False).path == (
        "columns", "id", "transforms", 2, "code_table", "table")
    assert locate(DatasetConfig, data, ("columns", "id", "[key]")).on_key
    assert locate(DatasetConfig, data, ("target", "logical_delete", "mode")).choices == ("hard", "soft")


def test_locate_reports_union_choices() -> None:
    data = {"connections": {"g": {"type": "http", "auth": {"type": "tokn"}}}}
    where = locate(AppConfig, data, ("connections", "g", "http", "auth"))
    assert where.path == ("connections", "g", "auth")
    assert where.choices == ("none", "static_key", "token", "hmac_headers", "signed", "two_tier_secret")


def test_translate_never_quotes_a_secret_field() -> None:
    doc = parse_yaml("target:\n  url: 1234567\n  pool_size: 1234567\n", "f.yaml")
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(doc.data)
    issues = [str(i) for i in translate(doc, AppConfig, info.value.errors(), secrets={("target", "url")})]
    assert issues == [
        "f.yaml:2:8: target.url: expected text, got a value (not shown: secret)",
        "f.yaml:3:14: target.pool_size: must be at most 100, got 1234567",
    ]
