"""Stage: plan. The pure planner: desired state + observed state + now -> what to do now, and why
everything else waits.

Inputs are values (the validated snapshot, what the store observed, the clock); the output is a
:class:`Plan` of actions and waits. No I/O, no clock of its own, deterministic: the same inputs
give the same plan, in the same order, so a retry after a crash picks the same machines. May
import ``reconciler.api``, ``reconciler.evaluation`` and ``reconciler.schedule``; never the store,
the transports or the loop.

Rules (issue "reconcile loop" §4):
- **Scan** when an instance was never scanned, its scan is older than ``stale_after``, its
  effective baseline changed since the scan (content hash), a job was left in flight by a crash,
  or a window's Scan task opens and the instance was not scanned since that opening began.
- **Install** when the latest scan has approved patches MISSING (installable) or FAILED and an
  Install task of a window that accepts new tasks now targets the instance. The pins are exactly
  that scan's, so what was reviewed is what is installed.
- Per task and window opening, ``maxConcurrency`` caps running jobs and ``maxErrors`` halts the
  rollout once more jobs than allowed have failed; lower ``priority`` tasks finish first.
- No job starts at or after an opening's cutoff, whatever the task's ``cutoffBehavior``. An
  opening past its cutoff with installs or window scans not started by a ``CANCEL_TASK`` task
  is listed in ``Plan.cancelled`` (its execution becomes CANCELLED).
- One execution of a window at a time (SSM): the opening in force is the oldest open one that
  has jobs; an opening that began while an earlier one ran (open with jobs, or a job of it still
  running) is listed in ``Plan.skipped`` (SKIPPED_OVERLAPPING) and never runs anything.
- A window whose ChangeCalendar is closed (``calendar_verdict``, at ``now``, from the pass's
  readings; unread or unreadable is closed) starts no scan, install or reboot of its opening, and
  a rollout whose calendar is closed installs nothing on its members; running jobs finish.
- A one-off opening (``patchctl patch-now``) goes first: its targets get its task's jobs under
  its task's budgets, as a window's (an Install scans each target first unless it was scanned
  since the request); targets it has not reached wait for it. It is listed in
  ``Plan.one_offs`` with its outcome once nothing of it runs or can start, or EXPIRED when no
  job of it started before its ``expiresAt``.
- An emergency CVE run (a one-off opening with ``emergency``) installs only the frozen fixes of
  its CVE (:func:`emergency_step`), its targets in their rollout rings' order and only while
  the gates guarding them are open (:class:`_Rails`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from reconciler.api.enums import JobStatus, OperatingSystem, Operation
from reconciler.api.gates import Gate
from reconciler.api.inventory import Inventory
from reconciler.api.oneoff import (
    TASK_NAME,
    EmergencyFix,
    OneOffOpening,
    OneOffStatus,
    gating_task,
    targeted,
)
from reconciler.api.resources import (
    MaintenanceWindow,
    ManagedInstance,
    PatchBaseline,
    SshConnection,
    WindowTask,
)
from reconciler.api.snapshot import Snapshot, group_selects
from reconciler.evaluation.emergency import affected, cve_fixes, unreadable
from reconciler.evaluation.engine import evaluate
from reconciler.evaluation.holds import Hold, declared_holds
from reconciler.evaluation.pins import override_pins, pins_for
from reconciler.evaluation.resolve import Resolution, resolve
from reconciler.rollout import RolloutSnapshot, freeze, short_digest
from reconciler.schedule import Opening, open_openings, openings
from reconciler.schedule.ical import CalendarReading, reading_state

SCAN, INSTALL = Operation.SCAN, Operation.INSTALL  # the names the planner and its tests use


@dataclass(frozen=True, slots=True)
class ObservedScan:
    """What the store knows from an instance's latest scan."""

    finished_at: datetime
    operating_system: OperatingSystem
    baseline_hash: str
    pins: tuple[str, ...]  # name[:arch]=version of approved, installable MISSING/FAILED patches
    non_compliant: bool = False
    inventory: Mapping[str, Any] | None = None
    """The scan's inventory document, read only for tasks with an override."""
    pending_reboot: int = 0
    """Patches INSTALLED_PENDING_REBOOT: installed, waiting for the machine to boot."""
    held: tuple[str, ...] = ()
    """Packages whose updates a hold keeps off the machine (the evaluation's HELD list)."""

    def parsed_inventory(self) -> Inventory | None:
        """The inventory as a model; None when absent or unreadable (then nothing is pinned)."""
        if self.inventory is None:
            return None
        try:
            return Inventory.model_validate(self.inventory)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class ObservedJob:
    key: str
    instance: str
    operation: Operation
    status: JobStatus
    created_at: datetime
    window: str | None = None
    task: str | None = None
    opening: str | None = None


@dataclass(frozen=True, slots=True)
class RolloutGate:
    """Where an instance stands in a progressive rollout (docs/rollouts.md), as the loop's
    rollout step decided this pass: its stage installs the snapshot now, or waits, and why."""

    rollout: str
    stage: str
    installing: bool
    reason: str
    snapshot: RolloutSnapshot | None = None
    """The cycle's frozen snapshot: an installing member installs only its pins."""
    halted: bool = False
    """The rollout is halted (``reason`` says why) until it is resumed."""

    @property
    def digest(self) -> str:
        return self.snapshot.digest if self.snapshot is not None else ""


@dataclass(frozen=True, slots=True)
class GateReading:
    """What a safety gate (docs/guardrails.md) said this pass, as the loop read it once for
    every task and stage that names it: it blocks or not, and why (a gate that could not be
    read blocks, with the error as its reason)."""

    blocking: bool
    reason: str


def gate_verdict(gates: Sequence[Gate], readings: Mapping[str, GateReading], whose: str) -> str:
    """Why ``whose`` (a task or a stage) may not start anything now: the first of its gates
    that blocks, by name and reason; "" when every gate is open. A gate with no reading this
    pass blocks: nothing says it is open."""
    for gate in gates:
        reading = readings.get(gate.key, GateReading(True, "not read this pass"))
        if reading.blocking:
            return f"gate {gate.name} of {whose} blocks: {reading.reason}"
    return ""


@dataclass(frozen=True)
class Observed:
    scans: Mapping[str, ObservedScan] = field(default_factory=dict)
    jobs: Sequence[ObservedJob] = ()
    skipped: frozenset[tuple[str, str]] = frozenset()
    """(window, opening id) already recorded SKIPPED_OVERLAPPING: such an opening stays skipped
    even after the execution it overlapped has ended."""
    one_offs: Sequence[OneOffOpening] = ()
    """One-off openings PENDING or IN_PROGRESS, oldest first (``jobs`` holds all their jobs)."""
    gates: Mapping[str, RolloutGate] = field(default_factory=dict)
    """Instance -> its rollout stage's gate; instances in no rollout stage are not here."""
    readings: Mapping[str, GateReading] = field(default_factory=dict)
    """Safety gate key (:attr:`Gate.key`) -> its reading this pass."""
    calendars: Mapping[str, CalendarReading] = field(default_factory=dict)
    """ChangeCalendar name -> its periods as read this pass (docs/guardrails.md)."""


@dataclass(frozen=True)
class Settings:
    stale_after: timedelta = timedelta(days=1)
    max_scans: int = 10
    """Scans started per plan outside any window (they change nothing on the machine)."""
    retry_after: timedelta = timedelta(minutes=10)
    """After a failed scan, wait this long before trying that machine again."""


@dataclass(frozen=True, slots=True)
class Action:
    operation: Operation
    instance: str
    key: str  # idempotency key: never dispatched twice
    reason: str
    baseline: str
    baseline_hash: str
    window: str | None = None
    task: str | None = None
    opening: str | None = None
    pins: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    reboot_option: str = "RebootIfNeeded"


@dataclass(frozen=True, slots=True)
class Wait:
    instance: str
    reason: str
    until: datetime | None = None
    compliant: bool = False
    """Nothing to do because the instance is compliant (rather than held back)."""


@dataclass(frozen=True)
class Plan:
    revision: str
    now: datetime
    actions: tuple[Action, ...]
    waits: tuple[Wait, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """(window, opening id) of openings that began while an earlier execution of their window
    still ran: SSM's SKIPPED_OVERLAPPING."""
    cancelled: tuple[tuple[str, str], ...] = ()
    """(window, opening id) of openings past their cutoff with jobs of a CANCEL_TASK task not
    started: the execution is CANCELLED."""
    one_offs: tuple[OneOffProgress, ...] = ()
    """Where each active one-off opening stands, in ``Observed.one_offs``'s order."""
    queued: tuple[Action, ...] = ()
    """Installs held back only by their task's ``maxConcurrency``, and scans outside any window
    held back only by ``Settings.max_scans``, in the order they would start: each may start in
    the slot a job counted in ``running`` of the same (window, task, opening) frees by
    succeeding, without planning again (one slot freed, one taken, no error added: the budgets
    this plan checked still hold; a scan outside any window takes a scan's turn)."""
    running: frozenset[str] = frozenset()
    """Keys of the jobs this plan counted as running (holding their budget slots)."""
    gates: Mapping[str, RolloutGate] = field(default_factory=dict)
    """Each instance's rollout, stage and snapshot (``Observed.gates``), for plan and explain."""

    @property
    def idle(self) -> bool:
        """Nothing to start now (everything converged or waiting)."""
        return not self.actions

    @property
    def converged(self) -> bool:
        """Nothing to start, and every instance waits only because it is compliant."""
        return self.idle and all(w.compliant for w in self.waits)


def windows_targeting(
    snapshot: Snapshot, instance: ManagedInstance, group: str | None
) -> list[MaintenanceWindow]:
    """The enabled windows whose targets name the instance's patch group or match its labels,
    by name."""
    out = []
    for window in sorted(snapshot.windows.values(), key=lambda w: w.metadata.name):
        targets = window.spec.targets
        by_group = group is not None and group in targets.patch_groups
        by_label = targets.selector is not None and targets.selector.matches(
            dict(instance.metadata.labels)
        )
        if window.spec.enabled and (by_group or by_label):
            out.append(window)
    return out


def gates_guarding(
    snapshot: Snapshot, instance: str, group: str | None, stage: tuple[str, str] | None
) -> list[tuple[str, Gate]]:
    """The safety gates that guard the instance's installs, each with whose it is ("task T of
    W", "stage S of rollout R"): its targeting windows' Install tasks' and its rollout stage's
    (``stage``: rollout and stage name)."""
    found = [
        (f"task {task.name} of {window.metadata.name}", gate)
        for window in windows_targeting(snapshot, snapshot.instances[instance], group)
        for task in window.spec.tasks
        for gate in task.gates
    ]
    if stage is None or stage[0] not in snapshot.rollouts:
        return found
    rollout, name = snapshot.rollouts[stage[0]], stage[1]
    rings = [ring for ring in rollout.spec.stages if ring.name == name]
    return found + [(f"stage {name} of rollout {stage[0]}", g) for r in rings for g in r.gates]


def calendars_guarding(
    snapshot: Snapshot, instance: str, group: str | None, rollout: str | None
) -> list[tuple[str, str]]:
    """The ChangeCalendars that guard the instance, each with whose it is ("window W",
    "rollout R"): those of its targeting windows and of its rollout, by name, once each."""
    found = [
        (f"window {window.metadata.name}", name)
        for window in windows_targeting(snapshot, snapshot.instances[instance], group)
        for name in window.spec.change_calendars
    ]
    if rollout is not None and rollout in snapshot.rollouts:
        found += [
            (f"rollout {rollout}", n) for n in snapshot.rollouts[rollout].spec.change_calendars
        ]
    first: dict[str, str] = {}
    for whose, name in found:
        first.setdefault(name, whose)
    return [(whose, name) for name, whose in first.items()]


def calendar_verdict(
    snapshot: Snapshot,
    names: Iterable[str],
    readings: Mapping[str, CalendarReading],
    now: datetime,
) -> str:
    """Why nothing guarded by the calendars ``names`` may start at ``now``: the first closed
    one's reason ("change calendar 'prod' is closed: year-end freeze until …"); "" when every
    one is open. A calendar not read, or that cannot be read, is closed. The one check of
    scheduled openings, rollout stages and patch-now (``dispatch.calendars.calendar_refusal``)."""
    for name in names:
        calendar = snapshot.calendars.get(name)
        if calendar is None:
            return f"change calendar {name!r} is closed: it is not in this revision"
        state = reading_state(name, calendar, readings.get(name), now)
        if state.closed:
            return state.reason
    return ""


def rebooted_by_loop(instance: ManagedInstance) -> bool:
    """Whether the loop reboots this machine itself, and waits for it (docs/reboots.md): an SSH
    machine patched at its own ``/`` (a directory root is data on a host, never a reason to
    reboot that host; a Node's transport reboots it; this host is never rebooted)."""
    connection = instance.spec.connection
    return isinstance(connection, SshConnection) and connection.root in (None, "/")


def baseline_digest(baseline: PatchBaseline) -> str:
    """Content hash of a baseline's spec: a change of approvals changes it, a rename does not."""
    canonical = json.dumps(baseline.spec.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def snapshot_digest(pins: Iterable[str], baseline_hash: str) -> str:
    """Identity of an install snapshot: the exact pins under one baseline."""
    text = baseline_hash + "\n" + "\n".join(sorted(pins))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HistoryScope:
    """The part of the job history a plan at ``now`` can look at; older jobs change nothing.

    A plan over the jobs below equals a plan over the whole history (``test_loop_history``):
    - every ``running`` job (machines busy, ``maxConcurrency``, priorities, overlaps);
    - every job of a window opening open now (all of them when openings overlap), ``openings``
      as (window, opening id): the idempotency keys the planner checks, the ``maxErrors``
      counts and the openings that ran jobs (overlaps) are all of such openings (the loop
      claims a window job under a key naming its window and opening);
    - ``failed`` Scans created after ``failed_scans_since``: an older failure no longer holds a
      machine back (``retry_after``);
    - ``abandoned`` jobs created at or after their instance's latest scan (rescan after a crash).
    """

    openings: tuple[tuple[str, str], ...]
    failed_scans_since: datetime


def history_scope(
    snapshot: Snapshot, now: datetime, settings: Settings = Settings()
) -> HistoryScope:
    """Which jobs :func:`plan` needs at ``now`` (see :class:`HistoryScope`)."""
    current = (
        (name, opening.id)
        for name, window in sorted(snapshot.windows.items())
        for opening in open_openings(window.spec, now)
    )
    return HistoryScope(tuple(current), now - settings.retry_after)


def plan(
    snapshot: Snapshot,
    revision: str,
    observed: Observed,
    now: datetime,
    settings: Settings = Settings(),
) -> Plan:
    """Everything that should start now, and why each other instance waits."""
    state = _State(snapshot, observed, now, settings)
    progress = tuple(_OneOffs(state).plan(opening) for opening in observed.one_offs)
    for name in sorted(snapshot.instances):
        if name not in state.one_off_held:
            state.consider(name)
    for window in snapshot.windows.values():
        state.opening(window)  # a skipped opening is reported even when nothing targets it
    return Plan(
        revision,
        now,
        tuple(state.actions),
        tuple(state.waits),
        tuple(sorted(state.skipped)),
        tuple(sorted(state.cancelled)),
        progress,
        tuple(state.queued),
        frozenset(job.key for job in state.running_jobs),
        observed.gates,
    )


class _State:
    """One planning pass: accumulates actions while tracking budgets already consumed."""

    def __init__(
        self, snapshot: Snapshot, observed: Observed, now: datetime, settings: Settings
    ) -> None:
        self.snapshot, self.observed, self.now, self.settings = snapshot, observed, now, settings
        self.actions: list[Action] = []
        self.waits: list[Wait] = []
        self.queued: list[Action] = []
        self.keys = {job.key for job in observed.jobs}
        self.running = {job.instance for job in observed.jobs if job.status == JobStatus.RUNNING}
        self.scans_planned = 0
        self.budget = _Budgets(observed.jobs)
        self.jobs_of: dict[str, list[ObservedJob]] = {}
        for job in observed.jobs:
            self.jobs_of.setdefault(job.instance, []).append(job)
        self.running_jobs = [job for job in observed.jobs if job.status == JobStatus.RUNNING]
        self.target_counts: dict[str, int] = {}
        # Per-pass memos: windows, baselines and label sets are shared by many instances.
        self.openings: dict[str, Opening | None] = {}
        self.skipped: set[tuple[str, str]] = set()
        self.cancelled: set[tuple[str, str]] = set()
        self.overlapped: dict[str, str] = {}
        """window -> why its openings open now are all skipped."""
        self.digests: dict[str, str] = {}
        self.windows_for: dict[
            tuple[str | None, frozenset[tuple[str, str]]], list[MaintenanceWindow]
        ] = {}
        self.one_off_held: set[str] = set()
        """Instances a one-off opening started a job on or holds for its next one."""
        self.resolutions: dict[tuple[frozenset[tuple[str, str]], OperatingSystem], Resolution] = {}
        self.tasks_open: dict[
            tuple[str | None, frozenset[tuple[str, str]], Operation],
            tuple[tuple[MaintenanceWindow, WindowTask, Opening], ...],
        ] = {}
        self.groups_named: dict[frozenset[tuple[str, str]], frozenset[str]] = {}
        self.calendar_verdicts: dict[tuple[str, ...], str] = {}

    def resolve(self, instance: ManagedInstance, os: OperatingSystem) -> Resolution:
        """``evaluation.resolve`` once per label set and OS: a fleet shares a few of each, and
        resolving matches every group's selector."""
        key = (frozenset(instance.metadata.labels.items()), os)
        if key not in self.resolutions:
            self.resolutions[key] = resolve(self.snapshot, instance.metadata.labels, os)
        return self.resolutions[key]

    def consider(self, name: str) -> None:
        instance = self.snapshot.instances[name]
        if name in self.running:
            self.wait(name, "a job is running on it")
            return
        scan = self.observed.scans.get(name)
        failed = self.recent_failure(name, scan)
        if failed is not None:
            self.wait(
                name,
                f"its last scan failed ({failed.key}); retrying after "
                f"{(failed.created_at + self.settings.retry_after).isoformat()}",
                failed.created_at + self.settings.retry_after,
            )
            return
        if scan is None:
            self.scan(name, "never scanned", "", "")
            return
        resolution = self.resolve(instance, scan.operating_system)
        baseline = resolution.baseline
        if baseline is None:
            self.wait(name, f"no baseline: {resolution.baseline_reason}")
            return
        digest = self.digest(baseline)
        group = resolution.group.metadata.name if resolution.group else None
        why = self.rescan_reason(name, scan, digest)
        if why:
            self.scan(name, why, baseline.metadata.name, digest)
            return
        if self.window_scan(name, instance, group, scan, baseline, digest):
            return
        if not scan.pins and not self.overriding_tasks(instance, group):
            if self.reboot(name, group, scan, baseline):
                return
            why = (
                "compliant: no approved patch is missing"
                if not scan.non_compliant
                else "nothing installable: the remaining violations need a reboot or a decision"
            )
            self.wait(name, why + _held_note(scan), compliant=not scan.non_compliant)
            return
        gated = self.gated(name, scan, baseline)
        if gated is not None:
            self.install(name, instance, group, gated, baseline, digest)

    def gated(self, name: str, scan: ObservedScan, baseline: PatchBaseline) -> ObservedScan | None:
        """The scan whose pins ``name`` may install: all of them outside a rollout; inside one,
        only while its stage installs, and only the pins the cycle's snapshot holds for its
        baseline (a version approved after the freeze waits for the next cycle). None: it waits."""
        gate = self.observed.gates.get(name)
        if gate is None:
            return scan
        if not gate.installing or gate.snapshot is None:
            self.wait(name, f"rollout {gate.rollout}: {gate.reason}")
            return None
        held, later = gate.snapshot.confine(
            baseline.metadata.name, scan.pins, scan.parsed_inventory
        )
        blocked = self.calendar_verdict(self.rollout_calendars(gate.rollout))
        blocked = blocked or self.stage_gate_verdict(gate)
        if blocked:
            self.wait(name, f"rollout {gate.rollout}: {blocked}")
            return None
        if not held:
            self.wait(
                name,
                f"rollout {gate.rollout}: stage {gate.stage} is on snapshot {gate.digest[:19]}; "
                f"{len(later)} version(s) approved after it wait for the next cycle",
            )
            return None
        return replace(scan, pins=held)

    def rollout_calendars(self, rollout: str) -> list[str]:
        found = self.snapshot.rollouts.get(rollout)
        return found.spec.change_calendars if found is not None else []

    def calendar_verdict(self, names: Sequence[str]) -> str:
        """Why ``names``' calendars let nothing start now (once per calendar set and pass)."""
        key = tuple(names)
        if key not in self.calendar_verdicts:
            self.calendar_verdicts[key] = calendar_verdict(
                self.snapshot, names, self.observed.calendars, self.now
            )
        return self.calendar_verdicts[key]

    def stage_gate_verdict(self, gate: RolloutGate) -> str:
        """Why the rollout stage ``gate`` names may not install now: one of its safety gates
        blocks ("" when none does)."""
        rollout = self.snapshot.rollouts.get(gate.rollout)
        stages = [s for s in rollout.spec.stages if s.name == gate.stage] if rollout else []
        gates = stages[0].gates if stages else []
        return gate_verdict(gates, self.observed.readings, f"stage {gate.stage}")

    # -- scans --------------------------------------------------------------------------------

    def recent_failure(self, name: str, scan: ObservedScan | None) -> ObservedJob | None:
        """The instance's latest failed scan job, while it is newer than its last good scan and
        younger than ``retry_after`` (so an unreachable machine is not hammered)."""
        failures = [
            j
            for j in self.jobs_of.get(name, ())
            if j.operation == SCAN
            and j.status == JobStatus.FAILED
            and (scan is None or j.created_at > scan.finished_at)
        ]
        if not failures:
            return None
        latest = max(failures, key=lambda j: j.created_at)
        return latest if self.now - latest.created_at < self.settings.retry_after else None

    def rescan_reason(self, name: str, scan: ObservedScan, digest: str) -> str:
        if scan.baseline_hash != digest:
            return "its baseline changed since the last scan"
        if self.now - scan.finished_at > self.settings.stale_after:
            return f"last scan is older than {self.settings.stale_after}"
        left = [
            j
            for j in self.jobs_of.get(name, ())
            if j.status == JobStatus.ABANDONED and j.created_at >= scan.finished_at
        ]
        if left:
            return f"job {left[-1].key} was left in flight; rescan to learn what happened"
        return ""

    def scan(
        self,
        name: str,
        reason: str,
        baseline: str,
        digest: str,
        *,
        window: str | None = None,
        task: str | None = None,
        opening: str | None = None,
    ) -> None:
        key = (
            f"{name}:Scan:{window}:{opening}"
            if window
            else f"{name}:Scan:{digest}:{self.now.isoformat()}"
        )
        action = Action(SCAN, name, key, reason, baseline, digest, window, task, opening)
        if window is None and self.scans_planned >= self.settings.max_scans:
            self.wait(name, f"needs a scan ({reason}); other scans go first")
            # Queued as a window's install is: a scan of this plan that ends frees its turn.
            self.queued.append(action)
            return
        self.scans_planned += window is None
        self.actions.append(action)

    def window_scan(
        self,
        name: str,
        instance: ManagedInstance,
        group: str | None,
        scan: ObservedScan,
        baseline: PatchBaseline,
        digest: str,
    ) -> bool:
        for window, task, opening in self.open_tasks(instance, group, SCAN):
            key = f"{name}:Scan:{window.metadata.name}:{opening.id}"
            if scan.finished_at >= opening.start or key in self.keys:
                continue
            if self.calendar_verdict(window.spec.change_calendars):
                continue  # the install path says why the instance waits
            if not self.budget.allows(window, task, opening, self.targets(window)):
                continue
            self.budget.take(window, task, opening)
            self.actions.append(
                Action(
                    SCAN,
                    name,
                    key,
                    f"{task.name} of window {window.metadata.name}",
                    baseline.metadata.name,
                    digest,
                    window.metadata.name,
                    task.name,
                    opening.id,
                )
            )
            return True
        self.scans_cut_off(name, instance, group, scan)
        return False

    def scans_cut_off(
        self, name: str, instance: ManagedInstance, group: str | None, scan: ObservedScan
    ) -> None:
        """Window scans of ``name`` that the cutoff kept from starting in their opening."""
        for window in self.targeting(instance, group):
            opening = self.opening(window)
            if opening is None or opening.accepts_new_tasks(self.now):
                continue
            if scan.finished_at < opening.start:
                key = f"{name}:Scan:{window.metadata.name}:{opening.id}"
                self.cut_off(window, opening, key, SCAN)

    # -- installs -----------------------------------------------------------------------------

    def install(
        self,
        name: str,
        instance: ManagedInstance,
        group: str | None,
        scan: ObservedScan,
        baseline: PatchBaseline,
        digest: str,
    ) -> None:
        candidates = self.open_tasks(instance, group, INSTALL)
        if not candidates:
            # The key a cut-off install of the baseline's approvals would have had.
            self.wait_for_window(name, instance, group, snapshot_digest(scan.pins, digest))
            return
        reasons: list[str] = []
        queued: Action | None = None  # the first task whose maxConcurrency alone holds it back
        for window, task, opening in candidates:
            chosen = self.task_install(task, scan, baseline, instance)
            if not chosen.pins:
                reasons.append(f"task {task.name} of {window.metadata.name}: {chosen.nothing}")
                continue
            snapshot = snapshot_digest(chosen.pins, self.digest(chosen.baseline) + chosen.salt)
            key = f"{name}:Install:{snapshot}:{window.metadata.name}:{opening.id}"
            if key in self.keys:
                reasons.append(
                    f"this snapshot was already dispatched in window {window.metadata.name} "
                    f"(opening {opening.id}); waiting for the next opening"
                )
                continue
            if not self.priority_turn(window, task, opening):
                reasons.append(
                    f"task {task.name} waits for lower-priority tasks of {window.metadata.name}"
                )
                continue
            blocked = self.gate_verdict(window, task)
            if blocked:
                reasons.append(blocked)
                continue
            action = _install_action(name, key, window, task, opening, chosen, self.digest)
            action = replace(action, reason=action.reason + _held_note(scan))
            verdict = self.budget.verdict(window, task, opening, self.targets(window))
            if verdict:
                reasons.append(verdict)
                if queued is None and not self.budget.halted(
                    window, task, opening, self.targets(window)
                ):
                    queued = action
                continue
            self.budget.take(window, task, opening)
            self.actions.append(action)
            return
        self.queued += [queued] if queued else []
        self.wait(name, "; ".join(reasons))

    def reboot(
        self, name: str, group: str | None, scan: ObservedScan, baseline: PatchBaseline
    ) -> bool:
        """A machine whose only work is a pending reboot is rebooted by an open Install task
        under RebootIfNeeded (SSM does), once per opening: an Install action with nothing to
        install. Only machines the loop reboots (:func:`rebooted_by_loop`)."""
        instance = self.snapshot.instances[name]
        if not scan.pending_reboot or not rebooted_by_loop(instance):
            return False
        blocked = ""
        for window, task, opening in self.open_tasks(instance, group, INSTALL):
            key = f"{name}:Reboot:{window.metadata.name}:{opening.id}"
            if (
                task.reboot_option != "RebootIfNeeded"
                or key in self.keys
                or not self.priority_turn(window, task, opening)
                or not self.budget.allows(window, task, opening, self.targets(window))
            ):
                continue
            why = self.gate_verdict(window, task)
            if why:
                blocked = blocked or why
                continue
            self.budget.take(window, task, opening)
            reason = (
                f"reboot pending: {scan.pending_reboot} patch(es) installed pending reboot; "
                f"{task.name} of window {window.metadata.name} is open (RebootIfNeeded)"
            )
            self.actions.append(
                Action(
                    INSTALL,
                    name,
                    key,
                    reason,
                    baseline.metadata.name,
                    self.digest(baseline),
                    window.metadata.name,
                    task.name,
                    opening.id,
                    reboot_option=str(task.reboot_option),
                )
            )
            return True
        if blocked:
            self.wait(name, f"reboot pending; {blocked}")
        return bool(blocked)

    def gate_verdict(self, window: MaintenanceWindow, task: WindowTask) -> str:
        """Why ``task`` of ``window`` starts nothing now: a closed change calendar of the
        window, else a blocking gate of the task ("" when neither)."""
        closed = self.calendar_verdict(window.spec.change_calendars)
        if closed:
            return f"window {window.metadata.name}: {closed}"
        whose = f"task {task.name} of {window.metadata.name}"
        return gate_verdict(task.gates, self.observed.readings, whose)

    def overriding_tasks(self, instance: ManagedInstance, group: str | None) -> bool:
        """Whether an open Install task installs something other than the baseline's approvals
        (SSM's InstallOverrideList or BaselineOverride): it may have work on a compliant machine."""
        return any(
            task.install_override_list is not None or task.baseline_override is not None
            for _, task, _ in self.open_tasks(instance, group, INSTALL)
        )

    def task_install(
        self,
        task: WindowTask,
        scan: ObservedScan,
        baseline: PatchBaseline,
        instance: ManagedInstance,
    ) -> _TaskInstall:
        """What ``task`` installs on the scanned machine: the approved missing patches of its
        baseline, of the task's baselineOverride (for machines running that baseline's OS), or
        the newest updates of the packages its installOverrideList names."""
        override = self.snapshot.baseline(task.baseline_override or "")
        if task.install_override_list is None and (
            override is None or override.spec.operating_system is not scan.operating_system
        ):
            return _TaskInstall(scan.pins, baseline, "", "no approved patch is missing")
        inventory = scan.parsed_inventory()
        holds = declared_holds(self.resolve(instance, scan.operating_system).group, instance)
        if task.install_override_list is not None:
            ids = task.install_override_list
            pins = override_pins(ids, inventory, holds) if inventory else ()
            nothing = "its installOverrideList names no package with an update"
            return _TaskInstall(pins, baseline, "\n".join(ids), nothing)
        assert override is not None
        pins = (
            pins_for(evaluate(override, inventory, self.now, holds=holds), inventory.facts.arch)
            if inventory
            else ()
        )
        nothing = f"no patch approved by its baselineOverride {override.metadata.name} is missing"
        return _TaskInstall(pins, override, "", nothing)

    def wait_for_window(
        self, name: str, instance: ManagedInstance, group: str | None, snapshot: str
    ) -> None:
        upcoming: list[tuple[Opening, MaintenanceWindow]] = []
        closing: list[str] = []
        for window in self.targeting(instance, group):
            if not any(t.operation == INSTALL for t in window.spec.tasks):
                continue
            now_open = self.opening(window)
            if now_open is not None and not now_open.accepts_new_tasks(self.now):
                key = f"{name}:Install:{snapshot}:{window.metadata.name}:{now_open.id}"
                self.cut_off(window, now_open, key, INSTALL)
                closing.append(
                    f"window {window.metadata.name} is past its cutoff "
                    f"({now_open.cutoff_at.isoformat()})"
                )
            if window.metadata.name in self.overlapped:
                closing.append(self.overlapped[window.metadata.name])
            nxt = openings(window.spec, self.now, limit=1)
            if nxt:
                upcoming.append((nxt[0], window))
        if not upcoming and not closing:
            self.wait(
                name,
                "approved patches missing, but no enabled window with an Install task targets it",
            )
            return
        if upcoming:
            opening, window = min(upcoming, key=lambda pair: (pair[0].start, pair[1].metadata.name))
            text = f"window {window.metadata.name} closed until {opening.start.isoformat()}"
            self.wait(name, "; ".join([*closing, text]), opening.start)
        else:
            self.wait(name, "; ".join(closing))

    # -- windows and budgets ------------------------------------------------------------------

    def digest(self, baseline: PatchBaseline) -> str:
        name = baseline.metadata.name
        if name not in self.digests:
            self.digests[name] = baseline_digest(baseline)
        return self.digests[name]

    def cut_off(
        self, window: MaintenanceWindow, opening: Opening, key: str, operation: Operation
    ) -> None:
        """The job ``key`` was not started before the cutoff: with CANCEL_TASK, SSM cancels what
        has not started, so the opening's execution is CANCELLED."""
        if key not in self.keys and any(
            t.operation == operation and t.cutoff_behavior == "CANCEL_TASK"
            for t in window.spec.tasks
        ):
            self.cancelled.add((window.metadata.name, opening.id))

    def opening(self, window: MaintenanceWindow) -> Opening | None:
        """The window's opening in force now, computed once per pass."""
        name = window.metadata.name
        if name not in self.openings:
            self.openings[name] = self.in_force(window)
        return self.openings[name]

    def in_force(self, window: MaintenanceWindow) -> Opening | None:
        """The open opening whose execution runs: the oldest one with jobs, else the newest. An
        opening that began while an earlier execution ran is skipped for good (SSM's
        SKIPPED_OVERLAPPING), so a window never runs two executions at once."""
        name = window.metadata.name
        now_open = open_openings(window.spec, self.now)
        ids = {opening.id for opening in now_open}
        ran = {job.opening for job in self.observed.jobs if job.window == name}
        fresh = [o for o in now_open if (name, o.id) not in self.observed.skipped]
        running = next((o for o in fresh if o.id in ran), None)
        if running is not None:
            self.skip(name, [o for o in fresh if o.start > running.start], running.id)
            return running
        # A job of an opening that has ended still runs (it will be TIMED_OUT).
        late = sorted(j.opening for j in self.running_jobs if j.window == name and j.opening)
        late = [opening for opening in late if opening not in ids]
        if late:
            self.skip(name, fresh, late[-1])
            return None
        if now_open and not fresh:
            self.overlapped[name] = (
                f"window {name}'s open opening(s) were skipped (SKIPPED_OVERLAPPING)"
            )
        return fresh[-1] if fresh else None

    def skip(self, name: str, later: list[Opening], running: str) -> None:
        for opening in later:
            self.skipped.add((name, opening.id))
            self.overlapped[name] = (
                f"opening {opening.id} of window {name} is skipped (SKIPPED_OVERLAPPING): "
                f"the execution of opening {running} still runs"
            )

    def targeting(self, instance: ManagedInstance, group: str | None) -> list[MaintenanceWindow]:
        key = (group, frozenset(instance.metadata.labels.items()))
        if key not in self.windows_for:
            self.windows_for[key] = self.find_targeting(instance, group)
        return self.windows_for[key]

    def find_targeting(
        self, instance: ManagedInstance, group: str | None
    ) -> list[MaintenanceWindow]:
        return windows_targeting(self.snapshot, instance, group)

    def open_tasks(
        self, instance: ManagedInstance, group: str | None, operation: Operation
    ) -> tuple[tuple[MaintenanceWindow, WindowTask, Opening], ...]:
        """The tasks of ``operation`` open now in windows targeting the instance; once per
        (group, label set): the openings in force and ``now`` are the pass's."""
        key = (group, frozenset(instance.metadata.labels.items()), operation)
        if key not in self.tasks_open:
            self.tasks_open[key] = tuple(self.find_open_tasks(instance, group, operation))
        return self.tasks_open[key]

    def find_open_tasks(
        self, instance: ManagedInstance, group: str | None, operation: Operation
    ) -> list[tuple[MaintenanceWindow, WindowTask, Opening]]:
        out = []
        for window in self.targeting(instance, group):
            opening = self.opening(window)
            if opening is None or not opening.accepts_new_tasks(self.now):
                continue
            for task in sorted(window.spec.tasks, key=lambda t: (t.priority, t.name)):
                if task.operation == operation:
                    out.append((window, task, opening))
        return out

    def targets(self, window: MaintenanceWindow) -> int:
        """How many instances the window targets (the base of percentage budgets); cached."""
        name = window.metadata.name
        if name not in self.target_counts:
            self.target_counts[name] = self.count_targets(window)
        return self.target_counts[name]

    def count_targets(self, window: MaintenanceWindow) -> int:
        count = 0
        for instance in self.snapshot.instances.values():
            groups = self.groups_selecting(instance)
            targets = window.spec.targets
            if any(g in targets.patch_groups for g in groups) or (
                targets.selector is not None
                and targets.selector.matches(dict(instance.metadata.labels))
            ):
                count += 1
        return count

    def groups_selecting(self, instance: ManagedInstance) -> frozenset[str]:
        """The names of the groups that select the instance, once per label set."""
        labels = instance.metadata.labels
        key = frozenset(labels.items())
        if key not in self.groups_named:
            self.groups_named[key] = frozenset(
                g.metadata.name for g in self.snapshot.groups.values() if group_selects(g, labels)
            )
        return self.groups_named[key]

    def priority_turn(self, window: MaintenanceWindow, task: WindowTask, opening: Opening) -> bool:
        """Lower priority numbers run first: a task starts only when no task of its window with a
        lower number still has jobs running in this opening."""
        earlier = {t.name for t in window.spec.tasks if t.priority < task.priority}
        return not any(
            j.window == window.metadata.name and j.task in earlier and j.opening == opening.id
            for j in self.running_jobs
        )

    def wait(
        self, name: str, reason: str, until: datetime | None = None, *, compliant: bool = False
    ) -> None:
        self.waits.append(Wait(name, reason, until, compliant))


@dataclass(frozen=True)
class _TaskInstall:
    """What one Install task would install on one machine."""

    pins: tuple[str, ...]
    baseline: PatchBaseline  # whose approvals (and BLOCK list) apply
    salt: str  # the installOverrideList: another list is another snapshot
    nothing: str  # why nothing is pinned, when nothing is


def _install_action(
    name: str,
    key: str,
    window: MaintenanceWindow,
    task: WindowTask,
    opening: Opening,
    chosen: _TaskInstall,
    digest: Callable[[PatchBaseline], str],
) -> Action:
    blocked = chosen.baseline.spec.blocked()
    what = (
        f"{len(chosen.pins)} patch(es) of its installOverrideList"
        if task.install_override_list is not None
        else f"{len(chosen.pins)} approved patch(es) missing"
    )
    return Action(
        INSTALL,
        name,
        key,
        f"{what}; {task.name} of window {window.metadata.name} is open",
        chosen.baseline.metadata.name,
        digest(chosen.baseline),
        window.metadata.name,
        task.name,
        opening.id,
        chosen.pins,
        blocked,
        str(task.reboot_option),
    )


def _held_note(scan: ObservedScan) -> str:
    """What a reason adds for the packages a hold keeps off the machine (none: nothing)."""
    return f"; held, never installed: {', '.join(scan.held)}" if scan.held else ""


class _Budgets:
    """maxConcurrency and maxErrors per (window, task, opening), counting this pass's actions."""

    def __init__(self, jobs: Sequence[ObservedJob]) -> None:
        self.running: dict[tuple[str, str, str], int] = {}
        self.errors: dict[tuple[str, str, str], int] = {}
        for job in jobs:
            if job.window is None or job.task is None or job.opening is None:
                continue
            key = (job.window, job.task, job.opening)
            if job.status == JobStatus.RUNNING:
                self.running[key] = self.running.get(key, 0) + 1
            elif job.status in (JobStatus.FAILED, JobStatus.ABANDONED):
                self.errors[key] = self.errors.get(key, 0) + 1

    def verdict(
        self, window: MaintenanceWindow, task: WindowTask, opening: Opening, targets: int
    ) -> str:
        key = (window.metadata.name, task.name, opening.id)
        allowed_errors = _amount(task.max_errors, targets, minimum=0)
        errors = self.errors.get(key, 0)
        if errors > allowed_errors:
            return (
                f"rollout halted: {errors} failed job(s) in {task.name} of window "
                f"{window.metadata.name} exceed maxErrors {task.max_errors}"
            )
        concurrency = _amount(task.max_concurrency, targets, minimum=1)
        if self.running.get(key, 0) >= concurrency:
            return (
                f"maxConcurrency {task.max_concurrency} of {task.name} reached; waiting for a slot"
            )
        return ""

    def halted(
        self, window: MaintenanceWindow, task: WindowTask, opening: Opening, targets: int
    ) -> bool:
        """More jobs failed than ``maxErrors`` allows: nothing more starts in this opening."""
        errors = self.errors.get((window.metadata.name, task.name, opening.id), 0)
        return errors > _amount(task.max_errors, targets, minimum=0)

    def allows(
        self, window: MaintenanceWindow, task: WindowTask, opening: Opening, targets: int
    ) -> bool:
        return not self.verdict(window, task, opening, targets)

    def take(self, window: MaintenanceWindow, task: WindowTask, opening: Opening) -> None:
        key = (window.metadata.name, task.name, opening.id)
        self.running[key] = self.running.get(key, 0) + 1


def _amount(text: str, targets: int, *, minimum: int) -> int:
    """SSM's "10" or "10%" of the targets, never below ``minimum``."""
    if text.endswith("%"):
        return max(minimum, math.floor(int(text[:-1]) * targets / 100))
    return max(minimum, int(text))


# -- one-off openings (patch now) -------------------------------------------------------------


def one_off_key(instance: str, operation: Operation, opening: str) -> str:
    """The idempotency key of a one-off opening's job: one scan and one install per target."""
    return f"{instance}:{operation}:{TASK_NAME}:{opening}"


@dataclass(frozen=True, slots=True)
class OneOffProgress:
    """Where a one-off opening stands in this plan."""

    id: str
    targets: tuple[str, ...]
    running: int
    """Jobs of it running, those this plan starts included."""
    done: int
    """Targets finished without a failure (nothing to install counts)."""
    failed: int
    """Targets whose job failed (or was abandoned): what maxErrors counts."""
    outcome: OneOffStatus | None
    """SUCCESS or FAILED once nothing of it runs or can start; EXPIRED when no job of it started
    before its expiresAt; None while it goes on."""
    reason: str


@dataclass(frozen=True, slots=True)
class _Step:
    """What one target of a one-off opening needs next: ``running``, ``done``, ``failed``,
    ``scan`` or ``install`` (then with the baseline and pins)."""

    kind: str
    """``held`` too: a target the rails keep waiting (:class:`_Rails`)."""
    why: str = ""
    baseline: PatchBaseline | None = None
    pins: tuple[str, ...] = ()


class _OneOffs:
    """Plans one one-off opening at a time into a planning pass (:class:`_State`)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def plan(self, opening: OneOffOpening) -> OneOffProgress:
        state, names = self.state, tuple(targeted(opening.targets, self.state.snapshot))
        jobs = {
            job.key: job
            for job in state.observed.jobs
            if job.window is None and job.opening == opening.id
        }
        if not jobs and state.now >= opening.expires_at:
            why = f"no job started before it expired at {opening.expires_at.isoformat()}"
            return OneOffProgress(opening.id, names, 0, 0, 0, OneOffStatus.EXPIRED, why)
        steps = _Rails(self.state, opening).apply(
            {name: self.step(opening, name, jobs) for name in names}
        )
        budget = _OneOffBudget(opening, len(names), jobs.values())
        # A target between its scan and its install goes first: SSM's budgets count targets.
        for name in sorted(names, key=lambda n: (steps[n].kind != INSTALL, n)):
            if steps[name].kind in (SCAN, INSTALL):
                self.start(opening, name, steps[name], budget)
            elif steps[name].kind == "held":
                self.state.one_off_held.add(name)
                self.state.wait(name, f"{_asked(opening)} {opening.id}: {steps[name].why}")
        return self.progress(opening, names, steps, budget)

    def step(self, opening: OneOffOpening, name: str, jobs: Mapping[str, ObservedJob]) -> _Step:
        operation = opening.task.operation
        scan_key = one_off_key(name, SCAN, opening.id)
        install_key = one_off_key(name, INSTALL, opening.id)
        last = jobs.get(install_key) or jobs.get(scan_key)
        if last is not None and last.status == JobStatus.RUNNING:
            return _Step("running")
        if last is not None and last.status != JobStatus.SUCCEEDED:
            return _Step("failed", f"its {last.operation} {last.status}")
        if install_key in jobs or (operation == SCAN and scan_key in jobs):
            return _Step("done")
        scan = self.state.observed.scans.get(name)
        if operation == SCAN or scan is None or scan.finished_at < opening.created_at:
            # An Install installs what is missing now: a scan older than the request rescans.
            if scan_key in jobs:
                return _Step("failed", "its scan recorded no result")
            return _Step(SCAN)
        return self.install_step(opening, name, scan)

    def install_step(self, opening: OneOffOpening, name: str, scan: ObservedScan) -> _Step:
        instance = self.state.snapshot.instances[name]
        resolution = self.state.resolve(instance, scan.operating_system)
        if resolution.baseline is None:
            return _Step("done", f"no baseline: {resolution.baseline_reason}")
        if opening.emergency is not None:
            holds = declared_holds(resolution.group, instance)
            return emergency_step(opening.emergency, scan, resolution.baseline, holds)
        if not scan.pins:
            return _Step("done", "no approved patch is missing")
        return _Step(INSTALL, baseline=resolution.baseline, pins=scan.pins)

    def start(self, opening: OneOffOpening, name: str, step: _Step, budget: _OneOffBudget) -> None:
        state = self.state
        state.one_off_held.add(name)
        if name in state.running or any(a.instance == name for a in state.actions):
            state.wait(name, f"patch now {opening.id} waits: a job is running on it")
            return
        verdict = (self.gate_verdict(opening) if step.kind == INSTALL else "") or budget.verdict()
        if verdict:
            state.wait(name, f"patch now {opening.id}: {verdict}")
            return
        budget.running += 1
        operation = Operation(step.kind)
        baseline = step.baseline
        state.actions.append(
            Action(
                operation,
                name,
                one_off_key(name, operation, opening.id),
                f"{_asked(opening)} {opening.id} asked by {opening.requested_by}: "
                f"{step.why or operation}",
                baseline.metadata.name if baseline else "",
                state.digest(baseline) if baseline else "",
                None,
                opening.task.name,
                opening.id,
                step.pins,
                baseline.spec.blocked() if baseline else (),
                str(opening.task.reboot_option),
            )
        )

    def gate_verdict(self, opening: OneOffOpening) -> str:
        """Why the opening's installs may not start now: a gate of its ``--gates-from`` task
        blocks, or that task is gone (what guarded it can no longer say it is open)."""
        if opening.gates_from is None:
            return ""
        try:
            named, task = gating_task(self.state.snapshot, opening.gates_from)
        except ValueError as exc:
            return f"--gates-from {opening.gates_from}: {exc}"
        whose = f"task {task.name} of {named.partition('/')[0]}"
        return gate_verdict(task.gates, self.state.observed.readings, whose)

    def progress(
        self,
        opening: OneOffOpening,
        names: tuple[str, ...],
        steps: Mapping[str, _Step],
        budget: _OneOffBudget,
    ) -> OneOffProgress:
        done = sum(step.kind == "done" for step in steps.values())
        failed = sum(step.kind == "failed" for step in steps.values())
        halted = budget.halted()
        outcome: OneOffStatus | None = None
        if budget.running == 0 and (halted or done + failed == len(names)):
            outcome = OneOffStatus.FAILED if failed or halted else OneOffStatus.SUCCESS
        reason = halted or f"{done} done, {failed} failed of {len(names)} target(s)"
        return OneOffProgress(opening.id, names, budget.running, done, failed, outcome, reason)


def _asked(opening: OneOffOpening) -> str:
    return "emergency" if opening.emergency is not None else "patch now"


class _OneOffBudget:
    """maxConcurrency and maxErrors of a one-off opening's task, over its targets."""

    def __init__(self, opening: OneOffOpening, targets: int, jobs: Iterable[ObservedJob]) -> None:
        self.task, self.targets = opening.task, targets
        statuses = [job.status for job in jobs]
        self.running = statuses.count(JobStatus.RUNNING)
        self.errors = statuses.count(JobStatus.FAILED) + statuses.count(JobStatus.ABANDONED)

    def halted(self) -> str:
        """Why no new target starts (more failures than maxErrors allows), or ''."""
        if self.errors > _amount(self.task.max_errors, self.targets, minimum=0):
            return f"halted: {self.errors} failed job(s) exceed maxErrors {self.task.max_errors}"
        return ""

    def verdict(self) -> str:
        concurrency = _amount(self.task.max_concurrency, self.targets, minimum=1)
        if not self.halted() and self.running >= concurrency:
            return f"maxConcurrency {self.task.max_concurrency} reached; waiting for a slot"
        return self.halted()


# -- emergency CVE runs (patchctl emergency; docs/guardrails.md "Emergency CVE runs") ------------


def emergency_fix(
    cve: str,
    snapshot: Snapshot,
    selected: Sequence[str],
    scans: Mapping[str, Inventory | None],
    now: datetime,
    reason: str | None = None,
    groups: Sequence[str] = (),
) -> tuple[EmergencyFix, tuple[str, ...]]:
    """The fix an emergency run of ``cve`` over ``selected`` freezes at ``now`` (their latest
    scans' fixes per baseline, content-addressed as a rollout's snapshot) and the machines it
    targets (those with a fix). ValueError (``evaluation.emergency.affected``) when it cannot."""
    found = affected(cve, snapshot, selected, scans)
    versions = {name: list(pins) for name, pins in found.versions.items()}
    fix = EmergencyFix(
        cve=cve,
        reason=reason,
        groups=list(groups),
        frozen_at=now,
        versions=versions,
        digest=freeze(versions, now).digest,
    )
    return fix, found.instances


def emergency_snapshot(fix: EmergencyFix) -> RolloutSnapshot | None:
    """The fix's frozen versions as a snapshot; None when they no longer match its digest (the
    state was edited): such a run installs nothing, as a rollout's edited snapshot does not."""
    snapshot = freeze(fix.versions, fix.frozen_at)
    return snapshot if snapshot.digest == fix.digest else None


def emergency_step(
    fix: EmergencyFix, scan: ObservedScan, baseline: PatchBaseline, holds: Sequence[Hold]
) -> _Step:
    """What an emergency run installs on a scanned target: the fixes of its scan that the
    run's snapshot holds for its baseline (or, where the machine has an older version, the
    frozen one), never a held or rejected package; whatever approveAfterDays says."""
    inventory = scan.parsed_inventory()
    cannot = unreadable(scan.operating_system)
    if inventory is None or cannot:
        return _Step("failed", cannot or "its scan has no inventory to read CVE ids from")
    frozen = emergency_snapshot(fix)
    if frozen is None:
        return _Step("failed", f"its snapshot no longer matches {fix.digest}: the state was edited")
    fixes = cve_fixes(fix.cve, baseline, inventory, holds)
    pins, _ = frozen.confine(baseline.metadata.name, fixes.pins, lambda: inventory)
    left_out = f" ({fixes.refused()})" if fixes.refused() else ""
    if not pins:
        return _Step("done", f"no fix of {fix.cve} to install{left_out}")
    why = f"{fix.cve}: {len(pins)} fix(es) of snapshot {short_digest(fix.digest)}{left_out}"
    return _Step(INSTALL, why, baseline, tuple(sorted(pins)))


class _Rails:
    """The safety rails a one-off opening's installs still go through. For every one (patch
    now and emergency runs): a halted rollout, whose targets wait unless the opening overrides
    the halt. For an emergency run also the rollout rings in their order (bake times skipped:
    a ring installs once every target of the rings before it is done) and the safety gates
    guarding each target (its windows' Install tasks' and its stage's; patch now's gates are
    its ``--gates-from`` task's, :meth:`_OneOffs.gate_verdict`). A target they stop waits
    (``held``); after a failure in an earlier ring the later rings' targets fail without
    installing, as a halted rollout stops its later stages."""

    def __init__(self, state: _State, opening: OneOffOpening) -> None:
        self.state, self.opening = state, opening

    def apply(self, steps: Mapping[str, _Step]) -> dict[str, _Step]:
        emergency = self.opening.emergency is not None
        rings = {name: self.ring(name) for name in steps} if emergency else {}
        out = dict(steps)
        for name, step in steps.items():
            if step.kind != INSTALL:
                continue
            why = self.halt_verdict(name)
            if emergency and not why:
                why = self.ring_verdict(name, rings, steps) or self.gate_verdict(name)
            if why.startswith("failed:"):
                out[name] = _Step("failed", why.removeprefix("failed: "))
            elif why:
                out[name] = _Step("held", why)
        return out

    def ring(self, name: str) -> tuple[str, int, str] | None:
        """(rollout, stage index, stage name) of the target's rollout stage, if it has one."""
        gate = self.state.observed.gates.get(name)
        rollout = self.state.snapshot.rollouts.get(gate.rollout) if gate else None
        if gate is None or rollout is None:
            return None
        names = [stage.name for stage in rollout.spec.stages]
        return (gate.rollout, names.index(gate.stage), gate.stage) if gate.stage in names else None

    def halt_verdict(self, name: str) -> str:
        """Why the target waits for its rollout's halt: a halt stops every stage of it, and a
        one-off opening goes on there only with ``--override-halt`` (docs/guardrails.md), even
        when the rollout halted after the request."""
        gate = self.state.observed.gates.get(name)
        if gate is None or not gate.halted or self.opening.override_halt is not None:
            return ""
        return (
            f"rollout {gate.rollout} is halted ({gate.reason}): waits until it is resumed; "
            "ask again with --override-halt REASON to patch its machines anyway"
        )

    def ring_verdict(
        self,
        name: str,
        rings: Mapping[str, tuple[str, int, str] | None],
        steps: Mapping[str, _Step],
    ) -> str:
        mine = rings[name]
        if mine is None:
            return ""
        earlier = sorted(
            (ring[1], other)
            for other, ring in rings.items()
            if ring is not None and ring[0] == mine[0] and ring[1] < mine[1]
        )
        failed = [other for _, other in earlier if steps[other].kind == "failed"]
        if failed:
            return f"failed: ring {mine[2]} of rollout {mine[0]} stops: {', '.join(failed)} failed"
        waiting = [other for _, other in earlier if steps[other].kind != "done"]
        if waiting:
            first = rings[waiting[0]]
            assert first is not None
            return (
                f"ring {mine[2]} of rollout {mine[0]} waits for ring {first[2]}: "
                f"{', '.join(waiting)} not done yet (no bake time in an emergency run)"
            )
        return ""

    def gate_verdict(self, name: str) -> str:
        state = self.state
        instance = state.snapshot.instances[name]
        scan = state.observed.scans.get(name)
        group = None
        if scan is not None:
            resolved = state.resolve(instance, scan.operating_system).group
            group = resolved.metadata.name if resolved else None
        gate = state.observed.gates.get(name)
        stage = (gate.rollout, gate.stage) if gate else None
        for whose, guard in gates_guarding(state.snapshot, name, group, stage):
            blocked = gate_verdict([guard], state.observed.readings, whose)
            if blocked:
                return blocked
        return ""
