"""Stage: loop, step ``plan``. Observed state for the pure planner: the latest scans and only the
jobs the planner can still act on, plus the jobs this process submitted but not yet claimed.

Reads the store; may not write it, nor touch the source or transports.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from reconciler.api.enums import ComplianceStatus, ExecutionStatus, JobStatus
from reconciler.api.oneoff import ACTIVE
from reconciler.loop.common import Clock, InForce
from reconciler.plan import (
    Action,
    GateReading,
    Observed,
    ObservedJob,
    ObservedScan,
    Plan,
    RolloutGate,
    Settings,
    history_scope,
    plan,
)
from reconciler.schedule.ical import CalendarReading
from reconciler.state import JobRecord, ScanRecord, StateBackend


class Observation:
    """Reads observed state and plans from it with the revision in force."""

    def __init__(
        self, store: StateBackend, in_force: InForce, settings: Settings, clock: Clock
    ) -> None:
        self.store, self.in_force, self.settings, self.clock = store, in_force, settings, clock
        self.submitted: dict[str, Action] = {}
        """Actions handed to a worker, by key: they hold their budget slot until claimed."""
        self.gates: Mapping[str, RolloutGate] = {}
        """Each rollout member's gate, as the pass's ``rollouts`` step decided it."""
        self.readings: Mapping[str, GateReading] = {}
        """Each safety gate's reading, by key, as the pass's ``gates`` step read it."""
        self.calendars: Mapping[str, CalendarReading] = {}
        """Each ChangeCalendar's periods, by name, as the pass's ``calendars`` step read them."""
        self._scans: dict[int, ObservedScan | None] = {}
        """The latest scans as the planner sees them, by scan id, as last observed."""

    def observe(self, now: datetime | None = None) -> Observed:
        """Observed state for a plan at ``now``: the latest scans, and only the jobs the planner
        can still act on (``plan.history_scope``), never the whole history: this runs after
        every job completion, and a fleet accumulates a year of jobs."""
        now = self.clock() if now is None else now
        scans = self._latest_scans()
        openings: tuple[tuple[str, str], ...] = ()
        failed_since = now - self.settings.retry_after
        if self.in_force.snapshot is not None:
            scope = history_scope(self.in_force.snapshot, now, self.settings)
            openings, failed_since = scope.openings, scope.failed_scans_since
        records = self.store.planning_jobs(openings=openings, failed_scans_since=failed_since)
        # Oldest first: an earlier request goes first. Their jobs, finished ones too, say which
        # targets each has reached (running ones are in both lists).
        one_offs = [record.opening for record in reversed(self.store.one_offs(ACTIVE))]
        keys = {job.key for job in records}
        records += [
            job for job in self.store.one_off_jobs(o.id for o in one_offs) if job.key not in keys
        ]
        jobs = [_observed_job(job) for job in records]
        # Submitted jobs hold their budget slot before their worker has claimed them in the store.
        pending = list(self.submitted.values())
        claimed = self.store.claimed_keys(a.key for a in pending) if pending else set()
        jobs += [
            ObservedJob(
                a.key, a.instance, a.operation, JobStatus.RUNNING, now, a.window, a.task, a.opening
            )
            for a in pending
            if a.key not in claimed
        ]
        return Observed(
            scans={k: v for k, v in scans.items() if v is not None},
            jobs=jobs,
            skipped=self._skipped(openings),
            one_offs=one_offs,
            gates=self.gates,
            readings=self.readings,
            calendars=self.calendars,
        )

    def _latest_scans(self) -> dict[str, ObservedScan | None]:
        """The latest scans, each converted once (a scan never changes; a new one has a new id)."""
        latest = self.store.latest_scans()
        known = self._scans
        self._scans = {
            record.id: known[record.id] if record.id in known else _observed_scan(record)
            for record in latest.values()
        }
        return {name: self._scans[record.id] for name, record in latest.items()}

    def _skipped(self, openings: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
        """The openings open now already recorded SKIPPED_OVERLAPPING (they stay skipped)."""
        statuses = self.store.execution_statuses(openings) if openings else {}
        return frozenset(
            pair
            for pair, status in statuses.items()
            if status == ExecutionStatus.SKIPPED_OVERLAPPING
        )

    def plan(self) -> Plan | None:
        snapshot, revision = self.in_force.snapshot, self.in_force.revision
        if snapshot is None or revision is None:
            return None
        now = self.clock()  # one reading: the jobs observed are the ones this plan looks at
        return plan(snapshot, revision, self.observe(now), now, self.settings)


def _observed_scan(record: ScanRecord) -> ObservedScan | None:
    os = record.operating_system
    if os is None:
        return None  # a damaged record: as if never scanned (rescan)
    return ObservedScan(
        finished_at=record.finished_at,
        operating_system=os,
        baseline_hash=record.baseline_hash,
        pins=record.pins,
        non_compliant=record.compliance_status == ComplianceStatus.NON_COMPLIANT,
        inventory=record.inventory,
        pending_reboot=record.count("installedPendingRebootCount"),
        held=record.held,
    )


def _observed_job(job: JobRecord) -> ObservedJob:
    return ObservedJob(
        key=job.key,
        instance=job.instance,
        operation=job.operation,
        status=job.status,
        created_at=job.created_at,
        window=job.window,
        task=job.task,
        opening=job.opening,
    )
