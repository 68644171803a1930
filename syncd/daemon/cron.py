"""Crontab expressions → APScheduler 3 cron triggers, with crontab's weekday numbering.

``CronTrigger.from_crontab`` reads the weekday field with APScheduler's own numbering (Monday=0),
so ``0 2 * * 1`` would fire on Tuesdays. Here the five fields are read like crontab(5): the weekday
numbers 0 and 7 mean Sunday, 1 Monday … 6 Saturday; names (``sun``, ``mon`` …), lists, ranges and
steps work. The weekday field is expanded into explicit day names, so no numbering is ambiguous.
The time zone is always explicit (a trigger without one uses the host's zone).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

__all__ = ["cron_trigger", "crontab_weekdays", "never_fires"]

_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day_number(token: str) -> int:
    token = token.strip().lower()
    if token[:3] in _NAMES and token.isalpha():
        return _NAMES.index(token[:3])
    if not token.isdigit():
        raise ValueError(f"weekday {token!r} is neither 0-7 nor a day name such as mon")
    n = int(token)
    if n > 7:
        raise ValueError(f"weekday {n} is out of range: 0-7, where 0 and 7 are Sunday")
    return n % 7


def crontab_weekdays(field: str) -> str:
    """The crontab weekday field as APScheduler's comma list of day names (``*`` stays ``*``)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        if step_text and not step_text.isdigit():
            raise ValueError(f"weekday step {step_text!r} must be a positive number")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"weekday step {step_text!r} must be a positive number")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            lo, hi = base.split("-", 1)
            # 7 is Sunday at either end: 5-7 is Friday to Sunday, 7-7 Sunday alone
            first = 7 if lo.strip() == "7" else _day_number(lo)
            last = 7 if hi.strip() == "7" else _day_number(hi)
            if last < first:
                raise ValueError(f"weekday range {base!r} runs backwards")
        else:
            first = _day_number(base)
            last = first if not step_text else 6
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_NAMES[d] for d in sorted(days))


def cron_trigger(expression: str, timezone: str | tzinfo) -> BaseTrigger:
    """A trigger for a five-field crontab expression in ``timezone`` (raises ValueError).

    As in crontab(5), when both the day-of-month and the weekday field are restricted the expression
    fires on days matching **either**: ``0 2 1,15 * 1`` runs on the 1st, the 15th and every Monday.
    APScheduler's CronTrigger requires both, so such an expression becomes two triggers, one per
    field, whichever fires first. A field is restricted when it does not *start* with ``*``
    (crontab(5): "If both fields are restricted (i.e., don't start with *), the command will be run
    when either field matches"; cronie and vixie cron set their DOM_STAR/DOW_STAR flag on the first
    character): ``0 2 */2 * 1`` runs on odd days that are Mondays, as crontab does."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    zone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    days = crontab_weekdays(weekday)
    if day.startswith("*") or weekday.startswith("*"):  # unrestricted: both must match (crontab(5))
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=days, timezone=zone)
    return OrTrigger(
        [
            CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=zone),
            CronTrigger(minute=minute, hour=hour, month=month, day_of_week=days, timezone=zone),
        ]
    )


def never_fires(trigger: BaseTrigger, now: datetime) -> bool:
    """Whether ``trigger`` has no fire time after ``now``: a day that no month has (``0 2 30 2 *``,
    30 February; ``0 2 31 4,6 *``). APScheduler searches the calendar and finds none. ``29 2``
    fires in leap years, and a restricted weekday field always fires (either field matches)."""
    return trigger.get_next_fire_time(None, now) is None
