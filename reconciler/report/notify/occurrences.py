"""Stage: report — notifications. What happened, as one stream: the loop emits an ``Occurrence`` for
every action it takes and every state change it records; the audit log, events, metrics and
Kubernetes Events subscribe to that stream instead of each poking into the loop.

Values only: this module decides nothing and does no I/O. Sinks live beside it in ``notify``.
Every occurrence carries its provenance (the revision that was in force and who made it), so an
audit line or an event can always say which commit caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from reconciler.api.enums import JobStatus


class Kind(StrEnum):
    """What happened. ``transition`` below says which of these are state changes."""

    SNAPSHOT_ACCEPTED = "snapshot.accepted"
    """A new revision was validated and is now in force (once per revision)."""
    SNAPSHOT_REFUSED = "snapshot.refused"
    """A revision was refused whole; the last good one stays in force (once per revision)."""
    JOB_DISPATCHED = "job.dispatched"
    """A scan or install was claimed and sent to a machine."""
    JOB_FINISHED = "job.finished"
    """A job ended; ``detail.status`` is ``succeeded`` or ``failed``. A failed job that is a
    further attempt of the same machine's operation in the same opening names the first failed
    one in ``detail.retryOf`` (audited, not announced again)."""
    HOOK_RAN = "job.hook"
    """A window task's hook stage or health check ran for a job; ``detail.ok`` says whether it
    passed, with the end of its output (docs/hooks.md)."""
    PATCHES_INSTALLED = "patches.installed"
    """An install changed the machine; ``detail.patches`` lists what was installed."""
    REBOOT = "reboot"
    """An install needed a reboot; ``detail.performed`` says whether it happened."""
    COMPLIANCE_CHANGED = "compliance.changed"
    """An instance's compliance status differs from its previous scan (or it had none)."""
    WINDOW_EXECUTION_CHANGED = "window.execution"
    """A window opening's execution started (IN_PROGRESS) or ended (SUCCESS, FAILED)."""
    PATCH_NOW_REQUESTED = "patchnow.requested"
    """``patchctl patch-now`` recorded a one-off opening; ``author`` is who asked."""
    PATCH_NOW_CHANGED = "patchnow.status"
    """A one-off opening started, ended or was cancelled (``author``: who cancelled it)."""
    EMERGENCY_REQUESTED = "emergency.requested"
    """``patchctl emergency`` recorded an emergency CVE run (a one-off opening confined to the
    CVE's fixes): ``detail.id``, ``cve``, ``reason``, ``instances``, ``digest``, ``versions``."""
    EMERGENCY_CHANGED = "emergency.status"
    """An emergency CVE run started, ended or was cancelled: ``detail.id``, ``cve``,
    ``status``, ``reason``, ``instances`` (its patch-now ``patchnow.status`` is not emitted as
    well)."""
    ROLLOUT_OPERATOR = "rollout.operator"
    """A person approved a stage, resumed or aborted a rollout (``patchctl rollout``):
    ``detail.action``, ``rollout``, ``cycle``, ``snapshot``, ``stage``, ``reason``, ``osUser``."""
    INSTANCE_SOURCE_LISTED = "instancesource.listed"
    """An InstanceSource's list changed: ``detail.added``/``removed`` machines, ``hosts``,
    ``sourceKind``."""
    INSTANCE_SOURCE_FAILED = "instancesource.failed"
    """An InstanceSource could not be refreshed; ``detail.keptFrom`` says since when the list
    in use dates (null: nothing is enrolled from it)."""
    ROLLOUT_CYCLE_STARTED = "rollout.cycle.started"
    """A progressive rollout froze its snapshot (``detail.digest``, ``frozenAt``) and started
    cycle ``detail.cycle`` (docs/rollouts.md; every rollout kind carries ``rollout``, ``cycle``,
    ``digest`` and ``frozenAt``)."""
    ROLLOUT_STAGE_INSTALLING = "rollout.stage.installing"
    """A stage started installing the snapshot (a promotion): ``detail.stage``, ``reason``."""
    ROLLOUT_STAGE_BAKED = "rollout.stage.baked"
    """A stage ran the snapshot healthy for its bake time: ``detail.stage``, ``bakedSeconds``."""
    ROLLOUT_HALTED = "rollout.halted"
    """A rollout halted: ``detail.reason``; it stays halted until resumed."""
    ROLLOUT_RESUMED = "rollout.resumed"
    """A halted rollout was resumed: ``detail.previousReason``."""
    ROLLOUT_CYCLE_COMPLETED = "rollout.cycle.completed"
    """Every stage baked the cycle's snapshot."""
    CALENDAR_OVERRIDDEN = "calendar.overridden"
    """A person started a run although a change calendar guarding it is closed
    (``patch-now --override-calendar``): ``detail.run``, ``id``, ``calendars`` (each closed
    calendar's reason), ``reason`` (theirs), ``instances``, ``osUser``; ``author`` asked."""
    HALT_OVERRIDDEN = "rollout.halt.overridden"
    """A person started a run (patch now or emergency) on machines of a halted rollout
    (``--override-halt``): ``detail.run``, ``id``, ``rollouts`` (each halted rollout, its halt
    and the targets in it), ``reason`` (theirs), ``instances``, ``osUser``; ``author`` asked."""
    GATE_BLOCKED = "gate.blocked"
    """A gate has blocked a task or a rollout stage longer than its threshold (docs/guardrails.md):
    ``detail.gate``, ``scope`` (e.g. "task patch of window noon", "stage prod of rollout web"),
    ``since``, ``blockedSeconds`` and ``reason``; once per blocking spell."""


ROLLOUT_KINDS = frozenset(
    {
        Kind.ROLLOUT_CYCLE_STARTED,
        Kind.ROLLOUT_STAGE_INSTALLING,
        Kind.ROLLOUT_STAGE_BAKED,
        Kind.ROLLOUT_HALTED,
        Kind.ROLLOUT_RESUMED,
        Kind.ROLLOUT_CYCLE_COMPLETED,
    }
)


@dataclass(frozen=True)
class Occurrence:
    """One thing that happened, with its provenance."""

    kind: Kind
    time: datetime
    revision: str | None
    """The revision in force (for refusals: the refused revision)."""
    author: str = ""
    """Who made ``revision`` (a Git commit's author), empty when the source does not say."""
    instance: str | None = None
    job: str | None = None
    """The job's id in the state store."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific facts, JSON-ready (see ``Kind``)."""

    @property
    def transition(self) -> bool:
        """State changes worth telling people about (events): compliance and window execution
        changes, failed jobs, refused snapshots, rollouts' steps. Everything is audited; only
        these are events. A machine's failure is told once per opening: its first failed job,
        the one that fails the window's execution, not the loop's further attempts."""
        if self.kind is Kind.JOB_FINISHED:
            return self.detail.get("status") == JobStatus.FAILED and not self.detail.get("retryOf")
        return self.kind in _TRANSITIONS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the audit log's line and the payload events carry."""
        return {
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "kind": str(self.kind),
            "revision": self.revision,
            "author": self.author,
            "instance": self.instance,
            "job": self.job,
            "detail": dict(self.detail),
        }


_TRANSITIONS = frozenset(
    {
        Kind.SNAPSHOT_REFUSED,
        Kind.COMPLIANCE_CHANGED,
        Kind.WINDOW_EXECUTION_CHANGED,
        Kind.INSTANCE_SOURCE_FAILED,
        Kind.GATE_BLOCKED,
        Kind.EMERGENCY_REQUESTED,
        Kind.EMERGENCY_CHANGED,
        Kind.CALENDAR_OVERRIDDEN,
        Kind.HALT_OVERRIDDEN,
        *ROLLOUT_KINDS,
    }
)
ANNOUNCED = _TRANSITIONS | {Kind.JOB_FINISHED}
"""The kinds a transition can be (a job's finish only when it failed): what an announcing
sink may be asked to send."""

Observer = Callable[[Occurrence], None]
"""A subscriber. It must return quickly (queue slow work) and should not raise; the loop logs and
ignores an observer's exception, because reporting must never stop patching."""
