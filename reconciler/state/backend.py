"""Stage: state. :class:`StateBackend`, the state store as the loop, the controller, the CLI and
the reports use it: what every backend (SQLite's :class:`~reconciler.state.store.StateStore`
today, PostgreSQL's next, issue 16) must do alike. Callers type their store as this interface;
only the composition root (``reconciler/cli.py``) picks the implementation.

Only the interface: no I/O, no SQL. Imports the records it returns and ``reconciler.api``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from reconciler.api.enrolment import Listed, Provenance
from reconciler.api.enums import ExecutionStatus, JobStatus, Operation, ReportRunStatus
from reconciler.api.inventory import FirstSeenKey, Inventory
from reconciler.api.oneoff import OneOffOpening, OneOffStatus
from reconciler.rollout import MachineResult, RolloutRecord, RolloutSnapshot
from reconciler.state.oneoffs import OneOffRecord
from reconciler.state.records import (
    InstanceRecord,
    JobPhase,
    JobRecord,
    PatchStateRecord,
    ReportRunRecord,
    RevisionRecord,
    ScanRecord,
    WindowExecution,
)


class StateBackend(Protocol):
    """The observed-state store: scan history, jobs with idempotency keys, window executions,
    one-off openings, revisions, report runs and enrolment. Every method is safe to call from
    the threads of one process; writes are atomic; history is append-only in the database."""

    @property
    def path(self) -> Path:
        """The store's place on this machine: for SQLite its file; the loop keeps what lives
        beside it there (scheduled reports, the audit log, Git clones). A server-side store
        will be given such a local directory as well (issue 16: to be decided with the CLI)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...

    def record_scan(
        self,
        *,
        instance: str,
        operation: Operation,
        revision: str,
        baseline: str,
        baseline_hash: str,
        job_id: str | None,
        started_at: datetime,
        finished_at: datetime,
        inventory: dict[str, Any],
        evaluation: dict[str, Any],
    ) -> ScanRecord:
        """Append one scan or install, its per-patch states, and the instance's latest facts."""

    def first_seen(self, keys: Iterable[FirstSeenKey]) -> dict[FirstSeenKey, datetime]:
        """The recorded first-seen time of each of ``keys`` that has one (``record_scan`` writes
        them: the earliest scan of any instance that offered the version in that archive)."""

    def with_first_seen(self, inventory: Inventory, now: datetime | None) -> Inventory:
        """``inventory`` with each version's recorded first-seen time. A scan being recorded at
        ``now`` gives ``now`` to the offered versions no scan recorded yet (it records them);
        a reader (``now`` None) leaves them without one."""

    def latest_scan(self, instance: str) -> ScanRecord | None: ...

    def latest_scans(self) -> dict[str, ScanRecord]:
        """The newest scan (by ``finished_at``, then id) of every instance, in one query. The
        records are kept and shared between calls, so their documents are read-only (a change
        raises TypeError; ``copy.deepcopy`` gives a mutable copy)."""

    def scan_history(self, instance: str, limit: int = 100) -> list[ScanRecord]:
        """The instance's scans and installs, newest first."""

    def patch_states(self, scan_id: int) -> list[PatchStateRecord]:
        """The per-patch rows stored with one scan, in the evaluation's order."""

    def instance(self, instance: str) -> InstanceRecord | None: ...

    def instances(self) -> list[InstanceRecord]: ...

    def claim_job(
        self,
        *,
        key: str,
        instance: str,
        operation: Operation,
        window: str | None,
        task: str | None,
        opening: str | None,
        revision: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> JobRecord | None:
        """Insert a running job for ``key``, or return None when the key was ever claimed."""

    def finish_job(
        self, job_id: str, *, status: JobStatus, result: dict[str, Any], now: datetime
    ) -> JobRecord:
        """Record a running job's outcome; a finished job's outcome is never replaced."""

    def job(self, job_id: str) -> JobRecord | None: ...

    def job_by_key(self, key: str) -> JobRecord | None: ...

    def jobs(
        self,
        *,
        status: str | None = None,
        instance: str | None = None,
        window: str | None = None,
        task: str | None = None,
        opening: str | None = None,
    ) -> list[JobRecord]:
        """Jobs matching every given filter, oldest first."""

    def planning_jobs(
        self, *, openings: Iterable[tuple[str, str]], failed_scans_since: datetime
    ) -> list[JobRecord]:
        """The jobs the planner can still act on, oldest first (the order of :meth:`jobs`)."""

    def latest_jobs(self) -> dict[str, JobRecord]:
        """The newest job of each instance (by creation, as :meth:`jobs` orders them), without
        reading the history: one ``jobs_by_instance_time`` step per instance."""

    def install_jobs_since(self, instances: Iterable[str], since: datetime) -> list[JobRecord]:
        """The finished Install jobs of ``instances`` created at or after ``since``, oldest first
        (an index range per instance: the rollout step's read of a cycle's results)."""

    def claimed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` were ever claimed, checked in SQL (the UNIQUE index on ``key``)."""

    def abandon_running_jobs(self, now: datetime) -> list[JobRecord]:
        """Mark every running job abandoned and return them (oldest first)."""

    def record_phase(
        self, job_id: str, *, phase: str, boot_id: str, detail: dict[str, Any], now: datetime
    ) -> JobPhase:
        """Record that the running job ``job_id`` is now in ``phase`` (before it starts it)."""

    def rebooting_jobs(self) -> list[tuple[JobRecord, JobPhase]]:
        """Running jobs whose machine was asked to reboot, oldest first: what a restarted loop
        resumes (waits for the new boot id, rescans, finishes) instead of abandoning."""

    def record_one_off(self, opening: OneOffOpening, *, now: datetime) -> OneOffRecord:
        """Record a new one-off opening, PENDING; its id must be new."""

    def one_offs(
        self, statuses: Iterable[OneOffStatus] | None = None, limit: int = 100
    ) -> list[OneOffRecord]:
        """One-off openings (in ``statuses``, when given), newest first."""

    def one_off(self, opening_id: str) -> OneOffRecord | None: ...

    def change_one_off(
        self,
        opening_id: str,
        *,
        status: OneOffStatus,
        now: datetime,
        only_from: Iterable[OneOffStatus],
    ) -> bool:
        """Move a one-off opening to ``status`` when it is in one of ``only_from`` (checked and
        written in one transaction); whether it moved."""

    def one_off_jobs(self, opening_ids: Iterable[str]) -> list[JobRecord]:
        """Every job of these one-off openings, oldest first."""

    def record_window_execution(
        self, *, window: str, opening: str, status: ExecutionStatus, now: datetime
    ) -> None:
        """Set the status of one opening of a window; the first record's time stays its start."""

    def window_executions(self, window: str | None = None) -> list[WindowExecution]:
        """Every execution (of ``window``), oldest first."""

    def execution_statuses(
        self, openings: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], ExecutionStatus]:
        """The status of each given (window, opening) that has an execution: one primary-key
        lookup per pair, however long the history."""

    def record_revision(
        self, *, revision: str, accepted: bool, problems: list[str], now: datetime
    ) -> None:
        """Append the verdict on a revision, unless it repeats the newest one."""

    def last_good_revision(self) -> RevisionRecord | None:
        """The newest accepted revision: the one the loop acts on while newer ones are refused."""

    def revisions(self, limit: int = 50) -> list[RevisionRecord]:
        """Revisions seen, newest first."""

    def record_report_run(
        self,
        *,
        report: str,
        opening: str,
        destination: str,
        format: str,
        revision: str | None,
        status: ReportRunStatus,
        locations: list[str],
        error: str | None,
        started_at: datetime,
        finished_at: datetime,
    ) -> ReportRunRecord | None:
        """Append one export attempt; returns None when nothing was appended."""

    def report_runs(self, report: str | None = None, limit: int = 100) -> list[ReportRunRecord]:
        """Export attempts (of one report, or all), newest first."""

    def last_exported_openings(self) -> dict[str, str]:
        """Per report, the latest opening exported successfully."""

    def source_lists(self) -> dict[str, Listed]:
        """source -> its last good list (sources that never listed anything are left out)."""

    def save_source_list(self, source: str, listed: Listed) -> None:
        """Keep ``listed`` as ``source``'s last good list; its last error is cleared."""

    def record_source_failure(self, source: str, kind: str, error: str, now: datetime) -> None:
        """A refresh of ``source`` failed; its last good list (if any) is kept."""

    def record_enrolled(self, enrolled: Mapping[str, Provenance], now: datetime) -> None:
        """``enrolled`` (instance -> where from) are the generated instances now; any other
        instance recorded before is marked no longer listed (its history stays)."""

    def enrolled(self) -> dict[str, tuple[Provenance, bool]]:
        """instance -> (where it was generated from, whether its source still lists it)."""

    def source_failures(self) -> dict[str, tuple[str, datetime]]:
        """source -> (the last refresh's error, when), for sources whose last refresh failed."""

    # Progressive rollouts' recorded state (state.rollouts): append-only history, folded on read.

    def rollout_record(self, rollout: str) -> RolloutRecord:
        """What the rollout planner takes: the current cycle's snapshot, results and halt."""

    def record_rollout_cycle(
        self, rollout: str, snapshot: RolloutSnapshot, *, now: datetime
    ) -> None: ...

    def record_rollout_result(
        self, rollout: str, instance: str, result: MachineResult, *, now: datetime
    ) -> None: ...

    def record_rollout_halt(
        self, rollout: str, reason: str, *, now: datetime, resume_token: str | None = None
    ) -> None: ...

    def record_rollout_resume(
        self, rollout: str, *, now: datetime, by: dict[str, Any] | None = None
    ) -> None: ...

    def record_rollout_approval(
        self, rollout: str, stage: str, digest: str, *, now: datetime, by: dict[str, Any]
    ) -> None: ...

    def record_rollout_abort(self, rollout: str, *, now: datetime, by: dict[str, Any]) -> None: ...

    def rollouts_known(self) -> list[str]:
        """The rollouts the store has history of, sorted."""
