"""Stage: loop, step ``record`` (one-off openings, ``patchctl patch-now``). A one-off opening is
IN_PROGRESS from its first job, and ends as the planner says (SUCCESS, FAILED, EXPIRED; see
``reconciler.plan``); a job of one that was cancelled or expired meanwhile never starts.

Reads and writes the store's one-off openings and announces their changes; may not write jobs'
records, nor touch the source or transports.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.api.oneoff import ACTIVE, OneOffStatus, checked_task
from reconciler.api.resources import WindowTask
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch import AgentFailed
from reconciler.loop.common import Clock, Emitter
from reconciler.plan import Action, Plan
from reconciler.report.notify.occurrences import Kind
from reconciler.state import StateBackend


def is_one_off(action: Action) -> bool:
    """Whether ``action`` is a job of a one-off opening (no window, the opening's id)."""
    return action.window is None and action.opening is not None


class OneOffOpenings:
    """The statuses of one-off openings, as their jobs start and the planner sees them end."""

    def __init__(self, store: StateBackend, clock: Clock, emit: Emitter) -> None:
        self.store, self.clock, self.emit = store, clock, emit

    def may_start(self, action: Action, now: datetime) -> bool:
        """A one-off job starts only while its opening is active and, until its first job has
        started, before its expiry: a cancel from another process stops what has not started."""
        record = self.store.one_off(action.opening or "")
        if record is None or record.status not in ACTIVE:
            return False
        return record.status is OneOffStatus.IN_PROGRESS or now < record.opening.expires_at

    def task_for(self, action: Action, snapshot: Snapshot) -> WindowTask | None:
        """The task a one-off job runs (the stored document's, with its hooks and health
        checks), where a window's job takes its task from the snapshot; None for other jobs.
        AgentFailed (the job fails) when its hooks are no longer the window task's."""
        record = self.store.one_off(action.opening or "") if is_one_off(action) else None
        if record is None:
            return None
        try:
            return checked_task(record.opening, snapshot)
        except ValueError as exc:
            raise AgentFailed("HooksRefused", f"{record.id}: {exc}") from None

    def started(self, opening: str) -> None:
        """Its first job makes the opening IN_PROGRESS."""
        self._change(opening, OneOffStatus.IN_PROGRESS, (OneOffStatus.PENDING,), "")

    def follow(self, plan: Plan | None) -> None:
        """Openings the planner saw end (or expire)."""
        for progress in plan.one_offs if plan else ():
            if progress.outcome is not None:
                self._change(progress.id, progress.outcome, ACTIVE, progress.reason)

    def _change(
        self,
        opening: str,
        status: OneOffStatus,
        only_from: frozenset[OneOffStatus] | tuple[OneOffStatus, ...],
        reason: str,
    ) -> None:
        now = self.clock()
        if not self.store.change_one_off(opening, status=status, now=now, only_from=only_from):
            return
        record = self.store.one_off(opening)
        fix = record.opening.emergency if record else None
        if fix is None:
            self.emit(Kind.PATCH_NOW_CHANGED, id=opening, status=str(status), reason=reason)
        else:
            assert record is not None  # an emergency fix is read from the record
            self.emit(
                Kind.EMERGENCY_CHANGED,
                id=opening,
                cve=fix.cve,
                status=str(status),
                reason=reason,
                instances=list(record.opening.targets.instances),
            )
