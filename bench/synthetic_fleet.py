"""A deterministic synthetic fleet for the evaluation benchmark (bench/evaluate_fleet.py).

Shape (defaults): 10,000 instances over four OS families (Ubuntu 22.04 apt, Amazon Linux 2023 and
RHEL 9 rpm, SLES 15 zypper) and five baselines (two for Ubuntu). Each instance has 2,000 installed
packages and 300 available updates.

Like a real fleet, instances are built from a few images: every OS has a pool of 2,600 package
names with five versions each; an instance installs a common core of 1,700 names plus 300 names
picked from the remaining 900, and is behind on enough packages (picked at random, at a random older
version) to have exactly 300 available updates, some packages offering two newer versions from two
repositories and a few updates being new packages. So instances share most package *versions* but
no two have the same installed set.

Interning: every distinct package version is one Python object, shared by all the instances that
report it, as a real inventory parser followed by an interning step would produce (an equal object
per instance would only cost memory; the engine keys its caches on object identity and so would
simply decide each copy once). The Inventory documents are assembled with ``model_construct``
because their parts are already validated models; a sample is re-validated to prove the shape.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from reconciler.api.enums import OperatingSystem, Operation
from reconciler.api.inventory import (
    AvailableUpdate,
    Facts,
    FailedPatch,
    InstalledPackage,
    Inventory,
    Origin,
)
from reconciler.api.resources import PatchBaseline
from reconciler.api.snapshot import build_snapshot

T = TypeVar("T")

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POOL_NAMES = 2_600
CORE_NAMES = 1_700
VERSIONS = 5  # version indexes 0 (oldest) .. 4 (newest)
NEW_PACKAGE_NAMES = 40  # names that are offered but not installed (new dependencies, kernels)

# ---------------------------------------------------------------------------------------------
# Baselines: five, in the style of examples/baselines, built and validated like a Git snapshot.

BASELINES_YAML = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: ubuntu-prod}
spec:
  operatingSystem: UBUNTU
  approvalRules:
    - patchFilterGroup:
        patchFilters: [{key: PRIORITY, values: [Required, Important, Standard]}]
      complianceLevel: CRITICAL
    - patchFilterGroup:
        patchFilters:
          - {key: PRIORITY, values: [Optional, Extra]}
          - {key: SECTION, values: [libs, net, web, admin, utils]}
      complianceLevel: MEDIUM
  approvedPatches: [pkg-ubuntu-0007, pkg-ubuntu-0042, "pkg-ubuntu-19*"]
  approvedPatchesComplianceLevel: HIGH
  rejectedPatches: [telnetd, "rsh-*", pkg-ubuntu-0666]
  rejectedPatchesAction: BLOCK
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: ubuntu-dev}
spec:
  operatingSystem: UBUNTU
  globalFilters:
    patchFilters: [{key: PRODUCT, values: [Ubuntu22.04]}]
  approvalRules:
    - patchFilterGroup:
        patchFilters: [{key: PRIORITY, values: ["*"]}]
      complianceLevel: LOW
      enableNonSecurity: true
  rejectedPatches: [telnetd, "pkg-ubuntu-25*"]
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: al2023-prod}
spec:
  operatingSystem: AMAZON_LINUX_2023
  globalFilters:
    patchFilters: [{key: PRODUCT, values: [AmazonLinux2023]}]
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - {key: CLASSIFICATION, values: [Security]}
          - {key: SEVERITY, values: [Critical, Important]}
      approveAfterDays: 7
      complianceLevel: CRITICAL
    - patchFilterGroup:
        patchFilters:
          - {key: CLASSIFICATION, values: [Security]}
          - {key: SEVERITY, values: [Medium, Low]}
      approveAfterDays: 14
      complianceLevel: MEDIUM
    - patchFilterGroup:
        patchFilters: [{key: CLASSIFICATION, values: [Bugfix]}]
      approveAfterDays: 14
      complianceLevel: LOW
  approvedPatches: [ALAS2023-2026-0100, pkg-al2023-0003]
  approvedPatchesComplianceLevel: HIGH
  rejectedPatches: ["kernel-debug*", pkg-al2023-0999]
  rejectedPatchesAction: BLOCK
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: rhel-prod}
spec:
  operatingSystem: REDHAT_ENTERPRISE_LINUX
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - {key: CLASSIFICATION, values: [Security]}
          - {key: SEVERITY, values: [Critical, Important]}
      approveAfterDays: 3
      complianceLevel: CRITICAL
    - patchFilterGroup:
        patchFilters: [{key: CLASSIFICATION, values: [Bugfix, Enhancement]}]
      approveUntilDate: "2026-10-31"
      complianceLevel: MEDIUM
  approvedPatches: [CVE-2026-10001, CVE-2026-10002, RHSA-2026:0200]
  approvedPatchesComplianceLevel: HIGH
  approvedPatchesEnableNonSecurity: true
  rejectedPatches: [pkg-rhel-0013, "pkg-rhel-2222*"]
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: suse-prod}
spec:
  operatingSystem: SUSE
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - {key: CLASSIFICATION, values: [Security, Recommended]}
          - {key: SEVERITY, values: [Critical, Important, Moderate]}
      approveAfterDays: 5
      complianceLevel: HIGH
  rejectedPatches: [pkg-suse-0101]
"""


def baselines() -> dict[str, PatchBaseline]:
    snapshot = build_snapshot([("bench/baselines.yaml", BASELINES_YAML.encode())])
    return dict(snapshot.baselines)


# ---------------------------------------------------------------------------------------------
# OS profiles


@dataclass(frozen=True)
class Profile:
    key: str  # short name used in package names
    operating_system: OperatingSystem
    os_id: str
    os_version: str
    arch: str
    noarch: str
    codename: str | None
    rpm: bool
    baselines: tuple[str, ...]  # instances alternate between these


PROFILES = (
    Profile(
        "ubuntu",
        OperatingSystem.UBUNTU,
        "ubuntu",
        "22.04",
        "amd64",
        "all",
        "jammy",
        False,
        ("ubuntu-prod", "ubuntu-dev"),
    ),
    Profile(
        "al2023",
        OperatingSystem.AMAZON_LINUX_2023,
        "amzn",
        "2023",
        "x86_64",
        "noarch",
        None,
        True,
        ("al2023-prod",),
    ),
    Profile(
        "rhel",
        OperatingSystem.REDHAT_ENTERPRISE_LINUX,
        "rhel",
        "9.4",
        "x86_64",
        "noarch",
        None,
        True,
        ("rhel-prod",),
    ),
    Profile(
        "suse",
        OperatingSystem.SUSE,
        "sles",
        "15.5",
        "x86_64",
        "noarch",
        None,
        True,
        ("suse-prod",),
    ),
)

_PRIORITIES = (("required", 3), ("important", 4), ("standard", 8), ("optional", 80), ("extra", 5))
_SECTIONS = ("libs", "net", "web", "admin", "utils", "python", "perl", "devel", "doc", "kernel")
_RPM_CLASSES = {
    "al2023": (("Security", 40), ("Bugfix", 45), ("Enhancement", 10), (None, 5)),
    "rhel": (("Security", 35), ("Bugfix", 45), ("Enhancement", 15), (None, 5)),
    "suse": (("Security", 40), ("Recommended", 40), ("Optional", 15), (None, 5)),
}
_SEVERITIES = {
    "al2023": (("Critical", 5), ("Important", 30), ("Medium", 45), ("Low", 20)),
    "rhel": (("Critical", 5), ("Important", 30), ("Moderate", 45), ("Low", 20)),
    "suse": (("Critical", 5), ("Important", 30), ("Moderate", 45), ("Low", 20)),
}


def _weighted(rng: random.Random, table: tuple[tuple[T, int], ...]) -> T:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


@dataclass(frozen=True)
class _Version:
    """What the vendor says about one version of one package (shared by every machine)."""

    version: str
    security: bool
    repository: str
    classification: str | None
    severity: str | None
    advisory: str | None
    cves: tuple[str, ...]
    bugzilla: tuple[str, ...]
    issued: date | None
    updated: date | None
    built: datetime


@dataclass(frozen=True)
class _Name:
    index: int
    name: str
    arch: str
    priority: str
    section: str
    versions: tuple[_Version, ...]
    requires: tuple[str, ...]


class Pool:
    """Every package version of one OS, as interned model objects."""

    def __init__(self, profile: Profile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        self._origins = {
            suite: Origin(
                origin="Ubuntu",
                label="Ubuntu",
                suite=suite,
                codename=profile.codename,
                site="security.ubuntu.com" if suite.endswith("security") else "archive",
                component="main",
            )
            for suite in ("jammy-security", "jammy-updates")
        }
        self.names = [self._name(i) for i in range(POOL_NAMES)]
        self.new_names = [self._name(i, new=True) for i in range(NEW_PACKAGE_NAMES)]
        self._installed: dict[tuple[str, int], InstalledPackage] = {}
        self._updates: dict[tuple[str, int, int | None], AvailableUpdate] = {}
        self.latest = [self.installed(n, VERSIONS - 1) for n in self.names]

    # -- vendor data ------------------------------------------------------------------------------

    def _name(self, index: int, *, new: bool = False) -> _Name:
        rng, p = self._rng, self.profile
        name = f"pkg-{p.key}-{index:04d}" if not new else f"new-{p.key}-{index:02d}"
        if not new and index in _SPECIAL:
            name = _SPECIAL[index][p.rpm]
        arch = p.noarch if rng.random() < 0.15 else p.arch
        upstream = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"
        rel = rng.randint(1, 300)
        versions = tuple(self._version(upstream, rel, v, index) for v in range(VERSIONS))
        requires: tuple[str, ...] = ()
        if rng.random() < 0.10:
            requires = tuple(f"pkg-{p.key}-{rng.randrange(POOL_NAMES):04d}" for _ in range(2))
            if rng.random() < 0.05:
                requires += (_SPECIAL[3][p.rpm],)  # telnetd / kernel-debug: rejected with BLOCK
        return _Name(
            index,
            name,
            arch,
            _weighted(rng, _PRIORITIES),
            rng.choice(_SECTIONS),
            versions,
            requires,
        )

    def _version(self, upstream: str, rel: int, v: int, index: int) -> _Version:
        rng, p = self._rng, self.profile
        age = (VERSIONS - 1 - v) * rng.randint(20, 90) + rng.randint(0, 20)  # days before NOW
        issued = NOW.date() - timedelta(days=age)
        built = NOW - timedelta(days=age + rng.randint(1, 5), hours=rng.randint(0, 23))
        if not p.rpm:
            security = rng.random() < 0.4
            return _Version(
                version=f"{upstream}-{rel}ubuntu0.22.04.{v + 1}",
                security=security,
                repository="jammy-security" if security else "jammy-updates",
                classification=None,
                severity=None,
                advisory=f"USN-{6000 + index}-{v + 1}" if security else None,
                cves=(f"CVE-2026-{10000 + index * 5 + v}",) if security else (),
                bugzilla=(),
                issued=None,
                updated=None,
                built=built,
            )
        classification = _weighted(rng, _RPM_CLASSES[p.key])
        severity = _weighted(rng, _SEVERITIES[p.key]) if classification == "Security" else None
        prefix = {"al2023": "ALAS2023", "rhel": "RHSA", "suse": "SUSE-SLE-Module-Basesystem-15-SP5"}
        advisory = f"{prefix[p.key]}-2026-{index * 5 + v:04d}" if classification else None
        if advisory and p.key == "rhel":
            advisory = f"RHSA-2026:{index * 5 + v:04d}"
        version = {
            "al2023": f"{upstream}-{rel}.amzn2023.0.{v + 1}",
            "rhel": f"{upstream}-{rel}.{v + 1}.el9_4",
            "suse": f"{upstream}-150500.{rel}.{v + 1}.1",
        }[p.key]
        if index % 17 == 0:
            version = f"1:{version}"
        return _Version(
            version=version,
            security=classification is not None,
            repository={"al2023": "amazonlinux", "rhel": "rhel-9-baseos", "suse": "SLE-Updates"}[
                p.key
            ],
            classification=classification,
            severity=severity,
            advisory=advisory,
            cves=(f"CVE-2026-{10000 + index * 5 + v}",) if classification == "Security" else (),
            bugzilla=(str(2_200_000 + index * 5 + v),) if p.key == "rhel" else (),
            issued=issued if classification else None,
            updated=issued + timedelta(days=rng.randint(0, 6)) if p.key == "al2023" else None,
            built=built,
        )

    # -- interned model objects -------------------------------------------------------------------

    def installed(self, n: _Name, v: int) -> InstalledPackage:
        key = (n.name, v)
        found = self._installed.get(key)
        if found is None:
            found = self._installed[key] = self._installed_model(n, n.versions[v])
        return found

    def update(self, n: _Name, v: int, installed: int | None) -> AvailableUpdate:
        key = (n.name, v, installed)
        found = self._updates.get(key)
        if found is None:
            found = self._updates[key] = self._update_model(n, v, installed)
        return found

    def _facts(self, n: _Name, ver: _Version) -> dict[str, object]:
        if not self.profile.rpm:
            return {
                "security": ver.security,
                "priority": n.priority,
                "section": n.section,
                "source_package": n.name,
            }
        # rpm agents attach the update notice to installed versions too (dnf updateinfo).
        return {
            "security": ver.security,
            "classification": ver.classification,
            "severity": ver.severity,
            "advisory_ids": (ver.advisory,) if ver.advisory else (),
            "cves": ver.cves,
            "bugzilla_ids": ver.bugzilla,
            "issued": ver.issued,
            "updated": ver.updated,
            "build_time": ver.built,
        }

    def _installed_model(self, n: _Name, ver: _Version) -> InstalledPackage:
        # Installed at image build time: a few days after the build.
        when = ver.built + timedelta(days=3) if self.profile.rpm else None
        return InstalledPackage(
            name=n.name,
            arch=n.arch,
            version=ver.version,
            installed_time=when,
            **self._facts(n, ver),  # type: ignore[arg-type]
        )

    def _update_model(self, n: _Name, v: int, installed: int | None) -> AvailableUpdate:
        ver = n.versions[v]
        extra: dict[str, object] = {}
        if not self.profile.rpm:
            extra = {"origins": (self._origins[ver.repository],), "advisory_ids": (), "cves": ()}
            if ver.advisory:
                extra.update(advisory_ids=(ver.advisory,), cves=ver.cves)
        return AvailableUpdate(
            name=n.name,
            arch=n.arch,
            version=ver.version,
            installed_version=n.versions[installed].version if installed is not None else None,
            repository=ver.repository,
            requires=n.requires,
            reboot_suggested=n.name.startswith("kernel"),
            **{**self._facts(n, ver), **extra},  # type: ignore[arg-type]
        )


# Pool indexes with real-looking names: (apt name, rpm name).
_SPECIAL = {
    0: ("linux-image-generic", "kernel"),
    1: ("openssl", "openssl-libs"),
    2: ("libc6", "glibc"),
    3: ("telnetd", "kernel-debug"),  # rejected with BLOCK by ubuntu-prod / al2023-prod
    4: ("systemd", "systemd"),
}


# ---------------------------------------------------------------------------------------------
# Instances


@dataclass(frozen=True)
class Member:
    """One instance of the fleet and the baseline its patch group gives it."""

    inventory: Inventory
    baseline: PatchBaseline
    patch_group: str


def build_fleet(
    instances: int,
    *,
    updates: int = 300,
    installed: int = 2_000,
    seed: int = 20261128,
    progress: Callable[[int], None] | None = None,
) -> list[Member]:
    rng = random.Random(seed)
    by_name = baselines()
    pools = {p.key: Pool(p, random.Random(f"{seed}-{p.key}")) for p in PROFILES}
    fleet: list[Member] = []
    seen: dict[str, int] = {}
    for i in range(instances):
        profile = PROFILES[_MIX[i % len(_MIX)]]
        nth = seen[profile.key] = seen.get(profile.key, -1) + 1
        baseline_name = profile.baselines[nth % len(profile.baselines)]
        inv = _inventory(i, pools[profile.key], rng, updates=updates, installed=installed)
        fleet.append(Member(inv, by_name[baseline_name], f"{baseline_name}-group"))
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1)
    return fleet


# Profile indexes in a repeating cycle of 20, interleaved: 8 Ubuntu, 5 AL2023, 4 RHEL, 3 SUSE,
# so that any prefix of the fleet has about the same mix.
_MIX = (0, 1, 2, 0, 3, 0, 1, 2, 0, 1, 0, 2, 3, 0, 1, 0, 2, 3, 0, 1)


def _inventory(
    i: int, pool: Pool, rng: random.Random, *, updates: int, installed: int
) -> Inventory:
    core = min(installed, CORE_NAMES)
    chosen = [*range(core), *rng.sample(range(CORE_NAMES, POOL_NAMES), installed - core)]
    new = rng.sample(pool.new_names, min(updates, rng.randint(1, 3)))
    behind = _behind(len(chosen), rng, updates - len(new))
    pkgs = list(map(pool.latest.__getitem__, chosen))
    offered: list[AvailableUpdate] = []
    for pos in sorted(behind):  # offers come in installed order, as package managers list them
        n = pool.names[chosen[pos]]
        v, targets = behind[pos]
        pkgs[pos] = pool.installed(n, v)
        offered.extend(pool.update(n, target, v) for target in targets)
    offered.extend(pool.update(n, VERSIONS - 1, None) for n in new)
    kernel_v = behind.get(0, (VERSIONS - 1, ()))[0]  # pool index 0 is the kernel
    if pool.profile.rpm and core and kernel_v > 0:
        # installonly: the previous kernel stays, in place of the last up-to-date package
        last = next(k for k in range(len(chosen) - 1, 0, -1) if k not in behind)
        del pkgs[last]
        pkgs.insert(1, pool.installed(pool.names[0], kernel_v - 1))
    operation = Operation.SCAN
    failed: tuple[FailedPatch, ...] = ()
    if i % 50 == 7 and offered:
        operation = Operation.INSTALL
        bad = offered[rng.randrange(len(offered))]
        failed = (FailedPatch(name=bad.name, arch=bad.arch, version=bad.version, reason="E: 404"),)
    return Inventory.model_construct(
        instance_id=f"i-{i:08x}",
        collected_at=NOW - timedelta(hours=rng.randint(1, 12)),
        agent_version="0.1.0",
        operation=operation,
        facts=_facts(i, pool.profile, rng),
        installed=tuple(pkgs),
        updates=tuple(offered),
        failed=failed,
    )


def _behind(size: int, rng: random.Random, wanted: int) -> dict[int, tuple[int, tuple[int, ...]]]:
    """Positions of the packages the instance is behind on -> (installed version, offered
    versions), with ``wanted`` offers in all; about a quarter of them get a second, intermediate
    version from another repository."""
    behind: dict[int, tuple[int, tuple[int, ...]]] = {}
    newest = VERSIONS - 1
    count = 0
    for pos in rng.sample(range(size), min(size, wanted)):
        if count >= wanted:
            break
        v = rng.randrange(newest)
        two = v < newest - 1 and rng.random() < 0.25 and count + 2 <= wanted
        behind[pos] = (v, (v + 1, newest) if two else (newest,))
        count += 1 + two
    return behind


def _facts(i: int, p: Profile, rng: random.Random) -> Facts:
    reboot = rng.random() < 0.15
    boot = NOW - timedelta(days=rng.randint(1, 120))
    return Facts(
        os_id=p.os_id,
        os_version=p.os_version,
        operating_system=p.operating_system,
        codename=p.codename,
        arch=p.arch,
        kernel="6.1.0",
        boot_time=boot,
        reboot_required=reboot,
        reboot_required_packages=(_SPECIAL[0][p.rpm],) if reboot and rng.random() < 0.5 else (),
        hostname=f"host-{i}",
    )
