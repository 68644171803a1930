"""Fast date and datetime parsing with exactly the semantics of ``strptime``.

``datetime.strptime`` costs several microseconds per call (and its regex cache holds only
five formats), which alone would cap a mapping at ~60,000 records/s. For each configured
format this module builds a parser in up to three tiers, all agreeing with ``strptime``:

1. a shape-checked fast path for the common canonical formats (``%Y-%m-%d``, ``%Y%m%d``,
   ``%Y/%m/%d``, ``%Y-%m-%d %H:%M:%S`` and ``%Y-%m-%d %H:%M:%S.%f``, the latter incl. the
   Java-style ``2024-11-02 00:00:00.0``) using ``fromisoformat`` or integer slicing; it
   only ever *accepts* a value that ``strptime`` would parse to the same result;
2. for formats made only of numeric directives (``%Y %y %m %d %H %M %S %f``, e.g.
   ``%Y年%m月%d日`` with or without leading zeros) a regex built from the very patterns
   ``_strptime`` uses, matched the way it matches them (anchored start, whole string);
3. ``datetime.strptime`` itself for everything else (``%b``, ``%j``, ``%p`` …).

Formats are validated when the mapping is compiled (:func:`check_format`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from syncd.mapping.codegen import compiled_source

__all__ = [
    "DEFAULT_DATETIME_FORMATS",
    "DEFAULT_DATE_FORMATS",
    "build_parser",
    "check_format",
]

DEFAULT_DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y%m%d",
    "%Y/%m/%d",
    "%Y年%m月%d日",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
)
DEFAULT_DATETIME_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%Y%m%d%H%M%S",
    "%Y-%m-%d",
    "%Y%m%d",
)

# The patterns of CPython's _strptime.TimeRE for the numeric directives (compiled there with
# re.IGNORECASE, as here), so that tier 2 accepts and rejects exactly what strptime does.
_NUMERIC_RE = {
    "d": r"(?P<d>3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9])",
    "f": r"(?P<f>[0-9]{1,6})",
    "H": r"(?P<H>2[0-3]|[0-1]\d|\d)",
    "m": r"(?P<m>1[0-2]|0[1-9]|[1-9])",
    "M": r"(?P<M>[0-5]\d|\d)",
    "S": r"(?P<S>6[0-1]|[0-5]\d|\d)",
    "y": r"(?P<y>\d\d)",
    "Y": r"(?P<Y>\d\d\d\d)",
    "%": "%",
}
_REGEX_CHARS = re.compile(r"([\\.^$*+?\(\){}\[\]|])")
_WHITESPACE = re.compile(r"\s+")
_DIRECTIVE = re.compile(r"%(.?)")
_SAMPLE = datetime(2024, 11, 2, 13, 4, 5, 678000)

# The years a record plausibly holds: births from 1800, validity up to 2200, and 9999 ("valid until
# further notice"). Any other year is read by int() or the next tier, to the same value, only slower:
# tables of every 4-digit year (21,000 strings) held about 2.3 MB in each process, the run's and its
# read worker's alike.
_YEARS: dict[str, int] = {**{str(i): i for i in range(1800, 2201)}, "9999": 9999}

# "7", "07", " 7", "1967" -> int without int()'s parsing cost (anything else falls back to int)
_NUMBERS: dict[str, int] = {
    **{f" {i}": i for i in range(1, 10)},
    **{str(i): i for i in range(100)},
    **{f"{i:02d}": i for i in range(100)},
    **_YEARS,
}

_MONTHS: dict[str, int] = {**{str(i): i for i in range(1, 13)}, **{f"{i:02d}": i for i in range(1, 10)}}
_DAYS: dict[str, int] = {
    **{str(i): i for i in range(1, 32)},
    **{f"{i:02d}": i for i in range(1, 10)},
    **{f" {i}": i for i in range(1, 10)},
}

Parser = Callable[[str], Any]
"""``parser(text)`` -> a ``date``/``datetime``, or ``None`` when the text does not match."""


def check_format(fmt: str) -> str | None:
    """Return why ``fmt`` is not a usable strftime format, or ``None`` when it is fine."""
    directives = _DIRECTIVE.findall(fmt)
    if not directives:
        return (
            f"{fmt!r} is not a strftime format: write it with % directives, "
            "e.g. %Y-%m-%d for 2024-11-02 or %Y年%m月%d日 for 2024年11月2日"
        )
    if "" in directives:
        return f"{fmt!r} ends with a lone '%': write %% for a literal percent sign"
    if {"z", "Z"} & set(directives):
        return (
            f"{fmt!r} has a time-zone directive (%z/%Z): syncd stores naive local times, "
            "so a format must not carry a zone"
        )
    try:
        datetime.strptime(_SAMPLE.strftime(fmt), fmt)
    except ValueError as exc:
        return f"{fmt!r} is not a valid strftime format ({exc})"
    return None


def _numeric_regex(fmt: str) -> re.Pattern[str] | None:
    """The strptime regex of ``fmt`` when it uses numeric directives only (with a year)."""
    directives = _DIRECTIVE.findall(fmt)
    if not all(d in _NUMERIC_RE for d in directives):
        return None
    if "Y" not in directives and "y" not in directives:
        return None  # strptime's year-less rules (1900, the Feb 29 fix) stay with strptime
    text = _WHITESPACE.sub(r"\\s+", _REGEX_CHARS.sub(r"\\\1", fmt))
    out: list[str] = []
    while "%" in text:
        i = text.index("%")
        out.append(text[:i])
        out.append(_NUMERIC_RE[text[i + 1]])
        text = text[i + 2 :]
    out.append(text)
    return re.compile("".join(out), re.IGNORECASE)


def _regex_parser(rx: re.Pattern[str], want: type[date]) -> Parser:
    """Tier 2: match like strptime (anchored start, whole string) and build the value."""
    names = [n for n, _ in sorted(rx.groupindex.items(), key=lambda kv: kv[1])]
    number = _NUMBERS.get
    match = rx.match
    as_date = want is date

    if names == ["Y", "m", "d"]:

        def ymd(text: str) -> Any:
            m = match(text)
            if m is None or m.end() != len(text):
                return None
            y, mo, d = m.groups()
            try:
                value = date(number(y) or int(y), number(mo) or int(mo), number(d) or int(d))
            except ValueError:
                return None
            return value if as_date else datetime(value.year, value.month, value.day)

        return ymd

    def general(text: str) -> Any:
        m = match(text)
        if m is None or m.end() != len(text):
            return None
        g = m.groupdict()
        if "Y" in g:
            year = int(g["Y"])
        else:
            year = int(g["y"])
            year += 2000 if year <= 68 else 1900
        frac = g.get("f")
        micro = int(frac + "0" * (6 - len(frac))) if frac is not None else 0
        try:
            value = datetime(
                year,
                int(g.get("m") or 1),
                int(g.get("d") or 1),
                int(g.get("H") or 0),
                int(g.get("M") or 0),
                int(g.get("S") or 0),
                micro,
            )
        except ValueError:
            return None
        return value.date() if as_date else value

    return general


def _strptime_parser(fmt: str, want: type[date]) -> Parser:
    """Tier 3: strptime itself."""
    strptime = datetime.strptime
    as_date = want is date

    def parse(text: str) -> Any:
        try:
            value = strptime(text, fmt)
        except ValueError:
            return None
        return value.date() if as_date else value

    return parse


# Tier 1 as statements over ``t`` (the text) and ``n`` (its length), pasted into the generated
# parser: each returns on success and falls through otherwise. They only accept text in the
# format's canonical shape, where fromisoformat and strptime agree; anything else falls through
# to the format's regex or strptime tier. {ret} wraps a date expression for the wanted type,
# {ret_dt} a datetime expression.
_FAST_PATHS: dict[str, str] = {
    "%Y-%m-%d": (
        "if n == 10 and t[4:8:3] == '--' and t.isascii():\n"
        "    try:\n"
        "        return {ret}\n"
        "    except ValueError:\n"
        "        pass"
    ),
    "%Y/%m/%d": (
        "if n == 10 and t[4:8:3] == '//' and t.isascii():\n"
        "    try:\n"
        "        return {ret_slashed}\n"
        "    except ValueError:\n"
        "        pass"
    ),
    "%Y%m%d": (  # Python 3.11's fromisoformat reads the basic form YYYYMMDD
        "if n == 8 and t.isdigit() and t.isascii():\n"
        "    try:\n"
        "        return {ret}\n"
        "    except ValueError:\n"
        "        pass"
    ),
    # the parts as strptime's patterns accept them: a 4-digit year, month 1-12 or 01-12,
    # day 1-31, 01-31 or " 1"-" 9" (table look-ups, no int())
    "%Y年%m月%d日": (
        "if t[4:5] == '年' and t[-1:] == '日':\n"
        "    j = t.find('月', 5)\n"
        "    y, mo, d = _years(t[:4]), _months(t[5:j]), _days(t[j + 1:-1])\n"
        "    if j > 0 and y is not None and mo is not None and d is not None:\n"
        "        try:\n"
        "            return {ret_ymd}\n"
        "        except ValueError:\n"
        "            pass"
    ),
    # fromisoformat reads only ASCII digits where the separators leave room for them; an
    # offset (+08:00) would give an aware value, which strptime rejects
    "%Y-%m-%d %H:%M:%S": (
        "if n == 19 and t[4:17:3] == '-- ::':\n"
        "    try:\n"
        "        r = _iso_datetime(t)\n"
        "    except ValueError:\n"
        "        r = None\n"
        "    if r is not None and r.tzinfo is None:\n"
        "        return {ret_dt}"
    ),
    "%Y-%m-%d %H:%M:%S.%f": (
        "if 21 <= n <= 26 and t[19] == '.' and t[4:17:3] == '-- ::':\n"
        "    try:\n"
        "        r = _iso_datetime(t)\n"
        "    except ValueError:\n"
        "        r = None\n"
        "    if r is not None and r.tzinfo is None:\n"
        "        return {ret_dt}"
    ),
}
_RETURNS = {
    date: {
        "ret": "_iso_date(t)",
        "ret_slashed": "_iso_date(t.replace('/', '-'))",
        "ret_ymd": "_date(y, mo, d)",
        "ret_dt": "r.date()",
    },
    datetime: {
        "ret": "_iso_datetime(t)",
        "ret_slashed": "_iso_datetime(t.replace('/', '-'))",
        "ret_ymd": "_datetime(y, mo, d)",
        "ret_dt": "r",
    },
}


def _prefilter(fmt: str) -> tuple[int, int, str]:
    """A necessary condition for ``fmt`` to match: (min length, max length, a literal it needs).

    Computed from strptime's directive widths, so that tiers 2 and 3 are only tried on text
    that could match (a failed regex or strptime call costs far more than these checks).
    """
    widths = {
        "Y": (4, 4),
        "y": (2, 2),
        "m": (1, 2),
        "d": (1, 2),
        "H": (1, 2),
        "M": (1, 2),
        "S": (1, 2),
        "f": (1, 6),
        "%": (1, 1),
    }
    lo, hi, need = 0, 0, ""
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%" and i + 1 < len(fmt):
            a, b = widths.get(fmt[i + 1], (0, 1_000))
            lo, hi = lo + a, hi + b
            i += 2
            continue
        if ch.isspace():
            lo, hi = lo + 1, hi + 1_000
        else:
            lo, hi = lo + 1, hi + 1
            if not need and ch.lower() == ch.upper():  # strptime matches letters case-blind
                need = ch
        i += 1
    return lo, hi, need


def build_parser(formats: Sequence[str], want: type[date]) -> Parser:
    """One parser trying ``formats`` in order (first match wins); ``want`` is date or datetime.

    The formats must have passed :func:`check_format`. The parser is generated as one function
    with the formats' checks inline: a format is only tried on text whose length and
    separators allow a match, and its canonical shape is read without any call but
    ``fromisoformat``.
    """
    ns: dict[str, Any] = {
        "_iso_date": date.fromisoformat,
        "_iso_datetime": datetime.fromisoformat,
        "_date": date,
        "_datetime": datetime,
        "_years": _YEARS.get,
        "_months": _MONTHS.get,
        "_days": _DAYS.get,
    }
    lines = ["def parse(t):", "    n = len(t)"]
    for i, fmt in enumerate(formats):
        rx = _numeric_regex(fmt)
        ns[f"_slow{i}"] = _regex_parser(rx, want) if rx is not None else _strptime_parser(fmt, want)
        ns[f"_need{i}"] = need = _prefilter(fmt)[2]
        lo, hi, _ = _prefilter(fmt)
        conditions = [f"{lo} <= n" if lo > 0 else "", f"n <= {hi}" if hi < 1_000 else ""]
        conditions.append(f"_need{i} in t" if need else "")
        test = " and ".join(c for c in conditions if c) or "True"
        lines.append(f"    if {test}:")
        fast = _FAST_PATHS.get(fmt)
        if fast is not None:
            lines.extend("        " + line for line in fast.format(**_RETURNS[want]).split("\n"))
        lines.append(f"        r = _slow{i}(t)")
        lines.append("        if r is not None:")
        lines.append("            return r")
    lines.append("    return None")
    source = "\n".join(lines) + "\n"
    exec(compiled_source(source, "<syncd date parser>"), ns)  # noqa: S102 - syncd's own templates; formats are bound
    parse: Parser = ns["parse"]
    return parse
