"""Stage: report — views. Compliance reports as files: CSV with SSM's columns, one JSON document, or
a self-contained HTML dashboard, built from the observed state the caller read from the store.

``build_report`` is pure (the clock is injected, data comes in as scan records) and returns file
name → content; writing them to a directory or S3 is ``publish``'s business. The views come from
``compliance`` and ``csvreport``; this module only scopes them and adds fleet aggregates (the
per-day trend, the worst instances) that the JSON document and the dashboard share. Touches no
file, network or clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from reconciler.api.enrolment import Provenance
from reconciler.errors import PermanentError
from reconciler.report.views import compliance, csvreport, dashboard
from reconciler.report.views.rollouts import RolloutView
from reconciler.state import JobRecord, ScanRecord, StateBackend

Format = Literal["csv", "json", "html"]
FORMATS: tuple[Format, ...] = ("csv", "json", "html")
API_VERSION = "patchwarden.io/v1alpha1"
TREND_DAYS = 30
"""Days of history the trend covers, ending on the report's day."""
HISTORY_LIMIT = 200
"""Scans read per instance for the trend and history: scans are about daily (``--stale-after``)
plus window scans and installs, so this covers the trend with room to spare."""
WORST_LIMIT = 10


class ReportError(PermanentError, ValueError):
    """The report asked for cannot be built (an unknown instance, an empty group)."""


@dataclass(frozen=True)
class ReportInput:
    """What a report is built from: each instance's newest scan and its recent history."""

    latest: Mapping[str, ScanRecord]
    histories: Mapping[str, Sequence[ScanRecord]]
    jobs: Mapping[str, Sequence[JobRecord]] = field(default_factory=dict)
    """Each instance's jobs, for what their hooks and health checks did (JSON and HTML)."""
    rollouts: Sequence[RolloutView] = ()
    """Progressive rollouts as the latest pass saw them (JSON and HTML)."""
    enrolled: Mapping[str, tuple[Provenance, bool]] = field(default_factory=dict)
    """Generated instances' provenance (``StateBackend.enrolled``): JSON rows say ``enrolled``."""


def read_input(store: StateBackend, fmt: str, *, history_limit: int = HISTORY_LIMIT) -> ReportInput:
    """What a report in ``fmt`` needs, read from the store (the one I/O step): CSV needs no
    history, JSON and HTML need each instance's recent scans for the trend."""
    latest = store.latest_scans()
    if fmt == "csv":
        return ReportInput(latest=latest, histories={})
    histories = {name: store.scan_history(name, limit=history_limit) for name in latest}
    jobs = {name: store.jobs(instance=name) for name in latest}
    return ReportInput(latest, histories, jobs, enrolled=store.enrolled())


def build_report(
    data: ReportInput,
    fmt: str,
    *,
    now: datetime,
    instances: set[str] | None = None,
    instance: str | None = None,
    group: str | None = None,
) -> dict[str, bytes]:
    """File name → content of a report in ``fmt`` (csv, json or html).

    ``instances`` is the scope (None: all), ``group`` narrows it to one patch group and
    ``instance`` asks for one instance's detail (CSV detail rows, every patch in JSON/HTML).
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    latest = _scope(data.latest, instances, group, instance)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        return _csv_files(latest, instance, stamp)
    histories = {name: data.histories.get(name, ()) for name in latest}
    document = report_document(
        latest,
        histories,
        now=now,
        instance=instance,
        group=group,
        jobs=data.jobs,
        rollouts=data.rollouts,
        enrolled=data.enrolled,
    )
    suffix = f"-{_safe(instance)}" if instance else ""
    if fmt == "json":
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        return {f"compliance-report{suffix}-{stamp}.json": text.encode()}
    return {f"compliance-dashboard{suffix}-{stamp}.html": dashboard.render(document).encode()}


def _scope(
    latest: Mapping[str, ScanRecord],
    instances: set[str] | None,
    group: str | None,
    instance: str | None,
) -> dict[str, ScanRecord]:
    scoped = {n: s for n, s in latest.items() if instances is None or n in instances}
    if group is not None:
        scoped = {n: s for n, s in scoped.items() if s.patch_group == group}
        if not scoped:
            raise ReportError(f"no instance of patch group {group!r} has a recorded scan")
    if instance is None:
        return scoped
    if instance not in scoped:
        where = f" in patch group {group!r}" if group is not None else ""
        raise ReportError(f"no scan of {instance!r}{where} is recorded")
    return {instance: scoped[instance]}


def _csv_files(
    latest: Mapping[str, ScanRecord], instance: str | None, stamp: str
) -> dict[str, bytes]:
    summary = csvreport.to_csv(csvreport.summary_rows(latest), csvreport.SUMMARY_COLUMNS)
    files = {f"compliance-summary-{stamp}.csv": summary.encode()}
    if instance is not None:
        detail = csvreport.to_csv(csvreport.detail_rows(latest[instance]), csvreport.DETAIL_COLUMNS)
        files[f"compliance-detail-{_safe(instance)}-{stamp}.csv"] = detail.encode()
    return files


def _safe(name: str) -> str:
    """A file-name-safe spelling: instance names are user data and must not reach a path."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


def report_document(
    latest: Mapping[str, ScanRecord],
    histories: Mapping[str, Sequence[ScanRecord]],
    *,
    now: datetime,
    instance: str | None = None,
    group: str | None = None,
    jobs: Mapping[str, Sequence[JobRecord]] | None = None,
    rollouts: Sequence[RolloutView] = (),
    enrolled: Mapping[str, tuple[Provenance, bool]] | None = None,
) -> dict[str, Any]:
    """The ComplianceReportData document: the JSON report, and what the dashboard draws;
    ``jobs`` (each instance's) add what hooks and health checks did to the history; with
    ``rollouts`` (progressive rollouts' views after the latest pass) it has ``rollouts``;
    ``enrolled`` gives generated instances' rows an ``enrolled`` field, as ``compliance``."""
    rows = compliance.with_provenance(compliance.instances(latest), enrolled or {}, column=False)
    every_patch = instance is not None
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ComplianceReportData",
        "generatedAt": now.astimezone(UTC).isoformat(timespec="seconds"),
        "scope": {"instance": instance, "patchGroup": group},
        "summary": fleet_summary(rows, latest),
        "revisions": revisions(rows),
        "instances": rows,
        "groups": [compliance.group_state(g, latest.values()) for g in _groups(rows)],
        "worstInstances": [r["instanceId"] for r in worst(rows)],
        "patchesIncluded": "all" if every_patch else "nonCompliant",
        "patches": {name: _patches(scan, every_patch) for name, scan in sorted(latest.items())},
        "history": {
            name: compliance.history(histories.get(name, ()), (jobs or {}).get(name, ()))
            for name in sorted(latest)
        },
        "trend": trend(histories, now=now),
    }
    if rollouts:  # only with rollouts in force, so reports without them keep their shape
        document["rollouts"] = [view.to_dict() for view in rollouts]
    return document


def fleet_summary(
    rows: Sequence[Mapping[str, Any]], latest: Mapping[str, ScanRecord]
) -> dict[str, Any]:
    """Instances by compliance status, % compliant, and SSM's counts summed over the fleet;
    non-compliant patches per compliance level are the CSV summary's counts, summed."""
    statuses = [r["complianceStatus"] for r in rows]
    compliant = statuses.count("COMPLIANT")
    levels = {level: 0 for level in csvreport.LEVELS}
    for row in csvreport.summary_rows(latest):
        for level in csvreport.LEVELS:
            levels[level] += row[f"Noncompliant {level.capitalize()} severity patch count"]
    return {
        "instances": len(rows),
        "compliant": compliant,
        "nonCompliant": statuses.count("NON_COMPLIANT"),
        "unspecified": len(rows) - compliant - statuses.count("NON_COMPLIANT"),
        "compliantPercent": round(100 * compliant / len(rows), 1) if rows else None,
        **{key: sum(r[key] or 0 for r in rows) for key in compliance.COUNTS},
        "heldCount": sum(r["heldCount"] for r in rows),
        "nonCompliantByComplianceLevel": levels,
    }


def revisions(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The revisions in force: which commit decided the latest result of how many instances."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["revision"]] = counts.get(row["revision"], 0) + 1
    return [
        {"revision": rev, "instances": n}
        for rev, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def worst(rows: Sequence[Mapping[str, Any]], limit: int = WORST_LIMIT) -> list[Mapping[str, Any]]:
    """Non-compliant instances, most critical then security then missing/failed patches first."""

    def badness(row: Mapping[str, Any]) -> tuple[Any, ...]:
        keys = ("criticalNonCompliantCount", "securityNonCompliantCount")
        pending = (row["missingCount"] or 0) + (row["failedCount"] or 0)
        return (*(-(row[k] or 0) for k in keys), -pending, row["instanceId"])

    bad = [r for r in rows if r["complianceStatus"] == "NON_COMPLIANT"]
    return sorted(bad, key=badness)[:limit]


def trend(
    histories: Mapping[str, Sequence[ScanRecord]], *, now: datetime, days: int = TREND_DAYS
) -> list[dict[str, Any]]:
    """Per day (UTC), the missing and failed patches of the fleet: for each instance its newest
    scan by the end of that day. Days start at the first recorded scan, at most ``days`` back."""
    scans = sorted((s for h in histories.values() for s in h), key=lambda s: s.finished_at)
    if not scans:
        return []
    today = now.astimezone(UTC).date()
    first = max(scans[0].finished_at.astimezone(UTC).date(), today - timedelta(days=days - 1))
    points: list[dict[str, Any]] = []
    newest: dict[str, Mapping[str, Any]] = {}
    index = 0
    for day in _days(first, today):
        end = datetime.combine(day + timedelta(days=1), time(), UTC)
        while index < len(scans) and scans[index].finished_at < end:
            newest[scans[index].instance] = scans[index].summary
            index += 1
        points.append(_point(day, newest))
    return points


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _point(day: date, summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    missing = sum(s.get("missingCount") or 0 for s in summaries.values())
    failed = sum(s.get("failedCount") or 0 for s in summaries.values())
    return {
        "date": day.isoformat(),
        "instances": len(summaries),
        "missingCount": missing,
        "failedCount": failed,
    }


def _groups(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({r["patchGroup"] for r in rows if r["patchGroup"]})


def _patches(scan: ScanRecord, every: bool) -> list[dict[str, Any]]:
    rows = compliance.patches(scan)
    return rows if every else [p for p in rows if p["state"] in csvreport.NON_COMPLIANT]
