"""Stage: schedule. Parsing a MaintenanceWindow's ``schedule`` text into a value.

``cron(...)`` and plain cron are in ``cron.py``; here are ``rate(N unit)`` (SSM: units minutes,
hours or days, singular exactly when N is 1, nothing faster than every 5 minutes) and the one-time
``at(YYYY-MM-DDThh:mm:ss)``, which SSM reads in UTC. ``parse_window_schedule`` adds SSM's
maintenance-window floor for cron: no two openings less than 5 minutes apart. Pure; imports
nothing from reconciler.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from reconciler.schedule.cron import CronSchedule, parse_aws_cron, parse_plain_cron

_RATE = re.compile(r"^([0-9]+) +([a-z]+)$")
_AT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
SHORTEST_RATE = timedelta(minutes=5)
"""SSM: "rates faster than 5 minutes aren't supported"."""


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """``rate(N unit)``: every ``every`` of elapsed time (a day is 24 hours, whatever DST does)."""

    expression: str
    every: timedelta


@dataclass(frozen=True, slots=True)
class AtSchedule:
    """``at(...)``: once, at ``moment`` (UTC)."""

    expression: str
    moment: datetime


Schedule: TypeAlias = CronSchedule | RateSchedule | AtSchedule


def parse_schedule(expression: str) -> Schedule:
    """The schedule ``expression`` describes, or ValueError saying which part is wrong and how."""
    return _parse(expression.strip())


def parse_window_schedule(expression: str) -> Schedule:
    """A MaintenanceWindow's schedule: ``parse_schedule``, and a cron expression that fires
    less than 5 minutes apart is refused too, as SSM refuses it for windows. A report's
    schedule is not a window's, so ``parse_schedule`` leaves cron unbounded."""
    schedule = parse_schedule(expression)
    if isinstance(schedule, CronSchedule):
        gap = schedule.gap_under(SHORTEST_RATE)
        if gap is not None:
            raise ValueError(
                f"{schedule.expression} fires {_spoken(gap)} apart at its closest; SSM opens a "
                "maintenance window at most every 5 minutes: space its times 5 minutes or more "
                "apart, as cron(0/5 * * * ? *) does"
            )
    return schedule


def _spoken(gap: timedelta) -> str:
    seconds = int(gap.total_seconds())
    if seconds % 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{seconds // 60} minute{'s' if seconds != 60 else ''}"


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> Schedule:
    # Windows are re-read on every reconcile; parsing the same few strings once is enough.
    for keyword, parser in (("cron", parse_aws_cron), ("rate", _parse_rate), ("at", _parse_at)):
        if text.startswith(f"{keyword}("):
            if not text.endswith(")"):
                raise ValueError(f"{keyword}(...) is missing its closing ')'")
            return parser(text, text[len(keyword) + 1 : -1])
    if not text or "(" in text or ")" in text:
        raise ValueError(
            "a schedule is cron(...), rate(...), at(...) or a plain 5-field cron expression, "
            "for example cron(0 2 ? * TUE *), rate(7 days) or '0 2 * * 2'"
        )
    return parse_plain_cron(text)


def _parse_rate(expression: str, body: str) -> RateSchedule:
    match = _RATE.match(body.strip())
    if match is None:
        raise ValueError("rate(...) takes 'N minutes|hours|days', for example rate(30 minutes)")
    count, unit = int(match[1]), match[2]
    singular = unit.removesuffix("s")
    if singular not in _UNIT_SECONDS:
        raise ValueError(f"rate(...) unit {unit!r}: use minutes, hours or days")
    if count == 0:
        raise ValueError("rate(...) needs a positive number, for example rate(1 day)")
    if (count == 1) != (unit == singular):
        raise ValueError(
            f"rate({body.strip()}): use the singular unit for 1 and the plural otherwise, "
            "as in rate(1 hour) and rate(5 hours)"
        )
    every = timedelta(seconds=count * _UNIT_SECONDS[singular])
    if every < SHORTEST_RATE:
        raise ValueError(
            f"rate({body.strip()}): rates faster than every 5 minutes are not supported; "
            "use rate(5 minutes) or slower"
        )
    return RateSchedule(expression, every)


def _parse_at(expression: str, body: str) -> AtSchedule:
    text = body.strip()
    try:
        if not _AT.match(text):
            raise ValueError(text)
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"at({text}): give a date and time YYYY-MM-DDThh:mm:ss (UTC), "
            "for example at(2026-11-13T01:00:00)"
        ) from None
    return AtSchedule(expression, moment)
