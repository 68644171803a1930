"""MariaDB bulk writes: syncd writes the values as SQL literals itself (syncd.targets.dialects).

This is SQL escaping, so it is proven against the real server: hostile strings written through
``BulkWriter`` read back exactly, in the default sql_mode (a backslash escapes) and under
``NO_BACKSLASH_ESCAPES`` (only the quote is doubled); the other classes are spelled exactly as
PyMySQL spells them; statements are split below the size limit; a failed statement is reported
without the values.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from syncd.targets import create_target_engine
from syncd.targets.dialects import BulkWriter, mysql_literal_function

pytestmark = pytest.mark.mariadb

HOSTILE = [
    "",
    "'",
    "''",
    "\\",
    "\\\\",
    "\\'",
    "'\\",
    "ends with a backslash\\",
    "\\' OR 1=1 -- ",
    "'); DROP TABLE t; --",
    "\0",
    "a\0b\\0c",
    "\n\r\t\x1a\b",
    '"double" and `back`',
    "%s %(x)s %%",
    "/* comment */ ;",
    "中文姓名 张三",
    "𠀀𪚥 astral 😀",
    "\u00a0\u3000 spaces  ",
    "\\N",
    "_binary X'00'",
]
ALPHABET = ["\\", "'", '"', "\0", "\n", "\r", "\x1a", "%", "s", "a", "中", "😀", " ", "`", ";", "-"]


def _random_strings(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(params=["default", "no_backslash_escapes"])
def engine(request: pytest.FixtureRequest, mariadb_url: str) -> Iterator[sa.Engine]:
    eng = create_target_engine(mariadb_url)
    if request.param == "no_backslash_escapes":

        @event.listens_for(eng, "connect")
        def _mode(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    yield eng
    eng.dispose()


def _table(engine: sa.Engine) -> sa.Table:
    meta = sa.MetaData()
    table = sa.Table(
        "lit",
        meta,
        sa.Column("k", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("s", sa.Text),
        sa.Column("d", sa.Date),
        sa.Column("dt", sa.DateTime),
        sa.Column("n", sa.Numeric(20, 6)),
        sa.Column("i", sa.BigInteger),
        sa.Column("flag", sa.Boolean),
        sa.Column("f", sa.Float),
        sa.Column("raw", sa.LargeBinary),
    )
    meta.create_all(engine)
    return table


COLUMNS = ("k", "s", "d", "dt", "n", "i", "flag", "f", "raw")


def _read(engine: sa.Engine, table: sa.Table) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {row[0]: tuple(row) for row in conn.execute(sa.select(table).order_by(table.c.k))}


def test_hostile_strings_read_back_exactly(engine: sa.Engine) -> None:
    table = _table(engine)
    texts = HOSTILE + _random_strings(400)
    rows = [(k, text, None, None, None, None, None, None, None) for k, text in enumerate(texts)]
    writer = BulkWriter(engine, table, COLUMNS, key=("k",), update=COLUMNS[1:])
    with engine.begin() as conn:
        writer.write(conn, rows)
    assert {k: row[1] for k, row in _read(engine, table).items()} == dict(enumerate(texts))
    # the upsert path: every string again, reversed, over the same keys
    again = [(k, text[::-1], *rest) for k, text, *rest in rows]
    with engine.begin() as conn:
        writer.write(conn, again)
    assert {k: row[1] for k, row in _read(engine, table).items()} == {k: t[::-1] for k, t in enumerate(texts)}
    with engine.connect() as conn:  # nothing ran but the inserts: the table is still whole
        assert conn.execute(sa.text("SELECT COUNT(*) FROM lit")).scalar() == len(texts)


def test_every_class_reads_back_as_written(engine: sa.Engine) -> None:
    table = _table(engine)
    aware = datetime(2024, 5, 1, 8, 30, tzinfo=timezone(timedelta(hours=8)))
    rows = [
        (
            1,
            "x",
            date(2024, 2, 29),
            datetime(2024, 5, 1, 8, 30, 0, 123456),
            Decimal("-1234.5"),
            2**62,
            True,
            1.5,
            b"\x00'\\\xff",
        ),
        (2, None, date(1, 1, 1), datetime(2024, 5, 1, 8, 30), Decimal("0.000001"), -7, False, -0.25, b""),
        (3, "y", date(9999, 12, 31), aware, Decimal("1E+3"), 0, None, 1e-300, None),
        (4, None, None, datetime(2024, 5, 1, tzinfo=UTC), Decimal("-0"), None, None, None, None),
    ]
    writer = BulkWriter(engine, table, COLUMNS, key=("k",), update=COLUMNS[1:])
    with engine.begin() as conn:
        writer.write(conn, rows)
    got = _read(engine, table)
    assert got[1] == (
        1,
        "x",
        date(2024, 2, 29),
        datetime(2024, 5, 1, 8, 30, 0),
        Decimal("-1234.500000"),
        2**62,
        True,
        1.5,
        b"\x00'\\\xff",
    )  # DATETIME without fsp keeps seconds
    assert got[2] == (
        2,
        None,
        date(1, 1, 1),
        datetime(2024, 5, 1, 8, 30),
        Decimal("0.000001"),
        -7,
        False,
        -0.25,
        b"",
    )
    # an aware datetime is written as PyMySQL writes it: the wall time, the offset dropped
    assert got[3][3] == datetime(2024, 5, 1, 8, 30) and got[3][4] == Decimal("1000.000000")
    assert got[4][3] == datetime(2024, 5, 1) and got[4][4] == Decimal("0")


def test_literals_are_pymysqls_for_every_class_but_str(engine: sa.Engine) -> None:
    values: list[Any] = [
        None,
        0,
        -1,
        2**70,
        True,
        False,
        1.5,
        float("1e300"),
        date(5, 1, 2),
        date(2024, 2, 29),
        datetime(2024, 5, 1, 8, 30),
        datetime(2024, 5, 1, 8, 30, 0, 5),
        datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        Decimal("1.50"),
        Decimal("-0"),
        Decimal("1E+5"),
        Decimal("1E-7"),
        b"\x00\xff'",
        bytearray(b"ab"),
    ]
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        literal = mysql_literal_function(raw)
        for value in values:
            assert literal(value) == raw.escape(value), value
        for bad in (Decimal("NaN"), Decimal("Infinity"), float("nan")):
            with pytest.raises(raw.ProgrammingError):  # PyMySQL's own refusal
                literal(bad)


def test_str_literals_mean_what_pymysqls_mean(engine: sa.Engine) -> None:
    """PyMySQL escapes more characters (newline, double quote); the server reads both the same."""
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection  # a PyMySQL connection
        literal = mysql_literal_function(raw)
        texts = HOSTILE + _random_strings(100, seed=11)
        with raw.cursor() as cursor:  # no parameters: nothing but the literals is interpreted
            cursor.execute("SELECT " + ", ".join(literal(t) for t in texts))
            ours = cursor.fetchone()
            cursor.execute("SELECT " + ", ".join(raw.escape(t) for t in texts))
            theirs = cursor.fetchone()
        assert ours == theirs == tuple(texts)


def test_statements_stay_under_the_size_limit(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from syncd.targets import dialects

    monkeypatch.setattr(dialects, "MYSQL_STATEMENT_BYTES", 20_000)
    table = _table(engine)
    text = "张三李四" * 250  # 1,000 characters, 3,000 bytes
    rows = [(k, text, None, None, None, None, None, None, None) for k in range(60)]
    writer = BulkWriter(engine, table, COLUMNS)
    with engine.begin() as conn:

        def inserts() -> int:
            row = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Com_insert'").one()
            return int(row[1])

        before = inserts()
        writer.write(conn, rows)
        sent = inserts() - before
    # 60 rows of ≈ 3 kB in statements of at most 20 kB: at least 10 statements, all rows kept
    assert sent >= 60 * 3_000 // 20_000 + 1
    assert len(_read(engine, table)) == 60


def test_a_failed_statement_names_no_value(engine: sa.Engine) -> None:
    table = _table(engine)
    writer = BulkWriter(engine, table, COLUMNS)  # a plain insert: a second time is a duplicate key
    secret = "110101199003077777"
    rows = [(1, secret, None, None, None, None, None, None, None)]
    with engine.begin() as conn:
        writer.write(conn, rows)
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        writer.write(conn, rows)
    assert "INSERT INTO" in str(caught.value)
    assert secret not in str(caught.value).replace("Duplicate entry '1'", "")


def test_a_connection_in_another_charset_keeps_pymysqls_own_escaping(mariadb_url: str) -> None:
    """GBK has multi-byte characters whose second byte is 0x5c (a backslash): there only
    PyMySQL's executemany, which encodes in the connection's charset, may write the rows."""
    url = sa.make_url(mariadb_url).update_query_dict({"charset": "gbk"})
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE g (k INT PRIMARY KEY, s VARCHAR(64)) CHARACTER SET gbk")
        table = sa.Table("g", sa.MetaData(), autoload_with=engine)
        # 運 and 誠 end with the byte 0x5c in GBK: escaped as UTF-8 text, their backslash byte would
        # be doubled or would swallow the closing quote
        texts = ["運", "誠'", "運' OR '1'='1", "'\\'", "中文"]
        with engine.begin() as conn, statement_sql(conn) as sent:
            BulkWriter(engine, table, ("k", "s")).write(conn, list(enumerate(texts)))
        assert sent == ["INSERT INTO g (k, s) VALUES (%s, %s)"]  # through SQLAlchemy and PyMySQL
        with engine.connect() as conn:
            assert [r[0] for r in conn.execute(sa.text("SELECT s FROM g ORDER BY k"))] == texts
    finally:
        engine.dispose()


@contextmanager
def statement_sql(conn: sa.Connection) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(conn, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(conn, "before_cursor_execute", record)
