"""The pure planner: for every rule of the reconcile issue, one case (desired + observed + now -> plan)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.api.enums import OperatingSystem
from reconciler.api.snapshot import Snapshot, build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.plan import (
    Observed,
    ObservedJob,
    ObservedScan,
    Settings,
    baseline_digest,
    plan,
    snapshot_digest,
)

NOON = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
OPENING = "2026-11-28T12:00:00Z"

BASELINE = """
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: debian-prod}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required, Important, Standard, Optional, Extra]}]}
  rejectedPatches: [telnetd]
  rejectedPatchesAction: BLOCK
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  baselines: {DEBIAN: debian-prod}
"""


def window(
    *, concurrency: str = "10", errors: str = "1", enabled: bool = True, extra_tasks: str = ""
) -> str:
    return f"""
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {{name: noon}}
spec:
  schedule: cron(0 12 * * ? *)
  duration: 3
  cutoff: 1
  enabled: {str(enabled).lower()}
  targets: {{patchGroups: [web]}}
  tasks:
    - {{name: install, operation: Install, maxConcurrency: "{concurrency}", maxErrors: "{errors}", priority: 2}}
{extra_tasks}"""


def instances(count: int) -> str:
    return "".join(
        f"---\napiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
        f"metadata: {{name: node-{i}, labels: {{role: web}}}}\nspec: {{connection: {{type: local, root: /srv/node-{i}}}}}\n"
        for i in range(1, count + 1)
    )


def snap(*docs: str) -> Snapshot:
    return build_snapshot([("fleet.yaml", "\n---\n".join(docs).encode())], predefined_baselines())


def scanned(
    snapshot: Snapshot,
    *,
    pins: tuple[str, ...] = ("openssl=3.0.15-1~deb12u2",),
    age: timedelta = timedelta(hours=1),
    baseline: str = "debian-prod",
) -> ObservedScan:
    digest = baseline_digest(snapshot.baseline(baseline))  # type: ignore[arg-type]
    return ObservedScan(NOON - age, OperatingSystem.DEBIAN, digest, pins, non_compliant=bool(pins))


def all_scanned(snapshot: Snapshot, **kwargs: object) -> dict[str, ObservedScan]:
    return {name: scanned(snapshot, **kwargs) for name in snapshot.instances}  # type: ignore[arg-type]


def reasons(result: object) -> dict[str, str]:
    return {w.instance: w.reason for w in result.waits}  # type: ignore[attr-defined]


def test_never_scanned_instances_are_scanned_first_within_the_scan_budget() -> None:
    snapshot = snap(BASELINE, window(), instances(4))
    result = plan(snapshot, "r1", Observed(), NOON, Settings(max_scans=3))
    assert [(a.operation, a.instance, a.reason) for a in result.actions] == [
        ("Scan", f"node-{i}", "never scanned") for i in (1, 2, 3)
    ]
    assert reasons(result) == {"node-4": "needs a scan (never scanned); other scans go first"}


def test_missing_patches_in_an_open_window_are_installed_with_exactly_the_scanned_pins() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scan = scanned(snapshot, pins=("openssl=3.0.15-1~deb12u2", "libc6=2.36-9+deb12u9"))
    (action,) = plan(snapshot, "r1", Observed(scans={"node-1": scan}), NOON).actions
    assert (action.operation, action.window, action.task, action.opening) == (
        "Install",
        "noon",
        "install",
        OPENING,
    )
    assert action.pins == scan.pins
    assert action.blocked == ("telnetd",)  # rejected with BLOCK: the agent refuses to install it
    digest = snapshot_digest(scan.pins, scan.baseline_hash)
    assert action.key == f"node-1:Install:{digest}:noon:{OPENING}"


def test_compliant_instances_wait() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot, pins=())), NOON)
    assert result.idle
    assert reasons(result) == {"node-1": "compliant: no approved patch is missing"}


def test_closed_window_says_when_it_opens() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot)), NOON - timedelta(hours=3))
    (wait,) = result.waits
    assert result.idle
    assert wait.reason == "window noon closed until 2026-11-28T12:00:00+00:00"
    assert wait.until == datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_no_job_starts_after_the_cutoff() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot)), NOON + timedelta(hours=2))
    assert result.idle
    assert "window noon is past its cutoff (2026-11-28T14:00:00+00:00)" in reasons(result)["node-1"]


def test_disabled_window_never_installs() -> None:
    snapshot = snap(BASELINE, window(enabled=False), instances(1))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot)), NOON)
    assert result.idle
    assert "no enabled window with an Install task targets it" in reasons(result)["node-1"]


@pytest.mark.parametrize(("concurrency", "started"), [("2", 2), ("40%", 2), ("100%", 5), ("1%", 1)])
def test_max_concurrency_caps_jobs_per_task(concurrency: str, started: int) -> None:
    snapshot = snap(BASELINE, window(concurrency=concurrency), instances(5))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot)), NOON)
    assert [a.instance for a in result.actions] == [f"node-{i}" for i in range(1, started + 1)]
    for name, reason in reasons(result).items():
        assert f"maxConcurrency {concurrency} of install reached" in reason, name


def test_running_jobs_hold_their_slots() -> None:
    snapshot = snap(BASELINE, window(concurrency="2"), instances(4))
    running = ObservedJob("k1", "node-1", "Install", "running", NOON, "noon", "install", OPENING)
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot), jobs=[running]), NOON)
    assert [a.instance for a in result.actions] == ["node-2"]
    assert reasons(result)["node-1"] == "a job is running on it"


@pytest.mark.parametrize(("failed", "halted"), [(1, False), (2, True)])
def test_max_errors_halts_the_rollout(failed: int, halted: bool) -> None:
    snapshot = snap(BASELINE, window(errors="1"), instances(4))
    jobs = [
        ObservedJob(f"k{i}", f"node-{i}", "Install", "failed", NOON, "noon", "install", OPENING)
        for i in range(1, failed + 1)
    ]
    scans = all_scanned(snapshot)
    result = plan(snapshot, "r1", Observed(scans=scans, jobs=jobs), NOON)
    if halted:
        assert result.idle
        assert all(
            "rollout halted: 2 failed job(s) in install of window noon exceed maxErrors 1" in r
            for r in reasons(result).values()
        )
    else:
        assert result.actions


def test_a_snapshot_is_never_dispatched_twice_in_one_opening() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = all_scanned(snapshot)
    digest = snapshot_digest(scans["node-1"].pins, scans["node-1"].baseline_hash)
    done = ObservedJob(
        f"node-1:Install:{digest}:noon:{OPENING}",
        "node-1",
        "Install",
        "succeeded",
        NOON,
        "noon",
        "install",
        OPENING,
    )
    result = plan(snapshot, "r1", Observed(scans=scans, jobs=[done]), NOON)
    assert result.idle
    assert "already dispatched in window noon" in reasons(result)["node-1"]


def test_baseline_change_rescans_before_installing() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scan = ObservedScan(
        NOON - timedelta(hours=1), OperatingSystem.DEBIAN, "an-older-baseline", ("a=1",), True
    )
    (action,) = plan(snapshot, "r1", Observed(scans={"node-1": scan}), NOON).actions
    assert (action.operation, action.reason) == ("Scan", "its baseline changed since the last scan")


def test_stale_scans_are_redone() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = all_scanned(snapshot, age=timedelta(hours=30), pins=())
    (action,) = plan(
        snapshot, "r1", Observed(scans=scans), NOON, Settings(stale_after=timedelta(hours=24))
    ).actions
    assert action.operation == "Scan" and "older than" in action.reason


def test_a_job_left_in_flight_is_resolved_by_a_rescan() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scans = all_scanned(snapshot)
    abandoned = ObservedJob(
        "k-lost",
        "node-1",
        "Install",
        "abandoned",
        NOON - timedelta(minutes=5),
        "noon",
        "install",
        OPENING,
    )
    (action,) = plan(snapshot, "r1", Observed(scans=scans, jobs=[abandoned]), NOON).actions
    assert action.operation == "Scan"
    assert action.reason == "job k-lost was left in flight; rescan to learn what happened"


def test_a_failed_scan_is_retried_only_after_a_while() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    failed = ObservedJob("k-scan", "node-1", "Scan", "failed", NOON - timedelta(minutes=2))
    result = plan(
        snapshot, "r1", Observed(jobs=[failed]), NOON, Settings(retry_after=timedelta(minutes=10))
    )
    assert result.idle and result.waits[0].until == NOON + timedelta(minutes=8)
    later = plan(snapshot, "r1", Observed(jobs=[failed]), NOON + timedelta(minutes=9))
    assert [a.operation for a in later.actions] == ["Scan"]


def test_lower_priority_number_runs_first() -> None:
    scan_task = '    - {name: scan-first, operation: Scan, maxConcurrency: "10", maxErrors: "1", priority: 1}\n'
    snapshot = snap(BASELINE, window(extra_tasks=scan_task), instances(2))
    running = ObservedJob("k", "node-1", "Scan", "running", NOON, "noon", "scan-first", OPENING)
    fresh = all_scanned(snapshot, age=timedelta(minutes=10))  # scanned in this opening already
    result = plan(snapshot, "r1", Observed(scans=fresh, jobs=[running]), NOON)
    assert result.idle
    assert reasons(result)["node-2"] == "task install waits for lower-priority tasks of noon"


def test_a_window_scan_task_scans_once_per_opening() -> None:
    scan_task = '    - {name: scan-first, operation: Scan, maxConcurrency: "10", maxErrors: "1", priority: 1}\n'
    snapshot = snap(BASELINE, window(extra_tasks=scan_task), instances(1))
    before_opening = all_scanned(snapshot, age=timedelta(hours=2))
    (action,) = plan(snapshot, "r1", Observed(scans=before_opening), NOON).actions
    assert (action.operation, action.task, action.key) == (
        "Scan",
        "scan-first",
        f"node-1:Scan:noon:{OPENING}",
    )
    after_opening = all_scanned(snapshot, age=timedelta(minutes=10))
    (action,) = plan(snapshot, "r1", Observed(scans=after_opening), NOON).actions
    assert action.operation == "Install"


def test_planning_is_deterministic() -> None:
    snapshot = snap(BASELINE, window(concurrency="3"), instances(12))
    observed = Observed(scans=all_scanned(snapshot))
    assert plan(snapshot, "r1", observed, NOON) == plan(snapshot, "r1", observed, NOON)


def test_window_targets_select_instances_by_labels_as_well_as_by_group() -> None:
    by_labels = window().replace(
        "targets: {patchGroups: [web]}", "targets: {selector: {matchLabels: {rack: r1}}}"
    )
    fleet = instances(2).replace(
        "node-1, labels: {role: web}", "node-1, labels: {role: web, rack: r1}"
    )
    snapshot = snap(BASELINE, by_labels, fleet)
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot)), NOON)
    assert [(a.operation, a.instance) for a in result.actions] == [("Install", "node-1")]
    assert "no enabled window with an Install task targets it" in reasons(result)["node-2"]
