"""Deterministic, seeded, realistically dirty resident records ("Style 1" camelCase fields).

Every record looks like what a provincial population gateway returns (人口基础信息): Chinese
names (some with rare characters outside the BMP, some padded with spaces or U+3000), 18-digit
ID numbers with a valid GB 11643 check digit that agrees with the birth date, the sex and the
division code, mixed date formats, mixed gender codes, numbers sent as strings, full-width
digits, placeholders such as ``无`` and ``/``, nested address and contact objects.

Records are grouped in households (户) that share an address and a household id. Update times
start at ``start_time`` and advance by 0, 1 or 2 seconds per record (0.83 s on average, at most
``2 * n`` seconds in all), so many records share a second, as on a real gateway.

``bad_ratio`` makes that share of records dirty beyond repair (for quarantine tests): an
Excel-damaged ID number (``3.30102E+17``), a wrong check digit, or an impossible birth date.
The same seed always gives the same records, and ``n`` records are a prefix of ``n + k``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from syncd.gateway.codes import CODE_TABLES, id_check_digit
from syncd.gateway.vocab import (
    DISTRICTS,
    GIVEN_CHARS,
    PHONE_PREFIXES,
    RARE_CHARS,
    REMARKS,
    ROADS,
    SURNAMES,
    VILLAGES,
)

__all__ = [
    "CODE_TABLES",
    "TIME_FORMAT",
    "RecordFactory",
    "format_time",
    "generate_records",
    "iter_records",
]

TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
"""Format of ``updateTime`` (naive Asia/Shanghai local time, second resolution)."""

_ID_SPACE: Final = 100_000_000
_ID_STRIDE: Final = 7919  # coprime with 10**8: index -> id is a bijection, ids look unordered
_FULL_WIDTH: Final = str.maketrans("0123456789", "０１２３４５６７８９")
_MONTH_DAYS: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MINORITY_CODES: Final = tuple(c for c in CODE_TABLES["ethnicity"] if c not in ("01", "97", "98"))
_EDUCATION: Final = (("10", 0.02), ("20", 0.14), ("30", 0.26), ("40", 0.34), ("60", 0.50),
                     ("70", 0.78), ("80", 0.95), ("90", 1.0))
_MARITAL_ADULT: Final = (("20", 0.50), ("21", 0.62), ("22", 0.67), ("23", 0.68), ("10", 0.78),
                         ("30", 0.87), ("40", 0.97), ("90", 1.0))
_THIS_YEAR: Final = 2024


def format_time(value: datetime) -> str:
    """``value`` (naive local time) as an ``updateTime`` string: ``YYYY-MM-DD HH:MM:SS``."""
    if value.tzinfo is not None:
        raise ValueError("update times are naive local (Asia/Shanghai) datetimes")
    # isoformat is about twice as fast as strftime (this runs once per generated second)
    return value.isoformat(sep=" ", timespec="seconds")


def _weighted(table: tuple[tuple[str, float], ...], x: float) -> str:
    for code, upto in table:
        if x < upto:
            return code
    return table[-1][0]


def _days_in(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _MONTH_DAYS[month - 1]


def _format_date(y: int, m: int, d: int, x: float) -> str:
    """One of the four date spellings seen on real gateways, chosen by ``x`` in [0, 1)."""
    if x < 0.40:
        return f"{y:04d}-{m:02d}-{d:02d}"
    if x < 0.65:
        return f"{y:04d}{m:02d}{d:02d}"
    if x < 0.85:
        return f"{y}年{m}月{d}日"
    return f"{y:04d}-{m:02d}-{d:02d} 00:00:00.0"


@dataclass(slots=True)
class _Household:
    household_id: str
    division_code: str
    street: str
    detail: str
    size: int
    members_left: int
    head_year: int
    head_male: bool


class RecordFactory:
    """Makes records one after another from one seeded random stream.

    ``next_index`` counts the records made so far; record *i*'s id depends only on the seed and
    *i*, so a store can keep inserting new, unique records after a bulk generation.
    """

    def __init__(self, seed: int, *, bad_ratio: float = 0.0) -> None:
        if not 0.0 <= bad_ratio <= 1.0:
            raise ValueError("bad_ratio is a share between 0.0 and 1.0")
        self.seed = seed
        self.bad_ratio = bad_ratio
        self.next_index = 0
        self._rng = random.Random(seed)
        self._id_offset = (seed * 104_729) % _ID_SPACE
        self._household: _Household | None = None
        self._household_seq = 0

    # ------------------------------------------------------------------ public

    def record_id(self, index: int) -> str:
        """The upstream primary key of record ``index``: ``R`` and 8 digits, unique below 10**8."""
        return f"R{(index * _ID_STRIDE + self._id_offset) % _ID_SPACE:08d}"

    def make(self, update_time: str) -> dict[str, Any]:
        """The next record, stamped with ``update_time`` (already formatted)."""
        index = self.next_index
        if index >= _ID_SPACE:
            raise OverflowError("the id space of the simulated gateway (10**8 records) is exhausted")
        self.next_index = index + 1
        return self._record(self.record_id(index), update_time)

    def stream(self, n: int, start_time: datetime) -> Iterator[dict[str, Any]]:
        """``n`` records with update times from ``start_time`` on, 0-2 seconds apart."""
        r = self._rng.random
        current = start_time.replace(microsecond=0)
        stamp = format_time(current)
        for _ in range(n):
            yield self.make(stamp)
            x = r()
            if x >= 1 / 3:
                current += timedelta(seconds=1 if x < 5 / 6 else 2)
                stamp = format_time(current)

    # ------------------------------------------------------------------ pieces

    def _name(self, *, plain: bool = False) -> str:
        r = self._rng.random
        surname = SURNAMES[int(len(SURNAMES) * r() * r())]
        given = GIVEN_CHARS[int(len(GIVEN_CHARS) * r())]
        if r() < 0.7:
            given += GIVEN_CHARS[int(len(GIVEN_CHARS) * r())]
        if plain:
            return surname + given
        x = r()
        if x < 0.03:  # rare character outside the BMP
            given = given[:-1] + RARE_CHARS[int(len(RARE_CHARS) * r())]
        name = surname + given
        x = r()
        if x < 0.01:
            return " " + name
        if x < 0.02:
            return name + " "
        if x < 0.03:
            return name + "\u3000"
        if x < 0.035:
            return "\u3000" + name
        return name

    def _phone(self) -> str:
        r = self._rng.random
        phone = PHONE_PREFIXES[int(len(PHONE_PREFIXES) * r())] + f"{int(r() * 100_000_000):08d}"
        if r() < 0.02:
            return phone.translate(_FULL_WIDTH)
        return phone

    def _new_household(self) -> _Household:
        r = self._rng.random
        code, _county, streets = DISTRICTS[int(len(DISTRICTS) * r())]
        street_no = int(len(streets) * r())
        street = streets[street_no]
        community = 1 + int(20 * r())
        if street.endswith("镇"):
            detail = f"{VILLAGES[int(len(VILLAGES) * r())]}{1 + int(12 * r())}组{1 + int(80 * r())}号"
        else:
            detail = (
                f"{ROADS[int(len(ROADS) * r())]}{1 + int(300 * r())}号{1 + int(30 * r())}幢"
                f"{1 + int(4 * r())}单元{1 + int(18 * r())}0{1 + int(4 * r())}室"
            )
        size = (1, 2, 2, 3, 3, 3, 4, 4, 5)[int(9 * r())]
        self._household_seq += 1
        return _Household(
            household_id=f"{code}{self._household_seq:09d}",
            division_code=f"{code}{street_no + 1:03d}{community:03d}",
            street=street,
            detail=detail,
            size=size,
            members_left=size,
            head_year=1940 + int(56 * r()),
            head_male=r() < 0.7,
        )

    def _record(self, record_id: str, update_time: str) -> dict[str, Any]:  # noqa: PLR0915 - one flat recipe
        r = self._rng.random
        hh = self._household
        if hh is None or hh.members_left == 0:
            hh = self._household = self._new_household()
        member = hh.size - hh.members_left
        hh.members_left -= 1

        # relation, sex and birth year follow the member's place in the household
        if member == 0:
            relation, male, year = "02", hh.head_male, hh.head_year
        elif member == 1:
            relation, male, year = "10", not hh.head_male, hh.head_year + int(11 * r()) - 5
        elif r() < 0.85:
            male = r() < 0.5
            relation, year = ("20" if male else "30"), min(hh.head_year + 22 + int(14 * r()), 2023)
        else:
            male = r() < 0.5
            relation, year = ("50" if r() < 0.7 else "80"), max(hh.head_year - 20 - int(10 * r()), 1925)
        month = 1 + int(12 * r())
        day = 1 + int(_days_in(year, month) * r())

        region = hh.division_code[:6]
        seq = int(499 * r()) * 2 + (1 if male else 2)  # 001-999: 000 is never assigned
        body = f"{region}{year:04d}{month:02d}{day:02d}{seq:03d}"
        id_card = body + id_check_digit(body)
        birth = _format_date(year, month, day, r())

        x = r()
        if x < 0.005:
            gender = "9"
        elif x < 0.25:
            gender = "男" if male else "女"
        else:
            gender = "1" if male else "2"

        age = _THIS_YEAR - year
        ethnicity = "01" if r() < 0.92 else _MINORITY_CODES[int(len(_MINORITY_CODES) * r())]
        education = _weighted(_EDUCATION, r()) if age >= 16 else "80"
        if relation in ("02", "10") and hh.size > 1:
            marital = ("20", "20", "21", "22")[int(4 * r())]
        elif age < 22:
            marital = "10"
        else:
            marital = _weighted(_MARITAL_ADULT, r())

        amount = round(3000 + 150_000 * r() * r(), 2)
        x = r()
        income: Any = f"{amount:.2f}" if x < 0.6 else amount if x < 0.9 else int(amount) if x < 0.95 else None
        household_size: Any = hh.size if r() < 0.7 else str(hh.size)

        reg_year = min(year + int((_THIS_YEAR - year + 1) * r()), _THIS_YEAR)
        reg_month = 1 + int(12 * r())
        registered = _format_date(reg_year, reg_month, 1 + int(_days_in(reg_year, reg_month) * r()), r())

        x = r()
        remark: str | None = (
            "无" if x < 0.4 else "/" if x < 0.5 else "" if x < 0.6 else None if x < 0.7
            else REMARKS[int(len(REMARKS) * r())]
        )
        x = r()
        emergency_phone: str | None = self._phone() if x < 0.85 else "" if x < 0.95 else None

        # always draw, so that good records are the same whatever bad_ratio is
        spoil, kind, spelling = r(), r(), r()
        if spoil < self.bad_ratio:
            id_card, birth = _spoil(id_card, birth, year, kind, spelling)

        return {
            "id": record_id,
            "name": self._name(),
            "idCard": id_card,
            "gender": gender,
            "birthDate": birth,
            "ethnicity": ethnicity,
            "education": education,
            "maritalStatus": marital,
            "phone": self._phone(),
            "address": {"divisionCode": hh.division_code, "street": hh.street, "detail": hh.detail},
            "householdId": hh.household_id,
            "relation": relation,
            "householdSize": household_size,
            "income": income,
            "registerDate": registered,
            "remark": remark,
            "contact": {"emergencyName": self._name(plain=True), "emergencyPhone": emergency_phone},
            "isDeleted": "0",
            "updateTime": update_time,
        }


def _spoil(id_card: str, birth: str, year: int, kind: float, spelling: float) -> tuple[str, str]:
    """Damage a record beyond repair: Excel-mangled ID, wrong check digit or impossible date."""
    if kind < 1 / 3:
        return f"{float(id_card[:17] + '0'):.5E}", birth
    if kind < 2 / 3:
        checks = "0123456789X"
        return id_card[:17] + checks[(checks.index(id_card[17]) + 1) % 11], birth
    return id_card, _format_date(year, 2, 30, spelling)  # 30 February, in one of the usual spellings


def iter_records(
    n: int, seed: int, start_time: datetime, *, bad_ratio: float = 0.0
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` records one at a time (constant memory); see :func:`generate_records`."""
    if n < 0:
        raise ValueError("the number of records cannot be negative")
    return RecordFactory(seed, bad_ratio=bad_ratio).stream(n, start_time)


def generate_records(
    n: int, seed: int, start_time: datetime, *, bad_ratio: float = 0.0
) -> list[dict[str, Any]]:
    """``n`` resident records, the same for the same ``seed`` and ``start_time``."""
    return list(iter_records(n, seed, start_time, bad_ratio=bad_ratio))
