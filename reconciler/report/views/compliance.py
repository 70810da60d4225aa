"""Stage: report — views. Compliance views over the observed state: per instance, per patch, per
group, and the history of an instance's compliance with the revision that decided each change.

Pure functions from the store's scan records to rows (dicts with SSM's camelCase names), so the
same rows feed tables, JSON, YAML and CSV. Reads results; decides nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.api.enrolment import Provenance
from reconciler.report.views import hooks
from reconciler.state import JobRecord, ScanRecord

COUNTS = (
    "installedCount",
    "installedOtherCount",
    "installedPendingRebootCount",
    "installedRejectedCount",
    "missingCount",
    "failedCount",
    "notApplicableCount",
    "unreportedNotApplicableCount",
    "criticalNonCompliantCount",
    "securityNonCompliantCount",
    "otherNonCompliantCount",
)


Scan = ScanRecord


def instances(scans: Mapping[str, Scan]) -> list[dict[str, Any]]:
    """One row per instance: group, baseline, status, severity, SSM counts, held packages
    (``heldCount``), last operation, the
    last Install with NoReboot (SSM's LastNoRebootInstallOperationTime) and the revision."""
    rows = []
    for name in sorted(scans):
        scan = scans[name]
        summary = scan.summary
        rows.append(
            {
                "instanceId": name,
                "patchGroup": scan.patch_group,
                "baseline": scan.baseline,
                "complianceStatus": summary.get("complianceStatus"),
                "complianceSeverity": summary.get("complianceSeverity"),
                **{key: summary.get(key, 0) for key in COUNTS},
                # Not one of SSM's counts: packages a hold keeps off (docs/guardrails.md).
                "heldCount": len(scan.held),
                "operation": scan.operation,
                "operationEndTime": scan.finished_at.isoformat(timespec="seconds"),
                "lastNoRebootInstallOperationTime": scan.evaluation.get(
                    "lastNoRebootInstallOperationTime"
                ),
                "revision": scan.revision,
            }
        )
    return rows


def with_provenance(
    rows: Sequence[Mapping[str, Any]],
    enrolled: Mapping[str, tuple[Provenance, bool]],
    *,
    column: bool,
) -> list[dict[str, Any]]:
    """``instances`` rows saying where generated instances come from, when any of them is
    generated: for a table or CSV a short ``from`` column (the InstanceSource, ``-`` for one
    written by hand); for JSON and YAML an ``enrolled`` field on generated ones, as ``plan``."""
    if not any(row["instanceId"] in enrolled for row in rows):
        return [dict(row) for row in rows]
    out = []
    for row in rows:
        found = enrolled.get(row["instanceId"])
        if column:
            source = found[0].source if found else None
            out.append({"instanceId": row["instanceId"], "from": source, **row})
        elif found is not None:
            origin, listed = found
            out.append({**row, "enrolled": f"{origin}" + ("" if listed else "; no longer listed")})
        else:
            out.append(dict(row))
    return out


def patches(scan: Scan) -> list[dict[str, Any]]:
    """Every patch of one instance: state, classification, severity, compliance level, CVEs,
    installed time and the reason behind the state."""
    installed_at = {(p.get("name"), p.get("arch")): p.get("installedTime") for p in scan.installed}
    return [
        {
            "name": p["name"],
            "arch": p.get("arch", ""),
            "installedVersion": p.get("installedVersion"),
            "version": p.get("version"),
            "state": p["state"],
            "classification": p.get("classification"),
            "severity": p.get("severity"),
            "complianceLevel": p.get("complianceLevel"),
            "cves": ", ".join(p.get("cves") or []),
            "installedTime": installed_at.get((p["name"], p.get("arch"))),
            "reason": p.get("reason", ""),
        }
        for p in sorted(scan.patches, key=lambda p: (p["state"], p["name"]))
    ]


def group_state(group: str, scans: Iterable[Scan]) -> dict[str, Any]:
    """SSM's DescribePatchGroupState for ``group``: how many instances have patches in each
    state (an instance counts once per state it has any patch in)."""
    members = [s for s in scans if s.patch_group == group]
    state: dict[str, Any] = {"patchGroup": group, "instances": len(members)}
    fields = {
        "installedCount": "instancesWithInstalledPatches",
        "installedOtherCount": "instancesWithInstalledOtherPatches",
        "installedPendingRebootCount": "instancesWithInstalledPendingRebootPatches",
        "installedRejectedCount": "instancesWithInstalledRejectedPatches",
        "missingCount": "instancesWithMissingPatches",
        "failedCount": "instancesWithFailedPatches",
        "notApplicableCount": "instancesWithNotApplicablePatches",
        "unreportedNotApplicableCount": "instancesWithUnreportedNotApplicablePatches",
        "criticalNonCompliantCount": "instancesWithCriticalNonCompliantPatches",
        "securityNonCompliantCount": "instancesWithSecurityNonCompliantPatches",
        "otherNonCompliantCount": "instancesWithOtherNonCompliantPatches",
        "availableSecurityUpdateCount": "instancesWithAvailableSecurityUpdates",
    }
    for count, field in fields.items():
        state[field] = sum(1 for s in members if s.count(count) > 0)
    return state


def history(scans: Sequence[Scan], jobs: Sequence[JobRecord] | None = None) -> list[dict[str, Any]]:
    """How an instance's compliance changed over time (oldest first): one row per recorded scan
    or install whose status, severity or missing/failed counts differ from the one before, with
    the revision and baseline that produced it. Given the instance's ``jobs``, each row also says
    what its job's hooks and health checks did (``hooks``), and every job that ran them is a
    row, even one that changed nothing or never got to its scan (a failed preInstall)."""
    hooked = {job.id: job for job in jobs or () if job.result and job.result.get("hooks")}
    rows: list[tuple[datetime, dict[str, Any]]] = []
    previous: tuple[Any, ...] | None = None
    for scan in sorted(scans, key=lambda s: (s.finished_at, s.id)):  # ids break ties
        summary = scan.summary
        key = (
            summary.get("complianceStatus"),
            summary.get("complianceSeverity"),
            summary.get("missingCount"),
            summary.get("failedCount"),
        )
        job = hooked.pop(scan.job_id or "", None)
        if key == previous and job is None:
            continue
        previous = key
        row = _history_row(scan.finished_at, scan.operation, key, scan.baseline, scan.revision)
        rows.append((scan.finished_at, _with_hooks(row, job, jobs)))
    for job in hooked.values():  # no scan: the install never ran
        when = job.finished_at or job.created_at
        row = _history_row(when, job.operation, (None,) * 4, None, job.revision)
        rows.append((when, _with_hooks(row, job, jobs)))
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]


def _history_row(
    when: datetime, operation: str, key: tuple[Any, ...], baseline: str | None, revision: str
) -> dict[str, Any]:
    status, severity, missing, failed = key
    return {
        "time": when.isoformat(timespec="seconds"),
        "operation": operation,
        "complianceStatus": status,
        "complianceSeverity": severity,
        "missingCount": missing,
        "failedCount": failed,
        "baseline": baseline,
        "revision": revision,
    }


def _with_hooks(
    row: dict[str, Any], job: JobRecord | None, jobs: Sequence[JobRecord] | None
) -> dict[str, Any]:
    if jobs is None:
        return row
    entries = job.result.get("hooks") if job and job.result else None
    return {**row, "hooks": hooks.summary(entries) or None}
