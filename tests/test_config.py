"""The configuration loader, one test per kind of operator mistake.

Each test copies the valid example in ``tests/configs/`` into a temporary directory, makes one
mistake in it and checks the exact ``file:line:column: path:`` prefix (found by searching the
edited text, independently of the loader) and the words that tell the operator what to do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd.config import AppConfig, DatasetConfig, load_config, load_dataset_file
from syncd.errors import ConfigError
from tests.daemon_proc import as_service_user, give_to_service_user, service_dir

CONFIGS = Path(__file__).parent / "configs"
ROOT = Path(__file__).parents[1]
MAIN = "syncd.yaml"
RES = "datasets/residents.yaml"
ENT = "datasets/enterprises.yml"

SECRETS = {
    "GATEWAY_SECRET": "gw-Secret-4711",
    "ZJ_SECRET": "zj-Secret-0815",
    "GD_TOKEN": "gd-Token-2222",
    "STATIC_KEY": "static-Key-3333",
    "ID_SALT": "salt-Value-5555",
}
CREDENTIAL = "sd-Credential-6666"


class Workspace:
    """A copy of tests/configs to break in one place, and the environment to load it with."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "etc"
        shutil.copytree(CONFIGS, self.dir)
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "sd_secret").write_text(CREDENTIAL + "\n")
        (credentials / "sd_secret").chmod(0o600)
        self.env = {**SECRETS, "CREDENTIALS_DIRECTORY": str(credentials)}

    def path(self, name: str) -> Path:
        return self.dir / name

    def edit(self, name: str, old: str, new: str) -> None:
        text = self.path(name).read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {name}"
        self.path(name).write_text(text.replace(old, new), encoding="utf-8")

    def at(self, name: str, needle: str, *, nth: int = 1, shift: int = 0) -> str:
        """``file:line:column`` of the nth occurrence of ``needle`` (moved by ``shift`` characters)."""
        text = self.path(name).read_text(encoding="utf-8")
        index = -1
        for _ in range(nth):
            index = text.index(needle, index + 1)
        index += shift
        line = text.count("\n", 0, index) + 1
        column = index - (text.rfind("\n", 0, index) + 1) + 1
        return f"{self.path(name)}:{line}:{column}"

    def load(self, **env: str) -> AppConfig:
        return load_config(self.path(MAIN), env={**self.env, **env})

    def error(self, **env: str) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            self.load(**env)
        return info.value

    def issues(self, **env: str) -> list[str]:
        return [str(i) for i in self.error(**env).issues]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def only(issues: list[str]) -> str:
    assert len(issues) == 1, "\n".join(issues)
    return issues[0]


# --------------------------------------------------------------------------- valid configurations


def test_valid_example_loads(ws: Workspace) -> None:
    app = ws.load()
    assert app.source_file == str(ws.path(MAIN))
    assert sorted(app.datasets) == ["enterprises", "residents"]  # residents.yaml has no `name:`
    residents = app.datasets["residents"]
    assert residents.source_file == str(ws.path(RES))
    assert residents.target.logical_delete is not None
    assert residents.target.logical_delete.values == ("1",)
    gateway = app.connections["gateway"]
    assert gateway.base_url == "http://127.0.0.1:8765"
    assert gateway.auth.type == "token"
    assert gateway.auth.app_key == "test-app"  # ${GATEWAY_APP_KEY:-test-app}
    assert gateway.auth.app_secret.get_secret_value() == SECRETS["GATEWAY_SECRET"]
    assert app.target.url.get_secret_value() == "sqlite:///syncd-test.db"
    # codes are text exactly as written: YAML 1.2 would make 00 and 01 the integers 0 and 1
    assert gateway.envelope.success_codes == ("0", "00", "0000")
    assert app.code_tables["ethnicity"] == {"01": "汉族", "02": "蒙古族", "03": "回族"}
    assert app.code_tables["gender"]["1"] == "男"
    assert app.connections["static"].headers == {"X-Unit": "360102"}
    shandong = app.connections["shandong"].auth
    assert shandong.type == "hmac_headers"
    assert shandong.secret.get_secret_value() == CREDENTIAL  # one trailing newline stripped
    salt = residents.columns["id_hash"].transforms[2].salt  # `- {hash: "${ID_SALT}"}` shorthand
    assert salt is not None
    assert salt.get_secret_value() == SECRETS["ID_SALT"]
    enterprises = app.datasets["enterprises"]
    assert enterprises.source.params == {"area": "360102", "active": True, "limit": 100}
    assert enterprises.columns["region"].transforms[0].value == "360102"


def test_load_dataset_file_checks_against_the_app(ws: Workspace) -> None:
    app = ws.load()
    again = load_dataset_file(ws.path(RES), app, env=ws.env)
    assert again == app.datasets["residents"]
    copy = ws.path("other.yaml")
    copy.write_text(ws.path(RES).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_dataset_file(copy, app, env=ws.env)
    assert only([str(i) for i in info.value.issues]).startswith(
        f"{ws.at('other.yaml', 'resident_info')}: target.table: table `resident_info` is already written by "
        "dataset `residents`"
    )


@pytest.mark.parametrize("example", ["config/syncd.yaml", "syncd/demo/syncd.yaml"])
def test_shipped_examples_load(example: str, tmp_path: Path) -> None:
    (tmp_path / "gateway_app_secret").write_text("s3cret\n")
    (tmp_path / "gateway_app_secret").chmod(0o400)
    env = {
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "SYNCD_DEMO_DB": f"sqlite:///{tmp_path / 'demo.db'}",
        "SYNCD_DEMO_GATEWAY": "http://127.0.0.1:8765",
        "SYNCD_DEMO_APP_SECRET": "s3cret",
    }
    app = load_config(ROOT / example, env=env)
    assert app.datasets
    assert all(isinstance(d, DatasetConfig) for d in app.datasets.values())


def test_numbers_in_text_fields_stay_as_written(ws: Workspace) -> None:
    ws.edit(MAIN, 'headers: {X-Unit: "360102"}', "headers: {X-Unit: 360102, X-Version: 1.10, X-Flag: true}")
    ws.edit(RES, "approval_code: TEST-0001", "approval_code: 2026001")
    ws.edit(RES, "description: 户籍人口（测试）", "description: 1.50")
    ws.edit(RES, "[strip, null_if, {mask: name}]", "[strip, {null_if: [0, 无]}, {mask: name}]")
    app = ws.load()
    assert app.connections["static"].headers == {"X-Unit": "360102", "X-Version": "1.10", "X-Flag": "true"}
    residents = app.datasets["residents"]
    assert residents.authorization.approval_code == "2026001"
    assert residents.description == "1.50"
    assert residents.columns["name"].transforms[1].values == ("0", "无")


def test_anchors_and_merge_keys(ws: Workspace) -> None:
    ws.edit(ENT, "  company_name: {source: QYMC}", "  company_name: &text {source: QYMC, length: 200}\n"
            "  company_alias:\n    <<: *text\n    nullable: false")
    ws.edit(ENT, "fields: [TYSHXYDM,", "fields: [QYMC,TYSHXYDM,")
    columns = ws.load().datasets["enterprises"].columns
    assert columns["company_alias"].length == 200
    assert columns["company_alias"].nullable is False
    assert columns["company_alias"].source == "QYMC"


# --------------------------------------------------------------------------- YAML itself


def test_yaml_syntax_error(ws: Workspace) -> None:
    ws.edit(RES, "  path: /api/residents/query", "  path: a: b")
    issue = only(ws.issues())
    assert issue.startswith(f"{ws.at(RES, ': b')}: YAML syntax error: mapping values are not allowed here")
    assert "indentation" in issue


def test_tab_indentation(ws: Workspace) -> None:
    ws.edit(RES, "  connection: gateway", "\tconnection: gateway")
    assert only(ws.issues()) == (
        f"{ws.at(RES, chr(9))}: a tab character is used for indentation: YAML allows only spaces, "
        "replace the tab with spaces"
    )


def test_duplicate_key(ws: Workspace) -> None:
    ws.edit(RES, "  path: /api/residents/query", "  path: /api/residents/query\n  path: /api/other")
    first_line = ws.at(RES, "path:").split(":")[-2]
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'path:', nth=2)}: source.path: duplicate key `path` (first written at line "
        f"{first_line}): delete one of them or merge their contents"
    )


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "the top level must be a mapping of `key: value` lines, but this file holds a list"),
])
def test_empty_or_not_a_mapping(ws: Workspace, text: str, message: str) -> None:
    ws.path(ENT).write_text(text, encoding="utf-8")
    assert only(ws.issues()).startswith(f"{ws.path(ENT)}:1:1: {message}")


def test_python_tags_are_refused(ws: Workspace) -> None:
    ws.edit(RES, "description: 户籍人口（测试）", "description: !!python/object/apply:os.system [echo hi]")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '!!python')}: description: the YAML tag `!!python/object/apply:os.system` is not "
        "allowed: remove it"
    )


def test_file_not_utf8(ws: Workspace) -> None:
    ws.path(ENT).write_bytes("name: enterprises\ndescription: 企业\n".encode("gbk"))
    assert only(ws.issues()).startswith(f"{ws.path(ENT)}:2:14: the file is not UTF-8 text")


def test_utf8_bom_is_accepted(ws: Workspace) -> None:
    ws.path(ENT).write_bytes(b"\xef\xbb\xbf" + ws.path(ENT).read_bytes())
    assert "enterprises" in ws.load().datasets


# --------------------------------------------------------------------------- schema mistakes


def test_unknown_key_with_suggestion(ws: Workspace) -> None:
    ws.edit(RES, "    length: 40", "    lenght: 40")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'lenght')}: columns.name.lenght: unknown key `lenght`: did you mean `length`?"
    )


def test_unknown_key_lists_allowed_keys(ws: Workspace) -> None:
    ws.edit(MAIN, "  pool_size: 5", "  pool_size: 5\n  colour: blue")
    assert only(ws.issues()) == (
        f"{ws.at(MAIN, 'colour')}: target.colour: unknown key `colour`: allowed keys are url, "
        "table_prefix, pool_size"
    )


def test_missing_required_key(ws: Workspace) -> None:
    ws.edit(RES, "  path: /api/residents/query\n", "")
    assert only(ws.issues()) == f"{ws.at(RES, 'source:')}: source: required key `path` is missing"


def test_missing_required_key_at_top_level(ws: Workspace) -> None:
    text = ws.path(MAIN).read_text(encoding="utf-8")
    start, end = text.index("target:"), text.index("connections:")
    ws.path(MAIN).write_text(text[:start] + text[end:], encoding="utf-8")
    issue = only(ws.issues())
    assert issue.startswith(f"{ws.at(MAIN, 'timezone')}: required key `target` is missing")


def test_wrong_type(ws: Workspace) -> None:
    ws.edit(MAIN, "pool_size: 5", "pool_size: abc")
    assert only(ws.issues()) == (
        f"{ws.at(MAIN, 'abc')}: target.pool_size: expected a whole number, got 'abc'"
    )


def test_wrong_shape(ws: Workspace) -> None:
    ws.edit(RES, "fields: [id,", "fields: [{a: 1}, id,")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '{a: 1}')}: authorization.fields[0]: expected text, got a mapping"
    )


def test_bool_and_range(ws: Workspace) -> None:
    ws.edit(RES, "  table: resident_info", "  table: resident_info\n  create: maybe")
    ws.edit(MAIN, "batch_size: 500", "batch_size: 0")
    assert ws.issues() == [
        f"{ws.at(MAIN, 'batch_size: 0', shift=12)}: defaults.batch_size: must be at least 1, got 0",
        f"{ws.at(RES, 'maybe')}: target.create: expected true or false, got 'maybe'",
    ]


def test_bad_literal(ws: Workspace) -> None:
    ws.edit(ENT, "method: POST", "method: FETCH")
    where = ws.at(ENT, "FETCH")
    assert only(ws.issues()) == f"{where}: source.method: must be one of GET, POST (got 'FETCH')"


def test_bad_duration(ws: Workspace) -> None:
    ws.edit(RES, "lookback: 15m", "lookback: 15 minutes")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '15 minutes')}: source.incremental.lookback: '15 minutes' is not a duration: write a "
        "number with a unit, such as 30s, 5m, 2h or 1d"
    )


def test_infinite_duration_is_an_error_not_a_crash(ws: Workspace) -> None:
    ws.edit(MAIN, "timeout: {connect: 5s", "timeout: {connect: .inf")
    assert only(ws.issues()).startswith(
        f"{ws.at(MAIN, '.inf')}: connections.gateway.timeout.connect: inf is out of range"
    )


def test_injection_in_table_name(ws: Workspace) -> None:
    ws.edit(RES, "table: resident_info", 'table: "x; DROP TABLE users"')
    where = ws.at(RES, '"x; DROP')
    assert only(ws.issues()).startswith(
        f"{where}: target.table: 'x; DROP TABLE users' is not a valid SQL identifier: "
        "use letters, digits and underscores"
    )


def test_quote_in_column_name(ws: Workspace) -> None:
    ws.edit(RES, "  name:\n    source: name", "  \"na'me\":\n    source: name")
    where = ws.at(RES, '"na')
    assert only(ws.issues()).startswith(f"{where}: columns.na'me: \"na'me\" is not a valid SQL identifier")


def test_dataset_named_after_an_invalid_file_name(ws: Workspace) -> None:
    ws.path(RES).rename(ws.path("datasets/resident-info.yaml"))
    issue = only(ws.issues())
    assert issue.startswith(f"{ws.path('datasets/resident-info.yaml')}:2:1: name: the file has no `name:`, "
                            "so the dataset is named after the file, `resident-info`")
    assert issue.endswith("rename the file or add `name:`")


@pytest.mark.parametrize(("file", "old", "new", "needle", "path", "message"), [
    (RES, "  type: http\n", "  type: htp\n", "htp", "source.type",
     "unknown type 'htp'; known types: http, sql, file (did you mean `http`?)"),
    (MAIN, "      type: token\n", "      type: tokn\n", "tokn", "connections.gateway.auth.type",
     "unknown type 'tokn'; known types: none, static_key, token, hmac_headers, signed, two_tier_secret "
     "(did you mean `token`?)"),
    (RES, "type: page_number", "type: pages", "pages", "source.pagination.type",
     "unknown type 'pages'; known types: page_number, offset, cursor"),
    (MAIN, "      type: token\n", "", "auth:", "connections.gateway.auth",
     "add `type:` (one of none, static_key, token, hmac_headers, signed, two_tier_secret)"),
])
def test_unknown_or_missing_type(  # noqa: PLR0917 - one parametrized case
    ws: Workspace, file: str, old: str, new: str, needle: str, path: str, message: str
) -> None:
    ws.edit(file, old, new)
    assert only(ws.issues()) == f"{ws.at(file, needle)}: {path}: {message}"


def test_union_of_scalars(ws: Workspace) -> None:
    ws.edit(ENT, 'params: {area: "360102"', "params: {area: [1, 2]")
    assert only(ws.issues()) == (
        f"{ws.at(ENT, '[1, 2]')}: source.params.area: expected text, a whole number, a number or "
        "true/false, got a list"
    )


def test_transform_shorthand_errors_point_into_the_shorthand(ws: Workspace) -> None:
    ws.edit(RES, '{hash: "${ID_SALT}"}', '{hash: {salt: "${ID_SALT}", colour: red}}')
    assert only(ws.issues()).startswith(
        f"{ws.at(RES, 'colour')}: columns.id_hash.transforms[2].hash.colour: unknown key `colour`"
    )


def test_loader_fields_cannot_be_written(ws: Workspace) -> None:
    ws.edit(RES, "description:", "source_file: x.yaml\ndescription:")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'source_file')}: source_file: unknown key `source_file`: syncd fills it in itself, "
        "remove it"
    )


def test_key_column_not_mapped(ws: Workspace) -> None:
    ws.edit(RES, "key: [resident_id]", "key: [rid]")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'rid]')}: target.key[0]: target.key names rid, which are not under columns: every key "
        "column must be mapped"
    )


def test_authorization_dates_reversed(ws: Workspace) -> None:
    ws.edit(RES, "valid_from: 2026-01-01", "valid_from: 2028-01-01")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '2027-12-31')}: authorization.valid_until: valid_until is before valid_from: check the "
        "dates of the approval"
    )


def test_bad_date(ws: Workspace) -> None:
    ws.edit(RES, "valid_from: 2026-01-01", "valid_from: 2026-1-1")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '2026-1-1')}: authorization.valid_from: expected a date like 2026-12-31, got '2026-1-1'"
    )


def test_unknown_timezone(ws: Workspace) -> None:
    ws.edit(MAIN, "timezone: Asia/Shanghai", "timezone: Asia/Beijing")
    assert only(ws.issues()) == (
        f"{ws.at(MAIN, 'Asia/Beijing')}: timezone: unknown time zone 'Asia/Beijing': use an IANA name such "
        "as Asia/Shanghai"
    )


def test_bad_cron(ws: Workspace) -> None:
    ws.edit(RES, 'cron: "0 2 * * *"', 'cron: "0 2 * *"')
    where = ws.at(RES, '"0 2')
    assert only(ws.issues()).startswith(f"{where}: schedule.cron: '0 2 * *' is not a cron expression")


@pytest.mark.parametrize("cron", ["0 2 30 2 *", "0 2 31 4,6,9,11 *"])
def test_a_cron_that_never_fires_is_refused(ws: Workspace, cron: str) -> None:
    """30 February passed `syncd check` and the dataset silently never ran."""
    ws.edit(RES, 'cron: "0 2 * * *"', f'cron: "{cron}"')
    where = ws.at(RES, f'"{cron}')
    assert only(ws.issues()) == (
        f"{where}: schedule.cron: {cron!r} never fires: no month has the day its day-of-month "
        "and month fields ask for (such as 30 February or 31 April), so the dataset would never run: fix "
        "the day or the month field (e.g. '0 2 28 2 *' for 02:00 on 28 February)"
    )


@pytest.mark.parametrize("cron", ["0 2 29 2 *", "0 2 30 2 1"])
def test_a_cron_that_fires_rarely_is_accepted(ws: Workspace, cron: str) -> None:
    ws.edit(RES, 'cron: "0 2 * * *"', f'cron: "{cron}"')  # leap years; Mondays in February
    ws.load()


LOGGING = "logging: {level: INFO, format: json}"
RES_TARGET = "target:\n  table: resident_info"
OUT_OF_RANGE = (
    "is out of range: keep change entries for 1 to 36500 days, or write forever to keep every entry"
)


def test_change_retention_in_the_main_file_and_per_dataset(ws: Workspace) -> None:
    app = ws.load()
    assert app.changes.retention_days == "forever" and app.changes.prune_at == "03:30"  # keep everything
    assert app.retention_days(app.datasets["residents"]) is None
    ws.edit(MAIN, LOGGING, f"{LOGGING}\nchanges: {{retention_days: 180, prune_at: '4:05'}}")
    ws.edit(RES, RES_TARGET, f"changes: {{retention_days: forever}}\n{RES_TARGET}")
    app = ws.load()
    assert app.changes.at() == (4, 5)
    assert app.retention_days(app.datasets["residents"]) is None  # its own setting wins
    assert app.retention_days(app.datasets["enterprises"]) == 180


@pytest.mark.parametrize(("written", "needle", "message"), [
    ("retention_days: 0", "0}", f"changes.retention_days: 0 {OUT_OF_RANGE}"),
    ("retention_days: never", "never", "changes.retention_days: 'never' is not a number of days: write a "
     "whole number such as 180, or forever to keep every entry"),
    ("retention_days: 30, prune_at: 3am", "3am", "changes.prune_at: '3am' is not a time of day: write it as "
     'HH:MM, e.g. "03:30"'),
    ("retension_days: 30", "retension", "changes.retension_days: unknown key `retension_days`: did you mean "
     "`retention_days`?"),
])
def test_change_retention_mistakes_in_the_main_file(
    ws: Workspace, written: str, needle: str, message: str
) -> None:
    ws.edit(MAIN, LOGGING, f"{LOGGING}\nchanges: {{{written}}}")
    assert only(ws.issues()) == f"{ws.at(MAIN, needle)}: {message}"


def test_change_retention_mistake_in_a_dataset_file(ws: Workspace) -> None:
    ws.edit(RES, RES_TARGET, f"changes:\n  retention_days: -5\n{RES_TARGET}")
    assert only(ws.issues()) == f"{ws.at(RES, '-5')}: changes.retention_days: -5 {OUT_OF_RANGE}"


RUN_OUT_OF_RANGE = "is out of range: keep runs for 1 to 36500 days, or write forever to keep every run"


def test_run_retention_in_the_main_file(ws: Workspace) -> None:
    app = ws.load()
    assert app.runs.retention_days == "forever" and app.run_retention_days() is None  # keep every run
    ws.edit(MAIN, LOGGING, f"{LOGGING}\nruns: {{retention_days: 400}}")
    assert ws.load().run_retention_days() == 400


@pytest.mark.parametrize(("written", "needle", "message"), [
    ("retention_days: 0", "0}", f"runs.retention_days: 0 {RUN_OUT_OF_RANGE}"),
    ("retention_days: 36501", "36501", f"runs.retention_days: 36501 {RUN_OUT_OF_RANGE}"),
    ("retention_days: never", "never", "runs.retention_days: 'never' is not a number of days: write a "
     "whole number such as 180, or forever to keep every run"),
    ("retention_days: true", "true", "runs.retention_days: True is not a number of days: write a "
     "whole number such as 180, or forever to keep every run"),
    ("retension_days: 30", "retension", "runs.retension_days: unknown key `retension_days`: did you mean "
     "`retention_days`?"),
])
def test_run_retention_mistakes_in_the_main_file(
    ws: Workspace, written: str, needle: str, message: str
) -> None:
    ws.edit(MAIN, LOGGING, f"{LOGGING}\nruns: {{{written}}}")
    assert only(ws.issues()) == f"{ws.at(MAIN, needle)}: {message}"


def test_run_retention_is_set_in_the_main_file_only(ws: Workspace) -> None:
    """The runs table is one table for every dataset: a dataset file cannot set its own retention."""
    ws.edit(RES, RES_TARGET, f"runs:\n  retention_days: 30\n{RES_TARGET}")
    assert only(ws.issues()).startswith(f"{ws.at(RES, 'runs:')}: runs: unknown key `runs`")


def test_scale_larger_than_precision(ws: Workspace) -> None:
    ws.edit(ENT, "scale: 4", "scale: 20")
    assert only(ws.issues()).startswith(
        f"{ws.at(ENT, '20}')}: columns.capital.scale: scale 20 is larger than precision 18"
    )


def test_several_errors_in_several_files_are_all_reported(ws: Workspace) -> None:
    ws.edit(MAIN, "pool_size: 5", "pool_size: many")
    ws.edit(RES, "lookback: 15m", "lookback: soon")
    ws.edit(RES, "approval_code: TEST-0001", 'approval_code: ""')
    ws.edit(RES, "    length: 40", "    lenght: 40")
    ws.edit(ENT, "method: POST", "method: PUT")
    issues = ws.issues()
    assert [i.split(": ", 2)[:2] for i in issues] == [
        [ws.at(MAIN, "many"), "target.pool_size"],
        [ws.at(ENT, "PUT"), "source.method"],  # dataset files are read in sorted order
        [ws.at(RES, "soon"), "source.incremental.lookback"],
        [ws.at(RES, '""'), "authorization.approval_code"],
        [ws.at(RES, "lenght"), "columns.name.lenght"],
    ]


def test_missing_datasets_dir(ws: Workspace) -> None:
    ws.edit(MAIN, "timezone: Asia/Shanghai", "timezone: Asia/Shanghai\ndatasets_dir: dataset")
    assert only(ws.issues()).startswith(
        f"{ws.at(MAIN, 'datasets_dir: dataset', shift=14)}: datasets_dir: the datasets directory "
        f"{ws.dir / 'dataset'} does not exist"
    )


@pytest.mark.parametrize("mode", [0o300, 0o600], ids=["not_listable", "not_enterable"])
def test_unreadable_datasets_dir(mode: int) -> None:
    """E.g. a directory made with umask 077: the loader let the OSError out, so `syncd check` and the
    start crashed with a traceback and a reload (SIGHUP) killed the daemon. It is a configuration
    problem that names the directory and the fix."""
    with service_dir() as root:
        ws = Workspace(root)
        ws.load()  # valid as it is (and everything the loader imports is imported)
        datasets = ws.path("datasets")
        give_to_service_user(root)
        datasets.chmod(mode)
        with as_service_user():
            issues = ws.issues()
    issue = only(issues)
    assert issue.startswith(f"{ws.path(MAIN)}:")  # no `datasets_dir:` written: where it would go
    assert issue.endswith(
        f" datasets_dir: cannot read the datasets directory {datasets}: Permission denied; the user syncd "
        f"runs as must be able to list and enter it (under systemd, a dynamic user: `chmod 0755 {datasets}` "
        "and 0644 for its files)"
    )


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"


# --------------------------------------------------------------------------- cross-checks


def test_unknown_connection(ws: Workspace) -> None:
    ws.edit(RES, "connection: gateway", "connection: gatway")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'gatway')}: source.connection: unknown connection `gatway`: did you mean `gateway`? "
        "connections defined in the main file: `gateway`, `shandong`, `zhejiang`, `guangdong`, `static`"
    )


def test_unknown_code_table(ws: Workspace) -> None:
    ws.edit(RES, "{code_table: gender}", "{code_table: gendr}")
    ws.edit(RES, "table: ethnicity,", "table: nation,")
    assert ws.issues() == [
        f"{ws.at(RES, 'gendr')}: columns.gender.transforms[0].code_table: unknown code table `gendr`: "
        "did you mean `gender`? code tables are defined under `code_tables:` in the main file (known: "
        "`gender`, `ethnicity`), or write the mapping inline",
        f"{ws.at(RES, 'nation,')}: columns.ethnicity.transforms[0].code_table.table: unknown code table "
        "`nation`: code tables are defined under `code_tables:` in the main file (known: `gender`, "
        "`ethnicity`), or write the mapping inline",
    ]


def test_mapping_errors_are_positioned(ws: Workspace) -> None:
    ws.edit(RES, "transforms: [strip, null_if, {mask: name}]", "transforms: [strip, strp, {mask: name}]")
    assert only(ws.issues()).startswith(
        f"{ws.at(RES, 'strp')}: columns.name.transforms[1]: unknown transform 'strp' (did you mean 'strip'?)"
    )


def test_mask_on_a_key_column_is_refused(ws: Workspace) -> None:
    # two ID numbers that differ only in the hidden digits would become one row: refused, with the fix
    ws.edit(RES, "resident_id: {source: id, nullable: false, length: 32}",
            "resident_id: {source: id, nullable: false, length: 32, transforms: [strip, {mask: id_number}]}")
    assert only(ws.issues()) == (
        f"{ws.at(RES, '{mask: id_number}')}: columns.resident_id.transforms[1]: `resident_id` is a "
        "target.key column and `mask` cannot be on it: different values with the same masked text (two ID "
        "numbers differing only in the hidden digits) would become one row, the second overwriting the "
        "first. To protect a key, replace the mask with a salted hash "
        "({hash: {salt: \"${credential:NAME}\"}}, length 64 or more), or key the table on another column"
    )


AUTH_MESSAGE = (
    "is not in authorization.fields (授权字段): syncd only writes fields the approval covers; ask the data "
    "bureau to extend the approval or"
)


def test_unauthorized_top_level_field(ws: Workspace) -> None:
    ws.edit(RES, "    source: name\n", "    source: xm\n")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'xm')}: columns.name.source: field `xm` {AUTH_MESSAGE} remove this column"
    )


def test_unauthorized_nested_field(ws: Workspace) -> None:
    ws.edit(RES, "ethnicity, address,", "ethnicity, address.detail,")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'address.divisionCode')}: columns.division_code.source: field `address.divisionCode` "
        f"{AUTH_MESSAGE} remove this column"
    )


def test_authorized_by_prefix(ws: Workspace) -> None:
    ws.edit(RES, "ethnicity, address,", "ethnicity, address.divisionCode,")
    assert "residents" in ws.load().datasets


def test_unauthorized_incremental_and_delete_flag(ws: Workspace) -> None:
    ws.edit(RES, ", updateTime, isDeleted]", "]")
    assert ws.issues() == [
        f"{ws.at(RES, 'updateTime')}: source.incremental.field: field `updateTime` {AUTH_MESSAGE} "
        "choose another update-time field",
        f"{ws.at(RES, 'isDeleted')}: target.logical_delete.field: field `isDeleted` {AUTH_MESSAGE} remove "
        "logical_delete",
    ]


def test_table_with_the_state_prefix(ws: Workspace) -> None:
    ws.edit(RES, "table: resident_info", "table: SYNCD_runs")
    assert only(ws.issues()).startswith(
        f"{ws.at(RES, 'SYNCD_runs')}: target.table: table `SYNCD_runs` starts with `syncd_`, the prefix of "
        "syncd's own state tables"
    )


def test_two_datasets_write_one_table(ws: Workspace) -> None:
    ws.edit(RES, "table: resident_info", "table: Enterprise")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'Enterprise')}: target.table: table `Enterprise` is already written by dataset "
        f"`enterprises` ({ws.path(ENT)}): two datasets must not write the same table"
    )


def test_duplicate_dataset_names_across_files(ws: Workspace) -> None:
    ws.edit(ENT, "name: enterprises", "name: residents")
    # files are read sorted: enterprises.yml comes first, so residents.yaml (named after itself) is the second
    assert only(ws.issues()) == (
        f"{ws.path(RES)}:2:1: name: dataset name `residents` is already used by {ws.path(ENT)}: dataset "
        "names must be unique (a file without `name:` is named after the file)"
    )


def test_columns_differing_in_case(ws: Workspace) -> None:
    ws.edit(RES, "  ethnicity:\n    source: ethnicity", "  Gender:\n    source: ethnicity")
    assert only(ws.issues()) == (
        f"{ws.at(RES, 'Gender')}: columns.Gender: columns `gender` and `Gender` differ only in letter case: "
        "databases treat them as the same column, rename one"
    )


@pytest.mark.parametrize(("url", "message"), [
    ("postgres://syncd@127.0.0.1/db", "unknown database kind `postgres`"),
    ("not a url", "this is not a database URL"),
])
def test_bad_target_url(ws: Workspace, url: str, message: str) -> None:
    ws.edit(MAIN, "url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}", f"url: {url}")
    assert only(ws.issues()).startswith(f"{ws.at(MAIN, url)}: target.url: {message}")


# --------------------------------------------------------------------------- interpolation and secrets


def test_unset_environment_variable(ws: Workspace) -> None:
    env = dict(ws.env)
    del env["ZJ_SECRET"]
    with pytest.raises(ConfigError) as info:
        load_config(ws.path(MAIN), env=env)
    where = ws.at(MAIN, '"${ZJ_SECRET}"')
    assert only([str(i) for i in info.value.issues]) == (
        f"{where}: connections.zhejiang.auth.app_secret: environment variable ZJ_SECRET is not set: "
        "export it (e.g. in /etc/syncd/syncd.env used by the systemd unit's EnvironmentFile=) or write "
        "${ZJ_SECRET:-default}"
    )


def test_default_and_override(ws: Workspace) -> None:
    assert ws.load().connections["gateway"].auth.app_key == "test-app"  # type: ignore[union-attr]
    assert ws.load(GATEWAY_APP_KEY="county-7").connections["gateway"].auth.app_key == "county-7"  # type: ignore[union-attr]
    assert ws.load(GATEWAY_APP_KEY="").connections["gateway"].auth.app_key == "test-app"  # type: ignore[union-attr]


def test_interpolated_numbers_are_validated(ws: Workspace) -> None:
    ws.edit(MAIN, "pool_size: 5", "pool_size: ${POOL:-7}")
    assert ws.load().target.pool_size == 7
    assert ws.load(POOL="9").target.pool_size == 9
    where = ws.at(MAIN, "${POOL")
    assert only(ws.issues(POOL="lots")) == f"{where}: target.pool_size: expected a whole number, got 'lots'"


def test_dollar_escape(ws: Workspace) -> None:
    ws.edit(RES, "description: 户籍人口（测试）", "description: costs $5, written $${HOME} ${NOT_SET:-x}")
    assert ws.load().datasets["residents"].description == "costs $5, written ${HOME} x"


def test_malformed_reference(ws: Workspace) -> None:
    ws.edit(RES, "description: 户籍人口（测试）", "description: ${1ABC} and ${OPEN")
    assert only(ws.issues()).startswith(f"{ws.at(RES, '${1ABC}')}: description: malformed `${{1ABC...}}`")


def test_credential_file(ws: Workspace, tmp_path: Path) -> None:
    cred = Path(ws.env["CREDENTIALS_DIRECTORY"]) / "sd_secret"
    with capture_logs() as logs:
        ws.load()
    assert not [e for e in logs if e["event"] == "config.credential_permissions"]
    cred.chmod(0o644)
    with capture_logs() as logs:
        ws.load()
    warnings = [e for e in logs if e["event"] == "config.credential_permissions"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["file"] == str(cred)
    assert CREDENTIAL not in repr(logs)


def test_credential_errors(ws: Workspace) -> None:
    where = ws.at(MAIN, '"${credential:sd_secret}"')
    assert only(ws.issues(CREDENTIALS_DIRECTORY="")).startswith(
        f"{where}: connections.shandong.auth.secret: ${{credential:sd_secret}} needs CREDENTIALS_DIRECTORY, "
        "which is not set"
    )
    empty = ws.dir / "empty"
    empty.mkdir()
    issue = only(ws.issues(CREDENTIALS_DIRECTORY=str(empty)))
    assert f"credential sd_secret not found: there is no file {empty / 'sd_secret'}" in issue
    assert "LoadCredential=sd_secret:" in issue


@pytest.mark.parametrize(("old", "new", "needle", "path", "words"), [
    ("app_secret: ${GATEWAY_SECRET}", "app_secret: abc123XYZ", "abc123XYZ",
     "connections.gateway.auth.app_secret",
     "secrets must not be written into configuration files: put it in an environment variable and write "
     "${NAME}, or in a systemd credential and write ${credential:NAME}"),
    ("app_secret: ${GATEWAY_SECRET}", "app_secret: ${GATEWAY_SECRET:-abc123XYZ}", "${GATEWAY_SECRET:-",
     "connections.gateway.auth.app_secret", "a `:-` default of a secret is itself a secret"),
    ("app_secret: ${GATEWAY_SECRET}", "app_secret: Bearer-${GATEWAY_SECRET}", "Bearer-",
     "connections.gateway.auth.app_secret", "secrets must not be written into configuration files"),
    ('{hash: "${ID_SALT}"}', "{hash: abc123XYZ}", "abc123XYZ", "columns.id_hash.transforms[2].hash",
     "secrets must not be written into configuration files"),
    ("url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}", "url: postgresql://syncd:abc123XYZ@127.0.0.1/db",
     "postgresql://", "target.url", "the database URL contains a password: secrets must not be written"),
    ("url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}", "url: mysql+pymysql://syncd@db/x?password=abc123XYZ",
     "mysql+", "target.url", "the database URL contains a password"),
    ("url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}", "url: postgresql://syncd:${PW:-abc123XYZ}@db/x",
     "postgresql://", "target.url", "the database URL contains a password"),
])
def test_literal_secrets_are_refused(  # noqa: PLR0917 - one parametrized case
    ws: Workspace, old: str, new: str, needle: str, path: str, words: str
) -> None:
    file = MAIN if old in ws.path(MAIN).read_text(encoding="utf-8") else RES
    ws.edit(file, old, new)
    issue = only(ws.issues())
    assert issue.startswith(f"{ws.at(file, needle)}: {path}: {words}")
    assert "abc123XYZ" not in issue


@pytest.mark.parametrize("url", [
    "sqlite:///var/lib/syncd/syncd.db",
    "postgresql+psycopg://syncd@127.0.0.1:5432/jcsj",
    "postgresql+psycopg://syncd:${DB_PASSWORD}@127.0.0.1:5432/jcsj",
    "mysql+pymysql://syncd:${credential:sd_secret}@127.0.0.1:3306/jcsj?charset=utf8mb4",
    "${DB_URL}",
])
def test_database_urls_without_a_written_password(ws: Workspace, url: str) -> None:
    ws.edit(MAIN, "url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}", f'url: "{url}"')
    app = ws.load(DB_PASSWORD="pw-Secret-1", DB_URL="postgresql+psycopg://u:pw-Secret-1@h/db")
    assert app.target.url.get_secret_value().startswith(("sqlite", "postgresql", "mysql"))
    assert "pw-Secret-1" not in repr(app)


def test_secret_values_appear_nowhere(ws: Workspace) -> None:
    ws.edit(MAIN, "url: ${SYNCD_TEST_DB:-sqlite:///syncd-test.db}",
            "url: postgresql+psycopg://syncd:${DB_PASSWORD}@127.0.0.1/syncd")
    env = {"DB_PASSWORD": "db-Password-7777"}
    secrets = [*SECRETS.values(), CREDENTIAL, env["DB_PASSWORD"]]
    app = ws.load(**env)
    for text in (str(app), repr(app), app.model_dump_json(), str(app.model_dump())):
        for secret in secrets:
            assert secret not in text
    # now make mistakes whose messages would quote the values
    ws.edit(ENT, "method: POST", "method: ${GATEWAY_SECRET}")
    ws.edit(MAIN, "pool_size: 5", "pool_size: ${DB_PASSWORD}")
    ws.edit(RES, "description: 户籍人口（测试）", "description: [${ID_SALT}]")
    ws.edit(RES, "  table: resident_info", "  table: ${credential:sd_secret}")
    error = ws.error(**env)
    text = "\n".join([str(error), repr(error), *(repr(i) for i in error.issues)])
    for secret in secrets:
        assert secret not in text
    assert "source.method: must be one of GET, POST (got '***')" in text
    assert "target.pool_size: expected a whole number, got '***'" in text


def test_environment_defaults_to_os_environ(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ws.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_APP_KEY", "from-os")
    assert load_config(ws.path(MAIN)).connections["gateway"].auth.app_key == "from-os"  # type: ignore[union-attr]


def test_a_lookback_shorter_than_the_daylight_saving_shift_is_warned_with_its_line(ws: Workspace) -> None:
    with capture_logs() as logs:
        ws.load()
    assert not [e for e in logs if e["event"] == "config.lookback_under_dst"]  # Asia/Shanghai: no DST
    ws.edit(MAIN, "timezone: Asia/Shanghai", "timezone: Europe/Berlin")
    with capture_logs() as logs:
        ws.load()
    warnings = [e for e in logs if e["event"] == "config.lookback_under_dst"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["file"] == str(ws.path(RES))
    assert f"{warnings[0]['file']}:{warnings[0]['line']}" == ws.at(RES, "lookback: 15m").rsplit(":", 1)[0]
    assert "at least 1:00:00" in warnings[0]["fix"]
    ws.edit(RES, "lookback: 15m", "lookback: 2h")
    with capture_logs() as logs:
        ws.load()
    assert not [e for e in logs if e["event"] == "config.lookback_under_dst"]


def test_a_masked_dataset_whose_source_has_no_secret_is_warned_that_it_stores_no_record_digest(
    ws: Workspace,
) -> None:
    """Its digests could only be keyed from the YAML: the masked characters could be recovered
    from them (syncd.changes.digestkey), so none are stored, and the operator is told where and why."""
    event = "config.record_digest_off"
    with capture_logs() as logs:
        ws.load()
    assert not [e for e in logs if e["event"] == event]  # the gateway has an app_secret
    ws.edit(MAIN, "type: token\n      url: /auth/token", "type: none\n      # url: /auth/token")
    for line in ("      app_key: ${GATEWAY_APP_KEY:-test-app}\n", "      app_secret: ${GATEWAY_SECRET}\n",
                 "      refresh_before: 5m\n"):
        ws.edit(MAIN, line, "")
    with capture_logs() as logs:
        ws.load()
    assert not [e for e in logs if e["event"] == event]  # the salt of id_hash keys the digests
    ws.edit(RES, '{hash: "${ID_SALT}"}', "lower")
    with capture_logs() as logs:
        ws.load()
    (warning,) = [e for e in logs if e["event"] == event]
    assert warning["log_level"] == "warning" and warning["file"] == str(ws.path(RES))
    assert f"{warning['file']}:{warning['line']}" == ws.at(RES, "{mask: name}").rsplit(":", 1)[0]
    assert warning["field"] == "columns.name.transforms[2]"
    assert "no record digest is stored" in warning["effect"] and "secret" in warning["fix"]
