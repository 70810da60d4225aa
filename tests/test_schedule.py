"""Maintenance-window schedules: AWS's documented examples, rate/at, time zones, DST, offset,
cutoff, start/end bounds, disabled windows and the messages for invalid expressions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.api.resources import MaintenanceWindowSpec
from reconciler.schedule import (
    AtSchedule,
    CronSchedule,
    Opening,
    RateSchedule,
    current_opening,
    describe,
    openings,
    parse_schedule,
    parse_window_schedule,
)


def window(schedule: str, **spec: Any) -> MaintenanceWindowSpec:
    """A validated window spec; extra camelCase fields as keyword arguments."""
    document = {
        "schedule": schedule,
        "duration": 3,
        "cutoff": 1,
        "targets": {"patchGroups": ["web"]},
        "tasks": [{"name": "install", "operation": "Install"}],
        **spec,
    }
    return MaintenanceWindowSpec.model_validate(document)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ids(win: MaintenanceWindowSpec, after: str, limit: int = 3) -> list[str]:
    return [o.id for o in openings(win, utc(after), limit)]


# ---------------------------------------------------------------------------------------------
# cron(...) semantics, starting with the examples in AWS's docs (reference §5.2)

CRON_EXAMPLES = [
    # AWS doc examples.
    (
        "cron(0 2 ? * THU#3 *)",
        {},
        ["2026-01-15T02:00:00Z", "2026-02-19T02:00:00Z", "2026-03-19T02:00:00Z"],
    ),
    (
        "cron(15 10 ? * MON-FRI *)",
        {},
        ["2026-01-01T10:15:00Z", "2026-01-02T10:15:00Z", "2026-01-05T10:15:00Z"],
    ),
    (
        "cron(0 2 L * ? *)",
        {},
        ["2026-01-31T02:00:00Z", "2026-02-28T02:00:00Z", "2026-03-31T02:00:00Z"],
    ),
    (
        "cron(15 10 ? * 6L *)",
        {},
        ["2026-01-30T10:15:00Z", "2026-02-27T10:15:00Z", "2026-03-27T10:15:00Z"],
    ),
    # Third Tuesday at 23:30, plus 2 days: the Thursday after (Jan 20 -> 22, Feb 17 -> 19).
    (
        "cron(30 23 ? * TUE#3 *)",
        {"scheduleOffset": 2},
        ["2026-01-22T23:30:00Z", "2026-02-19T23:30:00Z", "2026-03-19T23:30:00Z"],
    ),
    # Patch Tuesday (second Tuesday) + 3 days: the Friday after (Jan 13 -> 16, Feb 10 -> 13).
    (
        "cron(0 2 ? * TUE#2 *)",
        {"scheduleOffset": 3},
        ["2026-01-16T02:00:00Z", "2026-02-13T02:00:00Z", "2026-03-13T02:00:00Z"],
    ),
    # AWS's association example: second Thursday + 3 = the Sunday after.
    (
        "cron(0 0 ? * THU#2 *)",
        {"scheduleOffset": 3},
        ["2026-01-11T00:00:00Z", "2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z"],
    ),
    # Lists, steps, names, the year field and the optional seconds field.
    (
        "cron(0/20 8 ? JAN SAT,SUN *)",
        {},
        ["2026-01-03T08:00:00Z", "2026-01-03T08:20:00Z", "2026-01-03T08:40:00Z"],
    ),
    (
        "cron(0 6 1,15 */3 ? *)",
        {},
        ["2026-01-01T06:00:00Z", "2026-01-15T06:00:00Z", "2026-04-01T06:00:00Z"],
    ),
    ("cron(0 2 1 JAN ? 2027-2028)", {}, ["2027-01-01T02:00:00Z", "2028-01-01T02:00:00Z"]),
    (
        "cron(30 0 2 ? * SUN *)",
        {},
        ["2026-01-04T02:00:30Z", "2026-01-11T02:00:30Z", "2026-01-18T02:00:30Z"],
    ),
    (
        "cron(0 2 ? * 1 *)",
        {},
        ["2026-01-04T02:00:00Z", "2026-01-11T02:00:00Z", "2026-01-18T02:00:00Z"],
    ),
    (
        "cron(0 2 ? * 7 *)",
        {},
        ["2026-01-03T02:00:00Z", "2026-01-10T02:00:00Z", "2026-01-17T02:00:00Z"],
    ),
    (
        "cron(0 2 ? * fri-sat *)",
        {},
        ["2026-01-02T02:00:00Z", "2026-01-03T02:00:00Z", "2026-01-09T02:00:00Z"],
    ),
    # L alone in Day-of-week is the last day of the week: Saturday.
    (
        "cron(0 2 ? * L *)",
        {},
        ["2026-01-03T02:00:00Z", "2026-01-10T02:00:00Z", "2026-01-17T02:00:00Z"],
    ),
    # W: the weekday nearest the day, within the month. Feb 1 and Mar 1 2026 are Sundays, Aug 1 a
    # Saturday (so the Monday after, not July 31), Jan 31 a Saturday, May 31 a Sunday.
    (
        "cron(0 9 1W * ? *)",
        {},
        ["2026-01-01T09:00:00Z", "2026-02-02T09:00:00Z", "2026-03-02T09:00:00Z"],
    ),
    (
        "cron(0 9 1W AUG ? *)",
        {},
        ["2026-08-03T09:00:00Z", "2027-08-02T09:00:00Z", "2028-08-01T09:00:00Z"],
    ),
    (
        "cron(0 9 15W * ? *)",
        {},
        ["2026-01-15T09:00:00Z", "2026-02-16T09:00:00Z", "2026-03-16T09:00:00Z"],
    ),
    (
        "cron(0 9 31W JAN,MAY ? *)",
        {},
        ["2026-01-30T09:00:00Z", "2026-05-29T09:00:00Z", "2027-01-29T09:00:00Z"],
    ),
    (
        "cron(0 9 LW * ? *)",
        {},
        ["2026-01-30T09:00:00Z", "2026-02-27T09:00:00Z", "2026-03-31T09:00:00Z"],
    ),
    # A day a month lacks selects nothing that month; TUE#5 only where there are five Tuesdays.
    (
        "cron(0 9 31 * ? *)",
        {},
        ["2026-01-31T09:00:00Z", "2026-03-31T09:00:00Z", "2026-05-31T09:00:00Z"],
    ),
    (
        "cron(0 9 ? * TUE#5 *)",
        {},
        ["2026-03-31T09:00:00Z", "2026-06-30T09:00:00Z", "2026-09-29T09:00:00Z"],
    ),
    (
        "cron(0 9 29 FEB ? *)",
        {},
        ["2028-02-29T09:00:00Z", "2032-02-29T09:00:00Z", "2036-02-29T09:00:00Z"],
    ),
    # Plain 5-field cron is standard cron: 0 and 7 are Sunday.
    ("0 2 * * 2", {}, ["2026-01-06T02:00:00Z", "2026-01-13T02:00:00Z", "2026-01-20T02:00:00Z"]),
    ("0 2 * * 7", {}, ["2026-01-04T02:00:00Z", "2026-01-11T02:00:00Z", "2026-01-18T02:00:00Z"]),
    ("0 2 * * SUN", {}, ["2026-01-04T02:00:00Z", "2026-01-11T02:00:00Z", "2026-01-18T02:00:00Z"]),
    # Both day fields restricted: either matches (the 13th, or any Friday).
    ("0 0 13 * 5", {}, ["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z"]),
    # A '*'-led day field does not widen the other (Vixie cron): odd days that are Mondays.
    ("0 0 */2 * 1", {}, ["2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z", "2026-02-09T00:00:00Z"]),
]


@pytest.mark.parametrize(("schedule", "spec", "expected"), CRON_EXAMPLES)
def test_cron_openings(schedule: str, spec: dict[str, Any], expected: list[str]) -> None:
    assert ids(window(schedule, **spec), "2025-12-31T23:59:59") == expected


def test_leap_year_last_day_of_february() -> None:
    assert ids(window("cron(0 2 L FEB ? *)"), "2027-06-01T00:00:00", 2) == [
        "2028-02-29T02:00:00Z",
        "2029-02-28T02:00:00Z",
    ]


def test_a_cron_that_never_matches_has_no_openings() -> None:
    assert openings(window("cron(0 0 30 FEB ? *)"), utc("2026-01-01T00:00:00")) == []
    assert openings(window("cron(0 2 1 JAN ? 2020)"), utc("2026-01-01T00:00:00")) == []


def test_openings_start_strictly_after() -> None:
    win = window("cron(0 2 * * ? *)")
    assert ids(win, "2026-01-01T02:00:00", 1) == ["2026-01-02T02:00:00Z"]
    assert ids(win, "2026-01-01T01:59:59.999999", 1) == ["2026-01-01T02:00:00Z"]


def test_limit() -> None:
    win = window("cron(0 * * * ? *)")
    assert len(openings(win, utc("2026-01-01T00:00:00"), limit=50)) == 50
    assert openings(win, utc("2026-01-01T00:00:00"), limit=0) == []


# ---------------------------------------------------------------------------------------------
# rate(...) and at(...)


def test_rate_without_start_date_counts_from_the_epoch() -> None:
    win = window("rate(30 minutes)")
    assert ids(win, "2026-01-01T00:10:00") == [
        "2026-01-01T00:30:00Z",
        "2026-01-01T01:00:00Z",
        "2026-01-01T01:30:00Z",
    ]


def test_rate_counts_from_start_date_and_opens_at_it() -> None:
    win = window("rate(7 days)", startDate="2026-03-02T10:15:00Z")
    assert ids(win, "2026-01-01T00:00:00") == [
        "2026-03-02T10:15:00Z",
        "2026-03-09T10:15:00Z",
        "2026-03-16T10:15:00Z",
    ]
    assert ids(win, "2026-03-09T10:15:00", 1) == ["2026-03-16T10:15:00Z"]


def test_rate_is_elapsed_time_whatever_the_time_zone_and_dst() -> None:
    # 02:00 in Berlin the day before DST starts; 24 hours later it is 03:00 local.
    win = window(
        "rate(1 day)", scheduleTimezone="Europe/Berlin", startDate="2026-03-28T02:00:00+01:00"
    )
    assert ids(win, "2026-03-01T00:00:00", 2) == ["2026-03-28T01:00:00Z", "2026-03-29T01:00:00Z"]


def test_rate_hours() -> None:
    win = window("rate(1 hour)", startDate="2026-05-01T00:30:00Z")
    assert ids(win, "2026-05-01T05:00:00", 2) == ["2026-05-01T05:30:00Z", "2026-05-01T06:30:00Z"]


def test_at_opens_once_in_utc_whatever_the_time_zone() -> None:
    win = window("at(2026-11-13T01:00:00)", scheduleTimezone="Europe/Berlin")
    assert ids(win, "2026-01-01T00:00:00") == ["2026-11-13T01:00:00Z"]
    assert ids(win, "2026-11-13T01:00:00") == []
    assert (
        current_opening(win, utc("2026-11-13T02:00:00"))
        == openings(win, utc("2026-01-01T00:00:00"))[0]
    )


# ---------------------------------------------------------------------------------------------
# Time zones and DST


def test_aws_start_date_and_time_zone_example() -> None:
    # AWS's example: start 2021-01-01T00:00:00-08:00, America/Los_Angeles, cron(0 09 ? * WED *):
    # the first opening is the first Wednesday after the start, 9 AM Pacific (UTC-8).
    win = window(
        "cron(0 09 ? * WED *)",
        scheduleTimezone="America/Los_Angeles",
        startDate="2021-01-01T00:00:00-08:00",
    )
    assert ids(win, "2020-06-01T00:00:00", 2) == ["2021-01-06T17:00:00Z", "2021-01-13T17:00:00Z"]


def test_wall_clock_time_follows_dst_in_new_york() -> None:
    win = window("cron(0 9 ? * MON-FRI *)", scheduleTimezone="America/New_York")
    # DST starts on Sunday 2026-03-08: 09:00 EST is 14:00Z, 09:00 EDT is 13:00Z.
    assert ids(win, "2026-03-05T00:00:00", 3) == [
        "2026-03-05T14:00:00Z",
        "2026-03-06T14:00:00Z",
        "2026-03-09T13:00:00Z",
    ]


def test_berlin_spring_forward_skips_a_time_that_does_not_exist() -> None:
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day, so the daily
    # 02:30 window does not open (EventBridge Scheduler's documented behaviour).
    win = window("cron(30 2 * * ? *)", scheduleTimezone="Europe/Berlin")
    assert ids(win, "2026-03-27T12:00:00", 3) == [
        "2026-03-28T01:30:00Z",
        "2026-03-30T00:30:00Z",
        "2026-03-31T00:30:00Z",
    ]


def test_berlin_fall_back_opens_once_at_the_first_occurrence() -> None:
    # 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 happens twice; the window opens once,
    # at 02:30 CEST (00:30Z), not again at 02:30 CET (01:30Z).
    win = window("cron(30 2 * * ? *)", scheduleTimezone="Europe/Berlin")
    assert ids(win, "2026-10-24T12:00:00", 2) == ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    # Asking from inside the repeated hour does not resurrect the second occurrence.
    assert ids(win, "2026-10-25T01:00:00", 1) == ["2026-10-26T01:30:00Z"]


def test_hourly_cron_across_berlin_transitions() -> None:
    win = window("cron(0 * * * ? *)", scheduleTimezone="Europe/Berlin")
    # Spring: 01:00 CET (00:00Z), no 02:00, then 03:00 CEST (01:00Z).
    assert ids(win, "2026-03-28T23:30:00", 3) == [
        "2026-03-29T00:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T02:00:00Z",
    ]
    # Fall: 02:00 CEST (00:00Z), 03:00 CET (02:00Z): the repeated 02:00 CET (01:00Z) is skipped.
    assert ids(win, "2026-10-24T23:30:00", 2) == ["2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"]


def test_new_york_transitions() -> None:
    spring = window("cron(30 2 * * ? *)", scheduleTimezone="America/New_York")
    assert ids(spring, "2026-03-07T00:00:00", 2) == ["2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z"]
    fall = window("cron(30 1 * * ? *)", scheduleTimezone="America/New_York")
    # 01:30 happens twice on 2026-11-01: once at 01:30 EDT (05:30Z).
    assert ids(fall, "2026-10-31T12:00:00", 2) == ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]


def test_offset_keeps_the_wall_clock_time_across_dst() -> None:
    # Saturday 2026-03-21 23:00 CET + 2 days = Monday 23:00 CET; Saturday 03-28 23:00 CET + 2 days
    # = Monday 03-30 23:00 CEST, an hour earlier in UTC.
    win = window("cron(0 23 ? * SAT *)", scheduleTimezone="Europe/Berlin", scheduleOffset=2)
    assert ids(win, "2026-03-20T00:00:00", 2) == ["2026-03-23T22:00:00Z", "2026-03-30T21:00:00Z"]


def test_an_offset_of_up_to_27_days_gives_patch_tuesday_plus_n_weeks() -> None:
    # A Patchwarden extension (SSM stops at 6 days): Patch Tuesday 2026-12-08 + 27 days is
    # 2027-01-04, before January's Patch Tuesday (the 12th), whose period opens 2027-02-08.
    win = window("cron(0 2 ? * TUE#2 *)", scheduleOffset=27)
    assert ids(win, "2026-12-10T00:00:00", 2) == ["2027-01-04T02:00:00Z", "2027-02-08T02:00:00Z"]


def test_offset_onto_a_time_that_does_not_exist_is_skipped() -> None:
    # Saturday 02:30 + 1 day lands on 2026-03-29 02:30 in Berlin, which does not exist.
    win = window("cron(30 2 ? * SAT *)", scheduleTimezone="Europe/Berlin", scheduleOffset=1)
    assert ids(win, "2026-03-21T00:00:00", 2) == ["2026-03-22T01:30:00Z", "2026-04-05T00:30:00Z"]


# ---------------------------------------------------------------------------------------------
# Cutoff and current_opening


def test_cutoff_stops_new_tasks_before_the_end() -> None:
    # AWS's example: start 15:00, duration 3 h, cutoff 1 h: no new task at or after 17:00.
    win = window("cron(0 15 * * ? *)", duration=3, cutoff=1)
    opening = openings(win, utc("2026-06-01T00:00:00"), 1)[0]
    assert (opening.start, opening.end, opening.cutoff_at) == (
        utc("2026-06-01T15:00:00"),
        utc("2026-06-01T18:00:00"),
        utc("2026-06-01T17:00:00"),
    )
    table = [
        ("2026-06-01T14:59:59", False, False),
        ("2026-06-01T15:00:00", True, True),
        ("2026-06-01T16:59:59", True, True),
        ("2026-06-01T17:00:00", True, False),
        ("2026-06-01T17:59:59", True, False),
        ("2026-06-01T18:00:00", False, False),
    ]
    for now, is_open, accepts in table:
        assert (opening.is_open(utc(now)), opening.accepts_new_tasks(utc(now))) == (
            is_open,
            accepts,
        ), now


def test_zero_cutoff_accepts_tasks_until_the_end() -> None:
    opening = openings(
        window("cron(0 15 * * ? *)", duration=2, cutoff=0), utc("2026-06-01T00:00:00"), 1
    )[0]
    assert opening.cutoff_at == opening.end


def test_current_opening() -> None:
    win = window("cron(0 15 * * ? *)", duration=3, cutoff=1)
    expected = openings(win, utc("2026-06-01T00:00:00"), 1)[0]
    assert current_opening(win, utc("2026-06-01T15:00:00")) == expected
    assert current_opening(win, utc("2026-06-01T17:30:00")) == expected
    assert current_opening(win, utc("2026-06-01T18:00:00")) is None
    assert current_opening(win, utc("2026-06-01T14:59:59")) is None


def test_current_opening_is_the_latest_of_overlapping_ones() -> None:
    win = window("rate(5 minutes)", duration=1, cutoff=0)
    now = utc("2026-06-01T10:07:00")
    assert current_opening(win, now) == Opening(
        start=utc("2026-06-01T10:05:00"),
        end=utc("2026-06-01T11:05:00"),
        cutoff_at=utc("2026-06-01T11:05:00"),
    )


def test_current_opening_accepts_any_time_zone_for_now() -> None:
    win = window("cron(0 15 * * ? *)")
    now = datetime.fromisoformat("2026-06-01T17:30:00+02:00")  # 15:30Z
    opening = current_opening(win, now)
    assert opening is not None and opening.id == "2026-06-01T15:00:00Z"


# ---------------------------------------------------------------------------------------------
# startDate / endDate, offset periods, disabled windows


def test_start_and_end_dates_bound_the_openings() -> None:
    win = window(
        "cron(0 2 * * ? *)", startDate="2026-05-03T02:00:00Z", endDate="2026-05-05T02:00:00Z"
    )
    # An opening exactly at startDate or exactly at endDate is inside the valid period.
    assert ids(win, "2026-01-01T00:00:00", 10) == [
        "2026-05-03T02:00:00Z",
        "2026-05-04T02:00:00Z",
        "2026-05-05T02:00:00Z",
    ]
    assert ids(win, "2026-05-05T02:00:00") == []


def test_start_date_without_offset_is_utc() -> None:
    win = window(
        "cron(0 2 * * ? *)", scheduleTimezone="Asia/Tokyo", startDate="2026-05-03T00:00:00"
    )
    # 02:00 JST is 17:00Z the day before; the first one at or after 2026-05-03T00:00Z is 05-03 17:00Z.
    assert ids(win, "2026-01-01T00:00:00", 1) == ["2026-05-03T17:00:00Z"]


def test_rate_stops_at_end_date() -> None:
    win = window("rate(1 day)", startDate="2026-05-01T00:00:00Z", endDate="2026-05-03T12:00:00Z")
    assert ids(win, "2026-01-01T00:00:00", 10) == [
        "2026-05-01T00:00:00Z",
        "2026-05-02T00:00:00Z",
        "2026-05-03T00:00:00Z",
    ]


def test_at_outside_the_valid_period_never_opens() -> None:
    win = window("at(2026-11-13T01:00:00)", startDate="2026-12-01T00:00:00Z")
    assert openings(win, utc("2026-01-01T00:00:00")) == []


def test_offset_period_whose_cron_day_is_before_start_date_does_not_run() -> None:
    # The third Tuesday of January 2026 is the 20th; +2 = the 22nd. With startDate on the 21st
    # the cron day has passed but the offset day has not: January does not run (SSM).
    win = window("cron(30 23 ? * TUE#3 *)", scheduleOffset=2, startDate="2026-01-21T00:00:00Z")
    assert ids(win, "2026-01-01T00:00:00", 2) == ["2026-02-19T23:30:00Z", "2026-03-19T23:30:00Z"]
    # But a period whose cron day is on or after startDate runs, even when asked from later.
    assert ids(win, "2026-02-18T00:00:00", 1) == ["2026-02-19T23:30:00Z"]


def test_offset_without_start_date_runs_every_period() -> None:
    win = window("cron(30 23 ? * TUE#3 *)", scheduleOffset=2)
    # Asked between a cron day (Jan 20) and its offset day (Jan 22): Jan 22 still opens.
    assert ids(win, "2026-01-21T00:00:00", 1) == ["2026-01-22T23:30:00Z"]


def test_disabled_window_never_opens() -> None:
    win = window("cron(0 15 * * ? *)", enabled=False)
    assert openings(win, utc("2026-06-01T00:00:00")) == []
    assert current_opening(win, utc("2026-06-01T15:30:00")) is None


# ---------------------------------------------------------------------------------------------
# The Opening value


def test_opening_is_a_frozen_value_with_a_stable_id() -> None:
    opening = openings(window("cron(0 1 13 NOV ? *)"), utc("2026-01-01T00:00:00"), 1)[0]
    assert opening.id == "2026-11-13T01:00:00Z"
    assert opening.start.tzinfo is not None and opening.start.utcoffset() == timedelta(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opening.start = utc("2026-01-01T00:00:00")  # type: ignore[misc]


@pytest.mark.parametrize("function", [openings, current_opening])
def test_naive_times_are_refused(function: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        function(window("cron(0 15 * * ? *)"), datetime(2026, 6, 1))


# ---------------------------------------------------------------------------------------------
# parse_schedule


def test_parse_schedule_kinds() -> None:
    assert isinstance(parse_schedule("cron(0 2 ? * TUE *)"), CronSchedule)
    assert isinstance(parse_schedule("0 2 * * 2"), CronSchedule)
    assert parse_schedule("rate(25 days)") == RateSchedule("rate(25 days)", timedelta(days=25))
    assert parse_schedule("  at(2020-07-07T15:55:00) ") == AtSchedule(
        "at(2020-07-07T15:55:00)", utc("2020-07-07T15:55:00")
    )
    cron = parse_schedule("cron(0 2 ? * TUE *)")
    assert isinstance(cron, CronSchedule) and cron.seconds == (0,) and cron.years[-1] == 2199


INVALID = [
    ("cron(0 2 * * * *)", "exactly one of them must be '?'"),
    ("cron(0 2 ? * ? *)", "exactly one of them must be '?'"),
    ("cron(0 2 ? * MON)", "takes 6 fields"),
    ("cron(0 0 2 ? * MON * 1)", "takes 6 fields"),
    ("cron(0 25 ? * MON *)", "Hours field '25': 25 is outside 0-23"),
    ("cron(60 2 ? * MON *)", "Minutes field '60': 60 is outside 0-59"),
    ("cron(61 0 2 ? * MON *)", "Seconds field '61': 61 is outside 0-59"),
    ("cron(0 2 32 * ? *)", "Day-of-month field '32': 32 is outside 1-31"),
    ("cron(0 2 ? * 8 *)", "Day-of-week field '8': 8 is outside 1-7 (or one of SUN-SAT)"),
    ("cron(0 2 ? * 0 *)", "Day-of-week field '0': 0 is outside 1-7"),
    ("cron(0 2 ? * FUN *)", "Day-of-week field 'FUN': 'FUN' is not a number (or one of SUN-SAT)"),
    ("cron(0 2 ? FOO MON *)", "Month field 'FOO': 'FOO' is not a number (or one of JAN-DEC)"),
    ("cron(0 2 ? * MON 1969)", "Year field '1969': 1969 is outside 1970-2199"),
    # Year is the one AWS field whose range cannot wrap; plain cron's ranges never do.
    ("cron(0 2 1 JAN ? 2030-2027)", "Year field '2030-2027': the range '2030-2027' runs backwards"),
    ("0 22-2 * * *", "only AWS's cron(...) form wraps a range"),
    ("cron(*/0 2 ? * MON *)", "the step after '/' must be a positive number"),
    # A step past the field's largest value is refused, as AWS (Quartz) refuses it, not read as
    # "once": https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cron-expressions.html
    # gives each field's values; the bound is Quartz's ("Increment > 60" for */60 minutes).
    ("cron(*/60 * * * ? *)", "Minutes field '*/60': the step 60 is larger than the field"),
    ("cron(0/60 * * * ? *)", "Minutes runs 0-59, so a step is at most 59"),
    ("cron(*/60 0 2 ? * MON *)", "Seconds field '*/60': the step 60"),
    ("cron(0 */24 ? * MON *)", "Hours runs 0-23, so a step is at most 23"),
    ("cron(0 2 1/32 * ? *)", "Day-of-month runs 1-31, so a step is at most 31"),
    ("cron(0 2 1 */13 ? *)", "Month runs 1-12, so a step is at most 12"),
    ("cron(0 2 ? * 2/8 *)", "Day-of-week runs 1-7, so a step is at most 7"),
    ("cron(0 2 L-31 * ? *)", "'L-n' counts 0-30 days back from the last day"),
    ("cron(0 2 L-3W * ? *)", "L, W and # stand alone"),
    ("cron(0 2 L-1,15 * ? *)", "L, W and # stand alone"),
    ("cron(0 2 ? * TUE#6 *)", "'#' takes an occurrence 1-5"),
    ("cron(0 2 ? * TUE# *)", "L, W and # stand alone"),
    ("cron(0 2 L,15 * ? *)", "Day-of-month field 'L,15': L, W and # stand alone"),
    ("cron(0 2 1-5W * ? *)", "L, W and # stand alone"),
    ("cron(0 2 ? * 2L,3 *)", "L, W and # stand alone"),
    ("cron(0 2 32W * ? *)", "32 is outside 1-31"),
    ("cron(0 ? ? * MON *)", "Hours field '?': '?' is only allowed"),
    ("cron(0 2 ,1 * ? *)", "Day-of-month field ',1': has an empty value"),
    ("cron(0 2-  ? * MON *)", "Hours field '2-': has an empty value"),
    ("cron(0 2 ? * MON *", "missing its closing ')'"),
    ("cron()", "takes 6 fields"),
    ("rate(1 minutes)", "singular unit for 1"),
    ("rate(5 hour)", "singular unit for 1"),
    ("rate(1 minute)", "faster than every 5 minutes"),
    ("rate(4 minutes)", "faster than every 5 minutes"),
    ("rate(0 days)", "positive number"),
    ("rate(2 weeks)", "use minutes, hours or days"),
    ("rate(seven days)", "takes 'N minutes|hours|days'"),
    ("at(2026-13-01T00:00:00)", "YYYY-MM-DDThh:mm:ss"),
    ("at(2026-11-13 01:00)", "YYYY-MM-DDThh:mm:ss"),
    ("0 2 * *", "a plain cron expression has 5 fields"),
    ("0 2 ? * 2", "'?' is only allowed"),
    ("0 2 * * 8", "Day-of-week field '8': 8 is outside 0-7"),
    ("0 24 * * *", "Hours field '24'"),
    ("every(5 minutes)", "a schedule is cron(...), rate(...), at(...)"),
    ("", "a schedule is cron(...)"),
]


@pytest.mark.parametrize(("expression", "message"), INVALID)
def test_invalid_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_schedule(expression)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------------
# AWS's (Quartz's) ranges that wrap, steps, L-n


# AWS's own example (the cron example table of the scheduled-rules page,
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/events/ScheduledEvents.html) reads
# cron(0/30 20-2 ? * MON-FRI *) as every half hour on weekdays from the evening to 02:00 the next
# morning: the hours 20-2 wrap past midnight. The day field is read for each time on its own, as
# every field is: Friday 20:00-23:30 opens, Saturday 00:00-02:30 does not (SAT is not MON-FRI),
# Monday 00:00-02:30 does.
WRAPPED = [
    (
        "cron(0/30 20-2 ? * MON-FRI *)",
        "2026-01-02T19:00:00",  # a Friday
        [
            "2026-01-02T20:00:00Z",
            "2026-01-02T20:30:00Z",
            "2026-01-02T21:00:00Z",
            "2026-01-02T21:30:00Z",
            "2026-01-02T22:00:00Z",
            "2026-01-02T22:30:00Z",
            "2026-01-02T23:00:00Z",
            "2026-01-02T23:30:00Z",
            "2026-01-05T00:00:00Z",
        ],
    ),
    (
        "cron(0/30 20-2 ? * MON-FRI *)",
        "2026-01-06T01:00:00",  # a Tuesday: the night goes on to 02:30, then 20:00
        [
            "2026-01-06T01:30:00Z",
            "2026-01-06T02:00:00Z",
            "2026-01-06T02:30:00Z",
            "2026-01-06T20:00:00Z",
        ],
    ),
    # Day-of-week FRI-MON: Friday to Monday (2026-01-02 is a Friday).
    (
        "cron(0 1 ? * FRI-MON *)",
        "2026-01-01T00:00:00",
        [
            "2026-01-02T01:00:00Z",
            "2026-01-03T01:00:00Z",
            "2026-01-04T01:00:00Z",
            "2026-01-05T01:00:00Z",
            "2026-01-09T01:00:00Z",
        ],
    ),
    # MON-SUN was refused as running backwards; wrapped, it is Monday to Saturday and Sunday.
    (
        "cron(0 1 ? * MON-SUN *)",
        "2026-01-01T00:00:00",
        ["2026-01-01T01:00:00Z", "2026-01-02T01:00:00Z", "2026-01-03T01:00:00Z"],
    ),
    # Month NOV-FEB: November to February.
    (
        "cron(0 1 1 NOV-FEB ? *)",
        "2026-01-01T02:00:00",
        [
            "2026-02-01T01:00:00Z",
            "2026-11-01T01:00:00Z",
            "2026-12-01T01:00:00Z",
            "2027-01-01T01:00:00Z",
        ],
    ),
    # Day-of-month 28-2 counts 28 to 31 then 1 and 2; February 2026 has no 29th to 31st.
    (
        "cron(0 1 28-2 * ? *)",
        "2026-01-27T00:00:00",
        [
            "2026-01-28T01:00:00Z",
            "2026-01-29T01:00:00Z",
            "2026-01-30T01:00:00Z",
            "2026-01-31T01:00:00Z",
            "2026-02-01T01:00:00Z",
            "2026-02-02T01:00:00Z",
            "2026-02-28T01:00:00Z",
            "2026-03-01T01:00:00Z",
        ],
    ),
    # A step carries on across the wrap: 50-10/10 is 50, 0, 10; 20-2/3 hours is 20, 23, 2.
    (
        "cron(50-10/10 * * * ? *)",
        "2026-01-01T00:00:00",
        ["2026-01-01T00:10:00Z", "2026-01-01T00:50:00Z", "2026-01-01T01:00:00Z"],
    ),
    (
        "cron(0 20-2/3 * * ? *)",
        "2026-01-01T00:00:00",
        ["2026-01-01T02:00:00Z", "2026-01-01T20:00:00Z", "2026-01-01T23:00:00Z"],
    ),
    # Quartz's L-n (https://www.quartz-scheduler.org/documentation/quartz-2.3.0/tutorials/
    # crontrigger.html: L-3 is the third-to-last day of the month): 2026-01-29, 02-26, 03-29.
    (
        "cron(0 2 L-2 * ? *)",
        "2026-01-01T00:00:00",
        ["2026-01-29T02:00:00Z", "2026-02-26T02:00:00Z", "2026-03-29T02:00:00Z"],
    ),
    ("cron(0 2 L-0 * ? *)", "2026-01-01T00:00:00", ["2026-01-31T02:00:00Z"]),
    # L-30 is the 1st of a 31-day month and no day of a shorter one.
    (
        "cron(0 2 L-30 * ? *)",
        "2026-01-01T00:00:00",
        ["2026-01-01T02:00:00Z", "2026-03-01T02:00:00Z", "2026-05-01T02:00:00Z"],
    ),
]


@pytest.mark.parametrize(("schedule", "after", "expected"), WRAPPED)
def test_wrapped_ranges_steps_and_l_minus_n(schedule: str, after: str, expected: list[str]) -> None:
    assert ids(window(schedule), after, len(expected)) == expected


def test_largest_steps_are_accepted() -> None:
    cron = parse_schedule("cron(*/59 */23 1/31 */12 ? *)")
    assert isinstance(cron, CronSchedule)
    assert (cron.minutes, cron.hours, cron.months) == ((0, 59), (0, 23), (1,))
    assert isinstance(parse_schedule("cron(0 2 ? * 1/7 *)"), CronSchedule)


# SSM refuses a maintenance window whose schedule fires more often than every 5 minutes
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/reference-cron-and-rate-expressions.html:
# rates faster than 5 minutes are not supported). rate() was held to it everywhere; cron now is
# too, in windows: the gap is measured between consecutive times, across midnight when two days
# in a row match.
TOO_FREQUENT = [
    ("cron(* * * * ? *)", "fires 1 minute apart"),
    ("cron(0/4 * * * ? *)", "fires 4 minutes apart"),
    ("cron(0,3 2 ? * TUE *)", "fires 3 minutes apart"),
    ("cron(0/30 0 2 ? * TUE *)", "fires 30 seconds apart"),
    ("cron(0 0/1 20-2 ? * MON-FRI *)", "fires 1 minute apart"),
    ("cron(58 23,0 ? * SAT,SUN *)", ""),  # 23:58 to 00:58: an hour, accepted
    ("cron(58,2 23,0 1,2 * ? *)", "fires 4 minutes apart"),  # 1st 23:58, 2nd 00:02
    ("cron(58,2 23,0 1,31 * ? *)", "fires 4 minutes apart"),  # 31st 23:58, next 1st 00:02
    ("cron(58,2 23,0 ? * MON *)", ""),  # Monday 23:58 and the next 00:02 are days apart
    ("cron(0/5 * * * ? *)", ""),
    ("*/4 * * * *", "fires 4 minutes apart"),
    ("*/5 * * * *", ""),
    ("rate(5 minutes)", ""),
    ("rate(4 minutes)", "faster than every 5 minutes"),
]


@pytest.mark.parametrize(("schedule", "message"), TOO_FREQUENT)
def test_window_schedules_fire_at_most_every_five_minutes(schedule: str, message: str) -> None:
    if not message:
        assert parse_window_schedule(schedule) == parse_schedule(schedule)
        return
    with pytest.raises(ValueError, match=r"at most every 5 minutes|faster than") as error:
        parse_window_schedule(schedule)
    assert message in str(error.value)


def test_other_schedules_may_fire_more_often() -> None:
    # A ComplianceReport's schedule is an EventBridge rule's at AWS, which has no 5-minute floor.
    cron = parse_schedule("cron(0/1 * * * ? *)")
    assert isinstance(cron, CronSchedule) and len(cron.minutes) == 60


# ---------------------------------------------------------------------------------------------
# describe


def test_describe() -> None:
    win = window(
        "cron(30 23 ? * TUE#3 *)",
        scheduleTimezone="Europe/Berlin",
        scheduleOffset=2,
        duration=4,
        cutoff=1,
        startDate="2026-01-01T00:00:00+01:00",
        enabled=False,
    )
    assert describe(win) == (
        "cron(30 23 ? * TUE#3 *) in Europe/Berlin, 2 day(s) after each match, open 4 h, "
        "no new tasks in the last 1 h, from 2025-12-31T23:00:00Z, disabled"
    )
    assert describe(window("at(2026-11-13T01:00:00)", scheduleTimezone="Asia/Tokyo", cutoff=0)) == (
        "at(2026-11-13T01:00:00) in UTC, open 3 h"
    )
