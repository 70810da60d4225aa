"""A mixed fleet — Debian, RHEL 9 and SLES 15 systems rooted in directories — converges under one
patch group with a baseline per operating system, through `patchctl scan`, `patchctl install` and
the reconcile loop (real apt/dpkg, dnf/rpm and zypper)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aptlab import Repo, dpkg_state, make_root
from tests.conftest import INSTALLED, needs_apt
from tests.rpmlab import (
    Notice,
    Rpm,
    base_and_updates,
    build_rpms,
    rpm_q,
    seed_rpm_root,
)

pytestmark = [
    needs_apt,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("dnf", "zypper", "rpmbuild")),
        reason="dnf, zypper and rpmbuild are needed",
    ),
]

OLD = [Rpm("mix-lib", "1.0"), Rpm("mix-net", "1.0"), Rpm("mix-doc", "1.0")]
NEW = [Rpm("mix-lib", "1.0", "2"), Rpm("mix-net", "1.0", "2"), Rpm("mix-doc", "1.0", "2")]
NOTICES = [
    Notice("MIX-2026-0001", "security", (NEW[0],), "Critical", cves=("CVE-2026-0001",)),
    Notice("MIX-2026-0002", "security", (NEW[1],), "Important"),
    Notice("MIX-2026-0003", "bugfix", (NEW[2],)),
]
FLEET = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: debian-security}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required, Important, Standard, Optional, Extra]}]}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: rhel-security}
spec:
  operatingSystem: REDHAT_ENTERPRISE_LINUX
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: CLASSIFICATION, values: [Security]}]}
      approveAfterDays: 0
      complianceLevel: CRITICAL
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: suse-security}
spec:
  operatingSystem: SUSE
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: CLASSIFICATION, values: [Security]}]}
      approveAfterDays: 0
      complianceLevel: HIGH
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: mixed}
spec:
  selector: {matchLabels: {app: mixed}}
  baselines: {DEBIAN: debian-security, REDHAT_ENTERPRISE_LINUX: rhel-security, SUSE: suse-security}
---
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: open-now}
spec:
  schedule: cron(0 * * * ? *)
  duration: 2
  cutoff: 0
  targets: {patchGroups: [mixed]}
  tasks: [{name: install, operation: Install, maxConcurrency: "3", maxErrors: "1"}]
"""


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def rpm_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("mixrepos")
    built = build_rpms(work / "build", [*OLD, *NEW])
    return base_and_updates(work, [built[r] for r in OLD], [built[r] for r in NEW], NOTICES)


def rpm_root(path: Path, os_release: str, repos: dict[str, str]) -> Path:
    names = [r.name for r in OLD]
    return seed_rpm_root(path, os_release, repos, names, seed_release="rhel9")


def rpm_versions(root: Path) -> dict[str, str]:
    return {name: evr for name, evr in rpm_q(root).items() if name.startswith("mix-")}


@pytest.fixture
def fleet(tmp_path: Path, apt_repo: Repo, rpm_repos: dict[str, str]) -> dict[str, Path]:
    roots = {
        # lib and tool only: the other test packages fail on purpose or ask for a reboot.
        "deb-1": make_root(
            tmp_path / "deb-1", apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED[:2]
        ),
        "rhel-1": rpm_root(tmp_path / "rhel-1", "rhel9", rpm_repos),
        "sles-1": rpm_root(tmp_path / "sles-1", "sles15", rpm_repos),
    }
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(FLEET)
    (config / "instances.yaml").write_text(
        "---\n".join(
            f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
            f"metadata: {{name: {name}, labels: {{app: mixed}}}}\nspec: {{connection: {{type: local, root: {root}}}}}\n"
            for name, root in roots.items()
        )
    )
    return {"config": config, **roots}


def test_scan_gives_ssm_states_on_each_family(fleet: dict[str, Path]) -> None:
    states = {}
    for name in ("rhel-1", "sles-1"):
        run = patchctl(
            "scan",
            "--root",
            str(fleet[name]),
            "--source",
            str(fleet["config"]),
            "--instance",
            name,
            "-o",
            "json",
        )
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)
        states[name] = {p["name"]: p["state"] for p in document["patches"]}
        assert document["patchGroup"] == "mixed"
    # Security notices are approved, the bugfix is not: mix-doc stays as it is.
    for name in ("rhel-1", "sles-1"):
        assert states[name] == {
            "mix-lib": "MISSING",
            "mix-net": "MISSING",
            "mix-doc": "INSTALLED_OTHER",
        }, name


def test_install_on_an_rpm_root_installs_exactly_the_approved_patches(
    fleet: dict[str, Path],
) -> None:
    run = patchctl(
        "install",
        "--root",
        str(fleet["rhel-1"]),
        "--source",
        str(fleet["config"]),
        "--instance",
        "rhel-1",
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert {p["name"]: p["state"] for p in document["patches"]} == {
        "mix-lib": "INSTALLED",
        "mix-net": "INSTALLED",
        "mix-doc": "INSTALLED_OTHER",
    }
    assert rpm_versions(fleet["rhel-1"]) == {
        "mix-lib": "1.0-2",
        "mix-net": "1.0-2",
        "mix-doc": "1.0-1",
    }


def test_the_loop_converges_a_mixed_fleet(fleet: dict[str, Path], tmp_path: Path) -> None:
    run = patchctl(
        "reconcile",
        "--source",
        str(fleet["config"]),
        "--state",
        str(tmp_path / "state.db"),
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["converged"] is True, report["waits"]
    assert {i["instance"]: i["complianceStatus"] for i in report["instances"]} == {
        "deb-1": "COMPLIANT",
        "rhel-1": "COMPLIANT",
        "sles-1": "COMPLIANT",
    }
    assert report["jobs"] == {"Scan succeeded": 3, "Install succeeded": 3}
    for name in ("rhel-1", "sles-1"):
        assert rpm_versions(fleet[name]) == {
            "mix-lib": "1.0-2",
            "mix-net": "1.0-2",
            "mix-doc": "1.0-1",
        }, name
    assert dpkg_state(fleet["deb-1"])["pwtest-lib"][0] == "1.0-2"
