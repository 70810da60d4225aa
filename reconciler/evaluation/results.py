"""Stage: evaluation. The engine's outputs: per-patch results and SSM's per-instance counts.

Plain frozen dataclasses (the engine creates millions of them in a fleet evaluation, so they are
slotted and cheap). ``to_dict`` gives the evaluation document (docs/ssm-semantics.md) with
camelCase keys. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.api.enums import ComplianceLevel, ComplianceStatus, PatchState


@dataclass(frozen=True, slots=True)
class Approval:
    """What the baseline says about one package version, and why."""

    approved: bool
    rejected: bool
    compliance_level: ComplianceLevel
    reason: str
    security: bool
    """The version is a security update (classification Security, or the apt security pocket)."""


@dataclass(frozen=True, slots=True)
class PatchResult:
    """One patch on one instance: its SSM state and the reason behind it."""

    name: str
    arch: str
    installed_version: str | None
    version: str
    state: PatchState
    classification: str | None
    severity: str | None
    compliance_level: ComplianceLevel
    cves: tuple[str, ...]
    reason: str
    security: bool = False
    installable: bool = True
    """False when installing it would need a package rejected with BLOCK."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "installedVersion": self.installed_version,
            "version": self.version,
            "state": str(self.state),
            "classification": self.classification,
            "severity": self.severity,
            "complianceLevel": str(self.compliance_level),
            "cves": list(self.cves),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class NotApproved:
    """An available update the baseline does not approve (not an SSM state; for explain)."""

    name: str
    arch: str
    version: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "version": self.version,
            "reason": self.reason,
        }


HELD = "HELD"
"""The state a held update is reported in (a Patchwarden state; SSM has none for it)."""


@dataclass(frozen=True, slots=True)
class HeldPatch(NotApproved):
    """An available update a hold keeps off the machine (reconciler.evaluation.holds)."""

    installed_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **NotApproved.to_dict(self),
            "installedVersion": self.installed_version,
            "state": HELD,
        }


NON_COMPLIANT_STATES = frozenset(
    {
        PatchState.MISSING,
        PatchState.FAILED,
        PatchState.INSTALLED_REJECTED,
        PatchState.INSTALLED_PENDING_REBOOT,
    }
)


@dataclass(frozen=True, slots=True)
class Summary:
    """SSM's InstancePatchState counts, plus the instance's compliance status and severity."""

    installed_count: int = 0
    installed_other_count: int = 0
    installed_pending_reboot_count: int = 0
    installed_rejected_count: int = 0
    missing_count: int = 0
    failed_count: int = 0
    not_applicable_count: int = 0
    unreported_not_applicable_count: int = 0
    """NOT_APPLICABLE patches beyond a limit, counted but not named. AWS's Inventory names only so
    many; Patchwarden names every one (a row each), so this is 0 (API: InstancePatchState)."""
    available_security_update_count: int = 0
    critical_non_compliant_count: int = 0
    security_non_compliant_count: int = 0
    other_non_compliant_count: int = 0
    compliance_status: ComplianceStatus = ComplianceStatus.COMPLIANT
    compliance_severity: ComplianceLevel | None = None

    @property
    def total(self) -> int:
        return (
            self.installed_count
            + self.installed_other_count
            + self.installed_pending_reboot_count
            + self.installed_rejected_count
            + self.missing_count
            + self.failed_count
            + self.not_applicable_count
            + self.available_security_update_count
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "installedCount": self.installed_count,
            "installedOtherCount": self.installed_other_count,
            "installedPendingRebootCount": self.installed_pending_reboot_count,
            "installedRejectedCount": self.installed_rejected_count,
            "missingCount": self.missing_count,
            "failedCount": self.failed_count,
            "notApplicableCount": self.not_applicable_count,
            "unreportedNotApplicableCount": self.unreported_not_applicable_count,
            "availableSecurityUpdateCount": self.available_security_update_count,
            "criticalNonCompliantCount": self.critical_non_compliant_count,
            "securityNonCompliantCount": self.security_non_compliant_count,
            "otherNonCompliantCount": self.other_non_compliant_count,
            "complianceStatus": str(self.compliance_status),
            "complianceSeverity": str(self.compliance_severity)
            if self.compliance_severity
            else None,
        }


@dataclass(frozen=True, slots=True)
class InstanceEvaluation:
    """Everything the engine decided for one instance."""

    instance_id: str
    operating_system: str
    baseline: str
    patch_group: str | None
    operation: str
    evaluated_at: datetime
    patches: tuple[PatchResult, ...]
    summary: Summary
    not_approved: tuple[NotApproved, ...] = ()
    last_no_reboot_install_time: datetime | None = None
    """SSM's LastNoRebootInstallOperationTime: the latest Install with NoReboot (UTC)."""
    held: tuple[HeldPatch, ...] = ()
    """Updates a hold keeps off the machine (reconciler.evaluation.holds): state HELD."""

    def to_dict(self, *, explain: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instanceId": self.instance_id,
            "operatingSystem": self.operating_system,
            "baseline": self.baseline,
            "patchGroup": self.patch_group,
            "operation": self.operation,
            "evaluatedAt": self.evaluated_at.isoformat(),
            "patches": [p.to_dict() for p in self.patches],
            "summary": self.summary.to_dict(),
        }
        if self.last_no_reboot_install_time is not None:
            out["lastNoRebootInstallOperationTime"] = self.last_no_reboot_install_time.isoformat()
        if self.held:
            out["held"] = [h.to_dict() for h in self.held]
        if explain:
            out["notApproved"] = [n.to_dict() for n in self.not_approved]
        return out
