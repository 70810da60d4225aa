"""The rollout planner (issue 15, groundwork): pure decisions with an injected clock.

Unit tests pin the reasons a user reads ("stage prod waits: stage dev baked 31 h of 48 h",
"halted: 3 of 10 dev machines failed health checks, limit 10%"); the property test drives the
planner like the loop will, through random clocks, releases, failures and windows, and checks the
promises: no stage installs a version its predecessor did not bake for its bake time, a halted
rollout installs nothing more, and a version released mid-cycle waits for the next cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from reconciler.api.enums import JobStatus
from reconciler.api.resources import ManagedInstance, PatchGroup, Rollout, bake_seconds
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation import evaluate
from reconciler.evaluation.pins import approved_pins, pins_for
from reconciler.rollout import (
    MachineResult,
    Outcome,
    RolloutRecord,
    Verdict,
    decide,
    freeze,
    result_of_job,
    stage_members,
)
from tests.factories import NOW, baseline, inventory

T0 = datetime(2030, 3, 4, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def rollout(*stages: dict[str, Any]) -> Rollout:
    return Rollout.model_validate(
        {
            "apiVersion": "patchwarden.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "web"},
            "spec": {"stages": list(stages)},
        }
    )


def stage(name: str, bake: str = "0m", limit: int = 0) -> dict[str, Any]:
    return {"name": name, "patchGroups": [name], "bakeTime": bake, "maxFailedPercent": limit}


DEV_PROD = rollout(stage("dev", "48h", limit=10), stage("prod"))


def machines(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}-{i}" for i in range(count))


def on_snapshot(record: RolloutRecord, names: Sequence[str], at: datetime) -> RolloutRecord:
    for name in names:
        record = record.with_result(name, MachineResult(Outcome.INSTALLED, at))
    return record


def started(at: datetime = T0) -> RolloutRecord:
    return RolloutRecord().start_cycle(freeze({"debian": ["openssl=3.0.1"]}, at))


def verdicts(decision: Any) -> dict[str, tuple[Verdict, str]]:
    return {s.stage: (s.verdict, s.reason) for s in decision.stages}


def test_no_snapshot_until_the_first_stage_window_opens_then_freeze() -> None:
    members = (machines("dev", 2), machines("prod", 2))
    closed = decide(DEV_PROD, members, RolloutRecord(), False, T0)
    assert not closed.freeze and closed.installing == frozenset()
    assert verdicts(closed)["prod"][1] == "no snapshot yet: frozen when stage dev's window opens"
    assert decide(DEV_PROD, members, RolloutRecord(), True, T0).freeze


def test_the_first_stage_installs_then_prod_waits_for_the_bake() -> None:
    dev, prod = machines("dev", 10), machines("prod", 3)
    record = started()
    first = decide(DEV_PROD, (dev, prod), record, True, T0)
    assert first.installing == frozenset(dev) and not first.freeze
    assert verdicts(first)["prod"] == (
        Verdict.WAITING,
        "stage prod waits: stage dev has 0 of 10 machines on the snapshot",
    )
    record = on_snapshot(record, dev, T0 + HOUR)
    baking = decide(DEV_PROD, (dev, prod), record, False, T0 + 32 * HOUR)
    assert verdicts(baking) == {
        "dev": (Verdict.BAKING, "stage dev baked 31 h of 48 h"),
        "prod": (Verdict.WAITING, "stage prod waits: stage dev baked 31 h of 48 h"),
    }
    assert baking.installing == frozenset()
    promoted = decide(DEV_PROD, (dev, prod), record, False, T0 + 49 * HOUR)
    assert verdicts(promoted)["dev"] == (Verdict.BAKED, "stage dev baked 48 h of 48 h")
    assert promoted.installing == frozenset(prod)


def test_health_check_failures_beyond_the_limit_halt_the_rollout() -> None:
    dev, prod = machines("dev", 10), machines("prod", 3)
    record = on_snapshot(started(), dev, T0 + HOUR)
    for name in dev[:3]:
        failed = result_of_job(JobStatus.FAILED, "HealthCheckFailed", T0 + 2 * HOUR)
        record = record.with_result(name, failed)
    decision = decide(DEV_PROD, (dev, prod), record, False, T0 + 60 * HOUR)
    reason = "halted: 3 of 10 dev machines failed health checks, limit 10%"
    assert decision.halt == reason
    assert verdicts(decision) == {"dev": (Verdict.HALTED, reason), "prod": (Verdict.HALTED, reason)}
    assert decision.installing == frozenset()
    # Recorded, it stays halted even once the machines are healthy again...
    halted = on_snapshot(record.halt(reason), dev, T0 + 3 * HOUR)
    later = decide(DEV_PROD, (dev, prod), halted, True, T0 + 100 * HOUR)
    assert later.installing == frozenset() and later.halt is None and not later.freeze
    # ...until resumed.
    assert decide(DEV_PROD, (dev, prod), halted.resume(), False, T0 + 100 * HOUR).installing == (
        frozenset(prod)
    )


def test_one_failure_within_the_limit_holds_the_stage_without_halting() -> None:
    dev, prod = machines("dev", 10), machines("prod", 3)
    record = on_snapshot(started(), dev[1:], T0 + HOUR)
    record = record.with_result(dev[0], result_of_job(JobStatus.FAILED, "Failed", T0 + HOUR))
    decision = decide(DEV_PROD, (dev, prod), record, False, T0 + 60 * HOUR)
    assert decision.halt is None
    assert decision.installing == {dev[0]}  # the failed machine is tried again, alone
    assert verdicts(decision)["prod"][1] == (
        "stage prod waits: stage dev has 9 of 10 machines on the snapshot"
    )


def test_a_stage_without_machines_holds_the_stages_after_it() -> None:
    decision = decide(DEV_PROD, ((), machines("prod", 2)), started(), False, T0 + 99 * HOUR)
    assert decision.installing == frozenset()
    assert verdicts(decision)["prod"][1] == "stage prod waits: stage dev has no machines"


def test_the_snapshot_is_content_addressed_and_confines_pins_per_baseline() -> None:
    snap = freeze({"debian": ["openssl=3.0.1", "curl=8.1"], "rhel": ["bash=5.2"]}, T0)
    same = freeze({"rhel": ["bash=5.2"], "debian": ["curl=8.1", "openssl=3.0.1"]}, T0 + HOUR)
    assert snap.digest == same.digest and snap.digest.startswith("sha256:")
    assert snap.digest != freeze({"debian": ["openssl=3.0.2"]}, T0).digest
    held, later = snap.confine("debian", ["openssl=3.0.2", "curl=8.1", "bash=5.2"])
    assert (held, later) == (("curl=8.1",), ("openssl=3.0.2", "bash=5.2"))


def test_stage_members_come_from_groups_and_an_instance_joins_the_first_stage_only() -> None:
    def instance(name: str, group: str) -> ManagedInstance:
        return ManagedInstance.model_validate(
            {
                "apiVersion": "patchwarden.io/v1alpha1",
                "kind": "ManagedInstance",
                "metadata": {"name": name, "labels": {"patchwarden.io/patch-group": group}},
                "spec": {"connection": {"type": "local"}},
            }
        )

    def group(name: str) -> PatchGroup:
        doc = {"apiVersion": "patchwarden.io/v1alpha1", "kind": "PatchGroup"}
        return PatchGroup.model_validate({**doc, "metadata": {"name": name}})

    snap = Snapshot(
        groups={"dev": group("dev"), "prod": group("prod")},
        instances={"d1": instance("d1", "dev"), "p1": instance("p1", "prod")},
    )
    both = rollout(stage("dev"), {"name": "all", "patchGroups": ["dev", "prod"]})
    assert stage_members(both, snap) == (("d1",), ("p1",))


# -- the property: the planner driven like the loop will drive it ------------------------------


@dataclass
class Fleet:
    """A simulated fleet: one baseline, package ``pkg`` released as versions 1, 2, 3..."""

    plan: Rollout
    members: tuple[tuple[str, ...], ...]
    record: RolloutRecord = field(default_factory=RolloutRecord)
    now: datetime = T0
    released: int = 1
    installs: list[tuple[datetime, int, str, tuple[str, ...], int]] = field(default_factory=list)
    """(when, stage index, machine, pins, cycle)."""
    installed_at: dict[tuple[int, str], dict[str, datetime]] = field(default_factory=dict)
    """(cycle, pin) -> machine -> when its install of the pin succeeded."""
    installs_before_halt: int | None = None
    """How many installs had started when the rollout halted."""


STEP = st.tuples(
    st.integers(min_value=0, max_value=30),  # hours that pass
    st.booleans(),  # the first stage's window is open
    st.booleans(),  # a new version is released
    # Each machine's outcome, by its place in its stage: mostly installed, sometimes failed.
    st.lists(
        st.sampled_from([Outcome.INSTALLED] * 8 + [Outcome.FAILED, Outcome.HEALTH_CHECK_FAILED]),
        min_size=4,
        max_size=4,
    ),
)


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    count = draw(st.integers(min_value=2, max_value=4))
    stages = [
        stage(
            f"s{i}",
            draw(st.sampled_from(["0m", "30m", "12h", "2d"])),
            draw(st.sampled_from([0, 25, 50, 100])),
        )
        for i in range(count)
    ]
    # Empty stages sometimes (they must hold the stages after them), mostly not.
    size = st.sampled_from([0, 1, 2, 3, 4, 1, 2, 3])
    sizes = draw(st.lists(size, min_size=count, max_size=count))
    members = tuple(machines(f"s{i}", n) for i, n in enumerate(sizes))
    return Fleet(rollout(*stages), members)


def step(
    fleet: Fleet, hours: int, window: bool, release: bool, outcomes: Sequence[Outcome]
) -> None:
    fleet.now += timedelta(hours=hours)
    if release:
        fleet.released += 1
    # Each step with the window open is a new opening, so a completed cycle restarts (an
    # aborted one stays ended: the halt and abort checks count installs across cycles).
    opened_at = fleet.now if window and fleet.record.aborted_at is None else None
    decision = decide(fleet.plan, fleet.members, fleet.record, window, fleet.now, opened_at)
    if decision.freeze:
        pins = [f"pkg={v}" for v in range(1, fleet.released + 1)]
        fleet.record = fleet.record.start_cycle(freeze({"debian": pins}, fleet.now))
        return
    if decision.halt is not None:
        fleet.record = fleet.record.halt(decision.halt)
        fleet.installs_before_halt = len(fleet.installs)
        return
    assert fleet.record.snapshot is not None or not decision.installing
    for index, stage_decision in enumerate(decision.stages):
        assert not stage_decision.to_install or stage_decision.verdict is Verdict.INSTALL
        for machine in stage_decision.to_install:
            place = stage_decision.members.index(machine)
            install(fleet, index, machine, outcomes[place])


def install(fleet: Fleet, index: int, machine: str, outcome: Outcome) -> None:
    assert fleet.record.snapshot is not None
    available = [f"pkg={v}" for v in range(1, fleet.released + 1)]
    pins, _ = fleet.record.snapshot.confine("debian", available)
    cycle = fleet.record.cycle
    fleet.installs.append((fleet.now, index, machine, pins, cycle))
    if outcome is Outcome.INSTALLED:
        for pin in pins:
            fleet.installed_at.setdefault((cycle, pin), {})[machine] = fleet.now
    fleet.record = fleet.record.with_result(machine, MachineResult(outcome, fleet.now))


def check(fleet: Fleet) -> None:
    stages = fleet.plan.spec.stages
    if fleet.installs_before_halt is not None:
        assert len(fleet.installs) == fleet.installs_before_halt, "installed after the halt"
    for when, index, _machine, pins, cycle in fleet.installs:
        if index == 0:
            continue
        for pin in pins:
            bake = timedelta(seconds=bake_seconds(stages[index - 1].bake_time))
            baked_by = fleet.installed_at.get((cycle, pin), {})
            before = fleet.members[index - 1]
            assert before and all(m in baked_by and baked_by[m] + bake <= when for m in before), (
                f"stage {index} installed {pin} before stage {index - 1} baked it"
            )


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(STEP, min_size=1, max_size=60))
def test_no_stage_installs_what_its_predecessor_did_not_bake(
    fleet: Fleet, steps: list[tuple[int, bool, bool, list[Outcome]]]
) -> None:
    for hours, window, release, outcomes in steps:
        step(fleet, hours, window, release, outcomes)
    check(fleet)
    # That the cases reach what the property is about (--hypothesis-show-statistics).
    event(f"a later stage installed: {any(index > 0 for _, index, *_ in fleet.installs)}")
    event(f"halted: {fleet.installs_before_halt is not None}")
    event(f"cycles: {min(fleet.record.cycle, 3)}")


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(STEP, min_size=1, max_size=60))
def test_versions_released_mid_cycle_wait_for_the_next_cycle(
    fleet: Fleet, steps: list[tuple[int, bool, bool, list[Outcome]]]
) -> None:
    frozen_at_release: dict[int, int] = {}
    for hours, window, release, outcomes in steps:
        cycle = fleet.record.cycle
        step(fleet, hours, window, release, outcomes)
        if fleet.record.cycle != cycle:
            frozen_at_release[fleet.record.cycle] = fleet.released
    for _when, _index, _machine, pins, cycle in fleet.installs:
        assert all(int(pin.split("=")[1]) <= frozen_at_release[cycle] for pin in pins)


def test_a_snapshot_freezes_installed_and_missing_approved_versions() -> None:
    approves = baseline(
        "UBUNTU", approvedPatches=["openssl", "curl"], approvedPatchesEnableNonSecurity=True
    )
    installed = [
        {"name": "openssl", "version": "3.0.2-1", "priority": "optional"},
        {"name": "curl", "version": "7.81-1", "priority": "optional"},
        {"name": "vim", "version": "8.2-1", "priority": "optional"},
    ]
    updates = [
        {"name": n, "version": v, "installedVersion": i, "priority": "optional"}
        for n, v, i in (("openssl", "3.0.2-2", "3.0.2-1"), ("vim", "8.2-2", "8.2-1"))
    ]
    result = evaluate(approves, inventory("UBUNTU", installed, updates), NOW)
    assert pins_for(result, "amd64") == ("openssl=3.0.2-2",)
    # curl is on the machine already: a later stage without it still gets exactly this version.
    assert sorted(approved_pins(result, "amd64")) == ["curl=7.81-1", "openssl=3.0.2-2"]


# -- operator controls: manual approval, resume, abort -------------------------------------------


def gated(bake: str = "48h", approved: str | None = None) -> Rollout:
    prod = {**stage("prod"), "requiresApproval": True}
    if approved is not None:
        prod["approvedSnapshot"] = approved
    return rollout(stage("dev", bake), prod)


def test_a_stage_that_requires_approval_waits_for_it_after_the_bake_then_installs() -> None:
    dev, prod = machines("dev", 2), machines("prod", 2)
    record = on_snapshot(started(), dev, T0 + HOUR)
    short = record.snapshot.digest.removeprefix("sha256:")[:7] if record.snapshot else ""
    # Approved early, by hand: the approval does not shorten dev's bake.
    early = decide(gated(), (dev, prod), record.approve("prod"), False, T0 + 32 * HOUR)
    assert early.installing == frozenset()
    assert verdicts(early)["prod"][1] == "stage prod waits: stage dev baked 31 h of 48 h"
    waiting = decide(gated(), (dev, prod), record, False, T0 + 49 * HOUR)
    assert waiting.installing == frozenset()
    assert verdicts(waiting)["prod"] == (
        Verdict.AWAITING_APPROVAL,
        f"stage prod awaits approval of snapshot {short}: "
        "`patchctl rollout approve web --stage prod` or approvedSnapshot in Git",
    )
    by_hand = decide(gated(), (dev, prod), record.approve("prod"), False, T0 + 49 * HOUR)
    assert by_hand.installing == frozenset(prod)
    by_commit = decide(gated(approved=short), (dev, prod), record, False, T0 + 49 * HOUR)
    assert by_commit.installing == frozenset(prod)
    other = decide(gated(approved="0123456789"), (dev, prod), record, False, T0 + 49 * HOUR)
    assert other.installing == frozenset()


def test_an_approval_by_hand_is_for_its_cycle_only() -> None:
    dev, prod = machines("dev", 1), machines("prod", 1)
    approved = on_snapshot(started().approve("prod"), dev, T0 + HOUR)
    newer = freeze({"debian": ["openssl=3.0.2"]}, T0 + 90 * HOUR)
    record = on_snapshot(approved.start_cycle(newer), dev, T0 + 91 * HOUR)
    decision = decide(gated("0m"), (dev, prod), record, False, T0 + 92 * HOUR)
    assert verdicts(decision)["prod"][0] is Verdict.AWAITING_APPROVAL
    assert decision.installing == frozenset()


def test_an_abort_ends_the_cycle_until_the_first_stage_window_opens_again() -> None:
    dev, prod = machines("dev", 2), machines("prod", 2)
    aborted = started().abort(T0 + HOUR)
    during = decide(DEV_PROD, (dev, prod), aborted, True, T0 + 2 * HOUR, opened_at=T0)
    assert during.installing == frozenset() and not during.freeze
    assert verdicts(during)["dev"] == (
        Verdict.WAITING,
        "cycle 1 aborted; the next freezes when stage dev's window next opens",
    )
    unknown = decide(DEV_PROD, (dev, prod), aborted, True, T0 + 2 * HOUR)
    assert not unknown.freeze  # an opening of unknown start could be the aborted one's
    again = decide(DEV_PROD, (dev, prod), aborted, True, T0 + 25 * HOUR, opened_at=T0 + 24 * HOUR)
    assert again.freeze
    assert RolloutRecord().start_cycle(freeze({}, T0)).start_cycle(freeze({}, T0)).cycle == 2


def test_a_completed_cycle_waits_for_an_opening_that_began_after_it() -> None:
    """A long first-stage window (open for days) must not restart the cycle it just completed:
    the next freezes only at an opening that began after the last stage's bake ended."""
    dev, prod = machines("dev", 1), machines("prod", 1)
    record = on_snapshot(on_snapshot(started(), dev, T0 + HOUR), prod, T0 + 50 * HOUR)
    done_at = T0 + 50 * HOUR  # prod bakes 0m: the cycle completed with its install

    same = decide(DEV_PROD, (dev, prod), record, True, T0 + 51 * HOUR, opened_at=T0)
    assert not same.freeze and same.installing == frozenset()
    assert verdicts(same)["dev"] == (
        Verdict.BAKED,
        "cycle 1 done; the next freezes when stage dev's window next opens",
    )
    assert not decide(DEV_PROD, (dev, prod), record, True, T0 + 51 * HOUR).freeze
    at_the_end = decide(DEV_PROD, (dev, prod), record, True, T0 + 51 * HOUR, opened_at=done_at)
    assert not at_the_end.freeze
    later = done_at + timedelta(minutes=1)
    assert decide(DEV_PROD, (dev, prod), record, True, later, opened_at=later).freeze


def test_a_commit_that_changes_the_resume_token_resumes_a_halted_rollout() -> None:
    dev, prod = machines("dev", 1), machines("prod", 1)
    failed = started().with_result(dev[0], MachineResult(Outcome.FAILED, T0 + HOUR))
    plain = rollout(stage("dev"), stage("prod"))
    halting = decide(plain, (dev, prod), failed, False, T0 + 2 * HOUR)
    assert halting.halt is not None and halting.resume_token == ""
    halted = failed.halt(halting.halt, halting.resume_token)
    assert decide(plain, (dev, prod), halted, False, T0 + 3 * HOUR).installing == frozenset()
    tokened = Rollout.model_validate(
        {**plain.to_wire(), "spec": {**plain.to_wire()["spec"], "resumeToken": "INC-42"}}
    )
    resumed = decide(tokened, (dev, prod), halted, False, T0 + 3 * HOUR)
    assert resumed.resume and resumed.installing == frozenset(dev)  # the failure is tried again
    # A halt recorded without the token (by hand only) is not resumed by a commit.
    untold = failed.halt(halting.halt)
    assert not decide(tokened, (dev, prod), untold, False, T0 + 3 * HOUR).resume


APPROVE = st.one_of(st.none(), st.integers(min_value=0, max_value=3))
ABORT = st.sampled_from([False] * 19 + [True])  # rare, so cycles run on before one


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(st.tuples(STEP, APPROVE, ABORT), min_size=1, max_size=60))
def test_approvals_never_skip_a_bake_and_an_abort_stops_all_installs(
    fleet: Fleet, steps: list[tuple[tuple[int, bool, bool, list[Outcome]], int | None, bool]]
) -> None:
    wire = fleet.plan.to_wire()
    for index in range(1, len(wire["spec"]["stages"])):
        wire["spec"]["stages"][index]["requiresApproval"] = index % 2 == 1
    fleet.plan = Rollout.model_validate(wire)
    aborted: dict[int, int] = {}  # cycle -> installs started before its abort
    for (hours, window, release, outcomes), approve, abort in steps:
        if approve is not None and approve < len(fleet.members):
            fleet.record = fleet.record.approve(f"s{approve}")
        if abort and fleet.record.snapshot is not None and fleet.record.cycle not in aborted:
            aborted[fleet.record.cycle] = len(fleet.installs)
            fleet.record = fleet.record.abort(fleet.now)
        step(fleet, hours, window, release, outcomes)
    check(fleet)
    for place, (_when, _index, _machine, _pins, cycle) in enumerate(fleet.installs):
        assert cycle not in aborted or place < aborted[cycle], "installed after the abort"
    approved_installed = any(index % 2 == 1 for _, index, *_ in fleet.installs)
    event(f"a stage that requires approval installed: {approved_installed}")
    event(f"aborted: {bool(aborted)}")
