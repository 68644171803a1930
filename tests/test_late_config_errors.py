"""Configuration errors found after the YAML is loaded still name the file, line and field.

Some mistakes show only when a source or an auth scheme is built, or once a source has read: a
signature recipe that does not compile (checked by the load's cross-check now, so ``syncd check``
reports it), a connection the source cannot use (the cross-check refuses it first; the source's
own check is a last line of defence), and a SQL source's update column whose values say the
configuration is wrong (only a read can tell). Each is reported as ``file:line:column: field:
message`` with the line the operator has to change, and ``syncd plan``/``syncd sync`` exit 2 for
a run that failed on one, as for any configuration error.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.config import load_config
from syncd.errors import ConfigError, ConfigIssue
from syncd.sources.http.source import HttpSource
from syncd.sources.sql import SqlSource
from tests.conftest import remove_sm3
from tests.e2e import syncd_cli

AUTHORIZATION = """
authorization:
  approval_code: 测试〔2026〕1号
  valid_from: 2020-01-01
  valid_until: 2099-12-31
  fields: [id, name, upd]
"""
COLUMNS = """
target:
  table: people_local
  key: [pid]
columns:
  pid: {source: id, type: string, length: 32, nullable: false}
  name: {source: name, type: string, length: 64}
"""


def _at(file: Path, text: str, *, skip: int = 0) -> str:
    """``file:line:column`` of the first line of ``file`` with ``text``, ``skip`` characters into it."""
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if text in line:
            return f"{file}:{number}:{line.index(text) + skip + 1}"
    raise AssertionError(f"{text!r} is not in {file}")


def _write(root: Path, main: str, datasets: dict[str, str]) -> Path:
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    for name, text in datasets.items():
        (root / "datasets" / f"{name}.yaml").write_text(text, encoding="utf-8")
    path = root / "syncd.yaml"
    path.write_text(main, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- signature recipes

SIGNED_MAIN = """\
timezone: Asia/Shanghai
target:
  url: sqlite:///{target}
connections:
  tif:
    type: http
    base_url: http://127.0.0.1:9/
    auth:
      type: signed
      app_key: paas-1
      secret: ${{GW_SECRET}}
      recipe:
        algorithm: {algorithm}
        parts:
          - "{{timestamp}}"
          - "{{appSecret}}"
        extra:
          x-tif-paasid: "{{app_key"
  irs:
    type: http
    base_url: http://127.0.0.1:9/
    auth:
      type: two_tier_secret
      app_key: irs-1
      app_secret: ${{GW_SECRET}}
      recipe:
        algorithm: md5
        parts: ["{{app_key}}", "{{requestSecret}}", "{{timestamp}}"]
"""

HTTP_DATASET = f"""\
name: people
source:
  type: http
  connection: tif
  path: /api/people
  pagination: {{type: page_number, page_param: pageNo, size_param: pageSize, page_size: 100}}
{AUTHORIZATION}{COLUMNS}"""


def _signed(root: Path, *, algorithm: str = "sha256", good: bool = False) -> Path:
    main = SIGNED_MAIN.format(target=root / "t.db", algorithm=algorithm)
    if good:
        main = main.replace("{appSecret}", "{secret}").replace('"{app_key"\n', '"{app_key}"\n')
        main = main.replace("{requestSecret}", "{token}")
    return _write(root, main, {"people": HTTP_DATASET})


def test_check_reports_each_recipe_problem_at_its_line(tmp_path: Path) -> None:
    """A recipe that would not sign was only found when a run built the source: `syncd check`
    said OK, and the run failed naming `syncd.yaml` without a line (and only its first problem)."""
    main = _signed(tmp_path)
    result = syncd_cli("-c", str(main), "check", env={"GW_SECRET": "gw-secret-1"})
    assert result.returncode == 2, result.stdout + result.stderr
    errors = result.stderr.splitlines()
    placeholder, other = _at(main, '"{appSecret}"'), _at(main, '"{requestSecret}"')
    template = _at(main, '"{app_key')  # the extra's, before the irs parts' "{app_key}"
    assert f"{placeholder}: connections.tif.auth.recipe.parts[1]: unknown placeholder {{appSecret}}: " \
        "did you mean {secret}? the placeholders are {app_key}, {secret}," in result.stderr
    assert f"{template}: connections.tif.auth.recipe.extra.x-tif-paasid: '{{app_key' is not a valid " \
        "template" in result.stderr
    assert f"{other}: connections.irs.auth.recipe.parts[1]: unknown placeholder {{requestSecret}}" \
        in result.stderr
    assert errors[-1] == f"configuration invalid: 3 problem(s) in {main}"


def test_missing_sm3_is_found_by_the_load_and_by_the_source_at_the_algorithm_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenSSL without SM3 (some builds leave it out) is a property of the host: `syncd check`
    on that host reports it; a source built on it (the configuration loaded elsewhere, or before
    the library changed) names the line too."""
    main = _signed(tmp_path, algorithm="sm3", good=True)
    env = {"GW_SECRET": "gw-secret-1"}
    app = load_config(main, env=env)  # this Python has SM3
    remove_sm3(monkeypatch)  # an OpenSSL built without SM3
    where = _at(main, "algorithm: sm3", skip=len("algorithm: "))
    expected = f"{where}: connections.tif.auth.recipe.algorithm: this Python's OpenSSL has no SM3"
    with pytest.raises(ConfigError) as loaded:
        load_config(main, env=env)
    assert [str(i)[: len(expected)] for i in loaded.value.issues] == [expected]
    with pytest.raises(ConfigError) as built:
        HttpSource.from_config(app, app.datasets["people"])
    assert str(built.value).startswith(expected)


# --------------------------------------------------------------------------- connections


def test_a_connection_the_source_cannot_use_is_named_at_the_datasets_line(tmp_path: Path) -> None:
    """The load refuses an unknown connection or one of another type; a source given such a
    configuration anyway (built from an app changed after the load) says where, not line 0."""
    main = _signed(tmp_path, good=True)
    app = load_config(main, env={"GW_SECRET": "gw-secret-1"})
    dataset = app.datasets["people"]
    where = _at(tmp_path / "datasets" / "people.yaml", "tif")
    without = app.model_copy(update={"connections": {}})
    with pytest.raises(ConfigError) as http:
        HttpSource.from_config(without, dataset)
    assert str(http.value).startswith(f"{where}: source.connection: unknown connection 'tif'")

    sql_dataset = dataset.model_copy(update={"source": _sql_source("tif")})
    with pytest.raises(ConfigError) as sql:
        SqlSource.from_config(app, sql_dataset)
    assert str(sql.value).startswith(f"{where}: source.connection: connection 'tif' is not a `type: sql`")


def _sql_source(connection: str) -> Any:
    from syncd.config.model import SqlSourceConfig

    return SqlSourceConfig.model_validate(
        {"type": "sql", "connection": connection, "table": "people", "key": ["id"]}
    )


# --------------------------------------------------------------------------- found by a read

SQL_MAIN = """\
timezone: Asia/Shanghai
target:
  url: sqlite:///{target}
connections:
  qzk:
    type: sql
    url: sqlite:///{front}
defaults: {{safety_lag: 0s, lookback: 0s}}
"""

SQL_DATASET = f"""\
name: people
source:
  type: sql
  connection: qzk
  table: people
  key: [id]
  incremental:
    field: upd
{AUTHORIZATION}{COLUMNS}"""


def _sql(root: Path) -> Path:
    """A front-end table whose update column holds numbers, and a dataset that does not say what
    they are (`unit:` or `format:`): only a read of the column can tell."""
    front = root / "front.db"
    engine = sa.create_engine(f"sqlite:///{front}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT, upd BIGINT)"))
        conn.execute(sa.text("INSERT INTO people VALUES ('p1', '名', 1772323200000)"))
    engine.dispose()
    return _write(root, SQL_MAIN.format(target=root / "t.db", front=front), {"people": SQL_DATASET})


def test_plan_and_sync_exit_2_naming_the_line_of_a_config_error_a_read_finds(tmp_path: Path) -> None:
    """`syncd plan` said the error without its nature (exit 1, like an unreachable gateway), and
    `syncd sync` exited 1 too: a script could not tell "fix the YAML" from "try again later"."""
    main = _sql(tmp_path)
    assert syncd_cli("-c", str(main), "check").returncode == 0  # nothing connects: the load cannot know
    expected = (f"{_at(tmp_path / 'datasets' / 'people.yaml', 'field: upd')}: source.incremental.unit: "
                "the update column upd of people holds numbers (such as 1772323200000): say what they are")

    plan = syncd_cli("-c", str(main), "plan", "people")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert plan.stderr.startswith(expected)
    assert plan.stderr.splitlines()[-1] == (
        "syncd plan: configuration invalid: 1 problem(s) found reading people's source")

    sync = syncd_cli("-c", str(main), "--log-level", "ERROR", "sync", "people", "--progress", "off")
    assert sync.returncode == 2, sync.stdout + sync.stderr
    assert sync.stdout.startswith("people: failed")
    assert f"error: {expected}" in sync.stdout


def test_a_config_error_crosses_from_the_read_worker_as_itself() -> None:
    """The read worker sends its exception pickled; a ConfigError came back as a garbled one and
    was reported as `the read worker failed: ConfigError: …`."""
    issue = ConfigIssue("/etc/syncd/datasets/a.yaml", 7, 5, "source.incremental.unit", "say it")
    error = ConfigError([issue])
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert isinstance(back, ConfigError)
    assert back.issues == error.issues
    assert str(back) == str(error) == "/etc/syncd/datasets/a.yaml:7:5: source.incremental.unit: say it"
