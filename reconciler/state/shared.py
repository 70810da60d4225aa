"""Stage: state. :class:`SqlStore`, the methods whose logic is the same on SQLite and
PostgreSQL, written once with ``?`` placeholders and run in the store's dialect
(:class:`~reconciler.state.dialect.Dialect`; docs/state.md, "Two backends, one store").

Touches only the connection a store gives it; decides nothing; imports no database driver (each
store brings its own connection) and of the project only the state package's own modules and the
rollout planner's value types.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

from reconciler.rollout import MachineResult, RolloutRecord, RolloutSnapshot
from reconciler.state import rollouts
from reconciler.state.dialect import Dialect
from reconciler.state.rollouts import RolloutEvent


class SqlStore:
    """The methods both stores share. A store names its :attr:`dialect` and gives ``_use`` (one
    connection for a read or a single write) and ``_write`` (a read-then-write in one
    transaction that holds the write lock)."""

    dialect: ClassVar[Dialect]

    def _use(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # Progressive rollouts' recorded state (state.rollouts): history, folded on read.

    def rollout_record(self, rollout: str) -> RolloutRecord:
        """What the rollout planner takes: the current cycle's snapshot, results and halt."""
        with self._use() as conn:
            return rollouts.record_of(conn, self.dialect, rollout)

    def record_rollout_cycle(
        self, rollout: str, snapshot: RolloutSnapshot, *, now: datetime
    ) -> None:
        """A new cycle with its frozen snapshot: earlier results and halts no longer count."""
        document = rollouts.snapshot_document(snapshot)
        self._append_rollout(rollout, RolloutEvent.CYCLE_STARTED, document, now)

    def record_rollout_result(
        self, rollout: str, instance: str, result: MachineResult, *, now: datetime
    ) -> None:
        document = rollouts.result_document(instance, result)
        self._append_rollout(rollout, RolloutEvent.MACHINE_RESULT, document, now)

    def record_rollout_halt(self, rollout: str, reason: str, *, now: datetime) -> None:
        self._append_rollout(rollout, RolloutEvent.HALTED, {"reason": reason}, now)

    def record_rollout_resume(self, rollout: str, *, now: datetime) -> None:
        self._append_rollout(rollout, RolloutEvent.RESUMED, {}, now)

    def _append_rollout(
        self, rollout: str, event: RolloutEvent, document: dict[str, Any], now: datetime
    ) -> None:
        with self._write() as conn:
            rollouts.append(conn, self.dialect, rollout, event, document, now)
