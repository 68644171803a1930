"""A dataset whose key definition changed after it synced is refused until reverted or reset
(syncd.targets.keydef, ``syncd reset``): against the simulated gateway and real databases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncd.gateway import Gateway
from syncd.ops.plan import plan_dataset
from syncd.ops.quarantine import replay_quarantine
from syncd.targets.keydef import KeyDefinitionChanged
from tests.e2e import (
    Syncer,
    change_log,
    demo_gateway,
    read_whole_with_snapshot_deletes,
    sync_once,
    syncd_cli,
    target_rows,
    write_config,
)

SALT_ENV = "SYNCD_TEST_KEY_SALT"
KEY_COLUMN = "  resident_id:\n    source: id\n    type: string\n    length: 16\n"
HASHED_KEY = KEY_COLUMN.replace("length: 16", "length: 64") + (
    f"    transforms: [{{hash: {{salt: '${{{SALT_ENV}}}'}}}}]\n"
)
SHORT_KEY = KEY_COLUMN + "    transforms: [{regex_extract: {pattern: '(.{5})$'}}]\n"
RECORDS = 40


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv(SALT_ENV, "first-salt-Qm7")
    with demo_gateway(monkeypatch, records=RECORDS, seed=11) as gw:
        yield gw


def edit(root: Path, old: str, new: str) -> Path:
    path = root / "datasets" / "residents.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def synced_once(
    root: Path, db_url: str, gateway: Gateway, *, key: str = KEY_COLUMN, snapshot: bool = False
) -> Path:
    cfg = write_config(root, db_url=db_url, gateway_url=gateway.url, replace=[(KEY_COLUMN, key)])
    if snapshot:
        read_whole_with_snapshot_deletes(root, max_ratio=1.0)
    first = sync_once(cfg)
    assert first.ok and first.counts.inserted == RECORDS, first.error
    return cfg


def run_once(cfg: Path) -> tuple[str, str | None, int]:
    result = sync_once(cfg)
    return result.status, result.error, result.counts.inserted


def key_line(dataset_file: Path) -> int:
    lines = dataset_file.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith("key:"))


@pytest.mark.parametrize("snapshot", [False, True], ids=["incremental", "snapshot"])
def test_a_changed_key_transform_is_refused_with_file_line_and_fix(
    tmp_path: Path, sqlite_url: str, gateway: Gateway, snapshot: bool
) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway, snapshot=snapshot)
    entries = len(change_log(sqlite_url))
    dataset_file = edit(tmp_path, KEY_COLUMN, SHORT_KEY)

    status, error, inserted = run_once(cfg)

    assert status == "refused" and inserted == 0
    assert error is not None
    assert error.startswith(f"{dataset_file}:{key_line(dataset_file)}:")
    assert "target.key: dataset residents" in error
    assert "columns.resident_id (line" in error
    assert "revert the change" in error and "syncd reset residents --yes" in error
    assert "--truncate-target" in error
    assert len(target_rows(sqlite_url)) == RECORDS  # nothing written: no duplicates, no flood
    assert len(change_log(sqlite_url)) == entries
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT status FROM syncd_runs ORDER BY started_at")).scalars().all()
    engine.dispose()
    assert runs[-1] == "refused"  # in the audit trail

    edit(tmp_path, SHORT_KEY, KEY_COLUMN)  # reverting is the other way out
    assert run_once(cfg)[:2] == ("success", None)


CODED_KEY = KEY_COLUMN + "    transforms: [{code_table: {table: {'0': zero}}}]\n"
CONCAT_KEY = KEY_COLUMN.replace("    source: id\n", "") + "    transforms: [{concat: {fields: [id]}}]\n"


@pytest.mark.parametrize(
    ("key", "spelled_out"),
    [
        (HASHED_KEY, HASHED_KEY.replace("'}}]", "', algorithm: sha256}}]")),
        (CODED_KEY, CODED_KEY.replace("}}}]", "}, unknown: keep}}]")),
        (SHORT_KEY, SHORT_KEY.replace("'}}]", "', group: 1}}]")),
        (CONCAT_KEY, CONCAT_KEY.replace("[id]}}]", "[id], separator: ''}}]")),
    ],
    ids=["hash-algorithm", "code_table-unknown", "regex_extract-group", "concat-separator"],
)
def test_writing_out_a_default_option_is_not_a_key_change(
    tmp_path: Path, sqlite_url: str, gateway: Gateway, key: str, spelled_out: str
) -> None:
    """The same keys are made whether a transform option's default is written out or left out."""
    assert spelled_out != key
    cfg = synced_once(tmp_path, sqlite_url, gateway, key=key)
    edit(tmp_path, key, spelled_out)
    assert run_once(cfg) == ("success", None, 0)
    edit(tmp_path, spelled_out, key)  # and back
    assert run_once(cfg) == ("success", None, 0)


def test_a_changed_hash_salt_is_refused_and_never_shown(
    tmp_path: Path, sqlite_url: str, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway, key=HASHED_KEY)
    monkeypatch.setenv(SALT_ENV, "second-salt-Zk4")

    status, error, _ = run_once(cfg)

    assert status == "refused"
    assert error is not None and "columns.resident_id" in error
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT definition FROM syncd_key_defs")).scalar_one()
    engine.dispose()
    for salt in ("first-salt-Qm7", "second-salt-Zk4"):
        assert salt not in error and salt not in stored


def test_added_key_column_is_refused_at_target_key(tmp_path: Path, sqlite_url: str, gateway: Gateway) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway)
    dataset_file = edit(tmp_path, "key: [resident_id]", "key: [resident_id, household_id]")
    status, error, _ = run_once(cfg)
    assert status == "refused"
    assert error is not None and f"{dataset_file}:{key_line(dataset_file)}:" in error
    assert "target.key (the key columns) changed" in error


def test_a_database_without_a_stored_definition_records_it_and_runs(
    tmp_path: Path, sqlite_url: str, gateway: Gateway
) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway)
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # as an earlier syncd left it: no such table
        conn.execute(sa.text("DROP TABLE syncd_key_defs"))

    assert run_once(cfg) == ("success", None, 0)

    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT dataset FROM syncd_key_defs")).scalars().all() == ["residents"]
    engine.dispose()
    edit(tmp_path, KEY_COLUMN, SHORT_KEY)  # and from now on a key change is caught
    assert run_once(cfg)[0] == "refused"


def test_a_non_key_mapping_change_still_runs(tmp_path: Path, sqlite_url: str, gateway: Gateway) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway)
    name_column = "    length: 64\n    transforms: [strip]\n"
    edit(tmp_path, name_column, name_column.replace("[strip]", "[strip, upper]"))
    # a key column's validators and nullability do not make keys: no refusal either
    edit(tmp_path, KEY_COLUMN + "    nullable: false\n", KEY_COLUMN + "    validators: [required]\n")
    status, error, inserted = run_once(cfg)
    assert (status, error, inserted) == ("success", None, 0)


def test_plan_and_replay_refuse_too(tmp_path: Path, sqlite_url: str, gateway: Gateway) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway)
    edit(tmp_path, KEY_COLUMN, SHORT_KEY)
    s = Syncer(cfg)
    try:
        ds = s.app.datasets["residents"]
        plan = plan_dataset(s.app, ds, s.engine)
        assert plan.refused is not None and "syncd reset residents --yes" in plan.refused
        with pytest.raises(KeyDefinitionChanged, match="syncd reset residents"):
            replay_quarantine(s.app, ds, s.store)
    finally:
        s.close()


def test_reset_then_a_clean_first_load(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    cfg = synced_once(tmp_path, db_url, gateway)
    edit(tmp_path, KEY_COLUMN, SHORT_KEY)
    assert run_once(cfg)[0] == "refused"

    asked = syncd_cli("-c", str(cfg), "reset", "residents")
    assert asked.returncode == 2, asked.stderr
    assert f"would forget {RECORDS} row key(s)" in asked.stdout and "--yes" in asked.stderr
    assert run_once(cfg)[0] == "refused"  # nothing was changed

    done = syncd_cli("-c", str(cfg), "reset", "residents", "--yes", "--truncate-target")
    assert done.returncode == 0, done.stderr
    assert f"forgot {RECORDS} row key(s)" in done.stdout
    assert f"deleted its {RECORDS} row(s)" in done.stdout
    assert target_rows(db_url) == {}

    status, error, inserted = run_once(cfg)
    assert (status, error, inserted) == ("success", None, RECORDS)
    rows = target_rows(db_url)
    assert len(rows) == RECORDS and all(len(k) == 5 for k in rows)  # keys made the new way only
    assert run_once(cfg) == ("success", None, 0)  # and the definition is recorded again


def test_reset_keeps_the_target_rows_unless_asked(tmp_path: Path, sqlite_url: str, gateway: Gateway) -> None:
    cfg = synced_once(tmp_path, sqlite_url, gateway, snapshot=True)
    done = syncd_cli("-c", str(cfg), "reset", "residents", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"keeps its {RECORDS} row(s)" in done.stdout and "DELETE FROM resident_info;" in done.stdout
    assert "reload it (systemctl reload syncd) before its next run of residents" in done.stdout
    assert len(target_rows(sqlite_url)) == RECORDS
    # a first load again: every row is written over its old self (an insert entry each), none doubled
    assert run_once(cfg) == ("success", None, RECORDS)
    assert len(target_rows(sqlite_url)) == RECORDS


def table_line(dataset_file: Path) -> int:
    lines = dataset_file.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith("table:"))


def count_rows(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608 - a test table name
    finally:
        engine.dispose()


def test_a_new_target_table_is_refused_until_reset(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    """Rows synced into resident_info are remembered in row_state: pointed at a new table, a run
    wrote only what changed upstream (nothing), leaving the new table empty for good."""
    cfg = synced_once(tmp_path, db_url, gateway)
    dataset_file = edit(tmp_path, "table: resident_info", "table: resident_info_v2")

    status, error, inserted = run_once(cfg)

    assert status == "refused" and inserted == 0
    assert error is not None and error.startswith(f"{dataset_file}:{table_line(dataset_file)}:")
    assert "target.table: dataset residents: target.table is now resident_info_v2" in error
    assert "ALTER TABLE resident_info RENAME TO resident_info_v2" in error
    assert "syncd reset residents --yes" in error

    done = syncd_cli("-c", str(cfg), "reset", "residents", "--yes")
    assert done.returncode == 0, done.stderr
    assert run_once(cfg) == ("success", None, RECORDS)  # every row, into the new table
    assert count_rows(db_url, "resident_info_v2") == RECORDS
    assert count_rows(db_url, "resident_info") == RECORDS  # the old table is left alone


def test_a_table_renamed_in_the_database_goes_on(
    tmp_path: Path, db_url: str, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = synced_once(tmp_path, db_url, gateway)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE resident_info RENAME TO resident_info_v2"))
    engine.dispose()
    edit(tmp_path, "table: resident_info", "table: resident_info_v2")

    assert run_once(cfg) == ("success", None, 0)  # the row state still describes the rows

    assert count_rows(db_url, "resident_info_v2") == RECORDS
    assert "state.table_renamed" in capsys.readouterr().out
    edit(tmp_path, KEY_COLUMN, SHORT_KEY)  # the new definition is the one compared from now on
    assert run_once(cfg)[0] == "refused"


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_old_table_gone_and_an_empty_new_table_is_not_a_rename(
    tmp_path: Path, db_url: str, gateway: Gateway
) -> None:
    """The old table dropped and an empty new one created (or a stale one of that name): not a
    rename, the rows are not in the new table."""
    cfg = synced_once(tmp_path, db_url, gateway)
    execute(db_url, "ALTER TABLE resident_info RENAME TO resident_info_v2", "DELETE FROM resident_info_v2")
    edit(tmp_path, "table: resident_info", "table: resident_info_v2")

    status, error, inserted = run_once(cfg)

    assert (status, inserted) == ("refused", 0)
    assert error is not None and "target.table is now resident_info_v2" in error
    assert count_rows(db_url, "resident_info_v2") == 0


def test_a_dropped_target_table_is_refused_not_recreated_empty(
    tmp_path: Path, db_url: str, gateway: Gateway
) -> None:
    cfg = synced_once(tmp_path, db_url, gateway)
    execute(db_url, "DROP TABLE resident_info")
    dataset_file = tmp_path / "datasets" / "residents.yaml"

    status, error, inserted = run_once(cfg)

    assert (status, inserted) == ("refused", 0)
    assert error is not None and error.startswith(f"{dataset_file}:{table_line(dataset_file)}:")
    assert f"table resident_info does not exist but syncd_row_state remembers {RECORDS} rows" in error
    assert "syncd reset residents --yes" in error
    engine = sa.create_engine(db_url)
    try:
        assert not sa.inspect(engine).has_table("resident_info")  # not created again empty
    finally:
        engine.dispose()

    done = syncd_cli("-c", str(cfg), "reset", "residents", "--yes")
    assert done.returncode == 0, done.stderr
    assert run_once(cfg) == ("success", None, RECORDS)  # loaded again
    assert count_rows(db_url, "resident_info") == RECORDS


def test_a_long_composite_key_definition_is_stored(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    names = [f"k{i:02d}_" + "x" * 56 for i in range(12)]
    extra = "".join(f"  {n}:\n    source: id\n    type: string\n    length: 16\n" for n in names)
    cfg = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url, replace=[
        ("key: [resident_id]", "key: [resident_id, " + ", ".join(names) + "]"),
        ("columns:\n", "columns:\n" + extra),
    ])
    status, error, inserted = run_once(cfg)
    assert (status, error, inserted) == ("success", None, RECORDS)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT definition FROM syncd_key_defs")).scalar_one()
    finally:
        engine.dispose()
    assert len(stored) > 1000


def test_printed_statements_quote_a_mixed_case_table(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    """syncd creates ResidentInfo quoted: the ALTER TABLE of the refusal and the DELETE FROM of
    reset must name it the same way, or PostgreSQL folds them to residentinfo and fails."""
    cfg = write_config(
        tmp_path, db_url=db_url, gateway_url=gateway.url,
        replace=[("table: resident_info", "table: ResidentInfo")],
    )
    assert run_once(cfg) == ("success", None, RECORDS)
    edit(tmp_path, "table: ResidentInfo", "table: ResidentInfo2")
    status, error, _ = run_once(cfg)
    assert status == "refused" and error is not None
    rename = re.search(r"\((ALTER TABLE [^;]+);", error)
    assert rename is not None, error
    execute(db_url, rename.group(1))  # as the message says
    assert run_once(cfg) == ("success", None, 0)  # renamed: goes on

    done = syncd_cli("-c", str(cfg), "reset", "residents", "--yes")
    assert done.returncode == 0, done.stderr
    delete = re.search(r"To empty it: (DELETE FROM [^;]+);", done.stdout)
    assert delete is not None, done.stdout
    execute(db_url, delete.group(1))
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(sa.table("ResidentInfo2"))).scalar()
    finally:
        engine.dispose()
    assert rows == 0


def names_fold(url: str) -> bool:
    """Whether the database compares table names without regard to case (as syncd should see it)."""
    engine = sa.create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            return True
        if engine.dialect.name == "postgresql":
            return False
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT @@lower_case_table_names")).scalar()) != "0"
    finally:
        engine.dispose()


def test_a_case_only_change_of_the_table_name(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    """SQLite (and MariaDB with lower_case_table_names) compare table names without case: Resident_Info
    is the very table the rows are in, so that is no change. PostgreSQL: another table, refused."""
    cfg = synced_once(tmp_path, db_url, gateway)
    edit(tmp_path, "table: resident_info", "table: Resident_Info")

    status, error, inserted = run_once(cfg)

    if names_fold(db_url):
        assert (status, error, inserted) == ("success", None, 0)
        edit(tmp_path, KEY_COLUMN, SHORT_KEY)  # the recorded definition is still compared
        assert run_once(cfg)[0] == "refused"
    else:
        assert (status, inserted) == ("refused", 0)
        assert error is not None and "target.table is now Resident_Info" in error
        quoted = sa.create_engine(db_url).dialect.identifier_preparer.quote("Resident_Info")
        assert quoted != "Resident_Info" and f"ALTER TABLE resident_info RENAME TO {quoted}" in error


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_reset_without_yes_creates_nothing(tmp_path: Path, db_url: str, gateway: Gateway) -> None:
    """The dry run says "nothing was changed": it must not create syncd's state tables either."""
    cfg = write_config(tmp_path, db_url=db_url, gateway_url=gateway.url)
    before = table_names(db_url)
    assert not any(name.startswith("syncd_") for name in before)

    asked = syncd_cli("-c", str(cfg), "reset", "residents")

    assert asked.returncode == 2, asked.stderr
    assert "would forget 0 row key(s) and the watermark (none)" in asked.stdout
    assert "table resident_info does not exist" in asked.stdout
    assert "nothing was changed" in asked.stderr
    assert table_names(db_url) == before


GENDER_KEY = ("key: [resident_id]", "key: [resident_id, gender]")
GENDER_TABLE = '{"1": 男, "2": 女, "9": 未说明, 男: 男, 女: 女}'
ETHNICITY_KEY = ("key: [resident_id]", "key: [resident_id, ethnicity]")


def synced_with(root: Path, db_url: str, gateway: Gateway, *replace: tuple[str, str]) -> Path:
    """The demo dataset, changed by ``replace``, after a first run (records whose code is not
    in a code table may be quarantined: they make no row)."""
    cfg = write_config(root, db_url=db_url, gateway_url=gateway.url, replace=replace)
    status, error, inserted = run_once(cfg)
    assert status == "success" and inserted > 0, error
    return cfg


def edit_main(root: Path, old: str, new: str) -> None:
    path = root / "syncd.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_code_table_entries_of_a_quarantining_key_column(
    tmp_path: Path, sqlite_url: str, gateway: Gateway
) -> None:
    """gender is a key column whose code table quarantines unknown codes: a code without an entry
    never made a row, so an added entry changes no stored key; a removed or changed one does."""
    cfg = synced_with(tmp_path, sqlite_url, gateway, GENDER_KEY)

    edit(tmp_path, GENDER_TABLE, GENDER_TABLE.replace('"9": 未说明,', '"9": 未说明, "0": 未知,'))
    assert run_once(cfg)[:2] == ("success", None)  # an added entry: goes on (and is recorded)

    for old, new in [
        ('"9": 未说明, ', ""),  # removed
        ('"2": 女', '"2": F'),  # another value
        ('"1": 男,', '"1": 男, " 1": 其他,'),  # takes " 1", which "1" matched before (stripped)
    ]:
        before = (tmp_path / "datasets" / "residents.yaml").read_text(encoding="utf-8")
        edited = edit(tmp_path, old, new)
        status, error, inserted = run_once(cfg)
        assert (status, inserted) == ("refused", 0), (old, new, error)
        assert error is not None and "columns.gender (line" in error
        edited.write_text(before, encoding="utf-8")
    assert run_once(cfg)[:2] == ("success", None)  # reverted: the recorded entries again


def test_an_added_entry_of_a_named_quarantining_code_table_goes_on(
    tmp_path: Path, sqlite_url: str, gateway: Gateway
) -> None:
    cfg = synced_with(
        tmp_path, sqlite_url, gateway, ETHNICITY_KEY,
        ("{table: ethnicity, unknown: keep}", "{table: ethnicity, unknown: quarantine}"),
    )
    edit_main(tmp_path, '"03": 回族}', '"03": 回族, "04": 藏族}')
    assert run_once(cfg)[:2] == ("success", None)
    edit_main(tmp_path, '"02": 蒙古族, ', "")
    status, error, _ = run_once(cfg)
    assert status == "refused" and error is not None and "columns.ethnicity (line" in error


@pytest.mark.parametrize(
    ("replace", "added"),
    [
        ((ETHNICITY_KEY,), None),  # unknown: keep, the code itself was the key
        ((GENDER_KEY, ("unknown: quarantine", "unknown: null\n      - {default: 未知}")), GENDER_TABLE),
    ],
    ids=["unknown-keep", "unknown-null-then-default"],
)
def test_an_added_code_table_entry_is_refused_where_unmatched_values_made_rows(
    tmp_path: Path, sqlite_url: str, gateway: Gateway, replace: tuple[tuple[str, str], ...], added: str | None
) -> None:
    cfg = synced_with(tmp_path, sqlite_url, gateway, *replace)
    if added is None:
        edit_main(tmp_path, '"03": 回族}', '"03": 回族, "04": 藏族}')
    else:
        edit(tmp_path, added, added.replace('"9": 未说明,', '"9": 未说明, "0": 未知,'))
    status, error, inserted = run_once(cfg)
    assert (status, inserted) == ("refused", 0), error
    assert error is not None and "target.key: dataset residents" in error and "columns." in error
