"""Stage: api (the schema). The inventory document: what an agent reports about one machine.

This is the contract between any agent (ours is stdlib Python; another could be written in any
language) and the decision engine. It is versioned by ``apiVersion``/``kind`` and its JSON Schema is
exported to ``docs/inventory.schema.json`` (``patchctl schema inventory``). The agent reports facts
only; it never says whether a patch is approved. May not import anything outside ``reconciler.api``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from reconciler.api._base import Model
from reconciler.api.enums import OperatingSystem, Operation

INVENTORY_KIND = "Inventory"


def _midnight(value: object) -> object:
    """A date without a time (inventories from before timestamps, a notice that gives only a
    day) stands for midnight UTC of that day."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _in_utc(value: datetime) -> datetime:
    """Naive times are UTC (rpm and updateinfo write UTC without saying so)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcTimestamp = Annotated[
    datetime,
    BeforeValidator(_midnight),
    AfterValidator(_in_utc),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
    ),
]
"""A moment in UTC; a date alone (YYYY-MM-DD) is read as midnight UTC of that day."""


class Facts(Model):
    """What the machine is."""

    os_id: str
    """ID from /etc/os-release (debian, ubuntu, rhel, amzn, sles...), or windows / macos."""
    os_version: str
    """VERSION_ID from /etc/os-release, for example 12 or 22.04."""
    operating_system: OperatingSystem
    """The SSM operatingSystem value this machine maps to."""
    product: str | None = None
    """SSM's product name (Ubuntu22.04, AmazonLinux2023, RedhatEnterpriseLinux9.4...) matched by
    PRODUCT filters; derived from the OS and version when absent."""
    codename: str | None = None
    """Release codename (bookworm, jammy), when the OS has one."""
    arch: str
    """Machine architecture as the package manager names it (amd64, x86_64, arm64...)."""
    kernel: str | None = None
    """Running kernel release (uname -r)."""
    boot_time: datetime | None = None
    """When the machine last booted."""
    reboot_required: bool = False
    """The machine says it needs a reboot (reboot-required file, needs-restarting -r...)."""
    reboot_required_packages: tuple[str, ...] = ()
    """Packages whose installation asked for the pending reboot."""
    hostname: str | None = None
    """Host name."""

    def effective_product(self) -> str:
        """SSM's product string for PRODUCT filters."""
        return self.product or default_product(self.operating_system, self.os_version)


_PRODUCT_PREFIX: dict[OperatingSystem, str] = {
    OperatingSystem.UBUNTU: "Ubuntu",
    OperatingSystem.DEBIAN: "Debian",
    OperatingSystem.RASPBIAN: "Raspbian",
    OperatingSystem.AMAZON_LINUX: "AmazonLinux",
    OperatingSystem.AMAZON_LINUX_2: "AmazonLinux",
    OperatingSystem.AMAZON_LINUX_2022: "AmazonLinux",
    OperatingSystem.AMAZON_LINUX_2023: "AmazonLinux",
    OperatingSystem.REDHAT_ENTERPRISE_LINUX: "RedhatEnterpriseLinux",
    OperatingSystem.CENTOS: "CentOS",
    OperatingSystem.ORACLE_LINUX: "OracleLinux",
    OperatingSystem.ROCKY_LINUX: "RockyLinux",
    OperatingSystem.ALMA_LINUX: "AlmaLinux",
    OperatingSystem.SUSE: "Suse",
    OperatingSystem.MACOS: "MacOS",
    OperatingSystem.WINDOWS: "WindowsServer",
}


def default_product(os: OperatingSystem, version: str) -> str:
    """SSM-style product name: prefix + version (Ubuntu22.04, AmazonLinux2023, Suse15.5)."""
    return f"{_PRODUCT_PREFIX[os]}{version}"


class Origin(Model):
    """One repository a package version can be installed from (apt's origin fields)."""

    origin: str | None = None
    label: str | None = None
    suite: str | None = None
    codename: str | None = None
    site: str | None = None
    component: str | None = None


class PackageFacts(Model):
    """Properties of one package version, as the package manager and its update notices say."""

    name: str = Field(min_length=1)
    """Package name (Windows: the KB id; macOS: the package or formula name)."""
    arch: str = ""
    """Architecture (amd64, x86_64, noarch, all...); empty when the OS has no such notion."""
    version: str = Field(min_length=1)
    """Version of this package: [epoch:]version[-release] as its package manager writes it."""
    repository: str | None = None
    """Repository id or apt suite the version comes from."""
    origins: tuple[Origin, ...] = ()
    """apt: every origin that offers this version."""
    security: bool = False
    """apt: the version is offered by the security pocket (<codename>-security / Debian-Security).
    RPM and SUSE: the version is referenced by an update notice or patch."""
    priority: str | None = None
    """apt Priority (required, important, standard, optional, extra)."""
    section: str | None = None
    """apt Section (admin, libs, net...)."""
    source_package: str | None = None
    """apt source package, RPM source RPM."""
    classification: str | None = None
    """Update notice type or patch category (Security, Bugfix, Enhancement...), Windows update
    classification, or macOS package manager."""
    severity: str | None = None
    """Vendor severity (Critical, Important, Moderate, Low...), MSRC severity on Windows."""
    advisory_ids: tuple[str, ...] = ()
    """Advisory ids (RHSA-2024:1234, ALAS2023-2024-123, DSA-5555-1, SUSE-SLE-...-2024-12)."""
    cves: tuple[str, ...] = ()
    """CVE ids fixed by this version."""
    bugzilla_ids: tuple[str, ...] = ()
    """Bugzilla ids referenced by the update notice."""
    issued: UtcTimestamp | None = None
    """When the update notice (zypper: the patch) was released, UTC with the time of day; a date
    alone (older inventories) is midnight UTC of that day."""
    updated: UtcTimestamp | None = None
    """When the update notice was last updated, UTC; a date alone is midnight UTC."""
    build_time: UtcTimestamp | None = None
    """When the package was built (rpm's BUILDTIME), UTC."""
    first_seen: UtcTimestamp | None = None
    """apt: when any instance's scan first saw this version in one of its archives (the state
    store's record, merged in before evaluation; agents do not report it). A baseline with
    ``approveAfterDaysFrom: FirstSeen`` counts approve-after-days from it."""
    reboot_suggested: bool = False
    """The update notice suggests a reboot after installing."""
    product: str | None = None
    """Windows: the product the update is for (WindowsServer2022, Office 2016...)."""
    product_family: str | None = None
    """Windows: the product family (Windows, Office...)."""
    patch_set: Literal["OS", "APPLICATION"] | None = None
    """Windows: OS or APPLICATION."""
    kb_id: str | None = None
    """Windows: the KB id; RPM/SUSE: not used."""


class InstalledPackage(PackageFacts):
    """A package installed on the machine."""

    installed_time: datetime | None = None
    """When it was installed."""


class AvailableUpdate(PackageFacts):
    """One version the package manager could install."""

    installed_version: str | None = None
    """Version installed now; absent when the package is not installed."""
    requires: tuple[str, ...] = ()
    """Packages installing this version would also install or upgrade."""
    applicable: bool = True
    """Windows: false when the update does not apply (feature absent, superseded)."""
    candidate: bool = True
    """apt: the version apt itself would install; false for a security version that a newer
    non-security candidate shadows. AWS's implicit security rule asks for a candidate from a
    security repository, so the engine does not approve such a version without enableNonSecurity;
    it is listed so that explain can say why."""


class FailedPatch(Model):
    """A patch the last Install tried and could not install."""

    name: str
    arch: str = ""
    version: str
    reason: str = ""
    """What the package manager said."""


class PatchRef(Model):
    """One package version, by name, architecture and version."""

    name: str = Field(min_length=1)
    arch: str = ""
    version: str = Field(min_length=1)


class NoRebootInstall(Model):
    """What Installs with RebootOption NoReboot did since the machine last booted (SSM:
    ``LastNoRebootInstallOperationTime``); the agent keeps it on the machine until a later boot
    makes it stale."""

    time: datetime
    """When the latest NoReboot Install finished (UTC): SSM's LastNoRebootInstallOperationTime."""
    patches: tuple[PatchRef, ...] = ()
    """The patches those Installs installed: INSTALLED_PENDING_REBOOT until the machine boots
    after ``time``."""


class MachineHold(Model):
    """One hold the machine's package manager keeps."""

    name: str = Field(min_length=1)
    """The package name or name pattern held."""
    tool: Literal["apt-mark", "dnf-versionlock", "zypper-locks"]
    """Which tool recorded it."""


class Inventory(Model):
    """Everything an agent reports for one machine: facts, installed packages, available updates."""

    api_version: Literal["patchwarden.io/v1alpha1"] = "patchwarden.io/v1alpha1"
    kind: Literal["Inventory"] = "Inventory"
    instance_id: str = Field(min_length=1)
    """The ManagedInstance name (or the host name for a one-box scan)."""
    collected_at: datetime
    """When the inventory was taken (UTC)."""
    agent_version: str | None = None
    """Version of the agent that produced the document."""
    operation: Operation = Operation.SCAN
    """The operation that produced the document; Install when it follows an installation."""
    facts: Facts
    installed: tuple[InstalledPackage, ...] = ()
    """Every installed package."""
    updates: tuple[AvailableUpdate, ...] = ()
    """Every version the package manager offers beyond what is installed; several per package
    when several repositories offer different versions."""
    failed: tuple[FailedPatch, ...] = ()
    """Patches the last Install could not install."""
    no_reboot_install: NoRebootInstall | None = None
    """The NoReboot Installs since the last boot, when there were any."""
    held: tuple[MachineHold, ...] = ()
    """Packages the machine's own package manager holds (apt-mark hold, dnf versionlock, zypper
    locks): never installed, reported as held (docs/guardrails.md)."""


_P = TypeVar("_P", bound=PackageFacts)

FirstSeenKey = tuple[str, str, str, str]
"""(name, arch, version, archive): what the state store keeps a first-seen time for."""


def first_seen_keys(
    name: str, arch: str, version: str, origins: Iterable[tuple[str | None, str | None]]
) -> tuple[FirstSeenKey, ...]:
    """One key per archive (``origin/suite``) offering this version; none without origins (only
    apt reports them). Takes plain values so that stored JSON and models share it."""
    archives = sorted({f"{origin or ''}/{suite or ''}" for origin, suite in origins})
    return tuple((name, arch, version, archive) for archive in archives)


def package_first_seen_keys(pkg: PackageFacts) -> tuple[FirstSeenKey, ...]:
    return first_seen_keys(
        pkg.name, pkg.arch, pkg.version, ((o.origin, o.suite) for o in pkg.origins)
    )


def with_first_seen(inventory: Inventory, times: Mapping[FirstSeenKey, datetime]) -> Inventory:
    """``inventory`` with each package's ``first_seen`` set to the earliest recorded time over its
    archives (left unset when none is recorded). Pure: the caller looks the times up."""

    def merged(pkg: _P) -> _P:
        found = [times[key] for key in package_first_seen_keys(pkg) if key in times]
        return pkg.model_copy(update={"first_seen": min(found)}) if found else pkg

    return inventory.model_copy(
        update={
            "installed": tuple(merged(p) for p in inventory.installed),
            "updates": tuple(merged(p) for p in inventory.updates),
        }
    )
