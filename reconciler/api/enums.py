"""Stage: api (the schema). SSM's enumerations and per-OS vocabularies, as values.

Everything here is data: the 15 ``OperatingSystem`` values, the patch filter keys, which keys and
values each OS accepts in a baseline, and the families that share one package manager. Facts come
from the SSM API model and user guide (see docs/ssm-semantics.md §1.3, §1.4).
This module may not import anything from the rest of ``reconciler``.
"""

from __future__ import annotations

from enum import StrEnum


class OperatingSystem(StrEnum):
    """SSM's ``OperatingSystem`` enum (15 values)."""

    WINDOWS = "WINDOWS"
    AMAZON_LINUX = "AMAZON_LINUX"
    AMAZON_LINUX_2 = "AMAZON_LINUX_2"
    AMAZON_LINUX_2022 = "AMAZON_LINUX_2022"
    UBUNTU = "UBUNTU"
    REDHAT_ENTERPRISE_LINUX = "REDHAT_ENTERPRISE_LINUX"
    SUSE = "SUSE"
    CENTOS = "CENTOS"
    ORACLE_LINUX = "ORACLE_LINUX"
    DEBIAN = "DEBIAN"
    MACOS = "MACOS"
    RASPBIAN = "RASPBIAN"
    ROCKY_LINUX = "ROCKY_LINUX"
    ALMA_LINUX = "ALMA_LINUX"
    AMAZON_LINUX_2023 = "AMAZON_LINUX_2023"


class Family(StrEnum):
    """Operating systems that share a package manager and so share approval semantics."""

    APT = "apt"
    RPM = "rpm"  # yum and dnf: update notices from updateinfo.xml
    SUSE = "suse"  # zypper: patches
    WINDOWS = "windows"
    MACOS = "macos"


APT_SYSTEMS = frozenset({OperatingSystem.UBUNTU, OperatingSystem.DEBIAN, OperatingSystem.RASPBIAN})
AMAZON_LINUX_SYSTEMS = frozenset(
    {
        OperatingSystem.AMAZON_LINUX,
        OperatingSystem.AMAZON_LINUX_2,
        OperatingSystem.AMAZON_LINUX_2022,
        OperatingSystem.AMAZON_LINUX_2023,
    }
)
RPM_SYSTEMS = AMAZON_LINUX_SYSTEMS | frozenset(
    {
        OperatingSystem.REDHAT_ENTERPRISE_LINUX,
        OperatingSystem.CENTOS,
        OperatingSystem.ORACLE_LINUX,
        OperatingSystem.ROCKY_LINUX,
        OperatingSystem.ALMA_LINUX,
    }
)
# SSM falls back to the package build time when a notice has no date only on these (§3.3).
BUILD_TIME_FALLBACK_SYSTEMS = AMAZON_LINUX_SYSTEMS | frozenset(
    {OperatingSystem.REDHAT_ENTERPRISE_LINUX, OperatingSystem.CENTOS}
)
# AWS's predefined baselines for these approve "7 days after they are released or updated": the
# later of a notice's two dates counts (§3.3). Amazon Linux counts from the updated date alone.
LATER_DATE_SYSTEMS = frozenset(
    {
        OperatingSystem.REDHAT_ENTERPRISE_LINUX,
        OperatingSystem.CENTOS,
        OperatingSystem.ORACLE_LINUX,
        OperatingSystem.ROCKY_LINUX,
        OperatingSystem.ALMA_LINUX,
        OperatingSystem.SUSE,
    }
)
LINUX_SYSTEMS = frozenset(OperatingSystem) - {OperatingSystem.WINDOWS, OperatingSystem.MACOS}


def family_of(os: OperatingSystem) -> Family:
    """The package-manager family whose approval semantics apply to ``os``."""
    if os in APT_SYSTEMS:
        return Family.APT
    if os in RPM_SYSTEMS:
        return Family.RPM
    if os is OperatingSystem.SUSE:
        return Family.SUSE
    if os is OperatingSystem.WINDOWS:
        return Family.WINDOWS
    return Family.MACOS


class PatchFilterKey(StrEnum):
    """SSM's ``PatchFilterKey`` enum, shared by all operating systems."""

    ARCH = "ARCH"
    ADVISORY_ID = "ADVISORY_ID"
    BUGZILLA_ID = "BUGZILLA_ID"
    PATCH_SET = "PATCH_SET"
    PRODUCT = "PRODUCT"
    PRODUCT_FAMILY = "PRODUCT_FAMILY"
    CLASSIFICATION = "CLASSIFICATION"
    CVE_ID = "CVE_ID"
    EPOCH = "EPOCH"
    MSRC_SEVERITY = "MSRC_SEVERITY"
    NAME = "NAME"
    PATCH_ID = "PATCH_ID"
    SECTION = "SECTION"
    PRIORITY = "PRIORITY"
    REPOSITORY = "REPOSITORY"
    RELEASE = "RELEASE"
    SEVERITY = "SEVERITY"
    SECURITY = "SECURITY"
    VERSION = "VERSION"


class ComplianceLevel(StrEnum):
    """Severity reported for a non-compliant patch (``PatchComplianceLevel``)."""

    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    INFORMATIONAL = "INFORMATIONAL"
    UNSPECIFIED = "UNSPECIFIED"


# Highest first: the instance's complianceSeverity is the first of these among its violations.
COMPLIANCE_LEVEL_ORDER: tuple[ComplianceLevel, ...] = tuple(ComplianceLevel)


class RejectedPatchesAction(StrEnum):
    ALLOW_AS_DEPENDENCY = "ALLOW_AS_DEPENDENCY"
    BLOCK = "BLOCK"


class ApproveAfterDaysFrom(StrEnum):
    """Patchwarden extension: what approve-after-days counts from on Debian-family systems."""

    FIRST_SEEN = "FirstSeen"


class ComplianceStatus(StrEnum):
    COMPLIANT = "COMPLIANT"
    NON_COMPLIANT = "NON_COMPLIANT"


class PatchState(StrEnum):
    """SSM's ``PatchComplianceDataState``: the state of one patch on one instance."""

    INSTALLED = "INSTALLED"
    INSTALLED_OTHER = "INSTALLED_OTHER"
    INSTALLED_PENDING_REBOOT = "INSTALLED_PENDING_REBOOT"
    INSTALLED_REJECTED = "INSTALLED_REJECTED"
    MISSING = "MISSING"
    FAILED = "FAILED"
    NOT_APPLICABLE = "NOT_APPLICABLE"
    AVAILABLE_SECURITY_UPDATE = "AVAILABLE_SECURITY_UPDATE"


class Operation(StrEnum):
    SCAN = "Scan"
    INSTALL = "Install"


class JobStatus(StrEnum):
    """A job's status, as the state store holds it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"
    """Left running by a process that stopped; its machine is rescanned."""


class ExecutionStatus(StrEnum):
    """A maintenance window execution's status (SSM's ``MaintenanceWindowExecutionStatus`` names;
    Patchwarden never sets ``CANCELLING``, which SSM shows while it waits for a cancel to land:
    nothing running is interrupted here, see docs/loop.md)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    """A job of the opening was still running when the opening ended."""
    CANCELLED = "CANCELLED"
    """The cutoff passed with work of a CANCEL_TASK task not started."""
    SKIPPED_OVERLAPPING = "SKIPPED_OVERLAPPING"
    """The opening began while the window's previous execution still ran; it ran nothing."""


class ReportRunStatus(StrEnum):
    """How one export of a scheduled ComplianceReport ended."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class RebootOption(StrEnum):
    REBOOT_IF_NEEDED = "RebootIfNeeded"
    NO_REBOOT = "NoReboot"


_APT_PRIORITIES = ("Required", "Important", "Standard", "Optional", "Extra")
_RPM_CLASSIFICATIONS = ("Security", "Bugfix", "Enhancement", "Recommended", "Newpackage")
_RHEL_SEVERITIES = ("Critical", "Important", "Moderate", "Low")
_AL_SEVERITIES = ("Critical", "Important", "Medium", "Low")

# Filter keys a baseline accepts per OS, and the closed set of values for each key (None = any
# text, validated for length only). From SSM's DescribePatchProperties documentation (§1.4).
_APT_KEYS: dict[PatchFilterKey, tuple[str, ...] | None] = {
    PatchFilterKey.PRODUCT: None,
    PatchFilterKey.PRIORITY: _APT_PRIORITIES,
    PatchFilterKey.SECTION: None,
}
_RPM_KEYS: dict[PatchFilterKey, tuple[str, ...] | None] = {
    PatchFilterKey.PRODUCT: None,
    PatchFilterKey.CLASSIFICATION: _RPM_CLASSIFICATIONS,
    PatchFilterKey.SEVERITY: _RHEL_SEVERITIES,
}
_AL_KEYS: dict[PatchFilterKey, tuple[str, ...] | None] = {
    **_RPM_KEYS,
    PatchFilterKey.SEVERITY: _AL_SEVERITIES,
}
_AL_DNF_KEYS: dict[PatchFilterKey, tuple[str, ...] | None] = {
    **_RPM_KEYS,
    # AL2022/AL2023 also know "None", and treat Medium and Moderate as one level.
    PatchFilterKey.SEVERITY: (*_AL_SEVERITIES, "Moderate", "None"),
}

VALID_FILTERS: dict[OperatingSystem, dict[PatchFilterKey, tuple[str, ...] | None]] = {
    OperatingSystem.WINDOWS: {
        PatchFilterKey.PATCH_SET: ("OS", "APPLICATION"),
        PatchFilterKey.PRODUCT: None,
        PatchFilterKey.PRODUCT_FAMILY: None,
        PatchFilterKey.CLASSIFICATION: (
            "CriticalUpdates",
            "DefinitionUpdates",
            "Drivers",
            "FeaturePacks",
            "SecurityUpdates",
            "ServicePacks",
            "Tools",
            "UpdateRollups",
            "Updates",
            "Upgrades",
        ),
        PatchFilterKey.MSRC_SEVERITY: ("Critical", "Important", "Moderate", "Low", "Unspecified"),
    },
    OperatingSystem.UBUNTU: _APT_KEYS,
    OperatingSystem.DEBIAN: _APT_KEYS,
    OperatingSystem.RASPBIAN: _APT_KEYS,
    OperatingSystem.AMAZON_LINUX: _AL_KEYS,
    OperatingSystem.AMAZON_LINUX_2: _AL_KEYS,
    OperatingSystem.AMAZON_LINUX_2022: _AL_DNF_KEYS,
    OperatingSystem.AMAZON_LINUX_2023: _AL_DNF_KEYS,
    OperatingSystem.REDHAT_ENTERPRISE_LINUX: _RPM_KEYS,
    OperatingSystem.CENTOS: _RPM_KEYS,
    OperatingSystem.ORACLE_LINUX: _RPM_KEYS,
    OperatingSystem.ROCKY_LINUX: _RPM_KEYS,
    OperatingSystem.ALMA_LINUX: _RPM_KEYS,
    OperatingSystem.SUSE: {
        PatchFilterKey.PRODUCT: None,
        PatchFilterKey.CLASSIFICATION: (
            "Security",
            "Recommended",
            "Optional",
            "Feature",
            "Document",
            "Yast",
        ),
        PatchFilterKey.SEVERITY: ("Critical", "Important", "Moderate", "Low"),
    },
    OperatingSystem.MACOS: {
        PatchFilterKey.PRODUCT: None,
        # On macOS the classification is the package manager that offers the update.
        PatchFilterKey.CLASSIFICATION: ("softwareupdate", "installer", "brew", "brew cask"),
    },
}
