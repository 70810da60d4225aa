"""Stage: plan (rollouts, issue 15). The pure decisions of a progressive rollout: which machines
are in which stage, the content-addressed snapshot of approved versions frozen when the first
stage's window opens, which stages may install it now, and when the rollout halts, each with its
reason ("stage prod waits: stage dev baked 31 h of 48 h").

Inputs are values (the Rollout, the stages' members, the rollout's recorded state, whether the
first stage's window is open, the clock); the output is a :class:`RolloutDecision`. No I/O, no
clock of its own. May import ``reconciler.api`` and ``reconciler.evaluation``; never the store,
the transports or the loop (they will record what this decides: groundwork, see docs/rollouts.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from reconciler.api.enums import JobStatus
from reconciler.api.inventory import Inventory
from reconciler.api.resources import Rollout, RolloutStage, bake_seconds
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation.pins import frozen_in_place

Pins = tuple[str, ...]
"""``name[:arch]=version`` strings, as the agent installs them."""
HEALTH_CHECK_FAILED = "HealthCheckFailed"
"""The error of a job whose health check failed (docs/hooks.md): a failed machine."""


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """The approved ``name[:arch]=version`` pins per baseline, frozen at one moment. Its digest
    is of the content only, so two cycles that froze the same versions share it."""

    frozen_at: datetime
    versions: Mapping[str, frozenset[str]]
    """Baseline name -> the versions it approved at ``frozen_at``."""

    @property
    def digest(self) -> str:
        content = {name: sorted(pins) for name, pins in sorted(self.versions.items())}
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(encoded).hexdigest()

    def confine(
        self,
        baseline: str,
        pins: Iterable[str],
        inventory: Callable[[], Inventory | None] | None = None,
    ) -> tuple[Pins, Pins]:
        """``pins`` split into those this snapshot holds for ``baseline`` and those it does not
        (approved since the freeze: they wait for the next cycle). With the machine's
        ``inventory``, held also has the frozen version of each package whose later version
        waits, where the machine's is older (``evaluation.pins.frozen_in_place``)."""
        frozen, pins = self.versions.get(baseline, frozenset()), tuple(pins)
        held = tuple(pin for pin in pins if pin in frozen)
        later = tuple(pin for pin in pins if pin not in frozen)
        machine = inventory() if later and inventory is not None else None
        if machine is not None:
            held += frozen_in_place(machine, later, frozen)
        return held, later


def short_digest(digest: str) -> str:
    """``3f9c1a2``: the first 7 hex digits, as people quote a snapshot."""
    return digest.removeprefix("sha256:")[:7]


def digest_matches(digest: str, given: str) -> bool:
    """Whether ``given`` (a digest, or a prefix of at least 7 hex digits, with or without
    ``sha256:``) names the snapshot ``digest``."""
    wanted = given.lower().removeprefix("sha256:")
    return len(wanted) >= 7 and digest.removeprefix("sha256:").startswith(wanted)


def freeze(approved: Mapping[str, Iterable[str]], at: datetime) -> RolloutSnapshot:
    """The snapshot of ``approved`` (baseline -> pins, the union of
    :func:`reconciler.evaluation.pins.approved_pins` over the baseline's instances) at ``at``."""
    versions = {name: frozenset(pins) for name, pins in approved.items()}
    return RolloutSnapshot(at, MappingProxyType(versions))


class Outcome(StrEnum):
    """What one machine of a stage did with the cycle's snapshot."""

    INSTALLED = "Installed"
    FAILED = "Failed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    NON_COMPLIANT = "NonCompliant"
    """Installed, but its scan still misses versions of the snapshot."""


FAILURES = frozenset({Outcome.FAILED, Outcome.HEALTH_CHECK_FAILED})
INSTALLED = Outcome.INSTALLED


@dataclass(frozen=True, slots=True)
class MachineResult:
    """A machine's latest outcome for the current cycle's snapshot."""

    outcome: Outcome
    finished_at: datetime


def result_of_job(status: JobStatus, error: str | None, finished_at: datetime) -> MachineResult:
    """A finished install job as a stage's machine result: a job FAILED with HealthCheckFailed
    counts as a health-check failure, any other failure as a failed install."""
    if status is JobStatus.SUCCEEDED:
        return MachineResult(Outcome.INSTALLED, finished_at)
    failed = Outcome.HEALTH_CHECK_FAILED if error == HEALTH_CHECK_FAILED else Outcome.FAILED
    return MachineResult(failed, finished_at)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout's recorded state: what the planner needs to remember between passes."""

    cycle: int = 0
    snapshot: RolloutSnapshot | None = None
    results: Mapping[str, MachineResult] = field(default_factory=lambda: MappingProxyType({}))
    """Instance name -> its latest result in this cycle."""
    halted: str | None = None
    """Why the rollout halted; it stays halted until resumed."""
    resume_token: str | None = None
    """The Rollout's ``resumeToken`` when it halted ("" for none; None: not recorded, so only
    ``patchctl rollout resume`` resumes it)."""
    approvals: frozenset[str] = frozenset()
    """Stages approved by hand (``patchctl rollout approve``) for this cycle's snapshot."""
    aborted_at: datetime | None = None
    """When the cycle was ended by hand: no stage installs its snapshot any more."""
    resumed_at: datetime | None = None
    """When it was last resumed: what finished before (the failures) is not folded again."""

    def start_cycle(self, snapshot: RolloutSnapshot) -> RolloutRecord:
        # A new snapshot: approvals, halts and an abort were of the last one.
        return RolloutRecord(self.cycle + 1, snapshot)

    def with_result(self, instance: str, result: MachineResult) -> RolloutRecord:
        return replace(self, results=MappingProxyType({**self.results, instance: result}))

    def halt(self, reason: str, resume_token: str | None = None) -> RolloutRecord:
        return replace(self, halted=reason, resume_token=resume_token)

    def resume(self, at: datetime | None = None) -> RolloutRecord:
        """Resumed (at ``at``): halted no more, and the failures that halted it forgotten
        (tried again)."""
        kept = {i: r for i, r in self.results.items() if r.outcome not in FAILURES}
        resumed_at = at or self.resumed_at
        results = MappingProxyType(kept)
        return replace(self, halted=None, resume_token=None, results=results, resumed_at=resumed_at)

    def approve(self, stage: str) -> RolloutRecord:
        return replace(self, approvals=self.approvals | {stage})

    def abort(self, at: datetime) -> RolloutRecord:
        return replace(self, aborted_at=at)

    def resumed_by(self, token: str | None) -> bool:
        """Whether a Rollout whose ``resumeToken`` is ``token`` resumes this halted record: the
        token changed since the halt (a commit that says "resume", reviewable in Git)."""
        known = self.halted is not None and self.resume_token is not None
        return known and (token or "") != self.resume_token


class Verdict(StrEnum):
    INSTALL = "Install"
    """The stage's machines install the snapshot (those not on it yet)."""
    BAKING = "Baking"
    BAKED = "Baked"
    WAITING = "Waiting"
    AWAITING_APPROVAL = "AwaitingApproval"
    """Its turn, but a person has not approved this cycle's snapshot for it yet."""
    HALTED = "Halted"


@dataclass(frozen=True, slots=True)
class StageDecision:
    stage: str
    verdict: Verdict
    reason: str
    members: tuple[str, ...]
    to_install: tuple[str, ...] = ()
    """With verdict Install: the members not on the snapshot yet (never installed, failed, or
    still non-compliant); those on it are left alone."""


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    rollout: str
    stages: tuple[StageDecision, ...]
    freeze: bool = False
    """Freeze a new snapshot now (the first stage's window opened, no cycle in progress)."""
    halt: str | None = None
    """A new halt to record, with its reason (and ``resume_token``, the Rollout's token now)."""
    resume_token: str = ""
    resume: bool = False
    """Record a resume: the Rollout's ``resumeToken`` changed since the halt."""

    @property
    def installing(self) -> frozenset[str]:
        """The instances that install the snapshot now."""
        return frozenset(member for stage in self.stages for member in stage.to_install)


def stage_members(rollout: Rollout, snapshot: Snapshot) -> tuple[tuple[str, ...], ...]:
    """Each stage's instances, sorted. Validation refuses an instance that several stages
    select; should one get here, it is in the first of them only, so it installs once a cycle."""
    taken: set[str] = set()
    members: list[tuple[str, ...]] = []
    for stage in rollout.spec.stages:
        mine = tuple(
            name
            for name, instance in sorted(snapshot.instances.items())
            if name not in taken
            and snapshot.selected_by(stage.patch_groups, stage.selector, instance.metadata.labels)
        )
        taken.update(mine)
        members.append(mine)
    return tuple(members)


def decide(
    rollout: Rollout,
    members: Sequence[tuple[str, ...]],
    record: RolloutRecord,
    first_window_open: bool,
    now: datetime,
    opened_at: datetime | None = None,
) -> RolloutDecision:
    """What each stage does now, and why the others wait. ``opened_at``: when the first stage's
    open window opened; after an abort or a completed cycle only an opening later than that
    freezes again (a long window must not restart the cycle it just completed)."""
    name, stages = rollout.metadata.name, rollout.spec.stages
    if record.snapshot is None or record.aborted_at is not None:
        if record.aborted_at is not None:
            first_window_open = first_window_open and _after(opened_at, record.aborted_at)
        return _between_cycles(rollout, members, record, first_window_open)
    if _complete(stages, members, record, now):
        done_at = completed_at(stages, members, record)
        first_window_open = first_window_open and _after(opened_at, done_at)
        return _between_cycles(rollout, members, record, first_window_open)
    token = rollout.spec.resume_token or ""
    if record.resumed_by(rollout.spec.resume_token):
        return replace(decide(rollout, members, record.resume(), False, now), resume=True)
    if record.halted is not None:
        return RolloutDecision(name, _all(stages, members, Verdict.HALTED, record.halted))
    return replace(_stages(rollout, members, record, now), resume_token=token)


def _after(opened_at: datetime | None, ended_at: datetime) -> bool:
    # Unknown opening: wait, rather than re-freeze at once what was just aborted or completed.
    return opened_at is not None and opened_at > ended_at


def completed_at(
    stages: Sequence[RolloutStage], members: Sequence[tuple[str, ...]], record: RolloutRecord
) -> datetime:
    """When a completed cycle's last stage finished its bake (its last machine's install plus
    its bake time): the next cycle freezes only at an opening that began after it."""
    ends = []
    for stage, mine in zip(stages, members, strict=True):
        since = on_snapshot_since(mine, record)
        assert since is not None  # complete: every stage has machines, all on the snapshot
        ends.append(since + timedelta(seconds=bake_seconds(stage.bake_time)))
    return max(ends)


def _stages(
    rollout: Rollout, members: Sequence[tuple[str, ...]], record: RolloutRecord, now: datetime
) -> RolloutDecision:
    name, stages = rollout.metadata.name, rollout.spec.stages
    decided: list[StageDecision] = []
    waits: str | None = None  # why the stages after an unbaked one wait
    for stage, mine in zip(stages, members, strict=True):
        halt = _failed_beyond_limit(stage, mine, record)
        if halt is not None:
            rest = _all(stages[len(decided) :], members[len(decided) :], Verdict.HALTED, halt)
            return RolloutDecision(name, (*decided, *rest), halt=halt)
        if waits is not None:
            why = f"stage {stage.name} waits: {waits}"
            decided.append(StageDecision(stage.name, Verdict.WAITING, why, mine))
            continue
        verdict, reason = _approval(rollout, stage, record) or _progress(stage, mine, record, now)
        pending = _not_on_snapshot(mine, record) if verdict is Verdict.INSTALL else ()
        decided.append(StageDecision(stage.name, verdict, reason, mine, pending))
        if verdict is not Verdict.BAKED:
            waits = reason
    return RolloutDecision(name, tuple(decided))


def _between_cycles(
    rollout: Rollout,
    members: Sequence[tuple[str, ...]],
    record: RolloutRecord,
    first_window_open: bool,
) -> RolloutDecision:
    name, stages = rollout.metadata.name, rollout.spec.stages
    first = stages[0].name
    if first_window_open:
        why = f"stage {first}'s window opened: freezing the approved versions"
        return RolloutDecision(name, _all(stages, members, Verdict.WAITING, why), freeze=True)
    if record.snapshot is None:
        why = f"no snapshot yet: frozen when stage {first}'s window opens"
        return RolloutDecision(name, _all(stages, members, Verdict.WAITING, why))
    if record.aborted_at is not None:
        why = f"cycle {record.cycle} aborted; the next freezes when stage {first}'s window "
        why += "next opens"
        return RolloutDecision(name, _all(stages, members, Verdict.WAITING, why))
    done = f"cycle {record.cycle} done; the next freezes when stage {first}'s window next opens"
    return RolloutDecision(name, _all(stages, members, Verdict.BAKED, done))


def freeze_waits(decision: RolloutDecision, unscanned: Mapping[str, int]) -> RolloutDecision:
    """``decision`` (a freeze) held back while stages have machines never scanned (stage ->
    how many): every stage's baseline gets its versions frozen at the same moment, so the
    freeze waits for all of them, and says for what."""
    what = ", ".join(
        f"{count} machine{'s' if count > 1 else ''} of stage {stage}"
        for stage, count in unscanned.items()
    )
    why = f"freeze waits: {what} not scanned yet"
    return replace(decision, stages=tuple(replace(s, reason=why) for s in decision.stages))


def approved(stage: RolloutStage, record: RolloutRecord) -> bool:
    """Whether ``stage`` may install the cycle's snapshot as far as approval goes: it needs
    none, a commit names the snapshot (``approvedSnapshot``), or it was approved by hand in
    this cycle."""
    if not stage.requires_approval or stage.name in record.approvals:
        return True
    given, snapshot = stage.approved_snapshot, record.snapshot
    return given is not None and snapshot is not None and digest_matches(snapshot.digest, given)


def _approval(
    rollout: Rollout, stage: RolloutStage, record: RolloutRecord
) -> tuple[Verdict, str] | None:
    # Asked only once the stages before are baked: an approval never shortens their bake.
    if approved(stage, record):
        return None
    assert record.snapshot is not None
    return Verdict.AWAITING_APPROVAL, (
        f"stage {stage.name} awaits approval of snapshot {short_digest(record.snapshot.digest)}: "
        f"`patchctl rollout approve {rollout.metadata.name} --stage {stage.name}` or "
        "approvedSnapshot in Git"
    )


def _all(
    stages: Sequence[RolloutStage], members: Sequence[tuple[str, ...]], verdict: Verdict, why: str
) -> tuple[StageDecision, ...]:
    return tuple(
        StageDecision(stage.name, verdict, why, mine)
        for stage, mine in zip(stages, members, strict=True)
    )


def _complete(
    stages: Sequence[RolloutStage],
    members: Sequence[tuple[str, ...]],
    record: RolloutRecord,
    now: datetime,
) -> bool:
    return record.halted is None and all(
        _progress(stage, mine, record, now)[0] is Verdict.BAKED
        for stage, mine in zip(stages, members, strict=True)
    )


def _failed_beyond_limit(
    stage: RolloutStage, mine: tuple[str, ...], record: RolloutRecord
) -> str | None:
    outcomes = [record.results[m].outcome for m in mine if m in record.results]
    failed = [o for o in outcomes if o in FAILURES]
    if not mine or len(failed) * 100 <= stage.max_failed_percent * len(mine):
        return None
    health = sum(1 for o in failed if o is Outcome.HEALTH_CHECK_FAILED)
    what = (
        "failed health checks"
        if health == len(failed)
        else "failed installs"
        if health == 0
        else f"failed ({health} health checks, {len(failed) - health} installs)"
    )
    return (
        f"halted: {len(failed)} of {len(mine)} {stage.name} machines {what}, "
        f"limit {stage.max_failed_percent}%"
    )


def _not_on_snapshot(mine: tuple[str, ...], record: RolloutRecord) -> tuple[str, ...]:
    return tuple(
        m for m in mine if m not in record.results or record.results[m].outcome is not INSTALLED
    )


def _progress(
    stage: RolloutStage, mine: tuple[str, ...], record: RolloutRecord, now: datetime
) -> tuple[Verdict, str]:
    """A stage allowed to run the snapshot: installing it, baking it, or done."""
    if not mine:
        # Nothing can bake the snapshot: later stages must not take it unproven.
        return Verdict.WAITING, f"stage {stage.name} has no machines"
    since = on_snapshot_since(mine, record)
    if since is None:
        installed = len(mine) - len(_not_on_snapshot(mine, record))
        return Verdict.INSTALL, (
            f"stage {stage.name} has {installed} of {len(mine)} machines on the snapshot"
        )
    bake = timedelta(seconds=bake_seconds(stage.bake_time))
    baked = now - since
    reason = f"stage {stage.name} baked {_span(baked, bake)}"
    return (Verdict.BAKED if baked >= bake else Verdict.BAKING), reason


def on_snapshot_since(mine: tuple[str, ...], record: RolloutRecord) -> datetime | None:
    """When the last of a stage's machines finished installing the snapshot (its bake starts
    then); None while one is not on it, or the stage has none."""
    if not mine or _not_on_snapshot(mine, record):
        return None
    return max(record.results[m].finished_at for m in mine)


def failed_machines(mine: tuple[str, ...], record: RolloutRecord) -> int:
    """How many of a stage's machines failed the snapshot (install or health check)."""
    return sum(1 for m in mine if m in record.results and record.results[m].outcome in FAILURES)


def _span(baked: timedelta, bake: timedelta) -> str:
    """``31 h of 48 h`` in the unit the bake time is a whole number of (hours, else minutes)."""
    unit, label = (3600, "h") if bake.total_seconds() % 3600 == 0 else (60, "min")
    done = max(0, int(baked.total_seconds()) // unit)
    return f"{done} {label} of {int(bake.total_seconds()) // unit} {label}"
