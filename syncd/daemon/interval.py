"""Interval schedules whose jitter does not accumulate.

APScheduler 3's :class:`IntervalTrigger` adds its jitter to the next fire time and computes the
time after it from that *jittered* time: each run is late by the delays of all the runs before it
added up. ``every: 15m, jitter: 5m`` then runs on average every 17.5 minutes (82 runs a day instead
of 96), drifting further and further from the planned times. docs/daemon.md promises that jitter
only delays each planned time by at most that much, so :class:`GridIntervalTrigger` plans on the
un-jittered grid (the first planned time + n × every) and delays each planned time by a fresh
random jitter. It implements APScheduler's documented trigger interface
(``get_next_fire_time(previous_fire_time, now)``), as an :class:`IntervalTrigger` (the scheduler
re-arms interval jobs after a clock step by their type).
"""

from __future__ import annotations

import random
from datetime import datetime, tzinfo

from apscheduler.triggers.interval import IntervalTrigger

__all__ = ["GridIntervalTrigger"]

_REMEMBERED = 16
"""Fire times remembered with their planned time: APScheduler asks for the time after the last
one it ran, and (catching up) after each it skipped; a handful suffices."""


class GridIntervalTrigger(IntervalTrigger):  # type: ignore[misc] # APScheduler 3 has no type hints
    """Every ``seconds``, each planned time delayed by up to ``jitter`` seconds, the delays never
    adding up. A previous fire time this trigger did not give (a first run or a re-armed time the
    scheduler set itself) is taken as a planned time: the grid goes on from there."""

    __slots__ = ("_planned_of", "spread")

    def __init__(self, *, seconds: float, timezone: tzinfo, jitter: float | None) -> None:
        super().__init__(seconds=seconds, timezone=timezone)  # the parent plans without jitter
        self.spread = jitter or None
        self._planned_of: dict[datetime, datetime] = {}

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        planned_before = None
        if previous_fire_time is not None:
            planned_before = self._planned_of.get(previous_fire_time, previous_fire_time)
        planned: datetime | None = super().get_next_fire_time(planned_before, now)
        if planned is None or self.spread is None:
            return planned
        if previous_fire_time is not None:
            # a jitter longer than the interval: never plan a run before the one it follows
            while planned <= previous_fire_time:
                planned = self._at(planned.timestamp() + self.interval_length)
        delay = random.uniform(0, self.spread)  # noqa: S311 - spreading load, not security
        fire = self._at(planned.timestamp() + delay)
        self._planned_of[fire] = planned
        while len(self._planned_of) > _REMEMBERED:
            del self._planned_of[next(iter(self._planned_of))]
        return fire

    def _at(self, timestamp: float) -> datetime:
        return datetime.fromtimestamp(timestamp, tz=self.timezone)

    def __str__(self) -> str:
        jitter = f", jitter {self.spread:g} s" if self.spread else ""
        return f"every {self.interval}{jitter} (jitter not accumulated)"
