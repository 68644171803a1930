"""The ``id_number`` validator's latest birth date is today in the configured ``timezone:``, not on
the host's clock: on a UTC host Beijing's day starts at 16:00 UTC, and an ID number born on
Beijing's today was rejected as "in the future" until 08:00 Beijing time."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from syncd.config.model import DatasetConfig
from syncd.errors import RecordError
from syncd.mapping import compile_mapping
from syncd.runner import run_dataset
from tests.e2e import ListSource
from tests.sources_kit import make_app, store_for
from tests.test_mapping_validators import id_number

COLUMNS = {
    "pid": {"source": "id", "type": "string", "length": 32, "nullable": False},
    "idn": {"source": "name", "type": "string", "length": 18, "validators": ["id_number"]},
}


def test_the_latest_birth_date_is_the_day_compile_mapping_is_given() -> None:
    ds = DatasetConfig.model_validate({
        "name": "t", "source": {"type": "http", "connection": "gw", "path": "/x"},
        "authorization": {"approval_code": "a", "fields": ["id", "name"], "valid_from": "2020-01-01",
                          "valid_until": "2099-01-01"},
        "target": {"table": "t", "key": ["pid"]}, "columns": COLUMNS,
    })
    day = date(2031, 5, 17)  # after the host's date: only ``today`` can let it pass
    for inline in (True, False):
        mapping = compile_mapping(ds, today=day, inline=inline)
        assert mapping({"id": "a", "name": id_number("330102", day, 1)})[1] == id_number("330102", day, 1)
        try:
            mapping({"id": "b", "name": id_number("330102", day + timedelta(days=1), 1)})
        except RecordError as exc:
            assert "not plausible (before 1900 or in the future)" in str(exc)
        else:
            raise AssertionError("a birth date after today passed")


def test_a_run_checks_birth_dates_against_its_own_day_in_the_configured_zone(sqlite_url: str) -> None:
    # 23:30 UTC is 07:30 the next day in Asia/Shanghai (the configured zone); a day after the host's
    # date, so the host's clock cannot be what lets the ID through
    utc_day = datetime.now(UTC).date() + timedelta(days=2)
    now = datetime.combine(utc_day, time(23, 30), tzinfo=UTC)
    beijing_day = utc_day + timedelta(days=1)
    app, ds = make_app(sqlite_url, {"type": "sql", "connection": "qzk", "table": "people", "key": ["id"]},
                       connections={"qzk": {"type": "sql", "url": "sqlite://"}}, columns=COLUMNS)
    assert app.timezone == "Asia/Shanghai"
    store = store_for(sqlite_url)
    try:
        born_today = id_number("330102", beijing_day, 7)
        born_tomorrow = id_number("330102", beijing_day + timedelta(days=1), 8)
        records = [{"id": "today", "name": born_today}, {"id": "tomorrow", "name": born_tomorrow}]
        records += [{"id": f"p{i}", "name": None} for i in range(18)]
        result = run_dataset(app, ds, store, now=now, source_factory=lambda a, d: ListSource([records]))
        assert result.ok, result.error
        assert (result.counts.inserted, result.counts.quarantined) == (19, 1)
        with store.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT idn FROM people_local WHERE pid = 'today'")).scalar_one()
            reason = conn.execute(sa.text("SELECT reason FROM syncd_quarantine")).scalar_one()
        assert stored == born_today
        assert "in the future" in reason
    finally:
        store.engine.dispose()
