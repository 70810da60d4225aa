"""Stage: report — views. Non-compliant instances as AWS Security Finding Format (ASFF) findings,
for teams that feed AWS Security Hub (``aws securityhub batch-import-findings``) or another security
hub.

Shaped as SSM Patch Manager's own Security Hub integration shapes them (reference §9,
[UG: patch-manager-security-hub-integration]): one finding per non-compliant instance, type
"Patch Management", the ``PatchSummary`` counts, a severity taken from the instance's compliance
severity (the most severe compliance level among its non-compliant patches). Unlike SSM, a
finding's Id is stable per instance, so importing again updates the finding instead of adding
one per scan; and its ProductFields say which revision and baseline decided it.

Pure: findings from the store's scan records (or, for the Security Hub event sink, from what a
compliance event says: an ``Observation``); writing or sending them is the caller's business.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.aws import partition as partition_of
from reconciler.state import ScanRecord

SCHEMA_VERSION = "2018-10-08"
TYPES = ("Software and Configuration Checks/Patch Management/Compliance",)
"""ASFF's namespace, spelled as ASFF spells it, with the category and classifier SSM uses."""
DEFAULT_ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"

SEVERITY_LABELS = {
    "CRITICAL": "CRITICAL",
    "HIGH": "HIGH",
    "MEDIUM": "MEDIUM",
    "LOW": "LOW",
    "INFORMATIONAL": "INFORMATIONAL",
    "UNSPECIFIED": "INFORMATIONAL",
}
"""SSM compliance severity -> ASFF Severity.Label. ASFF has no UNSPECIFIED; Patch Manager's
findings for patches of an UNSPECIFIED level (every predefined baseline's) carry INFORMATIONAL
(the typical finding in [UG: patch-manager-security-hub-integration])."""

_EC2_ID = re.compile(r"m?i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
"""EC2 instance ids (i-…) and SSM hybrid managed node ids (mi-…): SSM reports both as
AwsEc2Instance resources."""


@dataclass(frozen=True)
class Settings:
    """Where the findings say they come from."""

    account: str = DEFAULT_ACCOUNT
    region: str = DEFAULT_REGION
    partition: str = ""
    """Default: the region's (``aws``, ``aws-cn``, ``aws-us-gov``)."""
    product_arn: str | None = None
    """Default: the account's own product for custom findings,
    ``arn:<partition>:securityhub:<region>:<account>:product/<account>/default``."""

    @property
    def arn_partition(self) -> str:
        return self.partition or partition_of(self.region)

    @property
    def product(self) -> str:
        return self.product_arn or (
            f"arn:{self.arn_partition}:securityhub:{self.region}:{self.account}"
            f":product/{self.account}/default"
        )


@dataclass(frozen=True)
class Observation:
    """What a finding says about one scan: a stored ``ScanRecord``'s facts, or a compliance
    event's (which carries no baseline hash, operating system or start time)."""

    instance: str
    baseline: str
    revision: str
    operation: str
    group: str | None
    summary: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime
    job_id: str | None = None
    baseline_hash: str = ""
    operating_system: str = ""

    def count(self, name: str) -> int:
        return int(self.summary.get(name) or 0)


def observation(scan: ScanRecord) -> Observation:
    return Observation(
        instance=scan.instance,
        baseline=scan.baseline,
        revision=scan.revision,
        operation=str(scan.operation),
        group=scan.patch_group,
        summary=dict(scan.summary),
        started_at=scan.started_at,
        finished_at=scan.finished_at,
        job_id=scan.job_id,
        baseline_hash=scan.baseline_hash,
        operating_system=str(scan.evaluation.get("operatingSystem") or ""),
    )


def findings(
    latest: Mapping[str, ScanRecord],
    histories: Mapping[str, Sequence[ScanRecord]],
    settings: Settings = Settings(),
) -> list[dict[str, Any]]:
    """One finding per instance whose latest scan is NON_COMPLIANT, by instance name.
    ``histories`` (each instance's scans, any order) date the finding: it was created when the
    instance last became non-compliant."""
    return [
        finding(latest[name], noncompliant_since(latest[name], histories.get(name, ())), settings)
        for name in sorted(latest)
        if _status(latest[name]) == "NON_COMPLIANT"
    ]


def noncompliant_since(latest: ScanRecord, history: Sequence[ScanRecord]) -> datetime:
    """When the current run of NON_COMPLIANT scans began (the latest scan, if it is the first)."""
    since = latest.finished_at
    for scan in sorted(history, key=lambda s: s.finished_at, reverse=True):
        if scan.finished_at > latest.finished_at:
            continue
        if _status(scan) != "NON_COMPLIANT":
            break
        since = scan.finished_at
    return since


def finding(scan: ScanRecord, since: datetime, settings: Settings) -> dict[str, Any]:
    """The ASFF finding of one non-compliant instance."""
    return observed(observation(scan), since, settings)


def finding_id(instance: str, settings: Settings) -> str:
    return f"patchwarden/{settings.account}/{settings.region}/instance/{instance}"


def resolved(scan: Observation, since: datetime, settings: Settings) -> dict[str, Any]:
    """The finding of an instance compliant again: the same Id, archived, compliance PASSED
    (the fields a finding provider may change with ``BatchImportFindings``)."""
    return {
        **observed(scan, since, settings),
        "Title": f"Patchwarden patch compliance - {scan.instance} compliant again",
        "Description": (
            f"{scan.instance} is compliant with patch baseline {scan.baseline} again, as of its "
            f"{scan.operation.lower()} at {_time(scan.finished_at)} under revision "
            f"{scan.revision}."
        )[:1024],
        "Compliance": {"Status": "PASSED"},
        "RecordState": "ARCHIVED",
    }


def observed(scan: Observation, since: datetime, settings: Settings) -> dict[str, Any]:
    """The ASFF finding of one non-compliant instance, from an ``Observation``."""
    severity = str(scan.summary.get("complianceSeverity") or "UNSPECIFIED")
    group = scan.group
    missing, failed = scan.count("missingCount"), scan.count("failedCount")
    ec2 = bool(_EC2_ID.fullmatch(scan.instance))
    resource = {
        "Type": "AwsEc2Instance" if ec2 else "Other",
        "Id": scan.instance,
        "Partition": settings.arn_partition,
        "Region": settings.region,
    }
    return {
        "SchemaVersion": SCHEMA_VERSION,
        "Id": finding_id(scan.instance, settings),
        "ProductArn": settings.product,
        "GeneratorId": f"patchwarden/baseline/{scan.baseline}",
        "AwsAccountId": settings.account,
        "Types": list(TYPES),
        "FirstObservedAt": _time(since),
        "LastObservedAt": _time(scan.finished_at),
        "CreatedAt": _time(since),
        "UpdatedAt": _time(scan.finished_at),
        "Severity": {"Label": SEVERITY_LABELS.get(severity, "INFORMATIONAL"), "Original": severity},
        "Title": f"Patchwarden patch compliance - {scan.instance} non-compliant",
        "Description": (
            f"{scan.instance} is not compliant with patch baseline {scan.baseline}"
            f"{f' (patch group {group})' if group else ''}: {missing} approved patch(es) "
            f"missing, {failed} failed, compliance severity {severity}, as of its "
            f"{scan.operation.lower()} at {_time(scan.finished_at)} under revision "
            f"{scan.revision}."
        )[:1024],
        "Remediation": {
            "Recommendation": {
                "Text": (
                    f"See `patchctl compliance {scan.instance}` for each patch and why it is "
                    "missing; patches are installed inside a maintenance window with an Install "
                    "task that targets the instance."
                )[:512]
            }
        },
        "ProductFields": _product_fields(scan, group),
        "Resources": [resource],
        "Compliance": {"Status": "FAILED"},
        "RecordState": "ACTIVE",
        "PatchSummary": _patch_summary(scan),
    }


def rows(found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For people: one row per finding."""
    return [
        {
            "instance": f["Resources"][0]["Id"],
            "severity": f["Severity"]["Label"],
            "missing": f["PatchSummary"].get("MissingCount"),
            "failed": f["PatchSummary"].get("FailedCount"),
            "baseline": f["PatchSummary"]["Id"],
            "since": f["CreatedAt"],
            "revision": f["ProductFields"].get("patchwarden/revision"),
        }
        for f in found
    ]


def _product_fields(scan: Observation, group: Any) -> dict[str, str]:
    fields = {
        "patchwarden/revision": scan.revision,
        "patchwarden/baseline": scan.baseline,
        "patchwarden/baselineHash": scan.baseline_hash,
        "patchwarden/patchGroup": str(group or ""),
        "patchwarden/operation": scan.operation,
        "patchwarden/jobId": scan.job_id or "",
        "patchwarden/operatingSystem": scan.operating_system,
    }
    return {key: value for key, value in fields.items() if value}


def _patch_summary(scan: Observation) -> dict[str, Any]:
    counts = {
        "InstalledCount": "installedCount",
        "MissingCount": "missingCount",
        "FailedCount": "failedCount",
        "InstalledOtherCount": "installedOtherCount",
        "InstalledRejectedCount": "installedRejectedCount",
        "InstalledPendingReboot": "installedPendingRebootCount",
    }
    return {
        "Id": scan.baseline,
        **{asff: scan.count(ours) for asff, ours in counts.items()},
        "OperationStartTime": _time(scan.started_at),
        "OperationEndTime": _time(scan.finished_at),
        "Operation": scan.operation.upper(),
    }


def _status(scan: ScanRecord) -> str:
    return str(scan.compliance_status or "")


def _time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as ASFF's timestamps are written."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
