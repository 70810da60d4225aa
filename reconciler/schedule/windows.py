"""Stage: schedule. When a MaintenanceWindow opens: its openings, in UTC, from its spec.

Semantics (SSM's, and where SSM is silent, EventBridge Scheduler's documented ones):

- cron is read as wall-clock time in ``scheduleTimezone``. A wall-clock time that does not exist
  (the hour skipped when DST starts: 02:30 in Europe/Berlin on the last Sunday of March) is
  skipped: no opening that day. A wall-clock time that happens twice (when DST ends) opens once,
  at its first occurrence. This is what EventBridge Scheduler documents for its time zones.
- ``rate(N unit)`` counts elapsed time from ``startDate``, or from 1970-01-01T00:00:00Z when
  there is none, so it ignores the time zone and DST (a day is 24 hours). The first opening is at
  ``startDate`` itself. (SSM replaces a past StartDate by the creation time; a Git-defined window
  has no creation time, so the anchor is the date as written.)
- ``at(...)`` is one instant in UTC, as SSM reads it.
- ``scheduleOffset`` N (cron only) moves each opening N days after its cron match, at the same
  wall-clock time. SSM: "if the cron day already passed but the offset day is in the future, it
  doesn't run in that period" — here a period counts only when its cron match (as wall-clock
  time) is not before ``startDate``; with no ``startDate`` every period counts.
- No opening starts before ``startDate`` or after ``endDate``; dates without a UTC offset are UTC
  (SSM: the dates and the time zone "don't influence each other").
- A disabled window has no openings. Cron is evaluated up to the year 2199 (AWS's Year range).

Pure: no clock of its own (callers pass ``after``/``now``), no I/O. May import reconciler.api only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from reconciler.api.resources import MaintenanceWindowSpec
from reconciler.api.times import utc_stamp
from reconciler.schedule.cron import CronSchedule
from reconciler.schedule.expressions import AtSchedule, RateSchedule, parse_schedule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Where ``rate(...)`` counts from when a window has no startDate."""


@dataclass(frozen=True, slots=True)
class Opening:
    """One opening of a window: when it opens, closes, and stops accepting new tasks (UTC)."""

    start: datetime
    end: datetime
    """``start`` + duration."""
    cutoff_at: datetime
    """``end`` - cutoff: no new task may start at or after this instant."""

    def is_open(self, now: datetime) -> bool:
        """Whether the window is open at ``now``."""
        return self.start <= now < self.end

    def accepts_new_tasks(self, now: datetime) -> bool:
        """Whether a new task may start at ``now`` (open, and before the cutoff)."""
        return self.start <= now < self.cutoff_at

    @property
    def id(self) -> str:
        """Stable id of this opening: its start in UTC, e.g. ``2026-11-13T01:00:00Z``."""
        # Formatted by hand: strftime was a tenth of planning a large fleet (keys name openings).
        t = self.start.astimezone(UTC)
        return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def openings(window: MaintenanceWindowSpec, after: datetime, limit: int = 10) -> list[Opening]:
    """The next ``limit`` openings of ``window`` that start strictly after ``after``."""
    _require_aware(after, "after")
    starts = itertools.islice(_starts_after(window, after.astimezone(UTC)), limit)
    return [_opening(window, start) for start in starts]


def current_opening(window: MaintenanceWindowSpec, now: datetime) -> Opening | None:
    """The opening open at ``now`` (start <= now < end); the latest one if several overlap."""
    now_open = open_openings(window, now)
    return now_open[-1] if now_open else None


def open_openings(window: MaintenanceWindowSpec, now: datetime) -> list[Opening]:
    """Every opening open at ``now``, oldest first: more than one when a window opens again
    before its previous opening has ended (``rate(1 hour)`` with a 3-hour duration)."""
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    found = []
    # An opening still open at `now` started less than `duration` hours before it.
    for start in _starts_after(window, now - timedelta(hours=window.duration)):
        if start > now:
            break
        found.append(_opening(window, start))
    return found


def describe(window: MaintenanceWindowSpec) -> str:
    """One line for people: schedule, zone, offset, length, cutoff and the valid period."""
    schedule = parse_schedule(window.schedule)
    zone = "UTC" if isinstance(schedule, AtSchedule) else window.schedule_timezone
    parts = [f"{schedule.expression} in {zone}"]
    if window.schedule_offset and isinstance(schedule, CronSchedule):
        parts.append(f"{window.schedule_offset} day(s) after each match")
    parts.append(f"open {window.duration} h")
    if window.cutoff:
        parts.append(f"no new tasks in the last {window.cutoff} h")
    start_date, end_date = _as_utc(window.start_date), _as_utc(window.end_date)
    if start_date:
        parts.append(f"from {utc_stamp(start_date)}")
    if end_date:
        parts.append(f"until {utc_stamp(end_date)}")
    if not window.enabled:
        parts.append("disabled")
    return ", ".join(parts)


def _starts_after(window: MaintenanceWindowSpec, after: datetime) -> Iterator[datetime]:
    """Opening starts later than ``after`` (UTC), ascending, within startDate and endDate."""
    if not window.enabled:
        return iter(())
    schedule = parse_schedule(window.schedule)
    start_date, end_date = _as_utc(window.start_date), _as_utc(window.end_date)
    starts: Iterator[datetime]
    if isinstance(schedule, CronSchedule):
        starts = _cron_starts(schedule, window, after, start_date)
    elif isinstance(schedule, RateSchedule):
        starts = _rate_starts(schedule, after, start_date)
    else:
        starts = iter([schedule.moment] if _in_range(schedule.moment, after, start_date) else [])
    if end_date is None:
        return starts
    return itertools.takewhile(lambda start: start <= end_date, starts)


def _cron_starts(
    cron: CronSchedule, window: MaintenanceWindowSpec, after: datetime, start_date: datetime | None
) -> Iterator[datetime]:
    zone = ZoneInfo(window.schedule_timezone)
    shift = timedelta(days=window.schedule_offset or 0)
    # Existing wall-clock times map to instants in the same order, so no match earlier than
    # these (as wall-clock time) can give an opening after `after` or a period after startDate.
    since = _wall(after, zone) - shift
    if start_date is not None:
        since = max(since, _wall(start_date, zone))
    for match in cron.wall_times(since):
        start = _instant(match + shift, zone)
        if start is not None and _in_range(start, after, start_date):
            yield start


def _rate_starts(
    rate: RateSchedule, after: datetime, start_date: datetime | None
) -> Iterator[datetime]:
    anchor = start_date or EPOCH
    # The first step whose start is later than `after` (never one before the anchor).
    step = max(0, (after - anchor) // rate.every + 1)
    while True:
        yield anchor + step * rate.every
        step += 1


def _in_range(start: datetime, after: datetime, start_date: datetime | None) -> bool:
    return start > after and (start_date is None or start >= start_date)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of the instant ``moment`` in ``zone``."""
    return moment.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a wall-clock time in ``zone``: its first occurrence when DST ends
    makes it happen twice, None when DST starts and skips it."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    return instant if _wall(instant, zone) == wall else None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opening(window: MaintenanceWindowSpec, start: datetime) -> Opening:
    end = start + timedelta(hours=window.duration)
    return Opening(start=start, end=end, cutoff_at=end - timedelta(hours=window.cutoff))


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment.isoformat()}")
