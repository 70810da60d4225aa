"""Stage: loop, step ``rollouts``. Progressive rollouts (docs/rollouts.md) steered each pass: for
every Rollout in force, the finished install jobs of its members are folded into the store (once
per job), the pure planner :func:`reconciler.rollout.decide` decides with the injected clock, a
freeze (the approved versions per baseline at that moment) and a halt are recorded, and each
member's :class:`~reconciler.plan.RolloutGate` is handed to the planner. Each rollout's view
(``report.views.rollouts``) goes on the pass summary, and what changed since the previous pass
is emitted as ``rollout.*`` occurrences.

Reads the store's scans and jobs and writes only rollout history; may not plan installs,
dispatch, or touch the source or transports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from reconciler.api.enums import JobStatus, Operation
from reconciler.api.inventory import Inventory
from reconciler.api.resources import Rollout
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation.engine import evaluate
from reconciler.evaluation.holds import declared_holds
from reconciler.evaluation.pins import approved_pins
from reconciler.evaluation.resolve import resolve
from reconciler.loop.common import Clock, Emitter, InForce
from reconciler.plan import RolloutGate
from reconciler.report.notify.rollouts import transitions
from reconciler.report.views.rollouts import RolloutView, view
from reconciler.rollout import (
    INSTALLED,
    MachineResult,
    RolloutDecision,
    RolloutRecord,
    RolloutSnapshot,
    Verdict,
    decide,
    freeze,
    freeze_waits,
    result_of_job,
    stage_members,
)
from reconciler.schedule import open_openings
from reconciler.state import JobRecord, ScanRecord, StateBackend

FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})
Members = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Steered:
    """One pass's rollout decisions, and each member's gate for the planner."""

    decisions: tuple[RolloutDecision, ...] = ()
    gates: Mapping[str, RolloutGate] = field(default_factory=dict)
    views: tuple[RolloutView, ...] = ()
    """What the observers read (occurrences, metrics, status, dashboard)."""


class RolloutSteering:
    """The loop's part for the ``rollouts`` step: steers the Rollouts of the revision in force."""

    def __init__(
        self, store: StateBackend, in_force: InForce, clock: Clock, emit: Emitter | None = None
    ) -> None:
        self.store, self.in_force, self.clock, self.emit = store, in_force, clock, emit
        self.previous: dict[str, RolloutView] = {}
        """The last written pass's views: its rollout.* occurrences are what changed since."""

    def steer(self, *, write: bool = True) -> Steered:
        """This pass's decisions; ``write=False`` records nothing (``patchctl plan`` shows what
        the next pass would do, a freeze included)."""
        snapshot = self.in_force.snapshot
        steered = Steered()
        if snapshot is not None and snapshot.rollouts:
            steered = steer(self.store, snapshot, self.clock(), write=write)
        if write:
            self._announce(steered.views)
        return steered

    def _announce(self, views: tuple[RolloutView, ...]) -> None:
        for current in views:
            for kind, detail in transitions(self.previous.get(current.rollout), current):
                if self.emit is not None:
                    self.emit(kind, **detail)
        self.previous = {current.rollout: current for current in views}


def steer(store: StateBackend, snapshot: Snapshot, now: datetime, *, write: bool = True) -> Steered:
    """Every Rollout of ``snapshot`` steered at ``now`` (recording what it decides: ``write``)."""
    decisions: list[RolloutDecision] = []
    gates: dict[str, RolloutGate] = {}
    views: list[RolloutView] = []
    for name in sorted(snapshot.rollouts):
        rollout = snapshot.rollouts[name]
        members = stage_members(rollout, snapshot)
        decision, record = decide_and_record(store, snapshot, rollout, members, now, write)
        decisions.append(decision)
        gates.update(gates_of(decision, record.snapshot))
        views.append(view(rollout, decision, record, now))
    return Steered(tuple(decisions), gates, tuple(views))


def status(
    store: StateBackend, snapshot: Snapshot, rollout: Rollout, now: datetime
) -> tuple[RolloutDecision, RolloutRecord]:
    """Where ``rollout`` stands at ``now`` from the store as it is, recording nothing (``patchctl
    rollout status``): the same folding and decision the loop makes."""
    return decide_and_record(store, snapshot, rollout, stage_members(rollout, snapshot), now, False)


def decide_and_record(
    store: StateBackend,
    snapshot: Snapshot,
    rollout: Rollout,
    members: Members,
    now: datetime,
    write: bool = True,
) -> tuple[RolloutDecision, RolloutRecord]:
    """Fold the members' new results, decide, and record (``write``) a freeze and a halt."""
    steps = _Steps(store, snapshot, rollout, members, now, write)
    record = store.rollout_record(rollout.metadata.name)
    record = steps.results(record, _finished_installs(store, members, record))
    decision = steps.decide(record)
    unscanned = _unscanned(store, rollout, members) if decision.freeze else {}
    if unscanned:
        decision = freeze_waits(decision, unscanned)
    elif decision.freeze:
        frozen = freeze(approved_versions(store, snapshot, members, now), now)
        if write:
            store.record_rollout_cycle(rollout.metadata.name, frozen, now=now)
        record = record.start_cycle(frozen)
        decision = steps.decide(record)
    on = steps.results(record, _on_snapshot(decision, snapshot, store.latest_scans()))
    if on is not record:
        record, decision = on, steps.decide(on)
    if decision.resume:  # the Rollout's resumeToken changed since the halt (a commit)
        if write:
            token = {"resumeToken": rollout.spec.resume_token}
            store.record_rollout_resume(rollout.metadata.name, now=now, by=token)
        record = record.resume(now)
    if decision.halt is not None:
        if write:
            name, token_then = rollout.metadata.name, decision.resume_token
            store.record_rollout_halt(name, decision.halt, now=now, resume_token=token_then)
        record = record.halt(decision.halt, decision.resume_token)
    return decision, record


def _unscanned(store: StateBackend, rollout: Rollout, members: Members) -> dict[str, int]:
    """Stage -> how many of its machines were never scanned. A freeze waits for every stage's:
    the snapshot holds each baseline's versions at one moment, made of what the scans approve,
    and an unscanned machine's baseline (a later stage's, too) would be missing from it."""
    scanned = store.latest_scans()
    counts = {
        stage.name: sum(1 for member in mine if member not in scanned)
        for stage, mine in zip(rollout.spec.stages, members, strict=True)
    }
    return {stage: count for stage, count in counts.items() if count}


Finder = Callable[[StateBackend, str, RolloutRecord], MachineResult | None]
"""A member's new result for the current cycle, if any."""


@dataclass(frozen=True)
class _Steps:
    store: StateBackend
    snapshot: Snapshot
    rollout: Rollout
    members: Members
    now: datetime
    write: bool

    def decide(self, record: RolloutRecord) -> RolloutDecision:
        opened_at = first_window_opened_at(self.snapshot, self.members, self.now)
        first_open = opened_at is not None
        return decide(self.rollout, self.members, record, first_open, self.now, opened_at)

    def results(self, record: RolloutRecord, find: Finder) -> RolloutRecord:
        """``record`` with each member's new result ``find`` gives (recorded when writing)."""
        if record.snapshot is None:
            return record
        for member in (m for stage in self.members for m in stage):
            result = find(self.store, member, record)
            if result is None:
                continue
            if self.write:
                name = self.rollout.metadata.name
                self.store.record_rollout_result(name, member, result, now=self.now)
            record = record.with_result(member, result)
        return record


def _finished_installs(store: StateBackend, members: Members, record: RolloutRecord) -> Finder:
    """Each member's latest install job finished since the freeze and newer than its recorded
    result and the last resume: each job is folded once, and a failure a resume forgot stays
    forgotten. One read, bounded by the freeze (``install_jobs_since``), for all members."""
    by_member: dict[str, list[JobRecord]] = {}
    if record.snapshot is not None:
        everyone = [m for stage in members for m in stage]
        for job in store.install_jobs_since(everyone, record.snapshot.frozen_at):
            by_member.setdefault(job.instance, []).append(job)

    def find(store: StateBackend, member: str, record: RolloutRecord) -> MachineResult | None:
        assert record.snapshot is not None
        known = record.results.get(member)
        finished = known.finished_at if known is not None else None
        times = [t for t in (finished, record.resumed_at) if t is not None]
        since = max(times) if times else None
        return _latest_install(by_member.get(member, ()), record.snapshot.frozen_at, since)

    return find


def _latest_install(
    jobs: Iterable[JobRecord], frozen_at: datetime, since: datetime | None
) -> MachineResult | None:
    newest: MachineResult | None = None
    for job in jobs:
        if job.operation != Operation.INSTALL or job.status not in FINISHED:
            continue
        if job.finished_at is None or job.created_at < frozen_at:
            continue
        if since is not None and job.finished_at <= since:
            continue
        error = (job.result or {}).get("error")
        newest = result_of_job(job.status, error["code"] if error else None, job.finished_at)
    return newest


def _on_snapshot(
    decision: RolloutDecision, snapshot: Snapshot, scans: Mapping[str, ScanRecord]
) -> Finder:
    """Members of an installing stage whose latest scan has nothing of the snapshot left to
    install are on it (the planner would never install them). A later stage's scan counts only
    from the freeze on: an older one may predate the versions the snapshot holds."""
    first = decision.stages[0].stage if decision.stages else ""
    pending = {
        member: stage.stage == first
        for stage in decision.stages
        if stage.verdict is Verdict.INSTALL
        for member in stage.to_install
    }

    def find(store: StateBackend, member: str, record: RolloutRecord) -> MachineResult | None:
        scan, frozen = scans.get(member), record.snapshot
        if member not in pending or scan is None or frozen is None:
            return None
        if member not in snapshot.instances or record.results.get(member) is not None:
            return None
        machine = partial(Inventory.model_validate, scan.inventory)
        if frozen.confine(scan.baseline, scan.pins, machine)[0]:
            return None
        if not pending[member] and scan.finished_at < frozen.frozen_at:
            return None
        return MachineResult(INSTALLED, max(scan.finished_at, frozen.frozen_at))

    return find


def approved_versions(
    store: StateBackend, snapshot: Snapshot, members: Members, now: datetime
) -> dict[str, set[str]]:
    """Per baseline, the union over the rollout's scanned members of the versions it approves
    there at ``now`` (installed or to install): what a freeze holds."""
    scans = store.latest_scans()
    approved: dict[str, set[str]] = {}
    for member in (m for stage in members for m in stage):
        scan = scans.get(member)
        if scan is None:
            continue
        inventory = Inventory.model_validate(scan.inventory)
        instance = snapshot.instances[member]
        resolution = resolve(snapshot, instance.metadata.labels, inventory.facts.operating_system)
        if resolution.baseline is None:
            continue
        if resolution.baseline.spec.approve_after_days_from is not None:
            inventory = store.with_first_seen(inventory, None)
        group = resolution.group.metadata.name if resolution.group else None
        holds = declared_holds(resolution.group, instance)
        result = evaluate(resolution.baseline, inventory, now, patch_group=group, holds=holds)
        pins = approved_pins(result, inventory.facts.arch)
        approved.setdefault(resolution.baseline.metadata.name, set()).update(pins)
    return approved


def first_window_opened_at(
    snapshot: Snapshot, members: Sequence[tuple[str, ...]], now: datetime
) -> datetime | None:
    """When the latest opening began of a window with an Install task that targets a machine of
    the first stage and accepts new tasks now (a cycle's snapshot freezes then; after an abort,
    only at an opening that began later); None when none does."""
    first = members[0] if members else ()
    latest: datetime | None = None
    for window in snapshot.windows.values():
        spec = window.spec
        if not spec.enabled or not any(t.operation == Operation.INSTALL for t in spec.tasks):
            continue
        targeted = any(
            snapshot.selected_by(
                spec.targets.patch_groups,
                spec.targets.selector,
                snapshot.instances[m].metadata.labels,
            )
            for m in first
        )
        starts = [o.start for o in open_openings(spec, now) if o.accepts_new_tasks(now)]
        if targeted and starts:
            latest = max(starts) if latest is None else max(latest, *starts)
    return latest


def gates_of(decision: RolloutDecision, frozen: RolloutSnapshot | None) -> dict[str, RolloutGate]:
    """Each member's gate: installing when its stage installs and it is not on the snapshot."""
    gates: dict[str, RolloutGate] = {}
    for stage in decision.stages:
        installing = stage.verdict is Verdict.INSTALL
        for member in stage.members:
            gate = RolloutGate(
                decision.rollout,
                stage.stage,
                installing and member in stage.to_install,
                stage.reason,
                frozen,
                halted=stage.verdict is Verdict.HALTED,
            )
            gates[member] = gate
    return gates
