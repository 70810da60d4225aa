"""The pure planner under a progressive rollout (docs/rollouts.md): each member's gate, as the
loop's rollouts step hands it over, decides whether it installs now and which pins."""

from __future__ import annotations

from datetime import timedelta

from reconciler.plan import INSTALL, SCAN, Observed, RolloutGate, plan
from reconciler.rollout import freeze
from tests.test_plan import BASELINE, NOON, all_scanned, instances, reasons, scanned, snap, window

OLD, NEW = "openssl=3.0.15-1~deb12u2", "curl=7.88.1-10+deb12u9"
FROZEN = freeze({"debian-prod": {OLD}}, NOON - timedelta(hours=2))


def gate(
    installing: bool, reason: str = "stage dev has 0 of 1 machines on the snapshot"
) -> RolloutGate:
    return RolloutGate("web", "dev", installing, reason, FROZEN)


def test_a_member_of_a_waiting_stage_installs_nothing_and_says_why() -> None:
    snapshot = snap(BASELINE, window(), instances(2))
    waits = "stage prod waits: stage dev baked 31 h of 48 h"
    gates = {"node-1": RolloutGate("web", "prod", False, waits, FROZEN)}
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot), gates=gates), NOON)
    # node-2 is in no stage: unaffected.
    assert [(a.instance, a.operation) for a in result.actions] == [("node-2", INSTALL)]
    assert reasons(result)["node-1"] == f"rollout web: {waits}"
    assert result.gates == gates


def test_a_waiting_member_is_still_scanned() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = {"node-1": scanned(snapshot, age=timedelta(days=2))}
    observed = Observed(scans=scans, gates={"node-1": gate(False, "stage prod waits")})
    (action,) = plan(snapshot, "r1", observed, NOON).actions
    assert action.operation == SCAN


def test_an_installing_member_installs_only_the_snapshot() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = all_scanned(snapshot, pins=(OLD, NEW))
    (action,) = plan(
        snapshot, "r1", Observed(scans=scans, gates={"node-1": gate(True)}), NOON
    ).actions
    assert action.pins == (OLD,)


def test_a_version_approved_after_the_freeze_waits_for_the_next_cycle() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = all_scanned(snapshot, pins=(NEW,))
    result = plan(snapshot, "r1", Observed(scans=scans, gates={"node-1": gate(True)}), NOON)
    assert result.actions == ()
    assert reasons(result)["node-1"] == (
        f"rollout web: stage dev is on snapshot {FROZEN.digest[:19]}; "
        "1 version(s) approved after it wait for the next cycle"
    )


def test_an_installing_member_still_waits_for_its_window() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    observed = Observed(scans=all_scanned(snapshot), gates={"node-1": gate(True)})
    result = plan(snapshot, "r1", observed, NOON + timedelta(hours=6))
    assert result.actions == ()
    assert "window noon closed until" in reasons(result)["node-1"]
