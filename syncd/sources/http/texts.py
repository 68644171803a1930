"""Records by their JSON text: one simdjson parse of a page, no Python objects per record.

A full-snapshot re-sync reads every record to find the 1 % that changed. Decoding a whole page
into dicts (orjson) and then encoding each record's fields again for its digest was most of that
scan's time. Here the page is parsed once by simdjson (pysimdjson), which builds no Python objects,
and each record gives its **text**: the record re-serialised minified (``Object.mini``: keys in
upstream order, strings unescaped and written as UTF-8, numbers in their shortest exact form).
Equal texts decode to equal records, so the record digest is taken over the text
(:func:`syncd.changes.hashing.text_digester`). Two ways to read a page:

- :meth:`TextSplitter.digests` (every read that maps its records: a first load, the read worker):
  the records' digests only, each text hashed and dropped at once; the page is decoded by orjson
  as before (the records orjson gives are the texts' records). Nothing page-sized is kept.
- :meth:`TextSplitter.split` with ``head_fields`` (a re-sync's scan): the body with a
  :class:`RecordTexts` at the records path — each record's text, digest and *head*, a dict of just
  the top-level fields the row key and the update time need. A record whose digest is stored is
  never turned into a dict at all. The rest of the body (code, message, total, cursor, …) is
  converted to Python as usual, for :class:`~syncd.sources.http.envelope.Envelope`.

Whatever this cannot carry exactly — a page simdjson refuses (an integer beyond 64 bits, invalid
UTF-8, a lone surrogate), a name twice where the records path passes (orjson keeps the last, a
look-up finds the first), a records path through a list index, a records value that is not a list
of objects — gives None: the page is decoded by orjson alone and its records digested by their
values (the two digests never collide, see hashing.py). Without pysimdjson installed every page
takes that path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:  # a binary wheel; without it pages are decoded whole (slower re-sync scans, same results)
    import simdjson
except ImportError:  # pragma: no cover - depends on the installation
    simdjson = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "RecordTexts", "TextSplitter"]

AVAILABLE = simdjson is not None

_ABSENT = object()


@dataclass(slots=True)
class RecordTexts:
    """The records of one page by their texts, with their digests and heads: what the records path
    holds in a body :meth:`TextSplitter.split` gives."""

    texts: list[bytes]
    digests: list[str]
    heads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> bytes:  # the paginator compares a page's first and last
        return self.texts[index]


def _python(value: Any) -> Any:
    """A simdjson proxy as Python objects (a plain value is already one)."""
    cls = value.__class__
    if cls is simdjson.Object:
        return value.as_dict()
    if cls is simdjson.Array:
        return value.as_list()
    return value


class TextSplitter:
    """Pages of one records path by their records' texts (see the module docstring), digested by
    ``digest``.

    A parser per page: its buffers (about four times the page) are held only while the page is
    parsed, not beside the decoded records until the next page (a new parser costs no more than a
    reused one, 0.4-0.6 ms a page of 550 KB). No proxy outlives a call.
    """

    def __init__(self, records_path: str, digest: Callable[[bytes], str]) -> None:
        if simdjson is None:
            raise RuntimeError("pysimdjson is not installed")
        parts = () if records_path in ("", ".") else tuple(records_path.split("."))
        self.usable = not any(p.lstrip("-").isdigit() for p in parts)
        self.digest = digest
        self._parts = parts

    def digests(self, raw: bytes | bytearray) -> list[str] | None:
        """The digests of the records at the records path, in order, or None."""
        return self._parsed(raw, lambda doc: self._digests(self._at(doc)))

    def split(self, raw: bytes | bytearray, head_fields: tuple[str, ...]) -> Any | None:
        """The body, with a :class:`RecordTexts` (heads of ``head_fields``) at the records path,
        or None."""
        return self._parsed(raw, lambda doc: self._body(doc, self._parts, head_fields))

    def _parsed(self, raw: bytes | bytearray, take: Callable[[Any], Any]) -> Any | None:
        if not self.usable:
            return None
        parser = simdjson.Parser()
        try:
            doc = parser.parse(raw)
        except (ValueError, RuntimeError, TypeError):  # the orjson decode reports (or copes)
            return None
        try:
            return take(doc)
        finally:
            del doc, parser  # the proxies first: they point into the parser's memory

    def _at(self, node: Any) -> Any | None:
        for part in self._parts:
            # a name twice: orjson keeps the last value, a look-up here finds the first
            if node.__class__ is not simdjson.Object or sum(1 for name in node if name == part) != 1:
                return None
            node = node[part]
        return node

    def _digests(self, node: Any) -> list[str] | None:
        if node is None or node.__class__ is not simdjson.Array:
            return None
        obj, digest = simdjson.Object, self.digest
        out: list[str] = []
        for item in node:
            if item.__class__ is not obj:
                return None
            out.append(digest(item.mini))  # type: ignore[arg-type]  # bytes (the stub says str)
        return out

    def _body(self, node: Any, parts: tuple[str, ...], fields: tuple[str, ...]) -> Any | None:
        if not parts:
            return self._records(node, fields)
        if node.__class__ is not simdjson.Object:
            return None
        first, rest = parts[0], parts[1:]
        out: dict[str, Any] = {}
        count = 0
        for name in node:  # names; .items() would convert the records too
            count += 1
            value = node[name]
            if name == first:
                inner = self._body(value, rest, fields)
                if inner is None:
                    return None
                out[name] = inner
            else:
                out[name] = _python(value)
        # a name twice: orjson keeps the last value, a look-up here finds the first
        return out if first in out and len(out) == count else None

    def _records(self, node: Any, fields: tuple[str, ...]) -> RecordTexts | None:
        if node.__class__ is not simdjson.Array:
            return None
        obj, digest = simdjson.Object, self.digest
        texts: list[bytes] = []
        digests: list[str] = []
        heads: list[dict[str, Any]] = []
        for item in node:
            if item.__class__ is not obj:
                return None
            text: bytes = item.mini  # type: ignore[assignment]  # bytes (the stub says str)
            texts.append(text)
            digests.append(digest(text))
            head = {}
            for name in fields:
                value = item.get(name, _ABSENT)
                if value is not _ABSENT:
                    head[name] = _python(value)
            heads.append(head)
        return RecordTexts(texts, digests, heads)
