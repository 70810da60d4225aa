"""Stage: schedule. A ChangeCalendar's periods within a bounded horizon (docs/guardrails.md
"Change calendars"): the events written in its YAML (one-off, or recurring by an iCalendar
RRULE through dateutil) and those of its iCalendar document, parsed with the ``icalendar``
library and expanded with ``recurring-ical-events`` (RRULE, RDATE, EXDATE, moved occurrences,
VTIMEZONE and X-WR-TIMEZONE). Wall-clock times without an offset, and all-day events, are read
in the calendar's ``timeZone``. The periods feed
:func:`reconciler.schedule.calendar.calendar_state`.

Pure: parses the bytes it is given, no I/O, no clock of its own (the caller passes ``now``).
May import ``reconciler.api`` only, and the two iCalendar libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from itertools import islice
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

from reconciler.api.resources import CalendarEvent, ChangeCalendar, ChangeCalendarSpec
from reconciler.schedule.calendar import CalendarState, Period, calendar_state

if TYPE_CHECKING:
    import icalendar

HORIZON = timedelta(days=400)
"""How far ahead of ``now`` recurrences are expanded: a year and a bit, so a yearly freeze and
the "until" of a long one are seen."""
MAX_PERIODS = 5000
"""More occurrences than this within the horizon make a calendar unreadable (hence closed)."""


@dataclass(frozen=True, slots=True)
class CalendarReading:
    """A calendar's periods overlapping ``[now, now + HORIZON)`` as read at ``now``, or why it
    could not be read (then it counts as closed)."""

    periods: tuple[Period, ...] = ()
    error: str = ""


def calendar_reading(
    calendar: ChangeCalendar, icalendar_data: bytes | None, now: datetime
) -> CalendarReading:
    """Every period of ``calendar`` near ``now``: its YAML events and ``icalendar_data`` (its
    file's or URL's bytes; None when it has no iCalendar source)."""
    end = now + HORIZON
    try:
        periods = list(islice(rule_periods(calendar.spec, now, end), MAX_PERIODS + 1))
        if icalendar_data is not None:
            periods += islice(ical_periods(icalendar_data, calendar.spec, now, end), MAX_PERIODS)
    except ValueError as exc:
        return CalendarReading((), str(exc))
    if len(periods) > MAX_PERIODS:
        return CalendarReading((), f"more than {MAX_PERIODS} events within {HORIZON.days} days")
    return CalendarReading(tuple(periods))


def reading_state(
    name: str, calendar: ChangeCalendar, reading: CalendarReading | None, now: datetime
) -> CalendarState:
    """The state of calendar ``name`` at ``now`` from its reading; a calendar not read, or
    that could not be read, is closed (with the error as its reason)."""
    if reading is None:
        return CalendarState(True, f"change calendar {name!r} is closed: not read this pass", None)
    if reading.error:
        why = f"change calendar {name!r} is closed: it cannot be read: {reading.error}"
        return CalendarState(True, why, None)
    return calendar_state(name, calendar.spec.type, reading.periods, now)


def rule_periods(spec: ChangeCalendarSpec, start: datetime, end: datetime) -> Iterator[Period]:
    """The periods of the YAML events overlapping ``[start, end)``, in event order."""
    for event in spec.events:
        zone = spec.zone(event)
        if event.rrule is None:
            first, last = _aware(event.start, zone), _aware(event.end, zone)
            if last > start and first < end:
                yield Period(first, last, event.summary)
            continue
        yield from _recurrences(event, zone, start, end)


def _recurrences(
    event: CalendarEvent, zone: tzinfo, start: datetime, end: datetime
) -> Iterator[Period]:
    assert event.rrule is not None  # the caller's check
    length = event.end - event.start
    rule = rrulestr(event.rrule, dtstart=event.start)
    # Occurrences are computed in the event's own terms: wall-clock times when written without
    # an offset, so a weekly 22:00 freeze stays at 22:00 across daylight-saving changes.
    lo, hi = start - length, end
    if event.start.tzinfo is None:
        lo, hi = lo.astimezone(zone).replace(tzinfo=None), hi.astimezone(zone).replace(tzinfo=None)
    for occurrence in rule.xafter(lo, inc=False):
        if occurrence >= hi:
            return
        yield Period(_aware(occurrence, zone), _aware(occurrence + length, zone), event.summary)


def parse_icalendar(data: bytes) -> icalendar.Calendar:
    """The iCalendar document in ``data``, or ValueError saying why it is not one."""
    # Imported on first use: the planner imports this module for every patchctl command, and
    # only a ChangeCalendar with an iCalendar source needs the library.
    import icalendar

    try:
        parsed = icalendar.Calendar.from_ical(data)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"not an iCalendar file: {exc}") from None
    if not isinstance(parsed, icalendar.Calendar) or parsed.name != "VCALENDAR":
        raise ValueError("not an iCalendar file: it holds no VCALENDAR")
    return parsed


def ical_periods(
    data: bytes, spec: ChangeCalendarSpec, start: datetime, end: datetime
) -> Iterator[Period]:
    """The VEVENTs of the iCalendar document ``data`` overlapping ``[start, end)``."""
    import recurring_ical_events  # see parse_icalendar

    calendar = parse_icalendar(data)
    zone = ZoneInfo(spec.time_zone)
    # Floating times and all-day dates are placed by the library in no zone: ask a little
    # wider than the span and keep what overlaps it once placed in the calendar's zone.
    wide = timedelta(days=2)
    try:
        expanded = recurring_ical_events.of(calendar).between(start - wide, end + wide)
        events: Iterable[icalendar.Event] = expanded
        for event in events:
            period = _event_period(event, zone)
            if period is not None and period.end > start and period.start < end:
                yield period
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"iCalendar event cannot be read: {exc}") from None


def _event_period(event: icalendar.Event, zone: tzinfo) -> Period | None:
    first = event.decoded("DTSTART")
    if "DTEND" in event:
        last = event.decoded("DTEND")
    elif "DURATION" in event:
        last = first + event.decoded("DURATION")
    else:
        # RFC 5545 3.6.1: an all-day event without an end lasts the day, a timed one no time.
        last = first + timedelta(days=1) if not isinstance(first, datetime) else first
    begins, ends = _instant(first, zone), _instant(last, zone)
    if ends <= begins:
        return None
    summary = str(event.get("SUMMARY", "")).strip() or "an iCalendar event"
    return Period(begins, ends, summary)


def _instant(value: date | datetime, zone: tzinfo) -> datetime:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return _aware(value, zone)


def _aware(value: datetime, zone: tzinfo) -> datetime:
    """``value`` as an instant: as written when it has an offset, else a wall-clock time in
    ``zone``."""
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)
