"""The validator registry: checks on a column's value; a failing record is quarantined.

Each factory validates its options when the mapping is compiled and returns a
:class:`~syncd.mapping.base.Step` whose function returns the value it checked or raises
:class:`~syncd.errors.RecordError` (``message:`` in the config replaces the reason).
Validators let ``None`` pass (``required`` and ``nullable: false`` deal with missing values).

Contract note: ``id_number`` is the one validator that changes the value — a trailing
lowercase ``x`` check digit is upper-cased, so that ``…123x`` and ``…123X`` are one person
(and one key). All other validators return the value unchanged.

Reasons never quote an ID number: they say what is wrong with it instead.

``not_excel_damaged`` and ``id_number`` judge how a number arrived: a float (an upstream JSON
number with a fraction or exponent) of 10**15 or more has lost digits, but once the cast has
made it text (``1.2345678901234e15`` -> ``"1234567890123400"``) nobody can tell. So on a column
that is not masked or hashed (where all validators already run before the cast), the compiler
also runs them on a float just before the cast (:func:`float_guard`).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from syncd.config.model import ValidatorConfig
from syncd.errors import RecordError
from syncd.mapping.base import (
    STRIP_CHARS,
    MappingSpecError,
    Step,
    StepContext,
    lookup_factory,
    text_of,
)

__all__ = [
    "EXCEL_DAMAGED",
    "FLOAT_CHECKED",
    "VALIDATORS",
    "VALIDATOR_OPTIONS",
    "ValidatorFactory",
    "build_validator",
    "float_guard",
    "id_number_problem",
    "looks_excel_damaged",
]

ValidatorFactory = Callable[[ValidatorConfig, StepContext], Step]

VALIDATORS: dict[str, ValidatorFactory] = {}
VALIDATOR_OPTIONS: dict[str, frozenset[str]] = {}

EXCEL_DAMAGED = "looks damaged by Excel (scientific notation): the upstream must send this field as text"

FLOAT_CHECKED = frozenset({"not_excel_damaged", "id_number"})
"""Validators that must also see a float before the cast turns it into digit text."""


def _register(name: str, *options: str) -> Callable[[ValidatorFactory], ValidatorFactory]:
    def add(factory: ValidatorFactory) -> ValidatorFactory:
        VALIDATORS[name] = factory
        VALIDATOR_OPTIONS[name] = frozenset((*options, "message"))
        return factory

    return add


def build_validator(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    """Validate ``cfg`` and build its step (errors are positioned relative to the validator)."""
    return lookup_factory(VALIDATORS, VALIDATOR_OPTIONS, "validator", cfg)(cfg, ctx)


def _fail(message: str | None) -> Callable[[str], RecordError]:
    """``reason -> RecordError``, with the configured ``message`` replacing the reason."""
    if message:
        return lambda _reason: RecordError(message)
    return RecordError


def float_guard(check: Step) -> Step:
    """``check`` (a :data:`FLOAT_CHECKED` validator) applied to a float only, for the place
    before the cast: text and every other value pass untouched (no statement at all for text)."""
    validate = check.fn

    def guard(v: Any) -> Any:
        if v.__class__ is float:
            validate(v)
        return v

    return Step(
        guard,
        "if {v}.__class__ is float: {f}({v})",
        on_str="",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


# --------------------------------------------------------------------------- required


@_register("required")
def _required(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    error = _fail(cfg.message)
    chars = STRIP_CHARS

    def required(v: Any) -> Any:
        if v is None or (v.__class__ is str and not v.strip(chars)):
            raise error("required value missing")
        return v

    return Step(
        required,
        "if {v} is None or ({v}.__class__ is str and not {v}.strip({chars})): {f}({v})",
        {"chars": chars},
        on_str="if not {v}.strip({chars}): {f}({v})",
        str_result="str",
        on_stripped="if not {v}: {f}({v})",
        stripped_out="keep",
    )


# --------------------------------------------------------------------------- Excel damage

_SCIENTIFIC = re.compile(r"[+-]?\d+(?:\.\d*)?[eE][+-]?\d+", re.ASCII)


def looks_excel_damaged(v: Any) -> bool:
    """True for ``3.60102E+17``-style text and long numbers that lost digits through a float.

    A float (an upstream JSON number with a fraction or exponent) of 10**15 or more cannot
    hold its digits; a digit string of 15+ characters ending in ``0000`` (or ``0000.0``) is a
    long code whose tail Excel rounded away.
    """
    if v.__class__ is str:
        text = v.strip(STRIP_CHARS)
        if ("e" in text or "E" in text) and _SCIENTIFIC.fullmatch(text):
            return True
        if text.endswith(".0"):
            text = text[:-2]
        return len(text) >= 15 and text.endswith("0000") and text.isascii() and text.isdigit()
    if isinstance(v, float):
        return abs(v) >= 1e15 or (v.is_integer() and len(text_of(v)) >= 15 and text_of(v).endswith("0000"))
    if isinstance(v, int) and not isinstance(v, bool):
        return v >= 10**14 and v % 10_000 == 0
    return False


@_register("not_excel_damaged")
def _not_excel_damaged(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    error = _fail(cfg.message)

    def not_excel_damaged(v: Any) -> Any:
        if v is not None and looks_excel_damaged(v):
            raise error(EXCEL_DAMAGED)
        return v

    return Step(
        not_excel_damaged,
        "if {v} is not None and ({v}.__class__ is not str or 'e' in {v} or 'E' in {v}\n"
        "        or {v}.rstrip({chars}).endswith(('0000', '.0'))):\n"
        "    {f}({v})",
        {"chars": STRIP_CHARS},
        on_str="if 'e' in {v} or 'E' in {v} or {v}.rstrip({chars}).endswith(('0000', '.0')): {f}({v})",
        str_result="str",
        none_safe=True,
        on_stripped="if 'e' in {v} or 'E' in {v} or {v}.endswith(('0000', '.0')): {f}({v})",
        stripped_out="keep",
    )


# --------------------------------------------------------------------------- ID number (身份证号)

# GB 11643 / ISO 7064 MOD 11-2: the weights are 2**(18-i) mod 11, and 13 ≡ 2 (mod 11), so the
# weighted digit sum is congruent to 2 * int(body, 13): one C call instead of 17 products.
_CHECK_DIGITS = "10X98765432"
_ID_PREFIX = "not a valid ID number (身份证号): "
_FIRST_BIRTH = date(1900, 1, 1)


# every MMDD of a leap year: with the year range and the 29 February rule below, what makes
# YYYYMMDD a real date (a set of all 46,000 plausible birth dates held 4.6 MB in every process)
_MONTH_DAYS = frozenset(
    f"{m:02d}{d:02d}" for m in range(1, 13) for d in range(1, calendar.monthrange(2000, m)[1] + 1)
)
_FIRST_BIRTH_TEXT = _FIRST_BIRTH.strftime("%Y%m%d")


def plausible_birth(ymd: str, today: str) -> bool:
    """Whether ``ymd`` (8 ASCII digits, YYYYMMDD) is a real date from 1900-01-01 to ``today``
    (also YYYYMMDD): with 8 digits each, comparing the texts compares the dates."""
    mmdd = ymd[4:]
    return (
        mmdd in _MONTH_DAYS
        and _FIRST_BIRTH_TEXT <= ymd <= today
        and (mmdd != "0229" or calendar.isleap(int(ymd[:4])))
    )


def id_number_problem(text: str, today: date) -> str | None:
    """Why an 18-character ID number (check digit already upper-cased) is invalid, or None."""
    body, last = text[:17], text[17]
    if not (body.isascii() and body.isdigit() and (last == "X" or (last.isascii() and last.isdigit()))):
        return _ID_PREFIX + "the first 17 characters must be digits and the last a digit or X"
    if _CHECK_DIGITS[2 * int(body, 13) % 11] != last:
        return _ID_PREFIX + "the check digit (校验码) does not match the other 17 digits"
    if not plausible_birth(text[6:14], today.strftime("%Y%m%d")):
        try:
            date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
        except ValueError:
            return _ID_PREFIX + "the birth date (characters 7-14) is not a real date"
        return _ID_PREFIX + "the birth date (characters 7-14) is not plausible (before 1900 or in the future)"
    return None


@_register("id_number")
def _id_number(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    error = _fail(cfg.message)
    # the configured zone's date (the run's), not the host's: on a UTC host Beijing's day starts at 16:00
    today = ctx.today or date.today()
    today_text = today.strftime("%Y%m%d")
    checks = _CHECK_DIGITS

    def id_number(v: Any) -> Any:
        if v is None:
            return None
        if v.__class__ is str:
            text = v
        elif isinstance(v, float) and looks_excel_damaged(v):  # its text would look whole
            raise error(_ID_PREFIX + EXCEL_DAMAGED)
        else:
            text = text_of(v)
        n = len(text)
        if n == 18:
            if text[17] == "x":
                text = text[:17] + "X"
            body = text[:17]
            # happy path inline; id_number_problem says what is wrong otherwise
            if (
                body.isdigit()
                and body.isascii()
                and checks[2 * int(body, 13) % 11] == text[17]
                and plausible_birth(text[6:14], today_text)
            ):
                return text
            raise error(id_number_problem(text, today) or _ID_PREFIX + "unreadable")
        if n == 15 and text.isascii() and text.isdigit():
            raise error(
                _ID_PREFIX + "this is a 15-digit old-style number (一代身份证): "
                "the upstream must send the 18-digit number"
            )
        if looks_excel_damaged(v):
            raise error(_ID_PREFIX + EXCEL_DAMAGED)
        raise error(_ID_PREFIX + f"18 characters expected, got {n}")

    return Step(id_number, str_result="str", none_safe=True, stripped_out="keep")


# --------------------------------------------------------------------------- regex, length, range


@_register("regex", "pattern")
def _regex(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    if cfg.pattern is None:
        raise MappingSpecError((), "regex needs a `pattern` that the whole value must match")
    try:
        rx = re.compile(cfg.pattern)
    except re.error as exc:
        raise MappingSpecError(
            ("pattern",), f"{cfg.pattern!r} is not a valid regular expression: {exc}"
        ) from None
    error = _fail(cfg.message)
    fullmatch = rx.fullmatch
    describe = ctx.describe
    pattern = cfg.pattern

    def regex(v: Any) -> Any:
        if v is not None and fullmatch(v if v.__class__ is str else text_of(v)) is None:
            raise error(f"{describe(v)} does not match the pattern {pattern}")
        return v

    return Step(
        regex,
        "if {v}.__class__ is not str or {fullmatch}({v}) is None:\n    if {v} is not None: {f}({v})",
        {"fullmatch": fullmatch},
        on_str="if {fullmatch}({v}) is None: {f}({v})",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


def _bounds(cfg: ValidatorConfig, *, whole: bool) -> tuple[Decimal | None, Decimal | None]:
    lo, hi = cfg.min, cfg.max
    if lo is None and hi is None:
        raise MappingSpecError((), f"{cfg.type} needs `min`, `max` or both")
    for name, bound in (("min", lo), ("max", hi)):
        if bound is None:
            continue
        if not bound.is_finite():
            raise MappingSpecError((name,), f"{name} must be a finite number")
        if whole and (bound != bound.to_integral_value() or bound < 0):
            raise MappingSpecError((name,), f"{name} must be a whole number of characters (0 or more)")
    if lo is not None and hi is not None and lo > hi:
        raise MappingSpecError(("min",), f"min ({lo}) is greater than max ({hi})")
    return lo, hi


@_register("length", "min", "max")
def _length(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    lo, hi = _bounds(cfg, whole=True)
    shortest = int(lo) if lo is not None else 0
    longest = int(hi) if hi is not None else None
    error = _fail(cfg.message)
    describe = ctx.describe

    def length(v: Any) -> Any:
        if v is None:
            return None
        n = len(v if v.__class__ is str else text_of(v))
        if n < shortest:
            raise error(f"{describe(v)} is too short ({n} < {shortest} characters)")
        if longest is not None and n > longest:
            raise error(f"{describe(v)} is too long ({n} > {longest} characters)")
        return v

    return Step(length, str_result="str", none_safe=True, stripped_out="keep")


@_register("range", "min", "max")
def _range(cfg: ValidatorConfig, ctx: StepContext) -> Step:
    if ctx.config.type in ("date", "datetime", "bool"):
        raise MappingSpecError((), f"range checks numbers; this column's type is {ctx.config.type}")
    lo, hi = _bounds(cfg, whole=False)
    error = _fail(cfg.message)
    describe = ctx.describe

    def in_range(v: Any) -> Any:
        if v is None:
            return None
        number: int | float | Decimal
        if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
            try:
                number = Decimal(v.strip(STRIP_CHARS) if isinstance(v, str) else text_of(v))
            except (InvalidOperation, RecordError):
                raise error(f"{describe(v)} is not a number") from None
            if not number.is_finite():
                raise error(f"{describe(v)} is not a number")
        else:
            number = v
        if lo is not None and number < lo:
            raise error(f"{describe(v)} is below the minimum {lo}")
        if hi is not None and number > hi:
            raise error(f"{describe(v)} is above the maximum {hi}")
        return v

    return Step(in_range, str_result="str", none_safe=True, stripped_out="keep")
