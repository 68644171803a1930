"""The file source: real CSV (GBK, GB18030, UTF-8 with BOM), XLSX and JSONL files in a drop folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openpyxl import Workbook

from syncd.runner import run_dataset
from syncd.targets import StateStore
from tests.sources_kit import file_config, local_rows, make_app, store_for

ROWS = [("p1", "张三", "10"), ("p2", "李四", "20"), ("p3", "王五", "30")]


@pytest.fixture
def store(sqlite_url: str) -> Iterator[StateStore]:
    s = store_for(sqlite_url)
    yield s
    s.engine.dispose()


def _app(url: str, drop: Path, **src: Any) -> tuple[Any, Any]:
    return make_app(url, {"type": "file", "path": str(drop), "pattern": "*.*", "page_size": 2, **src})


def _csv(path: Path, rows: list[tuple[str, str, str]], encoding: str, marker: bool = True) -> Path:
    text = "id,name,amount\r\n" + "".join(",".join(r) + "\r\n" for r in rows)
    path.write_bytes(text.encode(encoding))
    if marker:
        path.with_name(path.name + ".ok").touch()
    return path


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("gbk", "张三"), ("gb18030", "𠮷野"), ("utf-8-sig", "𠮷野"), ("utf-8", "𠮷野")],
)
def test_csv_encodings_are_detected_and_rare_characters_survive(
    tmp_path: Path, sqlite_url: str, store: StateStore, encoding: str, name: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", [("p1", name, "1"), ("p2", "李四", "2")], encoding)
    app, ds = _app(sqlite_url, drop)
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert local_rows(store) == {"p1": (name, 1), "p2": ("李四", 2)}
    assert (drop / "processed" / "a.csv").exists() and (drop / "processed" / "a.csv.ok").exists()
    assert "processed: 2 records" in (drop / "processed" / "a.csv.reason.txt").read_text(encoding="utf-8")
    assert not (drop / "a.csv").exists()


def test_xlsx_and_jsonl_files(tmp_path: Path, sqlite_url: str, store: StateStore) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["导出时间 2026-03-01"])  # a title row above the header
    sheet.append(["id", "name", "amount"])
    sheet.append(["x1", "𠮷", 7])
    sheet.append(["x2", "赵六", 8.0])
    book.save(drop / "a.xlsx")
    (drop / "a.xlsx.ok").touch()
    app, ds = _app(sqlite_url, drop, header_row=2, pattern="*.xlsx")
    assert run_dataset(app, ds, store).ok
    lines = [json.dumps({"id": "j1", "name": "钱七", "amount": 3}, ensure_ascii=False), ""]
    (drop / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (drop / "b.jsonl.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.jsonl")
    assert run_dataset(app, ds, store).ok
    assert local_rows(store) == {"x1": ("𠮷", 7), "x2": ("赵六", 8), "j1": ("钱七", 3)}


def test_a_half_written_file_is_not_taken(tmp_path: Path, sqlite_url: str, store: StateStore) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", ROWS, "utf-8", marker=False)
    app, ds = _app(sqlite_url, drop)
    assert run_dataset(app, ds, store).counts.fetched == 0  # no marker yet
    app, ds = _app(sqlite_url, drop, complete_when="stable", stable_for="1h")
    assert run_dataset(app, ds, store).counts.fetched == 0  # modified just now
    old = time.time() - 7200
    os.utime(drop / "a.csv", (old, old))
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.inserted == 3


def test_a_file_dropped_twice_is_processed_once(tmp_path: Path, sqlite_url: str, store: StateStore) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", ROWS, "utf-8")
    _csv(drop / "copy.csv", ROWS, "utf-8")  # the same content twice in one run
    app, ds = _app(sqlite_url, drop)
    first = run_dataset(app, ds, store)
    assert first.ok and first.counts.fetched == 3
    _csv(drop / "a.csv", ROWS, "utf-8")  # dropped again after a restart
    second = run_dataset(app, ds, store)
    assert second.ok and second.counts.fetched == 0
    reasons = sorted(p.name for p in (drop / "processed").glob("*.reason.txt"))
    assert len(reasons) == 3 and not list(drop.glob("*.csv"))
    assert sum("duplicate" in p.read_text(encoding="utf-8") for p in (drop / "processed").glob("*.txt")) == 2


def test_files_stay_in_place_when_the_run_fails(tmp_path: Path, sqlite_url: str, store: StateStore) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", [("p1", "张三", "not a number")] * 1, "utf-8")
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop)})
    app = app.model_copy(update={"defaults": app.defaults.model_copy(
        update={"error_limit": app.defaults.error_limit.model_copy(update={"count": 0})})})
    result = run_dataset(app, ds, store)
    assert result.status == "failed"
    assert (drop / "a.csv").exists() and not (drop / "processed").exists()


def test_an_unreadable_file_goes_to_failed_with_the_reason(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "bad.csv").write_bytes("id,name\r\np1,张三\r\n".encode() + b"\xff\xfe\x00")
    (drop / "bad.csv.ok").touch()
    app, ds = _app(sqlite_url, drop, encoding="utf-8")
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 0
    assert (drop / "failed" / "bad.csv").exists()
    assert "not valid text in utf-8" in (drop / "failed" / "bad.csv.reason.txt").read_text(encoding="utf-8")


def test_a_file_its_parser_refuses_goes_to_failed_and_the_others_go_on(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """A CSV cell over the csv module's field limit (a base64 photo) raised csv.Error, which the
    source did not count as the file's problem: the file stayed, and every run failed on it while
    the good files beside it were read again and never recorded."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "photo.csv").write_text("id,name,amount\r\np9," + "A" * 200_000 + ",1\r\n", encoding="utf-8")
    (drop / "photo.csv.ok").touch()
    app, ds = _app(sqlite_url, drop)
    first = run_dataset(app, ds, store)
    assert not first.ok and "photo.csv" in (first.error or "") and "Error" in (first.error or "")
    assert (drop / "failed" / "photo.csv").exists()
    assert "field larger than field limit" in (drop / "failed" / "photo.csv.reason.txt").read_text("utf-8")
    _csv(drop / "good.csv", ROWS, "utf-8")
    second = run_dataset(app, ds, store)
    assert second.ok, second.error
    assert set(local_rows(store)) == {"p1", "p2", "p3"}


def test_a_drop_folder_the_service_cannot_list_fails_the_run(sqlite_url: str, store: StateStore) -> None:
    """Path.glob ignores a folder it may not list: every run 'succeeded' having read nothing."""
    from syncd.errors import PermanentUpstreamError
    from syncd.sources.files.source import FileSource
    from tests.daemon_proc import as_service_user, service_dir

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")  # CI runs as root
    with service_dir() as root:
        drop = root / "drop"
        drop.mkdir(mode=0o700)  # root's, not the service user's
        _csv(drop / "a.csv", ROWS, "utf-8")
        app, ds = _app(sqlite_url, drop)
        source = FileSource.from_config(app, ds)
        try:
            denied = pytest.raises(PermanentUpstreamError, match="cannot be read: Permission denied")
            with as_service_user(), denied:
                source.candidates()
        finally:
            source.close()


def test_a_csv_row_with_more_cells_than_the_header_fails_its_file(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """An unquoted comma in a value shifts the row: it was written by position (the district into
    the name column) and the extra cell dropped without a word."""
    drop = tmp_path / "drop"
    drop.mkdir()
    text = "id,name,amount\r\np1,张三,10\r\np2,北京,朝阳,20\r\np3,王五,30,\r\n"
    (drop / "shifted.csv").write_text(text, encoding="utf-8")
    (drop / "shifted.csv.ok").touch()
    app, ds = _app(sqlite_url, drop)
    result = run_dataset(app, ds, store)
    assert not result.ok and "shifted.csv" in (result.error or "")
    reason = (drop / "failed" / "shifted.csv.reason.txt").read_text(encoding="utf-8")
    assert "row 3 has 4 cells but the header has 3" in reason
    assert "p2" not in local_rows(store)


def test_a_utf8_file_with_one_damaged_character_fails_instead_of_reading_as_gb18030(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """One truncated character made UTF-8 fail and the whole file fall back to GB18030: every row
    was written garbled (张三 as 寮犱笁) and the run succeeded."""
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = "".join(f"p{i},张三{i},{i}\r\n" for i in range(40)).encode()
    (drop / "damaged.csv").write_bytes(b"id,name,amount\r\n" + rows + "p99,李".encode()[:-1] + b",9\r\n")
    (drop / "damaged.csv.ok").touch()
    app, ds = _app(sqlite_url, drop)
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 0
    reason = (drop / "failed" / "damaged.csv.reason.txt").read_text(encoding="utf-8")
    assert "is UTF-8" in reason and "not valid UTF-8" in reason
    assert local_rows(store) == {}
    # a GBK file still reads as GB18030
    _csv(drop / "gbk.csv", [("p1", "张三", "1"), ("p2", "李四", "2")], "gbk")
    assert run_dataset(app, ds, store).ok
    assert local_rows(store) == {"p1": ("张三", 1), "p2": ("李四", 2)}


def test_a_csv_row_with_fewer_cells_than_the_header_fails_its_file(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """A line break inside an unquoted value splits one row into two short ones: they were written
    padded with empty cells (p2 without its amount, and a row keyed 朝阳)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    text = 'id,name,amount\r\np0,"北京\r\n朝阳",5\r\np1,张三,10\r\np2,北京\r\n朝阳,20\r\np3,王五,30\r\n'
    (drop / "broken.csv").write_text(text, encoding="utf-8")
    (drop / "broken.csv.ok").touch()
    app, ds = _app(sqlite_url, drop)
    result = run_dataset(app, ds, store)
    assert not result.ok and "broken.csv" in (result.error or "")
    reason = (drop / "failed" / "broken.csv.reason.txt").read_text(encoding="utf-8")
    # the quoted value on two lines is one row: the short row is the file's 4th, on its 5th line
    assert "broken.csv row 4 (line 5) has 2 cells but the header has 3" in reason
    assert "every row needs all 3 cells" in reason
    rows = local_rows(store)
    assert "p2" not in rows and "朝阳" not in rows


def test_csv_rows_of_blanks_are_skipped_and_xlsx_rows_may_end_early(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """Short rows fail a CSV file, but not a line of blanks; in XLSX empty trailing cells are normal
    (a row ends at its last value) and read as empty."""
    drop = tmp_path / "drop"
    drop.mkdir()
    text = "id,name,amount\r\np1,张三,10\r\n  \r\n,,\r\n\r\np2,李四,\r\n"
    (drop / "a.csv").write_text(text, encoding="utf-8")
    (drop / "a.csv.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.csv")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", "name", "amount"])
    sheet.append(["x1", "赵六"])
    sheet.append(["x2", "钱七", 8])
    book.save(drop / "b.xlsx")
    (drop / "b.xlsx.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.xlsx")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert local_rows(store) == {
        "p1": ("张三", 10), "p2": ("李四", None), "x1": ("赵六", None), "x2": ("钱七", 8)
    }


def _rewrite_xlsx_part(path: Path, part: str, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite one part of an XLSX (a zip of XML) as another exporter would have written it."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, edit(data) if item.filename == part else data)
    tmp.replace(path)


@pytest.mark.parametrize("ref", ["A1", "A1:B3"])
def test_an_xlsx_with_a_wrong_dimension_is_read_whole(
    tmp_path: Path, sqlite_url: str, store: StateStore, ref: str
) -> None:
    """openpyxl's read-only mode trusts <dimension ref>, which WPS writes as "A1": the sheet was read
    as empty (or its rows and columns past the ref cut off) and the file moved to processed/."""
    drop = tmp_path / "drop"
    drop.mkdir()
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", "name", "amount"])
    for i in range(5):
        sheet.append([f"x{i}", "张三", i])
    book.save(drop / "a.xlsx")

    def stale(xml: bytes) -> bytes:
        edited = re.sub(rb'<dimension ref="[^"]*"\s*/>', f'<dimension ref="{ref}"/>'.encode(), xml)
        assert edited != xml
        return edited

    _rewrite_xlsx_part(drop / "a.xlsx", "xl/worksheets/sheet1.xml", stale)
    (drop / "a.xlsx.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.xlsx")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert local_rows(store) == {f"x{i}": ("张三", i) for i in range(5)}


def test_xlsx_values_in_a_column_without_a_header_fail_the_file(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """Values past the header, or under an empty header cell, were dropped without a word (a CSV row
    with more cells than the header fails its file); an empty spacer column is still fine."""
    drop = tmp_path / "drop"
    drop.mkdir()
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", None, "name", "amount"])  # column B: an empty spacer
    sheet.append(["x1", None, "赵六", 1])
    sheet.append(["x2", "  ", "钱七", 2])
    book.save(drop / "spacer.xlsx")
    (drop / "spacer.xlsx.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.xlsx")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert local_rows(store) == {"x1": ("赵六", 1), "x2": ("钱七", 2)}

    for name, row, says in (
        ("past.xlsx", ["x3", None, "孙八", 3, "备注"], "cell E2 holds '备注' but column E has no name"),
        ("under.xlsx", ["x3", "备注", "孙八", 3], "cell B2 holds '备注' but column B has no name"),
    ):
        book = Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(["id", None, "name", "amount"])
        sheet.append(row)
        book.save(drop / name)
        (drop / (name + ".ok")).touch()
        result = run_dataset(app, ds, store)
        assert not result.ok and name in (result.error or "")
        reason = (drop / "failed" / (name + ".reason.txt")).read_text(encoding="utf-8")
        assert f"{says} in the header (row 1)" in reason
    assert "x3" not in local_rows(store)


def test_csv_values_under_an_empty_header_cell_fail_the_file(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """One empty header cell became a column named "" whose values were never mapped (two empty ones
    failed as a repeated name); now an empty column reads, and a value in it fails the file."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("id,,name,,amount\r\np1,,张三,,10\r\n", encoding="utf-8")
    (drop / "a.csv.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.csv")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    (drop / "b.csv").write_text("id,,name,,amount\r\np2,,李四,,20\r\np3,北京,王五,,30\r\n", encoding="utf-8")
    (drop / "b.csv.ok").touch()
    result = run_dataset(app, ds, store)
    assert not result.ok
    reason = (drop / "failed" / "b.csv.reason.txt").read_text(encoding="utf-8")
    assert "row 3 has the value '北京' in column 2, which has no name in the header (row 1)" in reason
    assert local_rows(store) == {"p1": ("张三", 10)}


_NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_RELS = '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"


def _excel_xlsx(path: Path, rows: list[tuple[str, str, int]], padding: int = 0) -> None:
    """An XLSX as Excel and WPS write it: every text in xl/sharedStrings.xml (openpyxl writes none),
    followed by ``padding`` bytes of further distinct strings (streamed into the zip)."""
    strings = ["id", "name", "amount"]
    head = "".join(f'<c r="{c}1" t="s"><v>{i}</v></c>' for i, c in enumerate("ABC"))
    cells = [f'<row r="1">{head}</row>']
    for r, (key, name, amount) in enumerate(rows, start=2):
        strings += [key, name]
        cells.append(f'<row r="{r}"><c r="A{r}" t="s"><v>{len(strings) - 2}</v></c>'
                     f'<c r="B{r}" t="s"><v>{len(strings) - 1}</v></c><c r="C{r}"><v>{amount}</v></c></row>')
    chunk = "".join(f"<si><t>居民{i:07d}号</t></si>" for i in range(1000)).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("[Content_Types].xml", (
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
            f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/></Types>'))
        z.writestr("_rels/.rels", (
            f'{_RELS}<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
            "</Relationships>"))
        z.writestr("xl/workbook.xml", (
            f'<workbook {_NS} xmlns:r="{_REL}"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/>'
            "</sheets></workbook>"))
        z.writestr("xl/_rels/workbook.xml.rels", (
            f'{_RELS}<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>'
            "</Relationships>"))
        z.writestr("xl/worksheets/sheet1.xml", (
            f'<worksheet {_NS}><dimension ref="A1:C{len(rows) + 1}"/><sheetData>{"".join(cells)}'
            "</sheetData></worksheet>"))
        with z.open("xl/sharedStrings.xml", "w", force_zip64=True) as part:
            part.write(f"<sst {_NS}>".encode() + "".join(f"<si><t>{t}</t></si>" for t in strings).encode())
            for _ in range(-(-padding // len(chunk))):
                part.write(chunk)
            part.write(b"</sst>")


def test_an_xlsx_with_shared_strings_too_big_to_load_fails_with_a_reason(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """openpyxl loads all of xl/sharedStrings.xml (every distinct text) before the first row: memory
    grew with the file (DESIGN 4.5). Above XLSX_SHARED_STRINGS_LIMIT the file is refused, unread."""
    from syncd.sources.files.readers import XLSX_SHARED_STRINGS_LIMIT

    drop = tmp_path / "drop"
    drop.mkdir()
    _excel_xlsx(drop / "small.xlsx", [("x1", "张三", 1)], padding=1 << 20)
    (drop / "small.xlsx.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.xlsx")
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert local_rows(store) == {"x1": ("张三", 1)}
    _excel_xlsx(drop / "big.xlsx", [("x2", "李四", 2)], padding=XLSX_SHARED_STRINGS_LIMIT)
    (drop / "big.xlsx.ok").touch()
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 0  # refused before a row of it was read
    reason = (drop / "failed" / "big.xlsx.reason.txt").read_text(encoding="utf-8")
    assert "MiB of shared strings (xl/sharedStrings.xml, uncompressed), over the 64 MiB" in reason
    assert "Re-export the data as CSV" in reason
    assert local_rows(store) == {"x1": ("张三", 1)}


def test_a_gbk_file_with_utf8_rows_appended_fails_instead_of_garbling_them(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """UTF-8 rows after GBK ones: UTF-8 failed on the first row, the file read as GB18030, and every
    UTF-8 row was written garbled (李四 as 鏉庡洓). GBK text that happens to be valid UTF-8 still reads
    as GB18030: 女 (C5 AE) is a two-byte sequence, and forty rows of it before the first invalid byte
    made the file count as damaged UTF-8; some three-character names are three-byte sequences."""
    drop = tmp_path / "drop"
    drop.mkdir()
    gbk = "id,name,amount\r\n" + "".join(f"p{i},张三,{i}\r\n" for i in range(3))
    utf8 = "".join(f"q{i},李四,{i}\r\n" for i in range(50))  # appended by another exporter
    (drop / "mixed.csv").write_bytes(gbk.encode("gbk") + utf8.encode("utf-8"))
    (drop / "mixed.csv.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.csv")
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 0
    reason = (drop / "failed" / "mixed.csv.reason.txt").read_text(encoding="utf-8")
    assert "mixes encodings" in reason and "from line 5 on its rows are UTF-8" in reason
    assert local_rows(store) == {}

    level1 = bytes(range(0xB0, 0xD8)), bytes(range(0xA1, 0xFF))  # GB2312 level-1 hanzi
    chars = [bytes((a, b)).decode("gbk") for a in level1[0] for b in level1[1] if (a, b) < (0xD7, 0xFA)]
    names = ["女" * 3] * 40 + [chars[i % len(chars)] + chars[i * 7 % len(chars)] + chars[i * 31 % len(chars)]
                               for i in range(4000)]
    text = "id,name,amount\r\n" + "".join(f"g{i},{n},{i % 100}\r\n" for i, n in enumerate(names))
    assert sum(1 for n in names if _valid_utf8(n.encode("gbk"))) > 40  # the chance matches are there
    (drop / "gbk.csv").write_bytes(text.encode("gbk"))
    (drop / "gbk.csv.ok").touch()
    app, ds = _app(sqlite_url, drop, pattern="*.csv", page_size=1000)
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == len(names), result.error
    assert local_rows(store)["g0"] == ("女女女", 0)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_files_named_in_gbk_are_recorded_moved_and_reported(tmp_path: Path, db_url: str) -> None:
    """A name of GBK bytes (a Windows SFTP client, unzip of a Windows zip) is not UTF-8: recording it in
    the ledger raised UnicodeEncodeError, so no file of the run was recorded or moved, and a reason
    naming it could not be written. The name is stored and reported with its bytes as \\xNN."""
    store = store_for(db_url)
    try:
        drop = tmp_path / "drop"
        drop.mkdir()
        good, bad = os.fsdecode("人口数据.csv".encode("gbk")), os.fsdecode("错误.csv".encode("gbk"))
        (drop / good).write_bytes(b"id,name,amount\r\np1,x,1\r\n")
        (drop / (good + ".ok")).touch()
        _csv(drop / "b.csv", [("p2", "李四", "2")], "utf-8")
        app, ds = _app(db_url, drop, pattern="*.csv")
        result = run_dataset(app, ds, store)
        assert result.ok and not result.warnings, (result.error, result.warnings)
        assert set(local_rows(store)) == {"p1", "p2"}
        assert [p.name for p in drop.iterdir()] == ["processed"]
        assert (drop / "processed" / good).exists() and (drop / "processed" / (good + ".ok")).exists()
        with store.engine.connect() as conn:
            names = set(conn.execute(sa.text("SELECT file_name FROM syncd_files")).scalars())
        assert names == {"\\xc8\\xcb\\xbf\\xda\\xca\\xfd\\xbe\\xdd.csv", "b.csv"}

        (drop / bad).write_bytes(b"id,name,amount\r\np3,x\r\n")  # a short row
        (drop / (bad + ".ok")).touch()
        result = run_dataset(app, ds, store)
        says = "\\xb4\\xed\\xce\\xf3.csv row 2 has 2 cells"
        assert result.status == "failed" and says in (result.error or "")
        assert says in (drop / "failed" / (bad + ".reason.txt")).read_text("utf-8")
    finally:
        store.engine.dispose()


def test_a_symlink_in_the_drop_folder_is_not_followed(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """The uploader is another trust domain (an SFTP client can create links): a link to a file
    outside the folder was read, and the service's secrets ended up in the quarantine's raw
    payloads. A link goes to failed/ (the link itself, not what it points at), with the reason."""
    drop = tmp_path / "drop"
    drop.mkdir()
    secrets = tmp_path / "etc-syncd" / "secrets.env"  # readable by the service, not by the uploader
    secrets.parent.mkdir()
    secrets.write_text("id,name,amount\r\nDB_PASSWORD=hunter2,x,1\r\n", encoding="utf-8")
    (drop / "a.csv").symlink_to(secrets)
    (drop / "b.csv").symlink_to(tmp_path / "nowhere.csv")  # a dangling link
    _csv(drop / "c.csv", ROWS, "utf-8")
    app, ds = _app(sqlite_url, drop, pattern="*.csv")
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 3, result.error
    assert set(local_rows(store)) == {"p1", "p2", "p3"}
    with store.engine.connect() as conn:
        assert not conn.execute(sa.text("SELECT * FROM syncd_quarantine")).all()
    for name in ("a.csv", "b.csv"):
        assert (drop / "failed" / name).is_symlink()
        reason = (drop / "failed" / (name + ".reason.txt")).read_text(encoding="utf-8")
        assert f"{name} is a symbolic link: syncd reads only files placed in the drop folder itself" in reason
    assert secrets.read_text(encoding="utf-8").startswith("id,name")  # the target is left alone


def test_a_file_replaced_by_a_link_after_the_listing_is_not_followed(tmp_path: Path) -> None:
    """Between listing the folder and opening the file, the uploader may swap in a link or a FIFO:
    files are opened with O_NOFOLLOW and must be regular files."""
    from syncd.config.model import FileSourceConfig
    from syncd.sources.files import FileProblem, inspect_file, read_records

    cfg = FileSourceConfig(type="file", path=str(tmp_path), pattern="*.csv")
    secrets = tmp_path / "secrets.csv"
    secrets.write_text("id,name\r\nhunter2,x\r\n", encoding="utf-8")
    (tmp_path / "a.csv").symlink_to(secrets)
    with pytest.raises(FileProblem, match=r"a\.csv is a symbolic link"):
        inspect_file(tmp_path / "a.csv", cfg)
    with pytest.raises(FileProblem, match=r"a\.csv is a symbolic link"):
        next(read_records(tmp_path / "a.csv", cfg, "utf-8"))
    os.mkfifo(tmp_path / "f.csv")
    with pytest.raises(FileProblem, match=r"f\.csv is not a regular file"):
        inspect_file(tmp_path / "f.csv", cfg)  # not left waiting for a writer


def test_a_marker_older_than_its_file_does_not_certify_it(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """The daily export rewrites 人口.csv under the same name. A failed run left 人口.csv.ok in place;
    the next day syncd found the export half rewritten and took the old marker for "complete": the
    partial file was read, recorded and moved to processed/."""
    drop = tmp_path / "drop"
    drop.mkdir()
    data = _csv(drop / "人口.csv", [("p1", "张三", "not a number")], "utf-8")
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop), "pattern": "*.csv"})
    app = app.model_copy(update={"defaults": app.defaults.model_copy(
        update={"error_limit": app.defaults.error_limit.model_copy(update={"count": 0})})})
    assert run_dataset(app, ds, store).status == "failed"
    assert data.exists() and (drop / "人口.csv.ok").exists()
    marker_time = (drop / "人口.csv.ok").stat().st_mtime_ns
    # day 2: the exporter has written 2 of its 3 rows (its marker comes when it is done)
    data.write_text("id,name,amount\r\np1,张三,1\r\np2,李四,2\r\n", encoding="utf-8")
    os.utime(data, ns=(marker_time + 10**9, marker_time + 10**9))
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 0, result.error
    assert data.exists() and not (drop / "processed").exists()
    # done: the last row and then the marker, written again
    with data.open("a", encoding="utf-8", newline="") as fh:
        fh.write("p3,王五,3\r\n")
    os.utime(data, ns=(marker_time + 10**9, marker_time + 10**9))
    os.utime(drop / "人口.csv.ok", ns=(marker_time + 2 * 10**9, marker_time + 2 * 10**9))
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.fetched == 3, result.error
    assert (drop / "processed" / "人口.csv").exists()


@pytest.mark.parametrize("complete_when", ["marker", "stable"])
def test_a_file_written_to_while_it_is_read_stays_for_the_next_run(
    tmp_path: Path, sqlite_url: str, complete_when: str
) -> None:
    """A file that changes after syncd judged it complete (an exporter starting again under the same
    name, or appending past stable_for) was read, hashed before the change, recorded and moved:
    now the run fails and the file stays, to be read again whole."""
    from syncd.errors import TransientUpstreamError
    from syncd.sources.base import Window
    from syncd.sources.files.source import FileSource

    drop = tmp_path / "drop"
    drop.mkdir()
    data = _csv(drop / "a.csv", [("p1", "张三", "1"), ("p2", "李四", "2"), ("p3", "王五", "3")], "utf-8")
    old = time.time() - 7200
    os.utime(data, (old, old))
    app, ds = _app(sqlite_url, drop, complete_when=complete_when, stable_for="1h")
    source = FileSource.from_config(app, ds)
    try:
        pages = source.read(Window(since=None, until=None))
        assert [r["id"] for r in next(pages).records] == ["p1", "p2"]
        with data.open("a", encoding="utf-8", newline="") as fh:  # the sender starts writing again
            fh.write("p4,赵六,4\r\n")
        changed = r"a\.csv was read, but it changed while syncd read it"
        with pytest.raises(TransientUpstreamError, match=changed):
            list(pages)
        source.finish(False)
    finally:
        source.close()
    assert data.exists() and not (drop / "processed").exists() and not (drop / "failed").exists()


# ---------------------------------------------------------------- each file committed with its last batch

def _dated(path: Path, rows: list[tuple[str, str, str]], mtime: float) -> Path:
    """A UTF-8 CSV with its marker, modified at ``mtime`` (files are taken oldest first)."""
    _csv(path, rows, "utf-8")
    os.utime(path, (mtime, mtime))
    return path


def _feed(store: StateStore) -> list[tuple[str, str]]:
    """The change feed as (op, row key), in order."""
    return [(c["op"], c["row_key"]) for c in store.changes("people", limit=10_000)]


def _ledger(store: StateStore) -> dict[str, int]:
    """File name -> records, of the people dataset's ledger entries."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT file_name, records FROM syncd_files WHERE dataset = 'people'"))
        return {str(r[0]): int(r[1]) for r in rows}


def _no_errors(app: Any) -> Any:
    """``app`` with ``error_limit.count: 0``: one quarantined record fails the run."""
    limit = app.defaults.error_limit.model_copy(update={"count": 0})
    return app.model_copy(update={"defaults": app.defaults.model_copy(update={"error_limit": limit})})


def test_files_committed_before_a_failed_run_are_not_read_again(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """a.csv and b.csv committed, then c.csv failed the run: both stayed out of the ledger and the
    next run read them again, writing p1 back to a.csv's 10 and then forward to b.csv's 20 (two
    update entries in the change feed for a row that did not change upstream)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    t = 1_700_000_000
    _dated(drop / "a.csv", [("p1", "张三", "10")], t)  # the older delivery
    _dated(drop / "b.csv", [("p1", "张三", "20")], t + 60)  # the newer one corrects p1
    (drop / "c.csv").write_text("id,name,amount\r\np7,王五,7\r\np8,赵六,8\r\np9,钱七\r\n", encoding="utf-8")
    os.utime(drop / "c.csv", (t + 120, t + 120))
    (drop / "c.csv.ok").touch()  # its short row fails it: it goes to failed/ and the run fails
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop), "page_size": 2}, batch_size=1)
    first = run_dataset(app, ds, store)
    assert not first.ok and (drop / "failed" / "c.csv").exists()
    assert local_rows(store)["p1"] == ("张三", 20)
    assert _ledger(store) == {"a.csv": 1, "b.csv": 1}
    assert (drop / "a.csv").exists() and (drop / "b.csv").exists()  # nothing moves in a failed run
    feed = _feed(store)
    second = run_dataset(app, ds, store)
    assert second.ok, second.error
    assert second.counts.fetched == 0 and _feed(store) == feed
    assert local_rows(store)["p1"] == ("张三", 20)
    # the next run moves them, saying their records were committed
    reason = (drop / "processed" / "a.csv.reason.txt").read_text(encoding="utf-8")
    assert "already processed as a.csv" in reason and "1 records committed" in reason
    assert not list(drop.glob("*.csv"))


def test_a_crash_after_the_last_commit_reads_no_file_again(
    tmp_path: Path, sqlite_url: str, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after every batch committed, before ``finish`` moved the files."""
    from syncd.sources.files.source import FileSource

    drop = tmp_path / "drop"
    drop.mkdir()
    t = 1_700_000_000
    _dated(drop / "a.csv", [("p1", "张三", "10"), ("p2", "李四", "1")], t)
    _dated(drop / "b.csv", [("p1", "张三", "20")], t + 60)
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop), "page_size": 2}, batch_size=1)
    with monkeypatch.context() as m:
        m.setattr(FileSource, "finish", lambda self, success: None)  # killed here
        assert run_dataset(app, ds, store).ok
    feed = _feed(store)
    assert feed == [("insert", "p1"), ("insert", "p2"), ("update", "p1")]
    again = run_dataset(app, ds, store)
    assert again.ok and again.counts.fetched == 0
    assert _feed(store) == feed and local_rows(store)["p1"] == ("张三", 20)
    assert sorted(p.name for p in (drop / "processed").glob("*.csv")) == ["a.csv", "b.csv"]


def test_a_file_over_the_error_limit_is_read_again_alone(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """c.csv is over the error limit: it stays for the next run (the operator fixes the mapping or
    the file) and every run fails on it, as before; a.csv and b.csv, committed within the limit,
    are not read again (every run wrote p1 back to 10 and forward to 20 again: two entries each)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    t = 1_700_000_000
    _dated(drop / "a.csv", [("p1", "张三", "10")], t)
    _dated(drop / "b.csv", [("p1", "张三", "20")], t + 60)
    _dated(drop / "c.csv", [("p9", "王五", "九")], t + 120)  # amount is not a number
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop), "page_size": 2}, batch_size=1)
    app = _no_errors(app)
    for _ in range(3):
        result = run_dataset(app, ds, store)
        assert result.status == "failed" and "error limit" in (result.error or "")
        assert [key for _, key in _feed(store)] == ["p1", "p1"]
    assert _ledger(store) == {"a.csv": 1, "b.csv": 1}
    assert (drop / "c.csv").exists() and result.counts.fetched == 1
    assert local_rows(store)["p1"] == ("张三", 20)


def test_a_file_whose_ratio_fails_alone_is_recorded_when_the_run_ends_within_the_limit(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """1 of a.csv's 2 records is quarantined: over the 10 % ratio if the run ended there, so a.csv's
    entry waits; b.csv's 20 good records bring the run within it, and the run records a.csv too."""
    drop = tmp_path / "drop"
    drop.mkdir()
    t = 1_700_000_000
    _dated(drop / "a.csv", [("p1", "张三", "10"), ("p2", "李四", "二")], t)
    _dated(drop / "b.csv", [(f"q{i}", "王五", str(i)) for i in range(20)], t + 60)
    app, ds = make_app(sqlite_url, {"type": "file", "path": str(drop), "page_size": 50}, batch_size=50)
    result = run_dataset(app, ds, store)
    assert result.ok, result.error
    assert result.counts.quarantined == 1
    assert _ledger(store) == {"a.csv": 2, "b.csv": 20}
    assert not list(drop.glob("*.csv"))


def test_a_snapshot_of_several_files_deletes_only_after_a_run_read_all_of_them(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """A delivery of a.csv and b.csv is one snapshot. b.csv failed the run after a.csv committed;
    the fixed b2.csv alone must not delete a.csv's rows (a.csv is in the ledger, not read again)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    t = 1_700_000_000
    source = {"type": "file", "path": str(drop), "page_size": 2}
    target = {"snapshot_delete": {"max_ratio": 1.0}}
    app, ds = make_app(sqlite_url, source, batch_size=1, target=target)
    _dated(drop / "s0.csv", ROWS, t)
    assert run_dataset(app, ds, store).ok
    _dated(drop / "a.csv", [("p1", "张三", "11")], t + 60)
    (drop / "b.csv").write_text("id,name,amount\r\np2,李四\r\n", encoding="utf-8")  # short: fails the run
    os.utime(drop / "b.csv", (t + 120, t + 120))
    (drop / "b.csv.ok").touch()
    assert not run_dataset(app, ds, store).ok
    _dated(drop / "b2.csv", [("p2", "李四", "22")], t + 180)
    fixed = run_dataset(app, ds, store)
    assert fixed.ok, fixed.error
    assert fixed.counts.deleted == 0
    assert local_rows(store) == {"p1": ("张三", 11), "p2": ("李四", 22), "p3": ("王五", 30)}
    _dated(drop / "c.csv", [("p1", "张三", "11"), ("p2", "李四", "22")], t + 240)  # the next whole one
    later = run_dataset(app, ds, store)
    assert later.ok and later.counts.deleted == 1 and set(local_rows(store)) == {"p1", "p2"}


def test_a_plan_records_no_file(tmp_path: Path, sqlite_url: str, store: StateStore) -> None:
    from syncd.ops.plan import plan_dataset

    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", ROWS, "utf-8")
    app, ds = _app(sqlite_url, drop)
    planned = plan_dataset(app, ds, store.engine)
    assert planned.fetched == 3
    assert not store.has_table("syncd_files") or _ledger(store) == {}
    result = run_dataset(app, ds, store)
    assert result.ok and result.counts.inserted == 3


# ---------------------------------------------------------------- syncd reset forgets the file ledger

def test_after_syncd_reset_a_file_dataset_loads_its_files_again(
    tmp_path: Path, sqlite_url: str, store: StateStore
) -> None:
    """``syncd reset`` left ``syncd_files`` alone: the files dropped again to reload were skipped as
    duplicates, and the table stayed empty after ``--truncate-target``."""
    from tests.e2e import syncd_cli

    drop = tmp_path / "drop"
    drop.mkdir()
    _csv(drop / "a.csv", ROWS, "utf-8")
    cfg = file_config(tmp_path / "cfg", sqlite_url, drop)
    assert syncd_cli("-c", str(cfg), "sync", "people").returncode == 0
    assert set(local_rows(store)) == {"p1", "p2", "p3"} and _ledger(store) == {"a.csv": 3}
    asked = syncd_cli("-c", str(cfg), "reset", "people")
    assert asked.returncode == 2, asked.stdout + asked.stderr
    assert "file ledger: would forget 1 processed file(s) of people" in asked.stdout
    assert f"copy them back from {drop}/processed/ into {drop}" in asked.stdout
    assert _ledger(store) == {"a.csv": 3}  # the dry run changes nothing
    done = syncd_cli("-c", str(cfg), "reset", "people", "--yes", "--truncate-target")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "file ledger: forgot 1 processed file(s) of people" in done.stdout
    assert local_rows(store) == {} and _ledger(store) == {}
    shutil.copy(drop / "processed" / "a.csv", drop / "a.csv")  # dropped again to reload
    (drop / "a.csv.ok").touch()
    assert syncd_cli("-c", str(cfg), "sync", "people").returncode == 0
    assert local_rows(store) == {"p1": ("张三", 10), "p2": ("李四", 20), "p3": ("王五", 30)}
    assert _ledger(store) == {"a.csv": 3}
