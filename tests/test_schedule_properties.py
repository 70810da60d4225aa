"""Properties of the schedule engine (hypothesis).

The main one: for random AWS cron expressions, time zones, offsets and valid periods,
``openings()`` equals a brute-force oracle that walks real minutes one by one, looks at each in
the window's time zone and checks the AWS field semantics directly, from the structure the
expression was generated from (never from the engine's parser). Walking real minutes gives the
DST rules for free: a wall-clock time exists iff some minute shows it, and opens at the first
minute that does. Plain 5-field cron is checked against croniter in UTC.
"""

from __future__ import annotations

import calendar
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.schedule import current_opening, openings, parse_window_schedule
from tests.test_schedule import window

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # DST moves the clock by 30 minutes
    "Asia/Kolkata",  # +05:30, no DST
    "Pacific/Chatham",  # +12:45 / +13:45
)
HORIZON = timedelta(days=16)
PREFIX = 500


@dataclass(frozen=True)
class Field:
    """A generated field: its text and the values it means, computed without the engine."""

    text: str
    values: frozenset[int]


def wrapped_values(low: int, high: int, first: int, last: int, step: int) -> frozenset[int]:
    """``first-last/step`` with ``first > last``: walking forward from ``first`` round the field,
    every ``step``-th value up to ``last``."""
    size = high - low + 1
    span = (last - first) % size
    return frozenset(
        v
        for v in range(low, high + 1)
        if (v - first) % size <= span and (v - first) % size % step == 0
    )


@st.composite
def fields(
    draw: st.DrawFn,
    low: int,
    high: int,
    names: tuple[str, ...] = (),
    base: int = 0,
    degenerate_ranges: bool = True,
    wrap: bool = True,
) -> Field:
    def token(value: int) -> str:
        named = 0 <= value - base < len(names) and draw(st.booleans())
        return names[value - base] if named else str(value)

    value = st.integers(low, high)
    kind = draw(st.sampled_from(["star", "one", "list", "range", "range_step", "start_step"]))
    if kind == "star":
        # A step is at most the field's largest value (AWS refuses */60 minutes).
        step = draw(
            st.sampled_from([s for s in (None, None, 2, 3, 7, 15, high) if s is None or s <= high])
        )
        if step is None:
            return Field("*", frozenset(range(low, high + 1)))
        return Field(f"*/{step}", frozenset(range(low, high + 1, step)))
    if kind == "one":
        v = draw(value)
        return Field(token(v), frozenset({v}))
    if kind == "list":
        vs = draw(st.lists(value, min_size=2, max_size=4))
        return Field(",".join(token(v) for v in vs), frozenset(vs))
    a, b = sorted((draw(value), draw(value)))
    if a == b and not degenerate_ranges:
        b = a + 1 if a < high else b
        a = b - 1
    step = draw(st.integers(1, max(1, (high - low) // 2))) if kind != "range" else 1
    if kind != "start_step" and wrap and a < b and draw(st.booleans()):
        text = f"{token(b)}-{token(a)}" + (f"/{step}" if kind == "range_step" else "")
        return Field(text, wrapped_values(low, high, b, a, step))
    if kind == "range":
        return Field(f"{token(a)}-{token(b)}", frozenset(range(a, b + 1)))
    if kind == "range_step":
        return Field(f"{token(a)}-{token(b)}/{step}", frozenset(range(a, b + 1, step)))
    return Field(f"{token(a)}/{step}", frozenset(range(a, high + 1, step)))


DayPredicate = Callable[[date], bool]


def last_day(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def aws_day_number(day: date) -> int:
    return day.isoweekday() % 7 + 1  # AWS: 1 = SUN ... 7 = SAT


def every_day(day: date) -> bool:
    return True


def nearest_weekday(n: int) -> DayPredicate:
    def matches(day: date) -> bool:
        if n > last_day(day):
            return False
        weekdays = [x for x in range(1, last_day(day) + 1) if day.replace(day=x).weekday() < 5]
        return day.day == min(weekdays, key=lambda x: abs(x - n))

    return matches


@st.composite
def day_of_month(draw: st.DrawFn) -> tuple[str, DayPredicate]:
    kind = draw(st.sampled_from(["values", "values", "L", "L-n", "LW", "W"]))
    if kind == "L":
        return "L", lambda day: day.day == last_day(day)
    if kind == "L-n":
        n = draw(st.integers(0, 30))
        return f"L-{n}", lambda day: day.day == last_day(day) - n
    if kind == "LW":
        return (
            "LW",
            lambda day: (
                day.weekday() < 5
                and all(
                    day.replace(day=x).weekday() >= 5 for x in range(day.day + 1, last_day(day) + 1)
                )
            ),
        )
    if kind == "W":
        n = draw(st.integers(1, 31))
        return f"{n}W", nearest_weekday(n)
    days = draw(fields(1, 31))
    return days.text, lambda day: day.day in days.values


@st.composite
def day_of_week(draw: st.DrawFn) -> tuple[str, DayPredicate]:
    kind = draw(st.sampled_from(["values", "values", "L", "nL", "#"]))
    weekday = draw(st.integers(1, 7))
    name = DAYS[weekday - 1] if draw(st.booleans()) else str(weekday)
    if kind == "L":
        return "L", lambda day: aws_day_number(day) == 7
    if kind == "nL":
        return (
            f"{name}L",
            lambda day: aws_day_number(day) == weekday and day.day + 7 > last_day(day),
        )
    if kind == "#":
        n = draw(st.integers(1, 5))
        return (
            f"{name}#{n}",
            lambda day: aws_day_number(day) == weekday and (day.day - 1) // 7 + 1 == n,
        )
    weekdays = draw(fields(1, 7, DAYS, 1))
    return weekdays.text, lambda day: aws_day_number(day) in weekdays.values


@dataclass(frozen=True)
class Case:
    """A window and the question asked of it, with what the oracle needs to answer."""

    spec: dict[str, Any]
    after: datetime
    # The value sets are long and the schedule text says the same: keep failure reports short.
    seconds: frozenset[int] = field(repr=False)
    minutes: frozenset[int] = field(repr=False)
    hours: frozenset[int] = field(repr=False)
    months: frozenset[int] = field(repr=False)
    years: frozenset[int] = field(repr=False)
    day: DayPredicate = field(repr=False)


def _transitions(zone: ZoneInfo) -> tuple[datetime, ...]:
    """The instants in 2026 at which ``zone``'s UTC offset changes (to the minute)."""
    found = []
    hour = datetime(2026, 1, 1, tzinfo=UTC)
    while hour.year == 2026:
        if (
            hour.astimezone(zone).utcoffset()
            != (hour + timedelta(hours=1)).astimezone(zone).utcoffset()
        ):
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            found.append(minute)
        hour += timedelta(hours=1)
    return tuple(found)


TRANSITIONS = {
    name: _transitions(ZoneInfo(name)) for name in ZONES if name not in ("UTC", "Asia/Kolkata")
}


def _local_hours_around(instant: datetime, zone: ZoneInfo) -> frozenset[int]:
    """Wall-clock hours on both sides of a transition, and the skipped or repeated one."""
    before = (instant - timedelta(minutes=1)).astimezone(zone)
    return frozenset(
        {before.hour, (before + timedelta(hours=1)).hour, instant.astimezone(zone).hour}
    )


EVERY_MONTH = Field("*", frozenset(range(1, 13)))
EVERY_YEAR = Field("*", frozenset(range(1970, 2200)))
YEARS = (
    EVERY_YEAR,
    EVERY_YEAR,
    Field("2026", frozenset({2026})),
    Field("2025-2027", frozenset({2025, 2026, 2027})),
    Field("2020/2", frozenset(range(2020, 2200, 2))),
    Field("2027", frozenset({2027})),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Half the examples aim at a DST transition (every day, hours around it); the other half
    are anything, starting at a random time of 2026 so month ends come up often."""
    if draw(st.booleans()):
        zone_name = draw(st.sampled_from(sorted(TRANSITIONS)))
        transition = draw(st.sampled_from(TRANSITIONS[zone_name]))
        after = transition - timedelta(seconds=draw(st.integers(0, 3 * 86400)))
        extra = _local_hours_around(transition, ZoneInfo(zone_name))
        drawn = draw(fields(0, 23))
        hours = Field(",".join([drawn.text, *map(str, sorted(extra))]), drawn.values | extra)
        month, year = EVERY_MONTH, EVERY_YEAR
        dom_text, dow_text = draw(st.sampled_from([("*", "?"), ("?", "*")]))
        predicate: DayPredicate = every_day
    else:
        zone_name = draw(st.sampled_from(ZONES))
        after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=draw(st.integers(0, 365 * 86400))
        )
        hours = draw(fields(0, 23))
        # Mostly every month and year, so most examples do open within the horizon.
        month = draw(
            st.one_of(st.just(EVERY_MONTH), st.just(EVERY_MONTH), fields(1, 12, MONTHS, 1))
        )
        year = draw(st.sampled_from(YEARS))
        if draw(st.booleans()):
            (dom_text, predicate), dow_text = draw(day_of_month()), "?"
        else:
            dom_text, (dow_text, predicate) = "?", draw(day_of_week())
    seconds = draw(
        st.sampled_from([None, Field("0", frozenset({0})), Field("*/20", frozenset({0, 20, 40}))])
    )
    minutes = draw(fields(0, 59))
    parts = [minutes.text, hours.text, dom_text, month.text, dow_text, year.text]
    if seconds is not None:
        parts.insert(0, seconds.text)
    spec: dict[str, Any] = {"schedule": f"cron({' '.join(parts)})", "scheduleTimezone": zone_name}
    offset = draw(st.one_of(st.none(), st.integers(1, 6)))
    if offset is not None:
        spec["scheduleOffset"] = offset
    start = draw(st.integers(-3 * 86400, 8 * 86400)) if draw(st.integers(0, 9)) < 4 else None
    if start is not None:
        spec["startDate"] = (after + timedelta(seconds=start)).isoformat()
    end = draw(st.integers(2 * 86400, 14 * 86400)) if draw(st.integers(0, 9)) < 3 else None
    if end is not None:
        spec["endDate"] = (after + timedelta(seconds=max(start or 0, 0) + end)).isoformat()
    return Case(
        spec=spec,
        after=after,
        seconds=seconds.values if seconds is not None else frozenset({0}),
        minutes=minutes.values,
        hours=hours.values,
        months=month.values,
        years=year.values,
        day=predicate,
    )


def first_seen(zone: ZoneInfo, begin: datetime, end: datetime) -> dict[datetime, datetime]:
    """Every wall-clock minute shown in ``zone`` between two instants -> the first real minute
    that shows it. Missing keys are the wall-clock times DST skips."""
    seen: dict[datetime, datetime] = {}
    minute = begin.replace(second=0, microsecond=0)
    while minute <= end:
        seen.setdefault(minute.astimezone(zone).replace(tzinfo=None), minute)
        minute += timedelta(minutes=1)
    return seen


def oracle(case: Case) -> list[datetime]:
    """Opening starts in (after, after + HORIZON], by brute force over every minute."""
    zone = ZoneInfo(case.spec["scheduleTimezone"])
    shift = timedelta(days=case.spec.get("scheduleOffset", 0))
    start_date = _date(case.spec.get("startDate"))
    end_date = _date(case.spec.get("endDate"))
    first_period = None if start_date is None else start_date.astimezone(zone).replace(tzinfo=None)
    horizon = case.after + HORIZON
    day_matches = functools.cache(case.day)
    # A day of margin before `after`, so a repeated hour's first occurrence is seen.
    seen = first_seen(zone, case.after - timedelta(days=1), horizon)
    found = []
    for wall, instant in seen.items():
        match = wall - shift  # the cron match that opens at this wall-clock time
        if not (_matches_minute(case, match) and day_matches(match.date())):
            continue
        for second in case.seconds:
            start = instant + timedelta(seconds=second)
            if first_period is not None and match + timedelta(seconds=second) < first_period:
                continue  # that period's cron match is before startDate
            if start_date is not None and start < start_date:
                continue
            if end_date is not None and start > end_date:
                continue
            if case.after < start <= horizon:
                found.append(start)
    return sorted(found)


def _matches_minute(case: Case, wall: datetime) -> bool:
    return (
        wall.minute in case.minutes
        and wall.hour in case.hours
        and wall.month in case.months
        and wall.year in case.years
    )


def _date(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(cases())
def test_cron_openings_equal_the_brute_force_oracle(case: Case) -> None:
    # Dense expressions (every 20 seconds) open tens of thousands of times: compare a prefix.
    expected = oracle(case)[:PREFIX]
    got = [o.start for o in openings(window(**case.spec), case.after, limit=len(expected) + 1)]
    assert got[: len(expected)] == expected, case.spec
    if len(expected) < PREFIX:
        assert len(got) == len(expected) or got[-1] > case.after + HORIZON, case.spec


day_fields = st.one_of(
    day_of_month().map(lambda rule: (rule[0], "?", rule[1])),
    day_of_week().map(lambda rule: ("?", rule[0], rule[1])),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(day_fields, st.integers(2024, 2032))
def test_day_fields_over_a_whole_year(fields_: tuple[str, str, DayPredicate], year: int) -> None:
    # Day by day rather than minute by minute, so every month end and start of a year is seen.
    dom, dow, predicate = fields_
    days = (date(year, 1, 1) + timedelta(days=k) for k in range(366))
    expected = [
        datetime(d.year, d.month, d.day, 12, tzinfo=UTC)
        for d in days
        if d.year == year and predicate(d)
    ]
    win = window(f"cron(0 12 {dom} * {dow} {year})")
    assert [o.start for o in openings(win, datetime(year, 1, 1, tzinfo=UTC), 400)] == expected


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases(), st.integers(1, 20))
def test_openings_ascend_and_resume_where_they_left_off(case: Case, count: int) -> None:
    win = window(**case.spec)
    listed = openings(win, case.after, count)
    starts = [o.start for o in listed]
    assert starts == sorted(set(starts)) and all(s > case.after for s in starts)
    for index, opening in enumerate(listed[:-1]):
        assert openings(win, opening.start, 1) == [listed[index + 1]]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases(), st.integers(0, 30 * 86400), st.integers(1, 24))
def test_current_opening_is_the_latest_open_one(case: Case, later: int, duration: int) -> None:
    win = window(**case.spec, duration=duration, cutoff=0)
    now = case.after + timedelta(seconds=later)
    earlier = [o for o in openings(win, now - timedelta(hours=duration), 10_000) if o.start <= now]
    current = current_opening(win, now)
    assert current == (earlier[-1] if earlier else None)
    assert current is None or current.is_open(now)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.sampled_from(
        ["rate(5 minutes)", "rate(1 hour)", "rate(7 hours)", "rate(1 day)", "rate(3 days)"]
    ),
    st.one_of(st.none(), st.integers(0, 400 * 86400)),
    st.integers(0, 800 * 86400),
)
def test_rate_openings_are_whole_steps_from_the_anchor(
    schedule: str, start: int | None, after_seconds: int
) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    spec = {} if start is None else {"startDate": (base + timedelta(seconds=start)).isoformat()}
    anchor = (
        base + timedelta(seconds=start) if start is not None else datetime(1970, 1, 1, tzinfo=UTC)
    )
    after = base + timedelta(seconds=after_seconds)
    starts = [o.start for o in openings(window(schedule, **spec), after, 5)]
    step = starts[1] - starts[0]
    assert all(b - a == step for a, b in itertools.pairwise(starts))
    assert (starts[0] - anchor) % step == timedelta(0) and starts[0] >= anchor
    assert starts[0] > after and (starts[0] - step <= after or starts[0] == anchor)


@st.composite
def plain_crons(draw: st.DrawFn) -> str:
    # croniter 7 reads a one-value range such as 2-2 as '*': ranges here span two values or more.
    # Standard cron's ranges do not wrap (only AWS's cron(...) form does).
    def ranged(
        low: int, high: int, names: tuple[str, ...] = (), base: int = 0
    ) -> st.SearchStrategy[Field]:
        return fields(low, high, names, base, degenerate_ranges=False, wrap=False)

    # croniter widens with both day fields whenever neither is exactly '*', where Vixie cron (and
    # this engine) treats any '*'-led field as unrestricted: generate day fields both agree on.
    def star_free(generated: Field) -> bool:
        return not generated.text.startswith("*")

    minute = draw(ranged(0, 59)).text
    hour = draw(ranged(0, 23)).text
    month = draw(st.one_of(st.just("*"), ranged(1, 12, MONTHS, 1).map(lambda f: f.text)))
    dom = draw(st.one_of(st.just("*"), ranged(1, 31).filter(star_free).map(lambda f: f.text)))
    dow = draw(
        st.one_of(st.just("*"), ranged(0, 7, DAYS, 0).filter(star_free).map(lambda f: f.text))
    )
    return f"{minute} {hour} {dom} {month} {dow}"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(plain_crons(), st.integers(0, 365 * 86400))
def test_plain_cron_agrees_with_croniter(expression: str, after_seconds: int) -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=after_seconds)
    reference = croniter(expression, after)
    expected = [reference.get_next(datetime) for _ in range(5)]
    assert [o.start for o in openings(window(expression), after, 5)] == expected


@st.composite
def window_crons(draw: st.DrawFn) -> tuple[str, Case]:
    """Expressions with every day or some weekdays, near the 5-minute floor: few minutes and
    hours, often close to midnight so a gap runs over into the next day."""
    seconds = draw(st.sampled_from([Field("0", frozenset({0})), Field("0,30", frozenset({0, 30}))]))
    minutes = draw(
        st.one_of(
            fields(0, 59),
            st.lists(st.integers(0, 59), min_size=1, max_size=3).map(
                lambda vs: Field(",".join(map(str, vs)), frozenset(vs))
            ),
        )
    )
    hours = draw(
        st.one_of(
            fields(0, 23),
            st.sampled_from([Field("23,0", frozenset({23, 0})), Field("0", frozenset({0}))]),
        )
    )
    weekdays = draw(st.one_of(st.just(Field("*", frozenset(range(1, 8)))), fields(1, 7, DAYS, 1)))
    text = f"cron({seconds.text} {minutes.text} {hours.text} ? * {weekdays.text} *)"
    case = Case(
        spec={},
        after=datetime(2026, 1, 5, tzinfo=UTC),  # a Monday: the next 8 days hold every pair
        seconds=seconds.values,
        minutes=minutes.values,
        hours=hours.values,
        months=EVERY_MONTH.values,
        years=EVERY_YEAR.values,
        day=lambda day: aws_day_number(day) in weekdays.values,
    )
    return text, case


@settings(max_examples=150, deadline=None, derandomize=True)
@given(window_crons())
def test_the_five_minute_floor_agrees_with_brute_force(generated: tuple[str, Case]) -> None:
    # SSM: a maintenance window's schedule may not fire more often than every 5 minutes
    # (https://docs.aws.amazon.com/systems-manager/latest/userguide/reference-cron-and-rate-expressions.html).
    text, case = generated
    minute = case.after
    matches = []
    while minute < case.after + timedelta(days=8):
        wall = minute.replace(tzinfo=None)
        if _matches_minute(case, wall) and case.day(wall.date()):
            matches.extend(minute + timedelta(seconds=s) for s in sorted(case.seconds))
        minute += timedelta(minutes=1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(matches)]
    too_often = bool(gaps) and min(gaps) < timedelta(minutes=5)
    try:
        parse_window_schedule(text)
    except ValueError as error:
        assert too_often, (text, str(error))
    else:
        assert not too_often, text
