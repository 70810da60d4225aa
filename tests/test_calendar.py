"""Change calendars, the pure core (issue 20 item 2 groundwork): closed or open at an injected
instant, with the reason and until when, for SSM's DEFAULT_OPEN and DEFAULT_CLOSED types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.schedule.calendar import Period, calendar_state

T0 = datetime(2026, 12, 24, 0, 0, tzinfo=UTC)
FREEZE = Period(T0, T0 + timedelta(days=2), "holiday freeze")
LATE = Period(T0 + timedelta(days=1), T0 + timedelta(days=3), "year-end close")


def test_default_open_is_closed_inside_an_event_until_merged_events_end() -> None:
    state = calendar_state("prod", "DEFAULT_OPEN", [LATE, FREEZE], T0 + timedelta(hours=5))
    assert state.closed and state.until == T0 + timedelta(days=3)
    assert state.reason == (
        "change calendar 'prod' is closed: holiday freeze, year-end close until "
        "2026-12-27T00:00:00+00:00"
    )


def test_default_open_is_open_outside_events_and_at_an_events_end() -> None:
    before = calendar_state("prod", "DEFAULT_OPEN", [FREEZE], T0 - timedelta(seconds=1))
    assert not before.closed and before.until == T0
    after = calendar_state("prod", "DEFAULT_OPEN", [FREEZE], FREEZE.end)  # [start, end)
    assert not after.closed and after.until is None


def test_default_closed_is_open_only_inside_its_events() -> None:
    window = Period(T0, T0 + timedelta(hours=4), "Saturday change window")
    inside = calendar_state("ops", "DEFAULT_CLOSED", [window], T0 + timedelta(hours=1))
    assert not inside.closed and "Saturday change window" in inside.reason
    outside = calendar_state("ops", "DEFAULT_CLOSED", [window], T0 - timedelta(hours=1))
    assert outside.closed and outside.until == T0
    never = calendar_state("ops", "DEFAULT_CLOSED", [], T0)
    assert never.closed and never.until is None and "no open period ahead" in never.reason


def test_naive_or_backwards_times_are_refused() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        Period(datetime(2026, 12, 24), datetime(2026, 12, 25), "naive")
    with pytest.raises(ValueError, match="not after its start"):
        Period(T0, T0, "empty")
    with pytest.raises(ValueError, match="UTC offset"):
        calendar_state("prod", "DEFAULT_OPEN", [], datetime(2026, 12, 24))
