"""Stage: report — notifications. A progressive rollout's occurrences (docs/rollouts.md): what
changed between two consecutive views of it (:class:`reconciler.report.views.rollouts.
RolloutView`, one per pass): a cycle started (snapshot frozen), a stage started installing (a
promotion, with the planner's reason), a stage baked, the rollout halted or resumed, the cycle
completed. The loop keeps the previous view and emits what this returns, so the audit log,
events, metrics and Kubernetes Events hear of rollouts as of everything else.

Pure: two views in, occurrences' kinds and details out. No I/O, no clock. Without a previous
view (the first pass after a start) there is no transition to tell: the store holds the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from reconciler.report.notify.occurrences import Kind
from reconciler.report.views.rollouts import RolloutView, StageView
from reconciler.rollout import Verdict

Transition = tuple[Kind, dict[str, Any]]
"""An occurrence to emit: its kind and its JSON-ready ``detail``."""


def transitions(previous: RolloutView | None, current: RolloutView) -> tuple[Transition, ...]:
    """What happened to the rollout between ``previous`` and ``current``, in the order it
    happened (a cycle starts before its first stage installs; a stage bakes before the cycle
    completes)."""
    if previous is None:
        return ()
    return tuple(_changes(previous, current))


def _changes(previous: RolloutView, current: RolloutView) -> Iterator[Transition]:
    new_cycle = current.cycle != previous.cycle and current.digest is not None
    if new_cycle:
        yield Kind.ROLLOUT_CYCLE_STARTED, _detail(current)
    if current.halted is None and previous.halted is not None and not new_cycle:
        yield Kind.ROLLOUT_RESUMED, {**_detail(current), "previousReason": previous.halted}
    before = {stage.name: stage for stage in previous.stages}
    for stage in current.stages:
        was = None if new_cycle else before.get(stage.name)
        yield from _stage(current, was, stage)
    if current.halted is not None and (previous.halted is None or new_cycle):
        yield Kind.ROLLOUT_HALTED, {**_detail(current), "reason": current.halted}
    if current.complete and (new_cycle or not previous.complete):
        yield Kind.ROLLOUT_CYCLE_COMPLETED, _detail(current)


def _stage(rollout: RolloutView, was: StageView | None, stage: StageView) -> Iterator[Transition]:
    verdict = was.verdict if was is not None else None
    if stage.verdict is verdict:
        return
    if stage.verdict is Verdict.INSTALL:
        yield Kind.ROLLOUT_STAGE_INSTALLING, _stage_detail(rollout, stage)
    elif stage.verdict is Verdict.BAKED and verdict is not None:
        yield Kind.ROLLOUT_STAGE_BAKED, _stage_detail(rollout, stage)


def _detail(rollout: RolloutView) -> dict[str, Any]:
    snapshot = rollout.to_dict()["snapshot"] or {}
    return {
        "rollout": rollout.rollout,
        "cycle": rollout.cycle,
        "digest": snapshot.get("digest"),
        "frozenAt": snapshot.get("frozenAt"),
    }


def _stage_detail(rollout: RolloutView, stage: StageView) -> dict[str, Any]:
    return {
        **_detail(rollout),
        "stage": stage.name,
        "reason": stage.reason,
        "machines": stage.machines,
        "bakedSeconds": stage.baked_seconds,
    }
