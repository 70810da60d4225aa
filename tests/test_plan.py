"""The pure planner: for every rule of the reconcile issue, one case (desired + observed + now -> plan)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.api.enums import JobStatus, OperatingSystem
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
from tests.factories import inventory

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
    *,
    concurrency: str = "10",
    errors: str = "1",
    enabled: bool = True,
    extra_tasks: str = "",
    schedule: str = "cron(0 12 * * ? *)",
    behaviour: str = "CONTINUE_TASK",
) -> str:
    return f"""
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {{name: noon}}
spec:
  schedule: {schedule}
  duration: 3
  cutoff: 1
  enabled: {str(enabled).lower()}
  targets: {{patchGroups: [web]}}
  tasks:
    - {{name: install, operation: Install, maxConcurrency: "{concurrency}", maxErrors: "{errors}", priority: 2, cutoffBehavior: {behaviour}}}
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


def test_scans_held_back_by_the_scan_budget_are_queued_for_the_slots_scans_free() -> None:
    """The loop starts a queued scan in the slot a finished scan of this plan frees, without
    planning the fleet again (issue 16 item 6); its key is the one the plan would have given."""
    snapshot = snap(BASELINE, window(), instances(5))
    result = plan(snapshot, "r1", Observed(), NOON, Settings(max_scans=3))
    assert [(a.operation, a.instance, a.window) for a in result.queued] == [
        ("Scan", "node-4", None),
        ("Scan", "node-5", None),
    ]
    assert result.queued[0].key.startswith("node-4:Scan:")
    assert result.queued[0].key.endswith(NOON.isoformat())


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


def test_a_compliant_instance_with_held_updates_says_which_are_held() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scan = replace(scanned(snapshot, pins=()), held=("openssl", "postgresql-15"))
    result = plan(snapshot, "r1", Observed(scans={"node-1": scan}), NOON)
    assert result.idle
    assert reasons(result) == {
        "node-1": "compliant: no approved patch is missing; held, never installed: openssl, "
        "postgresql-15"
    }


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


@pytest.mark.parametrize(
    ("behaviour", "cancelled"), [("CANCEL_TASK", (("noon", OPENING),)), ("CONTINUE_TASK", ())]
)
def test_past_a_cancel_task_cutoff_installs_not_started_cancel_the_execution(
    behaviour: str, cancelled: tuple[tuple[str, str], ...]
) -> None:
    snapshot = snap(BASELINE, window(behaviour=behaviour), instances(2))
    scans = all_scanned(snapshot)
    digest = snapshot_digest(scans["node-1"].pins, scans["node-1"].baseline_hash)
    key = f"node-1:Install:{digest}:noon:{OPENING}"
    done = ObservedJob(key, "node-1", "Install", "succeeded", NOON, "noon", "install", OPENING)
    late = NOON + timedelta(hours=2)  # 14:30, past the 14:00 cutoff
    result = plan(snapshot, "r1", Observed(scans=scans, jobs=[done]), late)
    assert result.idle and result.cancelled == cancelled  # node-2's install never started
    both_done = [
        done,
        ObservedJob(
            key.replace("node-1", "node-2"),
            "node-2",
            "Install",
            "succeeded",
            NOON,
            "noon",
            "install",
            OPENING,
        ),
    ]
    assert plan(snapshot, "r1", Observed(scans=scans, jobs=both_done), late).cancelled == ()


def test_an_opening_that_begins_while_the_previous_execution_runs_is_skipped() -> None:
    # Openings at 12:00 and 13:00, 3 h each; at 13:30 both are open.
    snapshot = snap(BASELINE, window(schedule="cron(0 12,13 * * ? *)"), instances(2))
    scans = all_scanned(snapshot)
    at_1330 = NOON + timedelta(hours=1)
    later = "2026-11-28T13:00:00Z"
    (fresh,) = plan(snapshot, "r1", Observed(scans=scans), at_1330).actions[:1]
    assert fresh.opening == later  # no execution runs: the newest opening is in force
    ran = ObservedJob("k1", "node-1", "Install", "succeeded", NOON, "noon", "install", OPENING)
    result = plan(snapshot, "r1", Observed(scans=scans, jobs=[ran]), at_1330)
    assert [a.opening for a in result.actions] == [OPENING, OPENING]  # the running execution's
    assert result.skipped == (("noon", later),)
    # 15:30: the 12:00 opening has ended, 13:00's is open but stays skipped.
    after = plan(
        snapshot,
        "r1",
        Observed(scans=scans, skipped=frozenset({("noon", later)})),
        NOON + timedelta(hours=3),
    )
    assert after.idle
    assert "SKIPPED_OVERLAPPING" in reasons(after)["node-1"]


def test_a_job_outlasting_its_opening_skips_the_next_one() -> None:
    snapshot = snap(BASELINE, window(schedule="rate(3 hours)"), instances(2))
    ended = "2026-11-28T09:00:00Z"  # rate(3 hours) from the epoch: 09:00, 12:00, ...
    running = ObservedJob("k1", "node-1", "Install", "running", NOON, "noon", "install", ended)
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot), jobs=[running]), NOON)
    assert result.idle and result.skipped == (("noon", OPENING),)


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


def test_installs_held_back_by_max_concurrency_alone_are_queued_in_start_order() -> None:
    snapshot = snap(BASELINE, window(concurrency="2"), instances(5))
    running = ObservedJob("k1", "node-1", "Install", "running", NOON, "noon", "install", OPENING)
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot), jobs=[running]), NOON)
    assert [a.instance for a in result.actions] == ["node-2"]
    # What a slot freed by node-1 or node-2 succeeding may start without planning again.
    assert [a.instance for a in result.queued] == ["node-3", "node-4", "node-5"]
    assert {(a.window, a.task, a.opening) for a in result.queued} == {("noon", "install", OPENING)}
    assert result.running == frozenset({"k1"})


@pytest.mark.parametrize(("failed", "queued"), [(1, ["node-2", "node-3", "node-4"]), (2, [])])
def test_a_halted_rollout_queues_nothing(failed: int, queued: list[str]) -> None:
    snapshot = snap(BASELINE, window(concurrency="1", errors="1"), instances(4))
    jobs = [
        ObservedJob(f"k{i}", f"node-{i}", "Install", "failed", NOON, "noon", "install", OPENING)
        for i in range(1, failed + 1)
    ]
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot), jobs=jobs), NOON)
    assert [a.instance for a in result.queued] == queued


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


@pytest.mark.parametrize(("behaviour", "cancelled"), [("CANCEL_TASK", 1), ("CONTINUE_TASK", 0)])
def test_a_window_scan_not_started_by_a_cancel_task_cutoff_cancels_the_execution(
    behaviour: str, cancelled: int
) -> None:
    scan_task = (
        f"    - {{name: scan-first, operation: Scan, priority: 1, cutoffBehavior: {behaviour}}}\n"
    )
    snapshot = snap(BASELINE, window(extra_tasks=scan_task), instances(1))
    before_opening = all_scanned(snapshot, age=timedelta(hours=3), pins=())
    result = plan(snapshot, "r1", Observed(scans=before_opening), NOON + timedelta(hours=2))
    assert result.idle
    assert result.cancelled == (("noon", OPENING),) * cancelled


def test_planning_is_deterministic() -> None:
    snapshot = snap(BASELINE, window(concurrency="3"), instances(12))
    observed = Observed(scans=all_scanned(snapshot))
    assert plan(snapshot, "r1", observed, NOON) == plan(snapshot, "r1", observed, NOON)


def _with_curl_update(scan: ObservedScan) -> ObservedScan:
    """``scan`` with an inventory: curl 7.88.1-10+deb12u8 installed, a non-security update (the
    baseline's implicit security rule does not approve it) and an older one offered."""
    curl = {"name": "curl", "priority": "optional"}
    document = inventory(
        "DEBIAN",
        [{**curl, "version": "7.88.1-10+deb12u8"}],
        [
            {**curl, "version": "7.88.1-10+deb12u9", "installedVersion": "7.88.1-10+deb12u8"},
            {**curl, "version": "7.88.1-10+deb12u10", "installedVersion": "7.88.1-10+deb12u8"},
        ],
    ).model_dump(mode="json", by_alias=True)
    return replace(scan, inventory=document)


OVERRIDE_TASK = (
    "    - {name: curl-now, operation: Install, installOverrideList: [curl, 'nothing*']}\n"
)
# debian-prod without its BLOCK list, approving curl whether or not it is a security update.
NON_SECURITY = "\n---\n" + BASELINE.split("---")[0].replace(
    "debian-prod", "debian-everything"
).replace(
    "  rejectedPatches: [telnetd]\n  rejectedPatchesAction: BLOCK\n",
    "  approvedPatches: [curl]\n  approvedPatchesEnableNonSecurity: true\n",
)


def test_an_install_override_list_task_installs_its_packages_on_a_compliant_machine() -> None:
    """SSM's InstallOverrideList: the listed packages' newest updates are installed although
    the baseline approves none of them (the machine is compliant)."""
    snapshot = snap(BASELINE, window(extra_tasks=OVERRIDE_TASK), instances(1))
    scan = _with_curl_update(scanned(snapshot, pins=()))
    (action,) = plan(snapshot, "r1", Observed(scans={"node-1": scan}), NOON).actions
    assert (action.operation, action.task, action.pins) == (
        "Install",
        "curl-now",
        ("curl=7.88.1-10+deb12u10",),
    )
    assert (
        action.reason == "1 patch(es) of its installOverrideList; curl-now of window noon is open"
    )
    assert action.blocked == ("telnetd",)  # the baseline's BLOCK list still holds
    done = ObservedJob(action.key, "node-1", "Install", JobStatus.SUCCEEDED, NOON, "noon",
                       "curl-now", OPENING)  # fmt: skip
    again = plan(snapshot, "r1", Observed(scans={"node-1": scan}, jobs=[done]), NOON)
    assert again.idle  # the same list on the same inventory is not dispatched twice


def test_an_install_override_list_naming_no_update_leaves_the_machine_waiting() -> None:
    snapshot = snap(BASELINE, window(extra_tasks=OVERRIDE_TASK), instances(1))
    result = plan(snapshot, "r1", Observed(scans=all_scanned(snapshot, pins=())), NOON)
    assert result.idle
    assert (
        "curl-now of noon: its installOverrideList names no package with an update"
        in (reasons(result)["node-1"])
    )


def test_a_baseline_override_task_installs_what_that_baseline_approves() -> None:
    """SSM's BaselineOverride: the task installs by another baseline's approvals (and its BLOCK
    list) on the machines of that baseline's operating system."""
    task = "    - {name: everything, operation: Install, baselineOverride: debian-everything}\n"
    snapshot = snap(BASELINE + NON_SECURITY, window(extra_tasks=task), instances(1))
    scan = _with_curl_update(scanned(snapshot, pins=()))
    (action,) = plan(snapshot, "r1", Observed(scans={"node-1": scan}), NOON).actions
    assert (action.task, action.pins, action.baseline, action.blocked) == (
        "everything",
        ("curl=7.88.1-10+deb12u10",),
        "debian-everything",
        (),
    )


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
