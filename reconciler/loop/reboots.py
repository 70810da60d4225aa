"""Stage: loop, inside a job's ``dispatch``: the reboot after an Install, done by the loop and
waited for (docs/reboots.md). For machines reached over SSH (whose agent never reboots on its
own under the loop): record the phase first (``rebooting``, the boot id before, the install's
outcome, when it began), ask the machine to reboot, keep the job running (its concurrency slot
stays taken) and poll until the boot id changes, reconnecting; connection failures while it is
down are expected. A restarted loop finds the job in its phase and resumes the wait.

Touches the transport (boot id, reboot) and the store's job phases; decides only whether this
install's reboot may start now (the task's rebootOption, the window's end, a CANCEL_TASK cutoff,
the task's and the machine's rollout stage's safety gates read again, and for an emergency
run the gates of its windows' Install tasks);
may not rescan, record scans or finish the job (the job runner does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler.api.gates import Gate
from reconciler.api.install import InstallResult, Reboot
from reconciler.api.oneoff import OneOffOpening, gating_task
from reconciler.api.resources import ManagedInstance
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch.base import AgentFailed, Rebooting, Transport
from reconciler.dispatch.gates import read_gates
from reconciler.loop.common import Clock, Log
from reconciler.plan import Action, gate_verdict, gates_guarding, rebooted_by_loop
from reconciler.rollout import stage_members
from reconciler.schedule import open_openings
from reconciler.state import JobPhase, StateBackend

REBOOTING = "rebooting"

Pause = Callable[[float], object]
"""Waits up to the given seconds between polls; a true answer means the loop is stopping (the
loop's ``wait``: its stop event's in production; tests pass one that moves their clock)."""


@dataclass(frozen=True)
class RebootSettings:
    """How long a machine may take to come back, and how often its boot id is read."""

    timeout: timedelta = timedelta(minutes=15)
    """From asking for the reboot to a new boot id; then the job FAILS (``RebootTimeout``)."""
    poll: float = 5.0
    """Seconds between two reads of the boot id."""


class RebootStopped(Exception):
    """The loop is stopping while a reboot is awaited: the job stays running in its phase, and
    the next start resumes it (it is neither finished nor abandoned)."""


@dataclass(frozen=True)
class RebootJob:
    """One install job's machine, as the reboot needs it."""

    job: str
    instance: ManagedInstance
    action: Action
    log: Log
    hooks: Mapping[str, Any] = field(default_factory=dict)
    """What the job's hooks and checks did before the reboot (JobHooks.kept): kept with the
    phase, so a job a restart resumes still reports them."""


@dataclass(frozen=True)
class Awaited:
    """What the loop did about a reboot: the ``reboot`` part of the job's install result."""

    required: bool
    performed: bool = False
    awaited: bool = False
    reason: str = ""
    boot_id_before: str | None = None
    boot_id_after: str | None = None
    started_at: datetime | None = None
    back_at: datetime | None = None

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "required": self.required,
            "performed": self.performed,
            "awaited": self.awaited,
        }
        if self.reason:
            out["reason"] = self.reason
        for key, value in (("bootIdBefore", self.boot_id_before), ("bootId", self.boot_id_after)):
            if value is not None:
                out[key] = value
        if self.started_at is not None and self.back_at is not None:
            out["seconds"] = round((self.back_at - self.started_at).total_seconds(), 3)
        return out


def reboot_only(action: Action) -> bool:
    """An Install action with nothing to install: the planner sends it for a machine whose only
    issue is a pending reboot (plan.py), so the job reboots it and nothing else."""
    return not action.pins


def window_refusal(snapshot: Snapshot | None, action: Action, now: datetime) -> str:
    """Why no reboot may start at ``now`` for the action's window opening (empty when one may):
    never after the opening's end, nor after its cutoff when the task is CANCEL_TASK (SSM stops
    such a task at the cutoff; CONTINUE_TASK lets it run to the end)."""
    window = snapshot.windows.get(action.window) if snapshot and action.window else None
    if window is None:
        return ""
    opening = next((o for o in open_openings(window.spec, now) if o.id == action.opening), None)
    name = window.metadata.name
    if opening is None:
        return f"window {name}'s opening {action.opening} has ended"
    task = next((t for t in window.spec.tasks if t.name == action.task), None)
    if task is not None and task.cutoff_behavior == "CANCEL_TASK" and now >= opening.cutoff_at:
        return (
            f"window {name} is past its cutoff ({opening.cutoff_at.isoformat()}) and task "
            f"{task.name} is CANCEL_TASK"
        )
    return ""


def gate_refusal(
    snapshot: Snapshot | None,
    action: Action,
    gates_from: str | None = None,
    emergency: bool = False,
) -> str:
    """Why no reboot may start now by the safety gates of the action's task and of the rollout
    stage its machine is in (docs/guardrails.md), read now; empty when every gate is open.
    ``gates_from``: a one-off opening's ``--gates-from`` task (docs/patch-now.md); one that is
    gone refuses (nothing says its gates are open). ``emergency``: the action is an emergency
    run's, whose installs the gates of the machine's windows' Install tasks guard too."""
    if snapshot is None:
        return ""
    guards = reboot_gates(snapshot, action)
    if emergency:
        guards += emergency_gates(snapshot, action.instance)
    if gates_from is not None:
        try:
            named, task = gating_task(snapshot, gates_from)
        except ValueError as exc:
            return f"--gates-from {gates_from}: {exc}"
        guards.append((f"task {task.name} of {named.partition('/')[0]}", task.gates))
    for whose, gates in guards:
        verdict = gate_verdict(gates, read_gates(gates), whose)
        if verdict:
            return verdict
    return ""


def reboot_gates(snapshot: Snapshot, action: Action) -> list[tuple[str, Sequence[Gate]]]:
    """The gates guarding the action's reboot, with whose they are: its window task's, and its
    machine's rollout stage's (a stage's gates guard its members' reboots as their installs)."""
    found: list[tuple[str, Sequence[Gate]]] = []
    window = snapshot.windows.get(action.window) if action.window else None
    tasks = window.spec.tasks if window is not None else []
    for task in (t for t in tasks if t.name == action.task and t.gates):
        found.append((f"task {task.name} of {action.window}", task.gates))
    for rollout in snapshot.rollouts.values():
        members = stage_members(rollout, snapshot)
        for stage, names in zip(rollout.spec.stages, members, strict=True):
            if action.instance in names and stage.gates:
                found.append(
                    (f"stage {stage.name} of rollout {rollout.metadata.name}", stage.gates)
                )
    return found


def emergency_gates(snapshot: Snapshot, name: str) -> list[tuple[str, Sequence[Gate]]]:
    """The gates of the Install tasks of the windows targeting the machine: an emergency run
    needs no window, yet they guard its installs (the planner's ``gates_guarding``), so they
    guard its reboots as well."""
    instance = snapshot.instances.get(name)
    if instance is None:
        return []
    groups = snapshot.groups_of(instance.metadata.labels)
    group = groups[0].metadata.name if groups else None
    return [(whose, (gate,)) for whose, gate in gates_guarding(snapshot, name, group, None)]


class Reboots:
    """Reboots machines after installs and waits for them; resumes the waits a restart left."""

    def __init__(
        self,
        store: StateBackend,
        clock: Clock,
        pause: Pause,
        settings: RebootSettings = RebootSettings(),
    ) -> None:
        self.store, self.clock, self.pause, self.settings = store, clock, pause, settings

    def after_install(
        self,
        job: RebootJob,
        snapshot: Snapshot | None,
        transport: Transport,
        outcome: InstallResult,
    ) -> InstallResult:
        """The install's outcome, its ``reboot`` part saying what the loop did: rebooted and
        awaited, left pending (why), or nothing (not needed, not ours to do)."""
        reboot = outcome.reboot
        if reboot is None or not reboot.required or reboot.performed:
            return outcome
        if job.action.reboot_option != "RebootIfNeeded" or not rebooted_by_loop(job.instance):
            return outcome
        needed = str(reboot.document().get("why") or job.action.reason)
        refusal = window_refusal(snapshot, job.action, self.clock())
        # Read the gates again: the install may have run for minutes since the pass read them.
        opening = self.one_off(job.action)
        gates_from = opening.gates_from if opening is not None else None
        emergency = opening is not None and opening.emergency is not None
        gated = "" if refusal else gate_refusal(snapshot, job.action, gates_from, emergency)
        if refusal or gated:
            later = "for the next opening" if refusal else "until the gate opens"
            why = f"reboot needed ({needed}); {refusal or gated}: left pending {later}"
            job.log.warning("reboot left pending", reason=why)
            return with_awaited(outcome, Awaited(True, reason=why))
        if not isinstance(transport, Rebooting):
            raise AgentFailed("RebootUnsupported", f"{transport!r} cannot reboot its machine")
        before = transport.boot_id()
        phase = self.store.record_phase(
            job.job,
            phase=REBOOTING,
            boot_id=before,
            detail={
                "install": outcome.document(),
                "reason": f"reboot needed ({needed})",
                "hooks": dict(job.hooks),
            },
            now=self.clock(),
        )
        job.log.info("rebooting", boot_id=before)
        _ask(transport, before)
        return with_awaited(outcome, self.wait(job, transport, phase, asked=True))

    def one_off(self, action: Action) -> OneOffOpening | None:
        """The one-off opening (patch now, emergency run) ``action`` is a job of, if any."""
        if action.window is not None or action.opening is None:
            return None
        record = self.store.one_off(action.opening)
        return record.opening if record is not None else None

    def wait(
        self, job: RebootJob, transport: Transport, phase: JobPhase, *, asked: bool
    ) -> Awaited:
        """Poll until the boot id differs from the phase's; RebootTimeout once the timeout has
        passed since the phase began, RebootStopped when the loop stops. ``asked``: this process
        asked for the reboot (else a restart cannot tell, and asks again, which a machine that
        booted since ignores)."""
        if not isinstance(transport, Rebooting):
            raise AgentFailed("RebootUnsupported", f"{transport!r} cannot reboot its machine")
        deadline = phase.since + self.settings.timeout
        last = "no answer yet"
        while True:
            try:
                current = transport.boot_id()
            except AgentFailed as exc:  # expected while it is down: refused, lost, no handshake
                last = f"{exc.code}: {exc.message}"
            else:
                if current != phase.boot_id:
                    return self._back(job, phase, current)
                if not asked:
                    asked = True
                    _ask(transport, phase.boot_id)
                last = f"boot id still {current}"
            if self.clock() >= deadline:
                raise AgentFailed(
                    "RebootTimeout",
                    f"{job.instance.metadata.name} did not come back with a new boot id within "
                    f"{self.settings.timeout.total_seconds():.0f}s of the reboot ({last})",
                    {"bootIdBefore": phase.boot_id, "rebootStartedAt": phase.since.isoformat()},
                )
            if self.pause(self.settings.poll):
                raise RebootStopped(job.job)

    def _back(self, job: RebootJob, phase: JobPhase, boot_id: str) -> Awaited:
        now = self.clock()
        job.log.info("rebooted", boot_id=boot_id, seconds=(now - phase.since).total_seconds())
        return Awaited(
            True,
            performed=True,
            awaited=True,
            reason=str(phase.detail.get("reason") or ""),
            boot_id_before=phase.boot_id,
            boot_id_after=boot_id,
            started_at=phase.since,
            back_at=now,
        )


def _ask(transport: Rebooting, boot_id: str) -> None:
    """Ask for the reboot; a connection that drops meanwhile may be the reboot itself (the
    wait tells), while a refusal (a directory root, no shutdown) fails the job now."""
    try:
        transport.reboot(boot_id)
    except AgentFailed as exc:
        if exc.code not in ("SshUnreachable", "Timeout"):
            raise


def with_awaited(outcome: InstallResult, awaited: Awaited) -> InstallResult:
    """``outcome`` with its ``reboot`` part saying what the loop did."""
    return outcome.model_copy(update={"reboot": Reboot.model_validate(awaited.document())})


def awaited(outcome: InstallResult) -> bool:
    """Whether the loop rebooted the machine after this install and saw it come back."""
    return outcome.reboot is not None and outcome.reboot.document().get("awaited") is True


def resumed_outcome(phase: JobPhase) -> InstallResult:
    """The install's outcome a job recorded with its phase, as it was before the reboot."""
    return InstallResult.model_validate(phase.detail.get("install") or {})


def resumed_hooks(phase: JobPhase) -> Mapping[str, Any]:
    """What the job's hooks had done when it recorded its phase (JobHooks.restore takes it)."""
    kept = phase.detail.get("hooks")
    return kept if isinstance(kept, Mapping) else {}


def not_back(outcome: InstallResult, exc: AgentFailed) -> InstallResult:
    """``outcome`` with its ``reboot`` part saying the reboot failed or was not seen (``exc``):
    the install stays recorded, its patches pending that reboot."""
    return with_awaited(outcome, Awaited(True, reason=f"{exc.code}: {exc.message}"))


def pending_reboot_outcome(why: str) -> InstallResult:
    """What a reboot-only job "installed": nothing, and the machine needs a reboot (``why``)."""
    reboot = {"required": True, "performed": False, "why": why}
    return InstallResult.model_validate({"changed": False, "patches": [], "reboot": reboot})
