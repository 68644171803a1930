"""Time formats whose texts sort like the times they write (a front-end table's text update column).

A text (or number) update column can be windowed on the database, with its index, only by
comparing it with the window's bounds written the same way; that selects the right rows only
when the order of the texts is the order of the times: the year first, then month, day, hour,
minute and second, each zero-padded to a fixed width, with the same separators everywhere
(``2026-01-05 08:00:00``, ``2026/01/05 08:00``, ``20260105080000``). ``2026/1/5``, ``05/01/2026``
or a 12-hour clock do not sort like that. :func:`time_format` checks a format and describes it;
:meth:`TimeFormat.parse` reads a value positionally (fast: it runs once per record).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["TimeFormat", "guess_time_format", "time_format"]

_FIELDS = ("%Y", "%m", "%d", "%H", "%M", "%S")
_WIDTHS = {"%Y": 4, "%m": 2, "%d": 2, "%H": 2, "%M": 2, "%S": 2}
_UNSORTED = ("%y", "%I", "%p", "%b", "%B", "%a", "%A", "%j", "%e", "%-m", "%-d", "%-H")
_TOKEN = re.compile(r"%.|%$|[^%]+")
_ISO_LITERALS = (("-", "-", " ", ":", ":"), ("-", "-", "T", ":", ":"))
_ORDER = (
    "the year first, then month, day, hour, minute and second (%Y %m %d %H %M %S, each zero-padded; "
    "%f for fractions of a second after %S), so that the texts sort like the times"
)


@dataclass(frozen=True, slots=True)
class TimeFormat:
    """A checked format (:func:`time_format`).

    ``base`` is the format up to its last field (fractions of a second left out); ``fraction`` the
    separator of the fractions a seconds format may carry (``.`` unless the format says another
    with ``%f``), None for a format coarser than seconds; ``digits``: the base has no separators,
    so its values may be kept as numbers too (``20260105080000``)."""

    text: str
    base: str
    fields: int
    fraction: str | None
    width: int
    digits: bool
    _pattern: re.Pattern[str] = field(repr=False)
    _iso: Callable[[str], str] | None = field(repr=False)  # the base's text as ISO 8601 (None: it is)

    def render(self, value: datetime) -> str:
        """``value`` written in the base format (fractions of a second left out)."""
        return value.strftime(self.base)

    def truncate(self, value: datetime) -> datetime:
        """``value`` cut to the format's resolution (a seconds format: to the second)."""
        cut = self.fields
        return datetime(value.year, value.month if cut > 1 else 1, value.day if cut > 2 else 1,
                        value.hour if cut > 3 else 0, value.minute if cut > 4 else 0,
                        value.second if cut > 5 else 0)

    def parse(self, text: str) -> datetime:
        """The time ``text`` writes in this format; a ValueError when it is none. Once per record,
        so it is quick rather than strict: the separators are not compared (:meth:`matches` does)."""
        width = self.width
        micro = 0
        if len(text) != width:
            sep = self.fraction
            if sep is None or len(text) <= width + len(sep) or not text.startswith(sep, width):
                raise ValueError(text)
            digits = text[width + len(sep):]
            if not digits.isdigit() or not digits.isascii():
                raise ValueError(text)
            micro = int(digits[:6].ljust(6, "0"))
            text = text[:width]
        value = datetime.fromisoformat(text if self._iso is None else self._iso(text))
        return value.replace(microsecond=micro) if micro else value

    def read(self, text: str) -> datetime | None:
        """The time ``text`` writes when it is written exactly in this format (:meth:`matches`),
        else None: a value written otherwise does not sort like the others, so its time is not one
        the window's comparison can be trusted with."""
        if self._pattern.fullmatch(text) is None:
            return None
        try:
            return self.parse(text)
        except ValueError:  # 2026-13-45
            return None

    def matches(self, text: str) -> bool:
        """``text`` is written exactly in this format (zero-padded, with its separators)."""
        if self._pattern.fullmatch(text) is None:
            return False
        try:
            self.parse(text)
        except ValueError:  # 2026-13-45
            return False
        return True


def time_format(text: str) -> TimeFormat:
    """``text`` checked to be a format whose texts sort like their times; a ValueError says why not."""
    directives, literals, fraction = _fields(text)
    if not directives:
        raise ValueError(f"{text!r} has no fields; write {_ORDER}")
    if literals[0]:
        raise ValueError(f"{text!r}: nothing may come before the year; write {_ORDER}")
    if literals[-1]:
        raise ValueError(f"{text!r}: nothing may follow the last field; write {_ORDER}")
    if len(directives) < 3:
        raise ValueError(f"{text!r}: give at least the date (%Y, %m and %d); write {_ORDER}")
    between = literals[1:-1]
    if any(ch.isdigit() for lit in between for ch in lit):
        raise ValueError(f"{text!r}: digits between the fields would be read as the fields; write {_ORDER}")
    pairs = list(zip(literals[:-1], directives, strict=True))
    frac = (fraction if fraction is not None else ".") if len(directives) == 6 else None
    pattern = "".join(re.escape(lit) + (r"(\d{4})" if d == "%Y" else r"(\d{2})") for lit, d in pairs)
    if frac is not None:
        pattern += f"(?:{re.escape(frac)}\\d{{1,9}})?"
    return TimeFormat(
        text=text, base="".join(lit + d for lit, d in pairs), fields=len(directives), fraction=frac,
        width=sum(len(lit) + _WIDTHS[d] for lit, d in pairs), digits=not any(between),
        _pattern=re.compile(pattern, re.ASCII), _iso=_to_iso(between),
    )


def _fields(text: str) -> tuple[list[str], list[str], str | None]:
    """The directives of ``text`` (in the order they must come), the literals before, between and
    after them, and the separator before %f (None without %f)."""
    directives: list[str] = []
    literals: list[str] = [""]  # literals[i] precedes directives[i]; the last one follows them all
    fraction: str | None = None
    for token in _TOKEN.findall(text):
        if fraction is not None:
            raise ValueError(f"{text!r}: nothing may follow %f; write {_ORDER}")
        if not token.startswith("%"):
            literals[-1] += token
        elif token == "%f":  # noqa: S105 - a strftime directive
            if directives != list(_FIELDS):
                raise ValueError(f"{text!r}: %f (fractions of a second) goes right after %S; write {_ORDER}")
            if literals[-1] not in ("", ".", ","):
                raise ValueError(f"{text!r}: write the fractions of a second as %S.%f, %S,%f or %S%f")
            fraction, literals[-1] = literals[-1], ""
        elif len(directives) < len(_FIELDS) and token == _FIELDS[len(directives)]:
            directives.append(token)
            literals.append("")
        else:
            why = (f"{token} is out of order" if token in _FIELDS
                   else f"{token} does not sort like the times" if token in _UNSORTED
                   else f"{token} is not supported here")
            raise ValueError(f"{text!r}: {why}; write {_ORDER}")
    return directives, literals, fraction


def _to_iso(between: list[str]) -> Callable[[str], str] | None:
    """How a value whose fields are separated by ``between`` is rewritten as ISO 8601 text for
    ``datetime.fromisoformat`` (C code: several times quicker than reading the fields one by one)."""
    n = len(between)
    if any(tuple(between) == iso[:n] for iso in _ISO_LITERALS):
        return None
    if not any(between):  # 20260105080000: ISO 8601's basic form once a T stands before the time
        return None if n < 3 else (lambda text: text[:8] + "T" + text[8:])
    starts = []
    at = 0
    for i, lit in enumerate(["", *between]):
        at += len(lit)
        starts.append(at)
        at += 4 if i == 0 else 2
    seps = ("-", "-", "T", ":", ":")[:n]

    def to_iso(text: str) -> str:
        parts = [text[starts[0]:starts[0] + 4]]
        for sep, at in zip(seps, starts[1:], strict=True):
            parts += (sep, text[at:at + 2])
        return "".join(parts)

    return to_iso


_SHAPE = re.compile(
    r"\d{4}(?P<d>[-/.]?)\d{2}(?P=d)\d{2}"
    r"(?:(?P<t>[ T]?)\d{2}(?P<c>:?)\d{2}(?:(?P<s>(?P=c))\d{2}(?P<f>[.,]?\d{1,9})?)?)?"
)


def guess_time_format(value: str) -> TimeFormat | None:
    """The format ``value`` is written in, when it is one that sorts like its times (year first,
    zero-padded: ``2026-01-05 08:00:00.123``, ``2026/01/05 08:00``, ``20260105080000``), else None."""
    shape = _SHAPE.fullmatch(value)
    if shape is None:
        return None
    d = shape["d"]
    fmt = f"%Y{d}%m{d}%d"
    if shape["t"] is not None:
        fmt += f"{shape['t']}%H{shape['c']}%M"
        if shape["s"] is not None:
            fmt += f"{shape['c']}%S"
            if shape["f"] and shape["f"][0] == ",":
                fmt += ",%f"
            elif shape["f"] and shape["f"][0] != ".":
                fmt += "%f"
    found = time_format(fmt)
    return found if found.matches(value) else None
