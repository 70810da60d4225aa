"""Stage: report — views. What each safety gate (docs/guardrails.md) says about each task or
rollout stage it guards after a pass, and since when it has blocked it: one value,
:class:`GateStanding`, read by the loop (``gate.blocked`` once a spell outlasts the gate's
``blockedThreshold``) and the metrics, so both say the same thing.

Pure: the snapshot, the pass's readings, the previous standings and the clock in, frozen values
out. Decides nothing (the planner does), no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.api.gates import Gate
from reconciler.api.snapshot import Snapshot
from reconciler.plan import GateReading


@dataclass(frozen=True, slots=True)
class GateStanding:
    gate: str
    scope: str
    """Whose gate it is: "task patch of window noon", "stage prod of rollout web"."""
    blocking: bool
    reason: str
    since: datetime | None
    """When the current blocking spell began (as this process saw it); None while open."""
    threshold_seconds: int
    blocked_seconds: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.scope, self.gate

    @property
    def overdue(self) -> bool:
        """Blocking for at least the gate's ``blockedThreshold``."""
        return self.blocking and self.blocked_seconds >= self.threshold_seconds

    def detail(self) -> dict[str, Any]:
        """The ``gate.blocked`` occurrence's detail (Kind.GATE_BLOCKED)."""
        since = self.since.isoformat().replace("+00:00", "Z") if self.since else None
        return {
            "gate": self.gate,
            "scope": self.scope,
            "since": since,
            "blockedSeconds": self.blocked_seconds,
            "reason": self.reason,
        }


def guarded(snapshot: Snapshot) -> list[tuple[str, Gate]]:
    """Every gate of ``snapshot`` with whose it is, window tasks' first, then rollout stages'."""
    tasks = [
        (f"task {task.name} of window {window.metadata.name}", gate)
        for window in snapshot.windows.values()
        for task in window.spec.tasks
        for gate in task.gates
    ]
    stages = [
        (f"stage {stage.name} of rollout {rollout.metadata.name}", gate)
        for rollout in snapshot.rollouts.values()
        for stage in rollout.spec.stages
        for gate in stage.gates
    ]
    return tasks + stages


def standings(
    snapshot: Snapshot | None,
    readings: Mapping[str, GateReading],
    previous: Iterable[GateStanding],
    now: datetime,
) -> tuple[GateStanding, ...]:
    """Each gate of each task and stage now; a spell that was blocking in ``previous`` goes on
    from its ``since``, one that opened (or a gate no longer there) ends."""
    began = {old.key: old.since for old in previous if old.since is not None}
    out = []
    for scope, gate in guarded(snapshot) if snapshot is not None else ():
        reading = readings.get(gate.key, GateReading(True, "not read this pass"))
        since = began.get((scope, gate.name), now) if reading.blocking else None
        seconds = int((now - since).total_seconds()) if since is not None else 0
        out.append(
            GateStanding(
                gate.name,
                scope,
                reading.blocking,
                reading.reason,
                since,
                gate.threshold_seconds,
                seconds,
            )
        )
    return tuple(out)
