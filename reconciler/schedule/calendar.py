"""Stage: schedule. Whether a change calendar is closed at an instant (issue 20 item 2): SSM
Change Calendar's two types — ``DEFAULT_OPEN``, whose events are the closed periods, and
``DEFAULT_CLOSED``, whose events are the only open ones
(https://docs.aws.amazon.com/systems-manager/latest/userguide/systems-manager-change-calendar.html).
Periods are half-open, ``[start, end)``; overlapping or touching periods count as one, so the
state says until when it lasts. The ChangeCalendar kind's periods come from
:mod:`reconciler.schedule.ical`; the planner blocks on them (docs/guardrails.md).

Pure: no clock of its own (the caller passes ``now``), no I/O. May import ``reconciler.api`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

CalendarType = Literal["DEFAULT_OPEN", "DEFAULT_CLOSED"]


@dataclass(frozen=True, slots=True)
class Period:
    """One calendar event: closed on a DEFAULT_OPEN calendar, open on a DEFAULT_CLOSED one."""

    start: datetime
    end: datetime
    summary: str = ""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"period {self.summary!r}: give start and end with a UTC offset")
        if self.end <= self.start:
            raise ValueError(f"period {self.summary!r}: end {self.end} is not after its start")


@dataclass(frozen=True, slots=True)
class CalendarState:
    """A calendar at one instant: closed or not, why, and until when (None: for good)."""

    closed: bool
    reason: str
    until: datetime | None


def calendar_state(
    name: str, kind: CalendarType, periods: Iterable[Period], now: datetime
) -> CalendarState:
    """The state of calendar ``name`` at ``now`` (timezone-aware)."""
    if now.tzinfo is None:
        raise ValueError("now must have a UTC offset")
    spans = _merged(sorted(periods, key=lambda p: p.start))
    inside = next((s for s in spans if s[0] <= now < s[1]), None)
    following = next((s for s in spans if s[0] > now), None)
    if kind == "DEFAULT_OPEN":
        if inside is None:
            until = following[0] if following else None
            return CalendarState(False, f"change calendar {name!r} is open", until)
        why = f"change calendar {name!r} is closed: {inside[2]} until {inside[1].isoformat()}"
        return CalendarState(True, why, inside[1])
    if inside is not None:
        why = f"change calendar {name!r} is open: {inside[2]} until {inside[1].isoformat()}"
        return CalendarState(False, why, inside[1])
    nxt = f" until {following[0].isoformat()}" if following else " (no open period ahead)"
    why = f"change calendar {name!r} is closed outside its open periods{nxt}"
    return CalendarState(True, why, following[0] if following else None)


def _merged(periods: Sequence[Period]) -> list[tuple[datetime, datetime, str]]:
    """Overlapping or touching periods (sorted by start) as one span, their summaries joined."""
    spans: list[tuple[datetime, datetime, str]] = []
    for period in periods:
        if spans and period.start <= spans[-1][1]:
            start, end, summary = spans[-1]
            # A recurring event's occurrences touching one another are one period, one name.
            again = not period.summary or period.summary in summary.split(", ")
            names = summary if again else f"{summary}, {period.summary}"
            spans[-1] = (start, max(end, period.end), names)
        else:
            spans.append((period.start, period.end, period.summary or "an event"))
    return spans
