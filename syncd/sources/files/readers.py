"""Reading one dropped file: content hash, encoding, and records from CSV, XLSX or JSONL.

* :func:`inspect_file` reads the bytes once, computing the sha256 (the file's identity) and
  choosing the encoding: the configured one, or the first of UTF-8 with BOM → UTF-8 → GB18030
  that decodes the whole file (GBK is a subset of GB18030). Nothing is decoded twice in memory:
  the check runs incremental decoders over 1 MiB blocks.
* :func:`read_records` streams records: CSV rows as dicts of strings (header row and delimiter
  configurable), XLSX rows as dicts of cell values (openpyxl ``read_only``/``values_only``, so a
  big sheet is never loaded whole), JSONL lines as dicts. A column without a name in the header
  may only hold blanks: a value in it (or past the header's last column) fails the file.
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from syncd.config.model import FileSourceConfig

__all__ = [
    "FALLBACK_ENCODINGS",
    "XLSX_SHARED_STRINGS_LIMIT",
    "FileProblem",
    "Inspected",
    "file_format",
    "inspect_file",
    "name_text",
    "read_records",
]

FALLBACK_ENCODINGS = ("utf-8-sig", "utf-8", "gb18030")
_BLOCK = 1 << 20
XLSX_SHARED_STRINGS_LIMIT = 64 << 20
"""Most uncompressed bytes of an XLSX's shared strings part (xl/sharedStrings.xml) syncd reads: that
part holds every distinct text of the workbook and openpyxl loads it whole before the first row, so
memory would grow with the file (DESIGN 4.5). Such a file is refused with a reason asking for CSV."""
_UTF8_EVIDENCE = 16
"""Chinese characters a file must have decoded as UTF-8 before its first invalid byte to count as
damaged UTF-8 rather than GB18030: GBK text breaks UTF-8 at once (its characters rarely form valid
three-byte UTF-8 sequences, so sixteen in a row before the first invalid one do not happen). Two-byte
sequences do not count: many single GBK characters are one (女 is C5 AE, U+016E)."""


class FileProblem(Exception):
    """A file that cannot be read as configured; the reason goes into ``name.reason.txt``."""


@dataclass(frozen=True, slots=True)
class Inspected:
    sha256: str
    size: int
    encoding: str | None  # None for XLSX (a zip of XML, always UTF-8 inside)


def name_text(name: str) -> str:
    """A file name as syncd stores, logs and compares it: the name itself, or for a name whose bytes are
    not UTF-8 (a GBK name left by a Windows SFTP client or unzip, held as surrogate escapes) its ASCII
    with every other byte as ``\\xNN`` (as ``ls -b`` shows it, in hex). Files are still opened and
    moved by their real name."""
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("ascii", "backslashreplace")


def _shown(path: Path) -> str:
    return name_text(path.name)


def open_data(path: Path) -> BinaryIO:
    """Open a dropped file for reading, refusing what is not a regular file in the folder itself: a
    symbolic link (the uploader, another trust domain, could point it at any file the service may
    read, e.g. its own secrets) or a FIFO or device put in place after the folder was listed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem(
                f"{_shown(path)} is a symbolic link: syncd reads only files placed in the drop folder itself "
                "(a link may point at any file the service can read); copy the file in instead of linking it"
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileProblem(f"{_shown(path)} is not a regular file (a FIFO, device or folder): not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_format(path: Path, cfg: FileSourceConfig) -> str:
    if cfg.format is not None:
        return cfg.format
    ext = path.suffix.lower().lstrip(".")
    if ext in ("csv", "txt"):
        return "csv"
    if ext in ("xlsx", "xlsm"):
        return "xlsx"
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    raise FileProblem(f"cannot tell the format of {_shown(path)} from its extension: set source.format "
                      "(csv, xlsx or jsonl)")


_CJK_LEADS = bytes(range(0xE4, 0xEA)) + bytes(range(0xF0, 0xF5))
"""First bytes of the UTF-8 form of CJK ideographs (U+4000–U+9FFF, and the supplementary planes)."""


def _chinese(data: bytes) -> int:
    """How many Chinese characters ``data`` holds if it is UTF-8 (their first bytes), at C speed: a
    1 MiB block is not walked character by character."""
    return len(data) - len(data.translate(None, _CJK_LEADS))


def inspect_file(path: Path, cfg: FileSourceConfig) -> Inspected:
    """Hash the file and choose its encoding in one pass over the bytes."""
    text = file_format(path, cfg) != "xlsx"
    if not text:
        with open_data(path) as fh:
            _check_shared_strings(fh, _shown(path))  # refused before anything of it is read: the run goes on
    guess = _EncodingGuess(cfg.encoding) if text else None
    digest = hashlib.sha256()
    size = 0
    with open_data(path) as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            if guess is not None:
                guess.feed(block, size)
            size += len(block)
    encoding = None if guess is None else guess.choose(_shown(path))
    return Inspected(sha256=digest.hexdigest(), size=size, encoding=encoding)


class _EncodingGuess:
    """The configured encoding, or the first of :data:`FALLBACK_ENCODINGS` that decodes every block."""

    def __init__(self, configured: str | None) -> None:
        self._configured = configured
        self._candidates = (configured,) if configured else FALLBACK_ENCODINGS
        self._decoders = {n: codecs.getincrementaldecoder(n)(errors="strict") for n in self._candidates}
        self._first = True
        self._utf8_chars = 0  # Chinese characters the guessed UTF-8 decoded before it failed (if it did)
        self._damaged: tuple[int, int] | None = None  # (offset of the first invalid byte, utf8_chars)
        self._utf8_rows: _Utf8Rows | None = None
        self._lines = 0  # line breaks before the current block

    def feed(self, block: bytes, offset: int) -> None:
        decoders = self._decoders
        if self._first and "utf-8-sig" in decoders and not block.startswith(codecs.BOM_UTF8):
            del decoders["utf-8-sig"]  # no BOM: plain UTF-8 decides
        self._first = False
        for name, decoder in list(decoders.items()):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                del decoders[name]
                if name.startswith("utf-8") and not self._configured and self._damaged is None:
                    self._damaged = (offset + exc.start, self._utf8_chars + _chinese(block[: exc.start]))
                continue
            if name.startswith("utf-8") and self._utf8_chars < _UTF8_EVIDENCE:
                self._utf8_chars += _chinese(block)
        if self._utf8_rows is None and self._damaged is not None and "gb18030" in decoders:
            self._utf8_rows = _Utf8Rows(self._lines + 1)  # not UTF-8: are some rows UTF-8 all the same?
        if self._utf8_rows is not None:
            self._utf8_rows.feed(block)
        self._lines += block.count(b"\n")

    def choose(self, file: str) -> str:
        for name, decoder in list(self._decoders.items()):
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                del self._decoders[name]
        ok = [n for n in self._candidates if n in self._decoders]
        if not ok:
            tried = " → ".join(self._candidates)
            raise FileProblem(f"{file} is not valid text in {tried}: set source.encoding to the "
                              "file's encoding, or re-export it as UTF-8")
        damaged = self._damaged
        if ok[0] != "gb18030" or damaged is None:
            return ok[0]
        if damaged[1] >= _UTF8_EVIDENCE:
            raise FileProblem(
                f"{file} is UTF-8 ({damaged[1]}+ characters decoded) but byte {damaged[0]} is not "
                "valid UTF-8 (a truncated or damaged character): read as GB18030 every row would be "
                "garbled. Fix the file and drop it again, or set source.encoding if it really is GB18030"
            )
        found = None if self._utf8_rows is None else self._utf8_rows.finish()
        if found is not None:
            raise FileProblem(
                f"{file} mixes encodings: it is not UTF-8 (byte {damaged[0]} is not valid UTF-8) and reads "
                f"as GB18030 (GBK), but from line {found[0]} on its rows are UTF-8 ({found[1]}+ Chinese "
                "characters in a row): read as GB18030 those rows would be garbled. Export the whole file "
                "in one encoding and drop it again, or set source.encoding if it really is GB18030"
            )
        return ok[0]


class _Utf8Rows:
    """Finds UTF-8 rows in a file read as GB18030 (another exporter's rows appended to a GBK file).

    Lines are checked on their own: a line of non-ASCII text that is valid UTF-8 and holds
    three- or four-byte sequences (Chinese characters) counts towards a run, a line that is not
    valid UTF-8 ends the run, ASCII lines are neutral. GBK text forms such sequences only by chance
    (never a two-character word, seldom a line), so :data:`_UTF8_EVIDENCE` characters in a run of
    lines do not happen in a GBK file. Two-byte sequences do not count: many single GBK characters
    (女 is C5 AE) are valid two-byte UTF-8."""

    def __init__(self, line: int) -> None:
        self._line = line  # number of the line the next byte belongs to
        self._carry = b""  # the unfinished last line of the bytes fed so far
        self._run = 0
        self._start = 0
        self.found: tuple[int, int] | None = None  # (first line of the run, its characters)

    def feed(self, block: bytes) -> None:
        if self.found is not None:
            return
        data = self._carry + block
        cut = data.rfind(b"\n") + 1
        self._carry = data[cut:]
        for raw in data[:cut].split(b"\n")[:-1]:
            self._check(raw)
            self._line += 1
        if len(self._carry) > _BLOCK:  # a line over 1 MiB: judged in pieces (a piece may cut a character)
            self._check(self._carry)
            self._carry = b""

    def finish(self) -> tuple[int, int] | None:
        if self._carry:
            self._check(self._carry)
            self._carry = b""
        return self.found

    def _check(self, raw: bytes) -> None:
        if raw.isascii() or self.found is not None:
            return
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            self._run = 0
            return
        chars = _chinese(raw)
        if not chars:
            return
        if self._run == 0:
            self._start = self._line
        self._run += chars
        if self._run >= _UTF8_EVIDENCE:
            self.found = (self._start, self._run)


def read_records(path: Path, cfg: FileSourceConfig, encoding: str | None) -> Iterator[dict[str, Any]]:
    """The records of one file, streamed."""
    kind = file_format(path, cfg)
    if kind == "csv":
        return _csv(path, cfg, encoding or "utf-8")
    if kind == "jsonl":
        return _jsonl(path, encoding or "utf-8")
    return _xlsx(path, cfg)


def _header(cells: list[Any] | tuple[Any, ...], name: str) -> list[str]:
    """The column names of the header row; a column without a name is "" (its cells must stay empty)."""
    names = [("" if c is None else str(c)).strip().lstrip("\ufeff") for c in cells]
    while names and not names[-1]:
        names.pop()
    given = [n for n in names if n]
    if not given or len(set(given)) != len(given):
        raise FileProblem(f"the header row of {name} is empty or repeats a column name: {names!r}")
    return names


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _headless(header: list[str], cells: list[Any] | tuple[Any, ...]) -> int | None:
    """The index of the first non-blank cell in a column without a name (empty or past the header)."""
    for i, value in enumerate(cells):
        if (i >= len(header) or not header[i]) and not _blank(value):
            return i
    return None


def _record(header: list[str], cells: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A row as a dict: every named column, None for cells the row does not have."""
    return {h: cells[i] if i < len(cells) else None for i, h in enumerate(header) if h}


def _csv(path: Path, cfg: FileSourceConfig, encoding: str) -> Iterator[dict[str, Any]]:
    with io.TextIOWrapper(open_data(path), encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=cfg.delimiter)
        header: list[str] | None = None
        width = 0
        for number, cells in enumerate(reader, start=1):
            if number < cfg.header_row:
                continue
            if header is None:
                header = _header(cells, _shown(path))
                width = len(header)
                continue
            if not any(cells):
                continue  # blank line
            if len(cells) != width:
                if len(cells) > width and any(c.strip() for c in cells[width:]):
                    # the values are shifted (an unquoted delimiter in a value, most often): mapping
                    # the row by position would write one column's value into another
                    raise FileProblem(
                        f"{_shown(path)} {_csv_row(number, reader.line_num)} has {len(cells)} cells but the "
                        f"header has {width}: a value holding the delimiter {cfg.delimiter!r} must be "
                        "quoted; fix the file and drop it again"
                    )
                if len(cells) < width:
                    if not any(c.strip() for c in cells):
                        continue  # a line of blanks
                    # a broken line (a line break inside an unquoted value splits one row into two
                    # short ones) or a truncated export: padded with empty cells, the first half
                    # would be written with empty columns and the second half as a row of its own
                    raise FileProblem(
                        f"{_shown(path)} {_csv_row(number, reader.line_num)} has {len(cells)} cells but the "
                        f"header has {width}: a line break inside a value (the value must be quoted), a "
                        "truncated line, or an export that leaves out trailing empty cells; every row "
                        f"needs all {width} cells (empty ones as {cfg.delimiter * 2!r}): fix the file and "
                        "drop it again"
                    )
            stray = _headless(header, cells)
            if stray is not None:
                raise FileProblem(
                    f"{_shown(path)} {_csv_row(number, reader.line_num)} has the value {cells[stray]!r} in "
                    f"column {stray + 1}, which has no name in the header (row {cfg.header_row}): name the "
                    "column or delete it, and drop the file again"
                )
            yield _record(header, cells)
        if header is None:
            raise FileProblem(f"{_shown(path)} has no header row (row {cfg.header_row})")


def _csv_row(number: int, line: int) -> str:
    """Where a CSV row is: its row number, and its last line when a quoted value spans lines."""
    return f"row {number}" if line == number else f"row {number} (line {line})"


def _jsonl(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    with io.TextIOWrapper(open_data(path), encoding=encoding) as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip().lstrip("\ufeff")
            if not text:
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise FileProblem(f"{_shown(path)} line {number} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise FileProblem(f"{_shown(path)} line {number} is not a JSON object")
            yield value


def _xlsx(path: Path, cfg: FileSourceConfig) -> Iterator[dict[str, Any]]:
    from openpyxl import load_workbook

    with open_data(path) as fh:
        _check_shared_strings(fh, _shown(path))
        fh.seek(0)
        try:
            book = load_workbook(fh, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a damaged file
            raise FileProblem(f"{_shown(path)} is not a readable XLSX workbook: {exc}") from None
        try:
            yield from _sheet_rows(book, path, cfg)
        finally:
            book.close()


def _sheet_rows(book: Any, path: Path, cfg: FileSourceConfig) -> Iterator[dict[str, Any]]:
    from openpyxl.utils import get_column_letter

    if cfg.sheet is not None and cfg.sheet not in book.sheetnames:
        names = ", ".join(book.sheetnames)
        raise FileProblem(f"{_shown(path)} has no sheet {cfg.sheet!r} (sheets: {names})")
    sheet = book[cfg.sheet] if cfg.sheet is not None else book.worksheets[0]
    # read_only trusts the sheet's <dimension ref>, which some exporters write wrong (WPS writes
    # "A1"): the rows past it, or the columns, would be silently left out. Without it rows are
    # still streamed, each as long as its last cell
    sheet.reset_dimensions()
    header: list[str] | None = None
    for number, cells in enumerate(sheet.iter_rows(values_only=True), start=1):
        if number < cfg.header_row:
            continue
        if header is None:
            header = _header(cells, _shown(path))
            continue
        if all(c is None for c in cells):
            continue
        stray = _headless(header, cells)
        if stray is not None:
            column = get_column_letter(stray + 1)
            raise FileProblem(
                f"{_shown(path)} sheet {sheet.title!r} cell {column}{number} holds {cells[stray]!r} but "
                f"column {column} has no name in the header (row {cfg.header_row}): name the column "
                "or delete it, and drop the file again"
            )
        yield _record(header, cells)
    if header is None:
        raise FileProblem(f"{_shown(path)} has no header row (row {cfg.header_row})")


def _check_shared_strings(fh: BinaryIO, name: str) -> None:
    """Refuse a workbook whose shared strings part is too big to load (:data:`XLSX_SHARED_STRINGS_LIMIT`)."""
    try:
        with zipfile.ZipFile(fh) as archive:
            parts = [i for i in archive.infolist() if i.filename.lower().endswith("sharedstrings.xml")]
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise FileProblem(f"{name} is not a readable XLSX workbook: {exc}") from None
    for part in parts:
        if part.file_size > XLSX_SHARED_STRINGS_LIMIT:
            raise FileProblem(
                f"{name} holds {part.file_size >> 20} MiB of shared strings ({part.filename}, "
                f"uncompressed), over the {XLSX_SHARED_STRINGS_LIMIT >> 20} MiB syncd reads: an XLSX keeps "
                "every distinct text of the workbook in that one part, loaded whole before the first row. "
                "Re-export the data as CSV (or split it into smaller workbooks) and drop it again"
            )
