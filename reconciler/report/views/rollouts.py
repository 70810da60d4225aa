"""Stage: report — views. What a progressive rollout looks like after a pass (docs/rollouts.md):
each stage's verdict and reason, its bake progress and failed machines, the cycle and its frozen
snapshot. One value, :class:`RolloutView`, read by every observer of rollouts (the occurrences
of :mod:`reconciler.report.notify.rollouts`, the metrics, the dashboard panel, the custom
resource's status), so they all say the same thing.

Pure: the Rollout, the planner's decision, the recorded state and the clock in, a frozen value
out. Decides nothing (the planner does), no I/O, no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.api.resources import Rollout, bake_seconds
from reconciler.rollout import (
    INSTALLED,
    RolloutDecision,
    RolloutRecord,
    Verdict,
    failed_machines,
    on_snapshot_since,
)


@dataclass(frozen=True, slots=True)
class StageView:
    name: str
    verdict: Verdict
    reason: str
    machines: int
    on_snapshot: int
    """Machines whose latest result in this cycle is the snapshot installed."""
    failed: int
    baked_seconds: int
    """Since the stage's last machine finished installing the snapshot; 0 before that."""
    bake_seconds: int
    """The stage's ``bakeTime``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "machines": self.machines,
            "onSnapshot": self.on_snapshot,
            "failedMachines": self.failed,
            "bakedSeconds": self.baked_seconds,
            "bakeSeconds": self.bake_seconds,
        }


@dataclass(frozen=True, slots=True)
class RolloutView:
    rollout: str
    cycle: int
    digest: str | None
    """The cycle's snapshot (``sha256:…``); None before the first freeze."""
    frozen_at: datetime | None
    halted: str | None
    """Why the rollout is halted (recorded, or decided this pass)."""
    stages: tuple[StageView, ...]

    @property
    def complete(self) -> bool:
        """The cycle is done: every stage baked the snapshot (the planner says Baked for all)."""
        return self.digest is not None and all(s.verdict is Verdict.BAKED for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (camelCase): the dashboard document's and the CR status' shape."""
        snapshot = None
        if self.digest is not None and self.frozen_at is not None:
            frozen = self.frozen_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            snapshot = {"digest": self.digest, "frozenAt": frozen}
        return {
            "rollout": self.rollout,
            "cycle": self.cycle,
            "snapshot": snapshot,
            "halted": self.halted,
            "stages": [stage.to_dict() for stage in self.stages],
        }


def view(
    rollout: Rollout, decision: RolloutDecision, record: RolloutRecord, now: datetime
) -> RolloutView:
    """The rollout as the planner decided it at ``now``, from its recorded state."""
    specs = {stage.name: stage for stage in rollout.spec.stages}
    stages = []
    for stage in decision.stages:
        since = on_snapshot_since(stage.members, record) if record.snapshot else None
        on = sum(1 for m in stage.members if _installed(m, record))
        stages.append(
            StageView(
                name=stage.stage,
                verdict=stage.verdict,
                reason=stage.reason,
                machines=len(stage.members),
                on_snapshot=on,
                failed=failed_machines(stage.members, record),
                baked_seconds=max(0, int((now - since).total_seconds())) if since else 0,
                bake_seconds=bake_seconds(specs[stage.stage].bake_time),
            )
        )
    snapshot = record.snapshot
    return RolloutView(
        rollout=decision.rollout,
        cycle=record.cycle,
        digest=snapshot.digest if snapshot else None,
        frozen_at=snapshot.frozen_at if snapshot else None,
        halted=record.halted or decision.halt,
        stages=tuple(stages),
    )


def _installed(instance: str, record: RolloutRecord) -> bool:
    result = record.results.get(instance)
    return result is not None and result.outcome is INSTALLED
