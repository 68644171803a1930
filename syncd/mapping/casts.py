"""Casts: the value at the end of a transform chain becomes the column's Python type.

=============  ==============================================================================
``string``     ``str``; numbers as text without ``.0`` artefacts (3.0 -> "3"), dates in ISO;
               ``length`` enforced ("too long (N > length)"); JSON objects/arrays and text
               holding a NUL character (which PostgreSQL cannot store) rejected
``int``        ``int`` from 3, "3", 3.0, "3.0"; "3.5", "1e3", "1_000" rejected; 64-bit range
``decimal``    ``Decimal`` quantized to ``scale`` (half up, 四舍五入); at most
               ``precision - scale`` digits before the point; "1_000" rejected
=============  ==============================================================================
``date``       ``datetime.date`` from a date, a datetime (.date()), "2024-11-02", "20241102",
               an ISO date-time text, or the number 20241102; a date-time with a time-zone
               offset is rejected (its local date may be another day)
``datetime``   naive ``datetime`` from a datetime, a date (midnight), ISO text, "20241102",
               "20241102080000"; a value with a time-zone offset is rejected
``bool``       via the column's ``true_values`` / ``false_values`` (compared as text)
=============  ==============================================================================

A :class:`ColumnLimit` narrows a cast to what the target column holds when that is less than the
column's type says: a text key column without ``length`` (VARCHAR(255) in a table syncd creates),
and an existing table's narrower columns (a VARCHAR(10) for a ``string`` without ``length``, a
32-bit INTEGER for ``int``). A value past it is quarantined, its reason naming the column, the
value's size and the limit: one such value must never fail its batch on every run (DESIGN §4.6).

For every type but ``string`` an empty or whitespace-only text is NULL. A failure raises
:class:`~syncd.errors.RecordError` naming the value (truncated to 50 characters) and the
column type; the compiler adds the column name.

Numbers and dates are read from ASCII text only (``int()`` with ``re.ASCII``, the date shapes):
full-width digits ("１２３．５", common in hand-entered data) and other Unicode digits are rejected
by every cast (``Decimal()`` alone would take them), the reason naming the ``halfwidth`` transform
that turns them into ASCII first — a conversion the configuration states, not one a cast makes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

from syncd.config.model import ColumnConfig
from syncd.errors import RecordError
from syncd.mapping.base import STRIP_CHARS, MappingSpecError, Step, text_of

__all__ = ["INT_MAX", "INT_MIN", "KEY_TEXT_LENGTH", "ColumnLimit", "build_cast", "required_step"]

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
KEY_TEXT_LENGTH = 255
"""Characters of a text key column without ``length:``: syncd creates it as VARCHAR(255)."""


@dataclass(frozen=True, slots=True)
class ColumnLimit:
    """What a target column holds when it is less than the mapping's type: its most characters
    (``length``) or its integer range (``low``..``high``). ``why`` ends a rejection's reason: the
    column, the table and the fix."""

    why: str
    length: int | None = None
    low: int | None = None
    high: int | None = None

    def key(self) -> tuple[int | None, int | None, int | None]:
        """What the limit does to a mapping's result (the mapping's fingerprint reads it)."""
        return (self.length, self.low, self.high)

Describe = Callable[[Any], str]

_INT_TEXT = re.compile(r"([+-]?\d+)(?:\.0*)?", re.ASCII)


def required_step(reason: str) -> Step:
    """Reject ``None`` (``nullable: false`` and key columns)."""

    def required(v: Any) -> Any:
        if v is None:
            raise RecordError(reason)
        return v

    return Step(required, "if {v} is None: {f}({v})", on_str="", str_result="str", stripped_out="keep")


def build_cast(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None = None) -> Step:
    """The cast step of a column (``config.type``), narrowed to ``limit`` (see the module docstring)."""
    builder = {
        "string": _string,
        "int": _int,
        "decimal": _decimal,
        "date": _date,
        "datetime": _datetime,
        "bool": _bool,
    }[config.type]
    return builder(config, describe, limit)


def _not_single(v: Any, describe: Describe, expected: str) -> RecordError:
    kind = "JSON object" if isinstance(v, dict) else "JSON array" if isinstance(v, list | tuple) else None
    got = f"a {kind}" if kind else describe(v)
    return RecordError(f"{got} is not {expected}{_full_width_hint(v)}")


def _full_width_hint(v: Any) -> str:
    """The fix for a rejected text holding full-width characters (全角, U+FF01-U+FF5E)."""
    if v.__class__ is str and any("\uff01" <= ch <= "\uff5e" for ch in v):
        return ": it is written in full-width characters (全角); add the `halfwidth` transform before " \
            "the cast"
    return ""


_NUL = "\x00"


def _string(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    length, why = config.length, ""
    if limit is not None and limit.length is not None and (length is None or limit.length < length):
        length, why = limit.length, f": {limit.why}"

    def to_string(v: Any) -> Any:
        if v is None:
            return None
        if v.__class__ is str:
            text: str = v
        else:
            try:
                text = text_of(v)
            except RecordError:
                raise _not_single(v, describe, "text (column type string)") from None
        if length is not None and len(text) > length:
            raise RecordError(f"{describe(text)} is too long ({len(text)} > {length}){why}")
        if _NUL in text:  # PostgreSQL cannot store it: one such record must not fail every batch
            raise RecordError(f"{describe(text)} contains a NUL character (\\x00), which no database stores")
        return text

    if length is None:
        return Step(
            to_string,
            "if {v}.__class__ is str:\n    if {nul} in {v}: {f}({v})\nelif {v} is not None: {v} = {f}({v})",
            {"nul": _NUL},
            on_str="if {nul} in {v}: {f}({v})",
            str_result="str",
            none_safe=True,
            stripped_out="keep",
        )
    return Step(
        to_string,
        "if {v}.__class__ is str:\n"
        "    if len({v}) > {length} or {nul} in {v}: {f}({v})\n"
        "elif {v} is not None: {v} = {f}({v})",
        {"length": length, "nul": _NUL},
        on_str="if len({v}) > {length} or {nul} in {v}: {f}({v})",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


def _long_whole(text: str) -> int | None:
    """The value of a whole-number text (``_INT_TEXT``) too long for ``int()``, or None when it
    is past the 64-bit range anyway: only leading zeros can make such a text small."""
    m = _INT_TEXT.fullmatch(text)
    if m is None:  # not reached: the caller read it as a whole number already
        return None
    digits = m.group(1)
    significant = digits.lstrip("+-").lstrip("0") or "0"
    if len(significant) > len(str(INT_MAX)):
        return None
    number = int(significant)
    return -number if digits[0] == "-" else number


def _range(limit: ColumnLimit | None, kind: str) -> tuple[int, int, str]:
    """The integer range a column holds (the 64-bit one, or its ``limit``'s when narrower), and
    what a value outside it is, after its description."""
    if limit is None or (limit.low is None and limit.high is None):
        return INT_MIN, INT_MAX, f"is out of range for a 64-bit integer (column type {kind})"
    low = INT_MIN if limit.low is None else max(limit.low, INT_MIN)
    high = INT_MAX if limit.high is None else min(limit.high, INT_MAX)
    return low, high, f"is out of range ({low} to {high}): {limit.why}"


def _int(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    chars = STRIP_CHARS
    low, high, why = _range(limit, "int")

    def bad(v: Any) -> RecordError:
        return _not_single(v, describe, "a whole number (column type int)")

    def out_of_range(v: Any) -> RecordError:
        return RecordError(f"{describe(v)} {why}")

    def other(v: Any) -> int:
        """Numbers that are not plain ints: 3.0, Decimal("3"), int subclasses."""
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
            return int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return int(v)
        raise bad(v)

    def to_int(v: Any) -> Any:
        cls = v.__class__
        if cls is str:
            text = v.strip(chars)
            if not text:
                return None
            try:
                if text.isascii() and text.isdigit():
                    number = int(text)
                else:
                    m = _INT_TEXT.fullmatch(text)
                    if m is None:
                        raise bad(v)
                    number = int(m.group(1))
            except ValueError:  # more digits than Python converts from text (4,300 by default)
                long = _long_whole(text)
                if long is None:
                    raise out_of_range(v) from None
                number = long
        elif cls is int:
            number = v
        elif v is None:
            return None
        else:
            number = other(v)
        if not low <= number <= high:
            raise out_of_range(v)
        return number

    return Step(
        to_int,
        "if {v}.__class__ is not int or not {lo} <= {v} <= {hi}: {v} = {f}({v})",
        {"lo": low, "hi": high},
        none_safe=True,
    )


def _decimal(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    precision, scale = config.precision, config.scale
    low, high, why = _range(limit, f"decimal({precision},{scale})")  # decimal(p,0) in an integer column
    if scale > precision:
        raise MappingSpecError(("scale",), f"scale ({scale}) is greater than precision ({precision})")
    quantum = Decimal(1).scaleb(-scale)
    integer_digits = precision - scale
    context = Context(prec=precision + 40, rounding=ROUND_HALF_UP)
    zero = Decimal(0).quantize(quantum)
    chars = STRIP_CHARS
    shape = f"decimal({precision},{scale})"

    def bad(v: Any) -> RecordError:
        return _not_single(v, describe, f"a number (column type {shape})")

    def number_of(v: Any) -> Decimal | None:
        """The exact Decimal of an upstream number or numeric text (floats via their repr)."""
        if isinstance(v, str):
            text = v.strip(chars)
            if not text:
                return None
            if "_" in text or not text.isascii():  # Decimal() takes any Unicode digit: int() here does not
                raise bad(v)
            try:
                return Decimal(text)
            except InvalidOperation:
                raise bad(v) from None
        if isinstance(v, float):
            return Decimal(repr(v))
        if isinstance(v, Decimal):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return Decimal(int(v))
        raise bad(v)

    def to_decimal(v: Any) -> Any:
        cls = v.__class__
        number: Decimal | None
        if cls is str and "_" not in v and v.isascii():  # isascii: O(1) on CPython's compact strings
            try:
                number = Decimal(v)  # ASCII blanks around the number are fine for Decimal
            except InvalidOperation:
                number = number_of(v)  # empty text, or an error
        elif cls is int:
            number = Decimal(v)
        elif v is None:
            return None
        else:
            number = number_of(v)
        if number is None:
            return None
        if not number.is_finite():
            raise bad(v)
        try:
            # positional arguments: the keyword form costs twice as much in _decimal
            result = number.quantize(quantum, None, context)
        except InvalidOperation:  # far more digits than the context holds
            result = None
        if result is None or (result and result.adjusted() >= integer_digits):
            raise RecordError(
                f"{describe(v)} has too many digits for column type {shape}: "
                f"at most {precision - scale} before the decimal point"
            )
        if limit is not None and not low <= result <= high:
            raise RecordError(f"{describe(v)} {why}")
        return result if result else zero

    return Step(to_decimal, none_safe=True)


def _parse_date_text(text: str) -> date | None:
    """ISO ``2024-11-02``, ``20241102`` (a date) or an ISO date-time (a datetime, possibly
    with an offset); None for other shapes."""
    n = len(text)
    try:
        if text.isascii():
            if n == 10 and text[4] == "-" and text[7] == "-":
                return date.fromisoformat(text)
            if n == 8 and text.isdigit():
                return date(int(text[:4]), int(text[4:6]), int(text[6:]))
            if n >= 16 and text[4] == "-" and text[10] in " T":
                return datetime.fromisoformat(text)
    except ValueError:
        return None
    return None


def _date(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    chars = STRIP_CHARS

    def bad(v: Any) -> RecordError:
        return _not_single(
            v,
            describe,
            "a date (column type date): expected 2024-11-02 or 20241102, "
            "or add a `date` transform with the upstream's `formats:`",
        )

    def to_date(v: Any) -> Any:
        result: date | None
        if isinstance(v, date):
            result = v
        elif v.__class__ is str:
            text = v.strip(chars)
            if not text:
                return None
            result = _parse_date_text(text)
        elif isinstance(v, int) and not isinstance(v, bool):
            result = _parse_date_text(str(v))
        elif v is None:
            return None
        else:
            raise bad(v)
        if result.__class__ is date:
            return result
        if result is None:
            raise bad(v)
        if isinstance(result, datetime):
            if result.tzinfo is not None:
                raise RecordError(
                    f"{describe(v)} carries a time-zone offset; date columns hold local dates, "
                    "which the offset may shift by a day: add a `date` transform whose formats "
                    "leave the offset out"
                )
            return result.date()
        return date(result.year, result.month, result.day)

    return Step(
        to_date,
        "if {v}.__class__ is not {date} and {v} is not None: {v} = {f}({v})",
        {"date": date},
        none_safe=True,
    )


def _parse_datetime_text(text: str) -> datetime | None:
    """ISO date-times (and dates), ``20241102`` and ``20241102080000``; None for other shapes."""
    n = len(text)
    try:
        if text.isascii():
            if text.isdigit() and n in (8, 14):
                return datetime(
                    int(text[:4]),
                    int(text[4:6]),
                    int(text[6:8]),
                    int(text[8:10] or 0),
                    int(text[10:12] or 0),
                    int(text[12:14] or 0),
                )
            if n >= 10 and text[4] == "-" and text[7] == "-":
                return datetime.fromisoformat(text)
    except ValueError:
        return None
    return None


def _datetime(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    chars = STRIP_CHARS

    def bad(v: Any) -> RecordError:
        return _not_single(
            v,
            describe,
            "a date-time (column type datetime): expected 2024-11-02 08:30:00, "
            "or add a `datetime` transform with the upstream's `formats:`",
        )

    def to_datetime(v: Any) -> Any:
        if isinstance(v, datetime):
            result: datetime | None = datetime.combine(v.date(), v.time(), v.tzinfo)
        elif isinstance(v, date):
            return datetime(v.year, v.month, v.day)
        elif v.__class__ is str:
            text = v.strip(chars)
            if not text:
                return None
            result = _parse_datetime_text(text)
        elif v is None:
            return None
        else:
            raise bad(v)
        if result is None:
            raise bad(v)
        if result.tzinfo is not None:
            raise RecordError(
                f"{describe(v)} carries a time-zone offset; datetime columns hold naive local times: "
                "add a `datetime` transform whose formats leave the offset out"
            )
        return result

    return Step(
        to_datetime,
        "if {v}.__class__ is not {datetime} or {v}.tzinfo is not None:\n"
        "    if {v} is not None: {v} = {f}({v})",
        {"datetime": datetime},
        none_safe=True,
    )


def _bool(config: ColumnConfig, describe: Describe, limit: ColumnLimit | None) -> Step:
    trues, falses = frozenset(config.true_values), frozenset(config.false_values)
    both = sorted(trues & falses)
    if both:
        raise MappingSpecError(
            ("true_values",), f"{', '.join(both)} appear in both true_values and false_values"
        )
    chars = STRIP_CHARS
    hint = (
        f"a yes/no value (column type bool): true is {', '.join(config.true_values)}; "
        f"false is {', '.join(config.false_values)}"
    )

    def to_bool(v: Any) -> Any:
        if v.__class__ is bool:
            return v
        if v is None:
            return None
        try:
            text = v.strip(chars) if v.__class__ is str else text_of(v)
        except RecordError:
            raise _not_single(v, describe, hint) from None
        if not text:
            return None
        if text in trues:
            return True
        if text in falses:
            return False
        raise RecordError(f"{describe(v)} is not {hint}")

    return Step(to_bool, "if {v}.__class__ is not bool and {v} is not None: {v} = {f}({v})", none_safe=True)
