"""Stage: report — publishing. Scheduled ComplianceReports: which are due now, which instances each
covers, and the names its files get. Pure: no clock of its own (callers pass ``now``), no I/O; the
loop reads the store, builds the report, publishes it and records the run.

When a report is due (docs/reports.md, ComplianceReport):

- Its ``schedule`` and ``scheduleTimezone`` are read exactly as a MaintenanceWindow's (cron as
  wall-clock time in the zone, DST gaps skipped; ``rate`` from the epoch; ``at`` once, in UTC):
  the same ``reconciler.schedule`` code decides both.
- A report is due when its schedule has opened (at or before ``now``) later than the newest
  opening it was exported for. It is exported once for that opening; openings missed while the
  loop was down are not caught up one by one (a report shows the state at export time, so N
  copies of it would say nothing more): the newest one is exported, once.
- A report never exported yet is due for its most recent opening, so a newly committed report
  is exported on the next pass and then once per opening. Openings older than ``LOOKBACKS[-1]``
  are not looked for (an ``at(...)`` long past never fires).
- A failed export does not count: it is retried on every pass until it succeeds or a newer
  opening supersedes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from reconciler.api.resources import ComplianceReport, MaintenanceWindowSpec, ReportScope
from reconciler.api.snapshot import Snapshot
from reconciler.api.times import utc_stamp
from reconciler.schedule import openings

LOOKBACKS = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=8),
    timedelta(days=32),
    timedelta(days=367),
    timedelta(days=4 * 366),
)
"""How far back the most recent opening is looked for, shortest first: a frequent schedule is
found in the first hour without listing a year of openings; a 29 February cron within four years."""
_BATCH = 100


@dataclass(frozen=True)
class DueReport:
    """A report to export now, for one opening of its schedule."""

    report: ComplianceReport
    opening: str
    """The opening's id: its start in UTC, ``2026-11-28T06:00:00Z``."""


def reports_due(
    reports: Mapping[str, ComplianceReport], exported: Mapping[str, str], now: datetime
) -> list[DueReport]:
    """The reports due at ``now``, by name; ``exported`` maps a report to the newest opening it
    was exported for successfully."""
    due = []
    for name in sorted(reports):
        report = reports[name]
        latest = latest_opening(report, now)
        if latest is None:
            continue
        opening = utc_stamp(latest)
        # Opening ids are fixed-width UTC text: their text order is time order.
        if name in exported and exported[name] >= opening:
            continue
        due.append(DueReport(report, opening))
    return due


def latest_opening(report: ComplianceReport, now: datetime) -> datetime | None:
    """The start (UTC) of the report schedule's most recent opening at or before ``now``."""
    window = _schedule_as_window(report.spec.schedule, report.spec.schedule_timezone)
    now = now.astimezone(UTC)
    for lookback in LOOKBACKS:
        found = _latest_between(window, now - lookback, now)
        if found is not None:
            return found
    return None


def _latest_between(
    window: MaintenanceWindowSpec, after: datetime, now: datetime
) -> datetime | None:
    latest = None
    while True:
        batch = openings(window, after, limit=_BATCH)
        for opening in batch:
            if opening.start > now:
                return latest
            latest = opening.start
        if len(batch) < _BATCH:
            return latest
        after = batch[-1].start


@functools.lru_cache(maxsize=256)
def _schedule_as_window(schedule: str, timezone: str) -> MaintenanceWindowSpec:
    """The report's schedule as a window's, so that one implementation reads both. Only the
    schedule and its zone matter to when it opens; targets and tasks are placeholders."""
    return MaintenanceWindowSpec.model_validate(
        {
            "schedule": schedule,
            "scheduleTimezone": timezone,
            "duration": 1,
            "cutoff": 0,
            "targets": {"patchGroups": ["report"]},
            "tasks": [{"name": "export", "operation": "Scan"}],
        }
    )


def scope_instances(snapshot: Snapshot, scope: ReportScope) -> set[str]:
    """The instances of ``snapshot`` a report covers: members of one of ``scope.patchGroups``
    (when given) whose labels match ``scope.selector`` (when given); every instance when the
    scope is empty. Instances no longer in the snapshot are not reported."""
    chosen = set()
    for name, instance in snapshot.instances.items():
        labels = instance.metadata.labels
        if scope.patch_groups and not any(
            group.metadata.name in scope.patch_groups for group in snapshot.groups_of(labels)
        ):
            continue
        if scope.selector is not None and not scope.selector.matches(dict(labels)):
            continue
        chosen.add(name)
    return chosen


def report_files(report: str, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files of a scheduled export, named after their report (``weekly-compliance-summary-
    20261128T060000Z.csv``), so that several reports can share one destination."""
    return {f"{report}-{name}": content for name, content in files.items()}
