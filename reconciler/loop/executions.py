"""Stage: loop, step ``record`` (window executions). Each window opening that ran jobs has an
execution: IN_PROGRESS from its first job, FAILED when a job of it fails, SUCCESS once the
opening has ended without a failure (SSM reports a window execution's outcome when it closes).

Reads and writes the store's window executions and announces changes; may not touch jobs'
records, the source or transports.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from reconciler.api.enums import ExecutionStatus
from reconciler.loop.common import Clock, Emitter, InForce
from reconciler.report.notify.occurrences import Kind
from reconciler.state import StateStore


class WindowExecutions:
    """The executions of window openings, as the jobs of each opening start and finish."""

    def __init__(self, store: StateStore, in_force: InForce, clock: Clock, emit: Emitter) -> None:
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
        with self._lock:
            self._change(window, opening, ExecutionStatus.FAILED, self._known(window).get(opening))

    def close(self) -> None:
        """Executions whose opening has ended without a failed job end as SUCCESS."""
        snapshot = self.in_force.snapshot
        if snapshot is None:
            return
        now = self.clock()
        for execution in self.store.window_executions():
            window = snapshot.windows.get(execution["window"])
            if window is None or execution["status"] != ExecutionStatus.IN_PROGRESS:
                continue
            start = datetime.fromisoformat(execution["opening"].replace("Z", "+00:00"))
            if start + timedelta(hours=window.spec.duration) <= now:
                self._change(
                    execution["window"],
                    execution["opening"],
                    ExecutionStatus.SUCCESS,
                    ExecutionStatus.IN_PROGRESS,
                )

    def _known(self, window: str) -> dict[str, str]:
        return {e["opening"]: e["status"] for e in self.store.window_executions(window)}

    def _change(
        self, window: str, opening: str, status: ExecutionStatus, before: str | None
    ) -> None:
        self.store.record_window_execution(
            window=window, opening=opening, status=status, now=self.clock()
        )
        if status != before:
            self.emit(
                Kind.WINDOW_EXECUTION_CHANGED,
                window=window,
                opening=opening,
                status=status,
                previous=before,
            )
