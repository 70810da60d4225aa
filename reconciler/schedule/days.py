"""Stage: schedule. Which days of a month the day fields of a cron expression select.

Each rule answers ``days(year, month)``: the set of day numbers it selects in that month. Weekdays
are Python's (0 = Monday ... 6 = Sunday); ``cron.py`` converts AWS's 1 = SUN and cron's 0 = SUN.
Pure; imports nothing from reconciler.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from typing import Protocol

SATURDAY = 5
SUNDAY = 6


class DayRule(Protocol):
    """What a Day-of-month or Day-of-week field (or both, for plain cron) selects."""

    def __hash__(self) -> int:
        """Rules are frozen values, so results can be cached per rule."""
        ...

    def days(self, year: int, month: int) -> frozenset[int]:
        """The day numbers selected in ``month`` of ``year``."""
        ...


def month_length(year: int, month: int) -> int:
    """Number of days in the month."""
    return calendar.monthrange(year, month)[1]


@functools.lru_cache(maxsize=4096)
def selected_days(rule: DayRule, year: int, month: int) -> tuple[int, ...]:
    """``rule.days`` sorted, cached: the iteration asks for the same months over and over."""
    return tuple(sorted(rule.days(year, month)))


def _weekday(year: int, month: int, day: int) -> int:
    return calendar.weekday(year, month, day)


@dataclass(frozen=True, slots=True)
class MonthDays:
    """Explicit days of the month; a day the month lacks (31 in April) selects nothing."""

    values: frozenset[int]

    def days(self, year: int, month: int) -> frozenset[int]:
        last = month_length(year, month)
        return frozenset(day for day in self.values if day <= last)


@dataclass(frozen=True, slots=True)
class LastDay:
    """``L`` in Day-of-month: the last day of the month."""

    def days(self, year: int, month: int) -> frozenset[int]:
        return frozenset({month_length(year, month)})


@dataclass(frozen=True, slots=True)
class BeforeLastDay:
    """``L-3`` in Day-of-month: ``days`` before the last day; none in a month too short for it
    (``L-30`` in February), as a plain 31 selects nothing in April."""

    days_before: int

    def days(self, year: int, month: int) -> frozenset[int]:
        day = month_length(year, month) - self.days_before
        return frozenset({day}) if day >= 1 else frozenset()


@dataclass(frozen=True, slots=True)
class LastWeekday:
    """``LW``: the last Monday-to-Friday day of the month."""

    def days(self, year: int, month: int) -> frozenset[int]:
        day = month_length(year, month)
        while _weekday(year, month, day) >= SATURDAY:
            day -= 1
        return frozenset({day})


@dataclass(frozen=True, slots=True)
class NearestWeekday:
    """``15W``: the Monday-to-Friday day nearest the 15th, never crossing into another month."""

    day: int

    def days(self, year: int, month: int) -> frozenset[int]:
        last = month_length(year, month)
        if self.day > last:
            return frozenset()  # like a plain 31 in April: that month has no such day
        weekday = _weekday(year, month, self.day)
        if weekday == SATURDAY:
            # Friday before, unless that is last month: then the Monday after (1W on a Saturday).
            return frozenset({self.day - 1 if self.day > 1 else self.day + 2})
        if weekday == SUNDAY:
            # Monday after, unless that is next month: then the Friday before.
            return frozenset({self.day + 1 if self.day < last else self.day - 2})
        return frozenset({self.day})


@dataclass(frozen=True, slots=True)
class Weekdays:
    """Day-of-week values: every such weekday of the month."""

    values: frozenset[int]

    def days(self, year: int, month: int) -> frozenset[int]:
        first = _weekday(year, month, 1)
        last = month_length(year, month)
        return frozenset(d for d in range(1, last + 1) if (first + d - 1) % 7 in self.values)


@dataclass(frozen=True, slots=True)
class NthWeekday:
    """``TUE#3``: the n-th such weekday of the month (none when the month has fewer)."""

    weekday: int
    n: int

    def days(self, year: int, month: int) -> frozenset[int]:
        first = 1 + (self.weekday - _weekday(year, month, 1)) % 7
        day = first + 7 * (self.n - 1)
        return frozenset({day}) if day <= month_length(year, month) else frozenset()


@dataclass(frozen=True, slots=True)
class LastWeekdayOf:
    """``6L`` (AWS numbering): the last Friday of the month."""

    weekday: int

    def days(self, year: int, month: int) -> frozenset[int]:
        last = month_length(year, month)
        return frozenset({last - (_weekday(year, month, last) - self.weekday) % 7})


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Days selected by at least one rule (standard cron with both day fields restricted)."""

    rules: tuple[DayRule, ...]

    def days(self, year: int, month: int) -> frozenset[int]:
        return frozenset().union(*(rule.days(year, month) for rule in self.rules))


@dataclass(frozen=True, slots=True)
class AllOf:
    """Days selected by every rule (standard cron when a day field starts with ``*``)."""

    rules: tuple[DayRule, ...]

    def days(self, year: int, month: int) -> frozenset[int]:
        first, *rest = (rule.days(year, month) for rule in self.rules)
        return first.intersection(*rest)
