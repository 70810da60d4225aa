"""Stage: schedule — maintenance windows: cron/rate/at, time zone, offset, duration, cutoff.

``openings(window, after)`` lists the next openings of a ``MaintenanceWindowSpec`` in UTC;
``current_opening(window, now)`` is the one open now, if any (``open_openings`` all of them
when openings overlap); an ``Opening`` says whether it is
open and whether it still accepts new tasks (the cutoff). ``parse_schedule`` turns the schedule
text into a value, or a ValueError naming the bad field; ``parse_window_schedule`` also holds a
window's cron to SSM's 5-minute floor. The semantics, DST and scheduleOffset
included, are written down in ``windows.py``.

Pure functions: no clock of their own (callers pass ``after``/``now``), no I/O, no rendering.
May import ``reconciler.api`` only.
"""

from reconciler.schedule.cron import CronSchedule
from reconciler.schedule.expressions import (
    AtSchedule,
    RateSchedule,
    Schedule,
    parse_schedule,
    parse_window_schedule,
)
from reconciler.schedule.windows import (
    Opening,
    current_opening,
    describe,
    open_openings,
    openings,
)

__all__ = [
    "AtSchedule",
    "CronSchedule",
    "Opening",
    "RateSchedule",
    "Schedule",
    "current_opening",
    "describe",
    "open_openings",
    "openings",
    "parse_schedule",
    "parse_window_schedule",
]
