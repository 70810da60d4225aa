"""approvedPatches / rejectedPatches name forms, per family: what each form matches in the engine,
and that `patchctl validate` refuses an entry in no form with file:line and the accepted forms.

The forms are AWS's "Package name formats for approved and rejected patch lists"
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-approved-rejected-package-name-formats.html),
whose RPM example is dbus.x86_64:1:1.12.28-1.amzn2023.0.1; the tables below use that package.
"""

from __future__ import annotations

import json
import re

import pytest

from reconciler.agent.patchnames import blocked_by, rpm_names
from reconciler.api.enums import Family
from reconciler.api.names import COMPONENTS, FORMS, key_template
from reconciler.evaluation import evaluate
from reconciler.evaluation.matching import package_names
from tests.factories import NOW, baseline, inventory
from tests.test_validate_fields import FILE, problems, validate

RPM_OSES = [
    "AMAZON_LINUX_2",
    "AMAZON_LINUX_2023",
    "REDHAT_ENTERPRISE_LINUX",
    "CENTOS",
    "ORACLE_LINUX",
    "ROCKY_LINUX",
]

# -- the engine: which packages an entry names --------------------------------------------------

DBUS = "1:1.12.28-1.amzn2023.0.1"  # epoch 1, x86_64 (the machine's arch)
LIBS = "1.12.20-8.el9"  # no epoch (rpm's 0), noarch


def _rpm_inventory(os: str) -> object:
    notice = {"classification": "Security", "advisoryIds": ["RHSA-2026:0001"]}
    return inventory(
        os,
        [
            {"name": "dbus", "version": "1:1.12.28-1.amzn2023.0.0"},
            {"name": "dbus-libs", "version": "1.12.20-7.el9", "arch": "noarch"},
        ],
        [
            {"name": "dbus", "version": DBUS, "installedVersion": "1:1.12.28-1.amzn2023.0.0"}
            | notice,
            {"name": "dbus-libs", "version": LIBS, "installedVersion": "1.12.20-7.el9"}
            | {"arch": "noarch"}
            | notice,
        ],
    )


RPM_CASES = [
    # (form, entry, the updates it names)
    ("name", "dbus", {"dbus"}),
    ("name.arch", "dbus.x86_64", {"dbus"}),
    ("name-version", "dbus-1.12.28", {"dbus"}),
    ("name-version-release", "dbus-1.12.28-1.amzn2023.0.1", {"dbus"}),
    ("name-version-release.arch", "dbus-1.12.28-1.amzn2023.0.1.x86_64", {"dbus"}),
    ("version", "1.12.28", {"dbus"}),
    ("version-release", "1.12.28-1.amzn2023.0.1", {"dbus"}),
    ("epoch:version-release", "1:1.12.28-1.amzn2023.0.1", {"dbus"}),
    ("name-epoch:version-release", "dbus-1:1.12.28-1.amzn2023.0.1", {"dbus"}),
    ("name-epoch:version-release.arch", "dbus-1:1.12.28-1.amzn2023.0.1.x86_64", {"dbus"}),
    ("epoch:name-version-release.arch", "1:dbus-1.12.28-1.amzn2023.0.1.x86_64", {"dbus"}),
    ("name.arch:epoch:version-release", "dbus.x86_64:1:1.12.28-1.amzn2023.0.1", {"dbus"}),
    # one '*' (AWS's own examples first)
    ("name*", "dbus*", {"dbus", "dbus-libs"}),
    ("name-version*", "dbus-1.12.2*", {"dbus"}),
    ("name-*:version-release.arch", "dbus-*:1.12.28-1.amzn2023.0.1.x86_64", {"dbus"}),
    ("*.arch", "*.noarch", {"dbus-libs"}),
    ("name.arch:epoch:*", "dbus-libs.noarch:0:*", {"dbus-libs"}),
    ("case does not matter", "DBUS.X86_64", {"dbus"}),
    # a package without an epoch has epoch 0, as rpm writes it
    ("epoch 0", "dbus-libs-0:1.12.20-8.el9.noarch", {"dbus-libs"}),
    ("name.arch:0:version-release", "dbus-libs.noarch:0:1.12.20-8.el9", {"dbus-libs"}),
    # near misses name nothing
    ("another arch", "dbus.aarch64", set()),
    ("another epoch", "2:1.12.28-1.amzn2023.0.1", set()),
    ("another release", "dbus-1.12.28-2.amzn2023", set()),
    ("the installed version", "dbus-1:1.12.28-1.amzn2023.0.0.x86_64", set()),
    ("a prefix without '*'", "dbus-1.12", set()),
]


@pytest.mark.parametrize("os", RPM_OSES)
@pytest.mark.parametrize(("form", "entry", "named"), RPM_CASES, ids=[c[0] for c in RPM_CASES])
def test_rpm_approved_patches_name_forms(os: str, form: str, entry: str, named: set[str]) -> None:
    result = evaluate(baseline(os, approvedPatches=[entry]), _rpm_inventory(os), NOW)  # type: ignore[arg-type]
    missing = {p.name for p in result.patches if str(p.state) == "MISSING"}
    assert missing == named
    for patch in result.patches:
        if patch.name in named:
            assert patch.reason == f"approved by approvedPatches entry {entry!r}"


@pytest.mark.parametrize("os", RPM_OSES)
@pytest.mark.parametrize(("form", "entry", "named"), RPM_CASES, ids=[c[0] for c in RPM_CASES])
def test_rpm_rejected_patches_name_forms(os: str, form: str, entry: str, named: set[str]) -> None:
    everything = {"patchFilterGroup": {"patchFilters": []}, "approveAfterDays": 0}
    b = baseline(os, everything, rejectedPatches=[entry], rejectedPatchesAction="BLOCK")
    result = evaluate(b, _rpm_inventory(os), NOW)  # type: ignore[arg-type]
    rejected = {n.name for n in result.not_approved if "rejected by rejectedPatches" in n.reason}
    missing = {p.name for p in result.patches if str(p.state) == "MISSING"}
    assert rejected == named
    assert missing == {"dbus", "dbus-libs"} - named


SUSE_PATCH = "SUSE-SLE-Module-Basesystem-15-SP5-2026-4001"
SUSE_CASES = [
    ("file name", "dbus-1-1.12.2-150400.18.8.1.x86_64.rpm", {"dbus-1"}),
    ("file name with '*'", "dbus-1-1.12.2-150400.18.8.1.*.rpm", {"dbus-1"}),
    ("patch name", SUSE_PATCH, {"dbus-1", "libdbus-1-3"}),
    ("patch name with '*'", "SUSE-SLE-Module-Basesystem-15-SP5-2026-*", {"dbus-1", "libdbus-1-3"}),
    ("another patch", "SUSE-SLE-Module-Basesystem-15-SP5-2026-4002", set()),
    ("name", "libdbus-1-3", {"libdbus-1-3"}),
    ("name.arch", "dbus-1.x86_64", {"dbus-1"}),
    ("name-version-release.arch", "dbus-1-1.12.2-150400.18.8.1.x86_64", {"dbus-1"}),
    ("name.arch:epoch:version-release", "dbus-1.x86_64:0:1.12.2-150400.18.8.1", {"dbus-1"}),
    ("another version", "dbus-1-1.12.2-150400.18.5.1.x86_64.rpm", set()),
]


@pytest.mark.parametrize(("form", "entry", "named"), SUSE_CASES, ids=[c[0] for c in SUSE_CASES])
def test_suse_name_forms(form: str, entry: str, named: set[str]) -> None:
    new = "1.12.2-150400.18.8.1"
    inv = inventory(
        "SUSE",
        [{"name": n, "version": "1.12.2-150400.18.5.1"} for n in ("dbus-1", "libdbus-1-3")],
        [
            {
                "name": n,
                "version": new,
                "installedVersion": "1.12.2-150400.18.5.1",
                "classification": "Security",
                "advisoryIds": [SUSE_PATCH],
            }
            for n in ("dbus-1", "libdbus-1-3")
        ],
    )
    approved = evaluate(baseline("SUSE", approvedPatches=[entry]), inv, NOW)
    assert {p.name for p in approved.patches if str(p.state) == "MISSING"} == named
    everything = {"patchFilterGroup": {"patchFilters": []}, "approveAfterDays": 0}
    rejected = evaluate(baseline("SUSE", everything, rejectedPatches=[entry]), inv, NOW)
    assert {n.name for n in rejected.not_approved} == named


APT_CASES = [
    ("name", "libssl3", {"libssl3"}),
    ("name, any case (AWS writes ExamplePkg33)", "LibSSL3", {"libssl3"}),
    ("name with '*'", "libssl*", {"libssl3", "libssl-dev"}),
    ("'*' inside", "lib*-dev", {"libssl-dev"}),
    ("a longer name", "libssl3-dbg", set()),
]


@pytest.mark.parametrize("os", ["UBUNTU", "DEBIAN"])
@pytest.mark.parametrize(("form", "entry", "named"), APT_CASES, ids=[c[0] for c in APT_CASES])
def test_apt_names_cover_every_version_and_architecture(
    os: str, form: str, entry: str, named: set[str]
) -> None:
    inv = inventory(
        os,
        [
            {"name": "libssl3", "version": "3.0.2-0ubuntu1.10"},
            {"name": "libssl-dev", "version": "3.0.2-0ubuntu1.10"},
        ],
        [
            {
                "name": name,
                "version": "3.0.2-0ubuntu1.12",
                "installedVersion": "3.0.2-0ubuntu1.10",
                "security": True,
                "arch": arch,
            }
            for name, arch in (("libssl3", "amd64"), ("libssl-dev", "i386"))
        ],
    )
    approved = evaluate(baseline(os, approvedPatches=[entry]), inv, NOW)
    assert {p.name for p in approved.patches if str(p.state) == "MISSING"} == named


@pytest.mark.parametrize(
    ("version", "arch"),
    [(DBUS, "x86_64"), (LIBS, "noarch"), ("1.0", "x86_64"), ("1:2.0-1", ""), ("2.0-1", "")],
)
def test_the_engine_keys_are_the_documented_forms_filled_in(version: str, arch: str) -> None:
    """The engine writes the RPM keys out for speed; they must be names.FORMS, filled in."""
    (pkg,) = inventory(
        "SUSE", [{"name": "dbus", "version": version, "arch": arch, "advisoryIds": [SUSE_PATCH]}]
    ).installed
    epoch, _, plain = version.rpartition(":") if ":" in version else ("0", "", version)
    ver, _, rel = plain.rpartition("-") if "-" in plain else (plain, "", "")
    parts = {"name": "dbus", "arch": arch, "epoch": epoch, "version": ver, "release": rel}
    for family in (Family.RPM, Family.SUSE):
        expected = [
            key_template(form).format_map(parts)
            for form in FORMS[family]
            if all(parts[c] for c in COMPONENTS if re.search(rf"\b{c}\b", form))
        ]
        if family is Family.SUSE:
            expected.append(SUSE_PATCH)
        assert list(package_names(pkg, family)) == expected


@pytest.mark.parametrize("version", [DBUS, LIBS, "1.0", "2.0-1"])
def test_the_agent_blocks_by_the_engines_keys(version: str) -> None:
    """The agent (standard library only) writes the keys a second time, to refuse a BLOCKed
    package a transaction would pull in; they are the engine's SUSE keys (the RPM ones and the
    file name), or the name alone when the version is not a full rpm one."""
    (pkg,) = inventory("SUSE", [{"name": "dbus", "version": version}]).installed
    assert rpm_names(pkg.name, pkg.arch, pkg.version) == list(package_names(pkg, Family.SUSE))
    assert blocked_by(["x", "DBUS.X86_64"], rpm_names("dbus", "x86_64", "1.0-1")) == "DBUS.X86_64"
    assert blocked_by(["dbus?", "[d]bus"], rpm_names("dbus", "x86_64", "1.0-1")) is None


# -- validation: an entry in no documented form is refused, with the forms that are accepted ----


def _document(os: str, field: str, entry: str) -> str:
    return (
        "apiVersion: patchwarden.io/v1alpha1\n"
        "kind: PatchBaseline\n"
        "metadata:\n"
        "  name: names\n"
        "spec:\n"
        f"  operatingSystem: {os}\n"
        f"  {field}:\n"
        "    - ok\n"
        f"    - {json.dumps(entry)}\n"
    )


ACCEPTED = [
    *((os, entry) for os in RPM_OSES for _, entry, _ in RPM_CASES),
    *(("REDHAT_ENTERPRISE_LINUX", e) for e in ("kernel-debug*", "*-devel", "python3.11")),
    *(("SUSE", entry) for _, entry, _ in SUSE_CASES),
    *(("UBUNTU", entry) for _, entry, _ in APT_CASES),
    *(("DEBIAN", e) for e in ("g++-12", "libstdc++6", "linux-image-6.1.0-18-amd64")),
    *(("MACOS", e) for e in ("XProtectPlistConfigData", "MRTConfigData", "openssl@3")),
]


@pytest.mark.parametrize(("os", "entry"), ACCEPTED)
@pytest.mark.parametrize("field", ["approvedPatches", "rejectedPatches"])
def test_every_documented_form_validates(os: str, entry: str, field: str) -> None:
    assert validate(_document(os, field, entry)).locations


REFUSED = [
    # (os, entry, a fragment of the accepted forms the message lists)
    ("AMAZON_LINUX_2023", "--simulate", "name.arch:epoch:version-release"),
    ("REDHAT_ENTERPRISE_LINUX", "-kernel", "epoch:name-version-release.arch"),
    ("REDHAT_ENTERPRISE_LINUX", "dbus:1.12.28", "name-epoch:version-release"),
    ("REDHAT_ENTERPRISE_LINUX", "dbus.x86_64:x:1.12.28-1", "name.arch:epoch:version-release"),
    ("REDHAT_ENTERPRISE_LINUX", "a:b:c:d", "name.arch:epoch:version-release"),
    ("REDHAT_ENTERPRISE_LINUX", "kernel debug", "name-version-release.arch"),
    ("ORACLE_LINUX", "kernel/uek", "name.arch"),
    ("SUSE", "--block", "name-version-release.arch.rpm"),
    ("SUSE", "dbus 1", "a patch name (SUSE-SLE-"),
    ("UBUNTU", "--simulate", "a package name only"),
    ("UBUNTU", "openssl=3.0.2-0ubuntu1.12", "without architecture or version"),
    ("DEBIAN", "libc6:amd64", "without architecture or version"),
    ("DEBIAN", "lib_foo", "a package name only"),
    ("MACOS", "-XProtect", "a full package name"),
    ("MACOS", "XProtect\tConfig", "a full package name"),
]


@pytest.mark.parametrize(("os", "entry", "forms"), REFUSED)
@pytest.mark.parametrize("field", ["approvedPatches", "rejectedPatches"])
def test_an_entry_in_no_form_is_refused_with_the_forms_accepted(
    os: str, entry: str, forms: str, field: str
) -> None:
    (problem,) = problems(_document(os, field, entry))
    assert problem.startswith(
        f"{FILE}:9: spec.{field}[1]: {entry!r} is in none of the forms {os} accepts; give "
    )
    assert forms in problem and "\n" not in problem


def test_rpm_approved_lists_also_take_notice_ids_and_say_so() -> None:
    (problem,) = problems(_document("AMAZON_LINUX_2023", "approvedPatches", "--simulate"))
    assert "Bugzilla id (1234567), CVE id (CVE-2024-1234), advisory id" in problem
    (problem,) = problems(_document("AMAZON_LINUX_2023", "rejectedPatches", "--simulate"))
    assert "CVE id" not in problem
