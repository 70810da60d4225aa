"""Stage: schedule. Cron expressions: AWS's ``cron(...)`` form and plain 5-field cron.

``cron(...)`` takes ``Minutes Hours Day-of-month Month Day-of-week Year``, optionally preceded by
``Seconds``. Exactly one of the day fields is ``?``. Days of the week are 1 (SUN) to 7 (SAT).
Day-of-month also takes ``L`` (last day), ``L-3`` (three days before it; Quartz allows 0-30),
``LW`` (last weekday) and ``15W`` (the weekday nearest the 15th); Day-of-week takes ``L``
(Saturday, the last day of the week), ``6L`` (the last Friday) and ``TUE#3`` (the third Tuesday).
Each of these special tokens is the whole field. Ranges wrap and steps are bounded as
``fields.py`` says (AWS's fields are Quartz's).

A plain expression (``0 2 * * 2``) is standard (Vixie) cron: ``Minute Hour Day-of-month Month
Day-of-week`` with 0 or 7 = Sunday; when both day fields are restricted a day matching either one
matches, and when either starts with ``*`` both must match.

Expressions only say which wall-clock times match; turning them into instants in a time zone is
``windows.py``'s job. Pure; imports nothing from reconciler.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from reconciler.schedule import days as d
from reconciler.schedule.fields import (
    AWS_DAY_OF_MONTH,
    AWS_DAY_OF_WEEK,
    AWS_HOURS,
    AWS_MINUTES,
    AWS_MONTH,
    AWS_SECONDS,
    DAY_OF_MONTH,
    HOURS,
    MINUTES,
    MONTH,
    PLAIN_DAY_OF_WEEK,
    YEAR,
    FieldSpec,
    parse_value,
    parse_values,
)

_AWS_FIELDS = "Minutes Hours Day-of-month Month Day-of-week Year"
_NEAREST = re.compile(r"^([0-9]+)W$")
_NTH = re.compile(r"^([0-9A-Z]+)#([0-9]+)$")
_LAST_OF = re.compile(r"^([0-9A-Z]+)L$")
_BEFORE_LAST = re.compile(r"^L-([0-9]+)$")
_LAST_OFFSET_MAX = 30
"""Quartz's bound for ``L-n``: "Offset from last day must be <= 30"."""
_SPECIAL_HINT = (
    "L, W and # stand alone in their field: Day-of-month takes 'L', 'L-3', 'LW' or '15W', "
    "Day-of-week 'L', '6L' or 'TUE#3'"
)
_DAY = 86400
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression: the values each field selects, ascending."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...]
    day_rule: d.DayRule

    def wall_times(self, since: datetime) -> Iterator[datetime]:
        """Matching wall-clock times at or after the naive ``since``, ascending (lazily)."""
        for day in self._days_from(since.date()):
            yield from self._times_on(day, since)

    def gap_under(self, limit: timedelta) -> timedelta | None:
        """The shortest time between two matches when it is shorter than ``limit``, else None.

        Measured on the wall clock, as the expression reads (a DST jump that puts 01:59 and
        03:00 a minute apart does not count): within a day, and from a day's last match to the
        next day's first when two days in a row match."""
        times = sorted(
            h * 3600 + m * 60 + s for h in self.hours for m in self.minutes for s in self.seconds
        )
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        overnight = times[0] + _DAY - times[-1]
        if overnight < limit.total_seconds() and self._two_days_in_a_row():
            gaps.append(overnight)
        shortest = timedelta(seconds=min(gaps, default=_DAY))
        return shortest if shortest < limit else None

    def _two_days_in_a_row(self) -> bool:
        days = self._days_from(date(self.years[0], 1, 1))
        return any(later - earlier == _ONE_DAY for earlier, later in itertools.pairwise(days))

    def _days_from(self, first: date) -> Iterator[date]:
        for year in self.years:
            if year < first.year:
                continue
            for month in self.months:
                if (year, month) < (first.year, first.month):
                    continue
                for day in d.selected_days(self.day_rule, year, month):
                    candidate = date(year, month, day)
                    if candidate >= first:
                        yield candidate

    def _times_on(self, day: date, since: datetime) -> Iterator[datetime]:
        for hour in self.hours:
            for minute in self.minutes:
                for second in self.seconds:
                    moment = datetime(day.year, day.month, day.day, hour, minute, second)
                    if moment >= since:
                        yield moment


def parse_aws_cron(expression: str, body: str) -> CronSchedule:
    """``cron(body)`` in AWS's 6-field form, or 7 fields with leading Seconds."""
    fields = body.split()
    if len(fields) not in (6, 7):
        raise ValueError(
            f"cron(...) takes 6 fields ({_AWS_FIELDS}), or 7 with a leading Seconds field; "
            f"got {len(fields)}: for example cron(0 2 ? * TUE *)"
        )
    if len(fields) == 6:
        fields = ["0", *fields]
    seconds, minutes, hours, day_of_month, month, day_of_week, year = fields
    return CronSchedule(
        expression=expression,
        seconds=_sorted(AWS_SECONDS, seconds),
        minutes=_sorted(AWS_MINUTES, minutes),
        hours=_sorted(AWS_HOURS, hours),
        months=_sorted(AWS_MONTH, month),
        years=_sorted(YEAR, year),
        day_rule=_aws_day_rule(day_of_month, day_of_week),
    )


def parse_plain_cron(expression: str) -> CronSchedule:
    """A standard 5-field cron expression, ``Minute Hour Day-of-month Month Day-of-week``."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a plain cron expression has 5 fields (Minute Hour Day-of-month Month "
            f"Day-of-week), got {len(fields)}: for example '0 2 * * 2'"
        )
    minutes, hours, day_of_month, month, day_of_week = fields
    return CronSchedule(
        expression=expression,
        seconds=(0,),
        minutes=_sorted(MINUTES, minutes),
        hours=_sorted(HOURS, hours),
        months=_sorted(MONTH, month),
        years=tuple(range(YEAR.low, YEAR.high + 1)),
        day_rule=_plain_day_rule(day_of_month, day_of_week),
    )


def _sorted(spec: FieldSpec, text: str) -> tuple[int, ...]:
    return tuple(sorted(parse_values(spec, text)))


def _aws_day_rule(day_of_month: str, day_of_week: str) -> d.DayRule:
    if (day_of_month == "?") == (day_of_week == "?"):
        raise ValueError(
            f"Day-of-month {day_of_month!r} and Day-of-week {day_of_week!r}: exactly one of them "
            "must be '?', for example cron(0 2 ? * TUE *) or cron(0 2 1 * ? *)"
        )
    if day_of_month == "?":
        return _aws_day_of_week(day_of_week)
    return _aws_day_of_month(day_of_month)


def _aws_day_of_month(text: str) -> d.DayRule:
    upper = text.upper()
    if upper == "L":
        return d.LastDay()
    if upper == "LW":
        return d.LastWeekday()
    before_last = _BEFORE_LAST.match(upper)
    if before_last:
        return d.BeforeLastDay(_last_offset(text, before_last[1]))
    nearest = _NEAREST.match(upper)
    if nearest:
        return d.NearestWeekday(parse_value(AWS_DAY_OF_MONTH, text, nearest[1]))
    _refuse_special(AWS_DAY_OF_MONTH, text, "LW#")
    return d.MonthDays(parse_values(AWS_DAY_OF_MONTH, text))


def _aws_day_of_week(text: str) -> d.DayRule:
    upper = text.upper()
    if upper == "L":
        return d.Weekdays(frozenset({d.SATURDAY}))  # AWS: L alone is the last day of the week
    nth = _NTH.match(upper)
    if nth:
        weekday = _aws_weekday(parse_value(AWS_DAY_OF_WEEK, text, nth[1]))
        return d.NthWeekday(weekday, _occurrence(text, nth[2]))
    last_of = _LAST_OF.match(upper)
    if last_of:
        return d.LastWeekdayOf(_aws_weekday(parse_value(AWS_DAY_OF_WEEK, text, last_of[1])))
    # Only L and # are special here: W is a letter of WED.
    _refuse_special(AWS_DAY_OF_WEEK, text, "L#")
    return d.Weekdays(frozenset(_aws_weekday(v) for v in parse_values(AWS_DAY_OF_WEEK, text)))


def _plain_day_rule(day_of_month: str, day_of_week: str) -> d.DayRule:
    by_month = d.MonthDays(parse_values(DAY_OF_MONTH, day_of_month))
    weekdays = parse_values(PLAIN_DAY_OF_WEEK, day_of_week)
    by_week = d.Weekdays(frozenset(_plain_weekday(v) for v in weekdays))
    # Vixie cron's rule (crontab(5)): a '*'-led field does not widen the other one.
    if day_of_month.startswith("*") or day_of_week.startswith("*"):
        return d.AllOf((by_month, by_week))
    return d.AnyOf((by_month, by_week))


def _refuse_special(spec: FieldSpec, text: str, letters: str) -> None:
    if any(letter in text.upper() for letter in letters):
        raise spec.error(text, _SPECIAL_HINT)


def _last_offset(text: str, digits: str) -> int:
    n = int(digits)
    if n > _LAST_OFFSET_MAX:
        raise AWS_DAY_OF_MONTH.error(
            text,
            f"'L-n' counts 0-{_LAST_OFFSET_MAX} days back from the last day of the month "
            f"(L-3 = three days before it), not {n}",
        )
    return n


def _occurrence(text: str, digits: str) -> int:
    n = int(digits)
    if not 1 <= n <= 5:
        raise AWS_DAY_OF_WEEK.error(
            text, f"'#' takes an occurrence 1-5 (TUE#3 = third Tuesday), not {n}"
        )
    return n


def _aws_weekday(value: int) -> int:
    return (value + 5) % 7  # 1 = SUN -> 6, 2 = MON -> 0, ... 7 = SAT -> 5


def _plain_weekday(value: int) -> int:
    return (value + 6) % 7  # 0 and 7 = SUN -> 6, 1 = MON -> 0, ... 6 = SAT -> 5
