"""Stage: loop, step ``record`` (window executions). Each window opening that ran jobs has an
execution, with SSM's statuses: IN_PROGRESS from its first job; FAILED when a job of it fails;
CANCELLED when its cutoff passed with jobs of a CANCEL_TASK task not started; TIMED_OUT when
a job of it was still running when the opening ended; SUCCESS once the opening has ended with
none of these. An opening that began while the window's previous execution still ran is
SKIPPED_OVERLAPPING and runs nothing (the planner decides both CANCELLED and SKIPPED_OVERLAPPING;
see ``reconciler.plan``).

Reads the store's jobs, reads and writes its window executions, and announces changes; may not
write jobs' records, nor touch the source or transports. Every change past IN_PROGRESS carries
the opening's job counts so far (``counts``: what a window summary in chat or mail shows).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from reconciler.api.enums import ExecutionStatus, JobStatus, Operation
from reconciler.api.resources import MaintenanceWindow
from reconciler.loop.common import Clock, Emitter, InForce
from reconciler.plan import Plan
from reconciler.report.notify.occurrences import Kind
from reconciler.state import JobRecord, StateBackend

# An execution shows the most serious thing that happened to it: a status only ever moves up
# this ladder (a job that fails after the cutoff cancelled the rest leaves it FAILED).
_RANK = {
    ExecutionStatus.IN_PROGRESS: 0,
    ExecutionStatus.CANCELLED: 1,
    ExecutionStatus.FAILED: 2,
    ExecutionStatus.TIMED_OUT: 3,
}


class WindowExecutions:
    """The executions of window openings, as the jobs of each opening start and finish."""

    def __init__(self, store: StateBackend, in_force: InForce, clock: Clock, emit: Emitter) -> None:
        self.store, self.in_force, self.clock, self.emit = store, in_force, clock, emit
        # Jobs of one opening run concurrently: its execution status is read, then written and
        # announced, one job at a time (else two jobs both announce IN_PROGRESS, or a job that
        # starts late turns a FAILED execution back to IN_PROGRESS).
        self._lock = threading.Lock()

    def started(self, window: str, opening: str) -> None:
        """An opening's first job makes its execution IN_PROGRESS (a FAILED one stays FAILED)."""
        with self._lock:
            if opening not in self._known(window):
                self._change(window, opening, ExecutionStatus.IN_PROGRESS, None)

    def failed(self, window: str, opening: str) -> None:
        """A failed job fails its opening's execution."""
        self._escalate(window, opening, ExecutionStatus.FAILED)

    def finished(self, window: str, opening: str, at: datetime) -> None:
        """A job that finished after its opening had ended times the execution out."""
        ends = self._end(window, opening)
        if ends is not None and at >= ends:
            self._escalate(window, opening, ExecutionStatus.TIMED_OUT)

    def follow(self, plan: Plan | None) -> None:
        """What the planner saw: openings skipped because an earlier execution still runs, and
        executions whose cutoff cancelled jobs not started."""
        for window, opening in plan.skipped if plan else ():
            with self._lock:
                if opening not in self._known(window):
                    self._change(window, opening, ExecutionStatus.SKIPPED_OVERLAPPING, None)
        for window, opening in plan.cancelled if plan else ():
            self._escalate(window, opening, ExecutionStatus.CANCELLED)

    def close(self) -> None:
        """Executions whose opening has ended: TIMED_OUT while a job of it still runs, else
        SUCCESS unless something worse happened to them."""
        for execution in self.store.window_executions():
            if execution["status"] != ExecutionStatus.IN_PROGRESS:
                continue
            ends = self._end(execution["window"], execution["opening"])
            if ends is None or ends > self.clock():
                continue
            window, opening = execution["window"], execution["opening"]
            if self.store.jobs(status=JobStatus.RUNNING, window=window, opening=opening):
                self._escalate(window, opening, ExecutionStatus.TIMED_OUT)
            else:
                self._change(window, opening, ExecutionStatus.SUCCESS, ExecutionStatus.IN_PROGRESS)

    def _end(self, window: str, opening: str) -> datetime | None:
        """When ``opening`` of ``window`` ends, by the revision in force (None: no such window)."""
        snapshot = self.in_force.snapshot
        found: MaintenanceWindow | None = snapshot.windows.get(window) if snapshot else None
        if found is None:
            return None
        start = datetime.fromisoformat(opening.replace("Z", "+00:00"))
        return start + timedelta(hours=found.spec.duration)

    def _escalate(self, window: str, opening: str, status: ExecutionStatus) -> None:
        """Move an execution up to ``status``; never down, never out of a final status, and
        never one that did not start (an opening that ran no job has no execution)."""
        with self._lock:
            before = self._known(window).get(opening)
            rank = _RANK.get(ExecutionStatus(before)) if before else None
            if rank is not None and rank < _RANK[status]:
                self._change(window, opening, status, before)

    def _known(self, window: str) -> dict[str, str]:
        return {e["opening"]: e["status"] for e in self.store.window_executions(window)}

    def _change(
        self, window: str, opening: str, status: ExecutionStatus, before: str | None
    ) -> None:
        self.store.record_window_execution(
            window=window, opening=opening, status=status, now=self.clock()
        )
        if status == before:
            return
        counted: dict[str, Any] = {}
        if status != ExecutionStatus.IN_PROGRESS:
            counted["counts"] = counts(self.store.jobs(window=window, opening=opening))
        self.emit(
            Kind.WINDOW_EXECUTION_CHANGED,
            window=window,
            opening=opening,
            status=status,
            previous=before,
            **counted,
        )


def counts(jobs: list[JobRecord]) -> dict[str, int]:
    """An opening's jobs so far: machines ``installed`` (Install jobs that succeeded), jobs
    ``failed``, installs whose reboot is ``pendingReboot`` (required, not performed) and jobs
    still ``running`` (a FAILED execution is announced at its first failure, while others run)."""
    installs = [j for j in jobs if j.operation == Operation.INSTALL]
    return {
        "jobs": len(jobs),
        "installed": sum(j.status == JobStatus.SUCCEEDED for j in installs),
        "failed": sum(j.status == JobStatus.FAILED for j in jobs),
        "pendingReboot": sum(_reboot_pending(j.result) for j in installs),
        "running": sum(j.status == JobStatus.RUNNING for j in jobs),
    }


def _reboot_pending(result: Any) -> bool:
    reboot = ((result or {}).get("install") or {}).get("reboot") or {}
    return bool(reboot.get("required")) and not reboot.get("performed")
