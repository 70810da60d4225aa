"""Stage: controller. What the status of each custom resource says after a pass (kstatus style).

Pure: from what the pass saw (the objects listed, the set in force, why a set was refused, the
store's latest scans, jobs and window executions, the planner's reasons to wait) to one status
document per object. Writing it is :mod:`reconciler.state.kubernetes`'s job.

Every status has ``observedGeneration`` (the generation this pass read) and the conditions
``Ready``, ``Reconciling`` and ``Stalled``; negative-polarity domain conditions where they mean
something: ``NonCompliant`` (ManagedInstance, PatchGroup), ``PatchFailed`` (ManagedInstance),
``ExecutionFailed`` (MaintenanceWindow), ``ExportFailed`` (ComplianceReport). Values are SSM's
names and counts. A Rollout's status is its stages' verdicts under the cycle's snapshot, Stalled
while it is halted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.api.enums import (
    ComplianceStatus,
    ExecutionStatus,
    JobStatus,
    Operation,
    ReportRunStatus,
)
from reconciler.api.snapshot import Problem, Snapshot
from reconciler.api.times import utc_stamp
from reconciler.evaluation import resolve
from reconciler.plan import baseline_digest
from reconciler.report.views import compliance
from reconciler.report.views.rollouts import RolloutView
from reconciler.rollout import Verdict
from reconciler.schedule import current_opening, openings
from reconciler.sources.kubernetes import ObjectInfo
from reconciler.state import JobRecord, ReportRunRecord, ScanRecord

Key = tuple[str, str]
"""(kind, name)."""

MAX_MESSAGE = 2000  # a condition message stays readable in `kubectl describe`


@dataclass(frozen=True)
class Seen:
    """What one pass saw: the inputs of every status."""

    now: datetime
    listing: Mapping[Key, ObjectInfo]
    """Every object listed by the pass."""
    snapshot: Snapshot | None
    """The set in force (the last good one when the current set is refused)."""
    revision: str | None
    applied: frozenset[Key]
    """Objects whose current spec and labels are the ones in force."""
    problems: Sequence[Problem] = ()
    """Why the current set was refused (empty when it was accepted)."""
    scans: Mapping[str, ScanRecord] = field(default_factory=dict)
    jobs: Mapping[str, JobRecord] = field(default_factory=dict)
    """The latest job of each instance."""
    executions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The latest execution of each window (``opening``, ``status``)."""
    waits: Mapping[str, str] = field(default_factory=dict)
    """Why the planner left an instance alone."""
    report_runs: Mapping[str, Sequence[ReportRunRecord]] = field(default_factory=dict)
    """Each report's recorded export attempts, newest first (the newest and the newest
    successful one are enough)."""
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Each InstanceSource's enrolment status (``report.views.enrolment.status_document``)."""
    rollouts: Mapping[str, RolloutView] = field(default_factory=dict)
    """Each Rollout as the pass's planner decided it (``report.views.rollouts.view``)."""


def condition(
    kind: str, status: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    """A metav1.Condition without its transition time (the writer keeps or sets it)."""
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": generation,
    }


def statuses(seen: Seen) -> dict[Key, dict[str, Any]]:
    """The status of every listed object."""
    return {key: status_of(seen, info) for key, info in seen.listing.items()}


def status_of(seen: Seen, info: ObjectInfo) -> dict[str, Any]:
    generation = info.generation
    stalled = _stalled(seen, info)
    if stalled is not None:
        reason, message = stalled
        return {
            "observedGeneration": generation,
            "conditions": [
                condition("Ready", False, reason, message, generation),
                condition("Reconciling", False, reason, "", generation),
                condition("Stalled", True, reason, message, generation),
            ],
        }
    build = _BUILDERS[info.kind]
    fields, conditions = build(seen, info.name, generation)
    return {"observedGeneration": generation, **fields, "conditions": conditions}


def _stalled(seen: Seen, info: ObjectInfo) -> tuple[str, str] | None:
    """(reason, message) when the object's current spec is not in force."""
    own = [p for p in seen.problems if p.file == info.path]
    if own:
        return "InvalidSpec", "; ".join(_without_file(p) for p in own)
    if (info.kind, info.name) in seen.applied:
        return None
    if seen.problems:
        first = seen.problems[0]
        return (
            "SnapshotRefused",
            f"not applied: the namespace's resources were refused whole "
            f"({len(seen.problems)} problem(s), in {first.file}: {_without_file(first)}); "
            f"the last good revision stays in force",
        )
    return "NotApplied", "not in the set in force yet"


def _without_file(problem: Problem) -> str:
    where = f"line {problem.line}: " if problem.line else ""
    return f"{where}{problem.path}: {problem.message}" if problem.path else where + problem.message


def _accepted(seen: Seen, generation: int) -> list[dict[str, Any]]:
    message = f"in force at revision {seen.revision}"
    return [
        condition("Ready", True, "Accepted", message, generation),
        condition("Reconciling", False, "Accepted", "", generation),
        condition("Stalled", False, "Accepted", "", generation),
    ]


Built = tuple[dict[str, Any], list[dict[str, Any]]]


def _baseline(seen: Seen, name: str, generation: int) -> Built:
    using = sum(1 for scan in _members(seen).values() if scan.baseline == name)
    return {"revision": seen.revision, "instances": using}, _accepted(seen, generation)


def _calendar(seen: Seen, name: str, generation: int) -> Built:
    # Its open or closed state changes with the clock, not with a pass: `patchctl calendar
    # state` and plan/explain read it; the status says only whether the spec is in force.
    return {"revision": seen.revision}, _accepted(seen, generation)


def _report(seen: Seen, name: str, generation: int) -> Built:
    runs = seen.report_runs.get(name, ())
    newest = runs[0] if runs else None
    exported = next((run for run in runs if run.status == ReportRunStatus.SUCCESS), None)
    fields: dict[str, Any] = {
        "revision": seen.revision,
        "lastExport": _export(newest) if newest else None,
        # The CRD's "Last export" column: the newest export that was written.
        "lastExportTime": utc_stamp(exported.finished_at) if exported else None,
    }
    failed = newest is not None and newest.status == "FAILED"
    message = ""
    if failed and newest is not None:
        message = f"exporting the opening {newest.opening} to {newest.destination} failed: "
        message += newest.error or "no error recorded"
    conditions = _accepted(seen, generation)
    conditions.append(
        condition(
            "ExportFailed",
            failed,
            "ExportFailed" if failed else "NoFailure",
            message,
            generation,
        )
    )
    return fields, conditions


def _export(run: ReportRunRecord) -> dict[str, Any]:
    """``status.lastExport``. ``error`` is None (removed by the merge patch) after a success,
    so a fixed destination leaves no stale error behind."""
    return {
        "opening": run.opening,
        "time": utc_stamp(run.finished_at),
        "status": run.status.value,
        "locations": list(run.locations),
        "error": run.error,
    }


def _group(seen: Seen, name: str, generation: int) -> Built:
    members = _members(seen)
    state = compliance.group_state(name, members.values())
    del state["patchGroup"]
    bad = [
        s.instance
        for s in members.values()
        if s.patch_group == name and s.compliance_status == ComplianceStatus.NON_COMPLIANT
    ]
    state["instancesNonCompliant"] = len(bad)
    conditions = _accepted(seen, generation)
    if bad:
        message = f"{len(bad)} of {state['instances']} instance(s) non-compliant: " + ", ".join(
            sorted(bad)
        )
        conditions.append(condition("NonCompliant", True, "MissingPatches", message, generation))
    else:
        message = f"all {state['instances']} scanned instance(s) compliant"
        conditions.append(condition("NonCompliant", False, "Compliant", message, generation))
    return {"revision": seen.revision, **state}, conditions


def _window(seen: Seen, name: str, generation: int) -> Built:
    assert seen.snapshot is not None  # an applied object is in the set in force
    spec = seen.snapshot.windows[name].spec
    upcoming = openings(spec, seen.now, limit=1)
    now_open = current_opening(spec, seen.now)
    execution = seen.executions.get(name)
    fields: dict[str, Any] = {
        "revision": seen.revision,
        "nextExecutionTime": utc_stamp(upcoming[0].start) if upcoming else None,
        "currentOpening": now_open.id if now_open else None,
        "lastExecution": dict(execution) if execution else None,
    }
    conditions = _accepted(seen, generation)
    failed = bool(execution and execution.get("status") == ExecutionStatus.FAILED)
    conditions.append(
        condition(
            "ExecutionFailed",
            failed,
            "JobFailed" if failed else "NoFailure",
            f"a job of the opening {execution['opening']} failed" if failed and execution else "",
            generation,
        )
    )
    return fields, conditions


def _instance(seen: Seen, name: str, generation: int) -> Built:
    scan = seen.scans.get(name)
    job = seen.jobs.get(name)
    waiting = seen.waits.get(name)
    ready, reconciling = _readiness(seen, name, generation)
    conditions = [
        ready,
        condition(
            "Reconciling",
            reconciling,
            ready["reason"] if reconciling else "Scanned",
            (waiting or "") if reconciling else "",
            generation,
        ),
        condition("Stalled", False, "Accepted", "", generation),
    ]
    if scan is not None:
        conditions.append(_non_compliant(scan, generation))
    conditions.append(_patch_failed(job, generation))
    return _instance_fields(scan, name, waiting), conditions


def _instance_fields(scan: ScanRecord | None, name: str, waiting: str | None) -> dict[str, Any]:
    """The instance's compliance row (as ``patchctl compliance`` shows it) and its last scan."""
    fields: dict[str, Any] = {"revision": None, "waiting": waiting}
    if scan is not None:
        row = compliance.instances({name: scan})[0]
        del row["instanceId"]
        fields.update(row)
        facts = scan.facts
        fields["operatingSystem"] = facts.get("operatingSystem")
        fields["operationEndTime"] = utc_stamp(scan.finished_at)
    return fields


def _readiness(seen: Seen, name: str, generation: int) -> tuple[dict[str, Any], bool]:
    """The Ready condition (scanned under the baseline in force, its last job not failed), and
    whether the instance is still being reconciled."""
    scan = seen.scans.get(name)
    waiting = seen.waits.get(name)
    failure = _failure(seen.jobs.get(name))
    fresh = scan is not None and _scanned_with_current_baseline(seen, name, scan)
    reconciling = not fresh and failure is None
    if failure is not None:
        reason, message = failure
        return condition("Ready", False, reason, message, generation), reconciling
    if scan is None or not fresh:
        reason = "NotScanned" if scan is None else "BaselineChanged"
        message = waiting or "a scan is due"
        return condition("Ready", False, reason, message, generation), reconciling
    status = scan.compliance_status
    at = utc_stamp(scan.finished_at)
    message = f"{status} under baseline {scan.baseline} ({scan.operation} at {at})"
    return condition("Ready", True, "Scanned", message, generation), reconciling


def _non_compliant(scan: ScanRecord, generation: int) -> dict[str, Any]:
    summary = scan.summary
    bad = scan.compliance_status == ComplianceStatus.NON_COMPLIANT
    message = (
        f"{summary.get('missingCount', 0)} missing, {summary.get('failedCount', 0)} "
        f"failed, severity {summary.get('complianceSeverity')}"
    )
    reason = "MissingPatches" if bad else "Compliant"
    return condition("NonCompliant", bad, reason, message if bad else "", generation)


def _patch_failed(job: JobRecord | None, generation: int) -> dict[str, Any]:
    install_failed = (
        job is not None and job.operation == Operation.INSTALL and job.status == JobStatus.FAILED
    )
    reason = "InstallFailed" if install_failed else "NoFailure"
    message = _error(job) if install_failed and job else ""
    return condition("PatchFailed", install_failed, reason, message, generation)


def _failure(job: JobRecord | None) -> tuple[str, str] | None:
    if job is None or job.status != JobStatus.FAILED:
        return None
    return f"{job.operation}Failed", _error(job)


def _error(job: JobRecord) -> str:
    error = job.error
    if error:
        return f"job {job.id}: {error.get('code')}: {error.get('message')}"
    return f"job {job.id} failed"


def _scanned_with_current_baseline(seen: Seen, name: str, scan: ScanRecord) -> bool:
    """Whether the latest scan judged the instance with the baseline now in force for it."""
    snapshot = seen.snapshot
    if snapshot is None or name not in snapshot.instances:
        return False
    os = scan.operating_system
    if os is None:
        return False
    resolution = resolve(snapshot, snapshot.instances[name].metadata.labels, os)
    if resolution.baseline is None:
        return False
    return scan.baseline_hash == baseline_digest(resolution.baseline)


def _members(seen: Seen) -> dict[str, ScanRecord]:
    """Latest scans of the instances in force (a deleted instance's history stays in the store
    but no longer counts)."""
    instances = seen.snapshot.instances if seen.snapshot else {}
    return {name: scan for name, scan in seen.scans.items() if name in instances}


def _instance_source(seen: Seen, name: str, generation: int) -> Built:
    """What the source lists and generates; RefreshFailed while its last good list is kept."""
    document = dict(seen.sources.get(name, {}))
    document.pop("source", None)
    error = document.get("error")
    conditions = _accepted(seen, generation)
    message = ""
    if error:
        kept = document.get("listedAt")
        message = f"{error} (keeping the list of {kept})" if kept else f"{error} (nothing listed)"
    reason = "RefreshFailed" if error else "NoFailure"
    conditions.append(condition("RefreshFailed", bool(error), reason, message, generation))
    return {"revision": seen.revision, **document}, conditions


def _rollout(seen: Seen, name: str, generation: int) -> Built:
    """The stages' verdicts under the cycle's snapshot; Stalled while halted (only a commit or
    ``resume`` moves it), Reconciling while a stage installs or bakes."""
    rollout = seen.rollouts.get(name)
    if rollout is None:
        message = "no pass has decided it yet"
        fields: dict[str, Any] = {"revision": seen.revision, "stage": None, "stages": []}
        return fields, _rollout_conditions("NotDecided", message, False, False, generation)
    document = rollout.to_dict()
    del document["rollout"]
    current = next((s for s in rollout.stages if s.verdict is not Verdict.BAKED), None)
    stage = current or rollout.stages[-1]
    fields = {"revision": seen.revision, "stage": stage.name, **document}
    if rollout.halted is not None:
        return fields, _rollout_conditions("Halted", rollout.halted, False, True, generation)
    if rollout.complete:
        message = f"cycle {rollout.cycle} done: every stage baked {rollout.digest}"
        return fields, _rollout_conditions("CycleCompleted", message, True, False, generation)
    if rollout.digest is None:
        return fields, _rollout_conditions("Waiting", stage.reason, True, False, generation)
    return fields, _rollout_conditions("Progressing", stage.reason, False, False, generation)


def _rollout_conditions(
    reason: str, message: str, ready: bool, stalled: bool, generation: int
) -> list[dict[str, Any]]:
    reconciling = not ready and not stalled
    return [
        condition("Ready", ready, reason, message, generation),
        condition("Reconciling", reconciling, reason, message if reconciling else "", generation),
        condition("Stalled", stalled, reason, message if stalled else "", generation),
    ]


_BUILDERS = {
    "PatchBaseline": _baseline,
    "PatchGroup": _group,
    "MaintenanceWindow": _window,
    "ManagedInstance": _instance,
    "ComplianceReport": _report,
    "InstanceSource": _instance_source,
    "Rollout": _rollout,
    "ChangeCalendar": _calendar,
}
