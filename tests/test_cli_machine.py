"""`patchctl scan` and `patchctl install` end to end: agent -> engine -> output, on real roots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aptlab import dpkg_state, plant_hooks
from tests.conftest import needs_apt

pytestmark = needs_apt

BASELINE = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: debian-prod}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup:
        patchFilters: [{key: PRIORITY, values: [Required, Important, Standard, Optional, Extra]}]
      complianceLevel: HIGH
  rejectedPatches: [pwtest-telnetd]
  rejectedPatchesAction: BLOCK
"""


@pytest.fixture
def baseline_file(tmp_path: Path) -> Path:
    path = tmp_path / "debian-prod.yaml"
    path.write_text(BASELINE)
    return path


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=300
    )


def _states(document: dict) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    return {p["name"]: (p["state"], p["version"]) for p in document["patches"]}


def test_scan_a_root_gives_ssm_states(system_root: Path, baseline_file: Path) -> None:
    run = patchctl(
        "scan", "--root", str(system_root), "--baseline", str(baseline_file), "-o", "json"
    )
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert (document["instanceId"], document["baseline"], document["operation"]) == (
        "node-1",
        "debian-prod",
        "Scan",
    )
    assert _states(document) == {
        "pwtest-lib": ("MISSING", "1.0-2"),
        "pwtest-tool": ("MISSING", "2.1-1"),
        # apt's candidate is the newer 1.1-1, not from the security suite: AWS's implicit rule
        # approves neither it nor the shadowed security version 1.0-2
        "pwtest-shadow": ("INSTALLED_OTHER", "1.0-1"),
        "pwtest-fail": ("MISSING", "1.0-2"),
        "pwtest-kernel": ("MISSING", "1.0-2"),
        "pwtest-inetd": ("MISSING", "1.0-2"),  # needs pwtest-telnetd, rejected with BLOCK
        "pwtest-other": ("INSTALLED_OTHER", "1.0-1"),  # 1.1-1 is not a security update
    }
    assert document["summary"]["missingCount"] == 5
    assert str(document["summary"]["complianceSeverity"]) == "HIGH"


def test_scan_without_baseline_uses_the_predefined_default(system_root: Path) -> None:
    run = patchctl("scan", "--root", str(system_root), "--no-refresh", "-o", "yaml")
    assert run.returncode == 0, run.stderr
    assert "baseline: aws-debian-default" in run.stdout


def test_install_installs_exactly_the_approved_missing_patches(
    system_root: Path, baseline_file: Path
) -> None:
    run = patchctl(
        "install", "--root", str(system_root), "--baseline", str(baseline_file), "-o", "json"
    )
    document = json.loads(run.stdout)
    assert run.returncode == 1, run.stderr  # one patch failed
    assert document["operation"] == "Install"
    assert _states(document) == {
        "pwtest-lib": ("INSTALLED", "1.0-2"),
        "pwtest-tool": ("INSTALLED", "2.1-1"),
        "pwtest-shadow": ("INSTALLED_OTHER", "1.0-1"),
        "pwtest-kernel": ("INSTALLED_PENDING_REBOOT", "1.0-2"),
        "pwtest-fail": ("FAILED", "1.0-2"),
        # SSM: an update needing a package rejected with BLOCK is MISSING on Scan, FAILED on Install.
        "pwtest-inetd": ("FAILED", "1.0-2"),
        "pwtest-other": ("INSTALLED_OTHER", "1.0-1"),
    }
    install = document["install"]
    assert install["changed"] is True
    assert {p["name"]: p["result"] for p in install["patches"]} == {
        "pwtest-lib": "INSTALLED",
        "pwtest-tool": "INSTALLED",
        "pwtest-kernel": "INSTALLED",
        "pwtest-fail": "FAILED",
    }
    assert install["reboot"]["required"] is True and install["reboot"]["performed"] is False
    state = dpkg_state(system_root)
    assert "pwtest-telnetd" not in state  # BLOCKed: never installed, not even as a dependency
    assert state["pwtest-other"][0] == "1.0-1"
    assert state["pwtest-shadow"][0] == "1.0-1"  # the shadowed security version is not approved
    assert state["pwtest-inetd"][0] == "1.0-1"


def test_scan_and_install_of_a_hostile_root_run_none_of_its_hooks(
    system_root: Path, baseline_file: Path, tmp_path: Path
) -> None:
    """patchctl scan/install --root go through the local transport, as a reconcile does."""
    marker = tmp_path / "ran-on-the-host"
    plant_hooks(system_root, marker)
    scanned = patchctl("scan", "--root", str(system_root), "-o", "json")
    assert scanned.returncode == 0, scanned.stderr
    installed = patchctl(
        "install", "--root", str(system_root), "--baseline", str(baseline_file), "-o", "json"
    )
    assert json.loads(installed.stdout)["install"]["changed"] is True, installed.stderr
    assert not marker.exists(), marker.read_text()


def test_install_simulate_changes_nothing(system_root: Path, baseline_file: Path) -> None:
    before = (system_root / "var/lib/dpkg/status").read_text()
    run = patchctl(
        "install",
        "--root",
        str(system_root),
        "--baseline",
        str(baseline_file),
        "--simulate",
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    install = json.loads(run.stdout)["install"]
    assert install["simulate"] is True and install["changed"] is False
    assert {p["result"] for p in install["patches"]} == {"WOULD_INSTALL"}
    assert (system_root / "var/lib/dpkg/status").read_text() == before


def test_scan_of_a_broken_repository_is_an_error_not_a_compliant_result(
    tmp_path: Path, apt_repo
) -> None:  # type: ignore[no-untyped-def]
    from tests.aptlab import make_root
    from tests.conftest import INSTALLED

    root = make_root(tmp_path / "r", "http://127.0.0.1:9", ["stable"], installed=INSTALLED)
    run = patchctl("scan", "--root", str(root), "-o", "json")
    assert run.returncode == 1
    assert run.stdout == ""
    assert "RepositoryError" in run.stderr and "http://127.0.0.1:9" in run.stderr
    assert "Traceback" not in run.stderr


def test_table_output_for_people(system_root: Path, baseline_file: Path) -> None:
    run = patchctl(
        "scan",
        "--root",
        str(system_root),
        "--baseline",
        str(baseline_file),
        "--no-refresh",
        "-o",
        "table",
    )
    assert run.returncode == 0
    assert "NON_COMPLIANT" in run.stdout and "pwtest-inetd" in run.stdout


def test_words_an_error_quotes_reach_the_terminal_as_text_not_escapes(tmp_path: Path) -> None:
    """Errors quote what others wrote: an agent's message, a root's paths, a commit's values. A
    directory whose name carries terminal escapes (retitle the window, colour the rest red)
    stands in for all of them: patchctl prints the escapes as text."""
    root = tmp_path / "r\x1b]0;owned\x07\x1b[31m"
    root.mkdir()
    run = patchctl("scan", "--root", str(root), "-o", "json")
    assert run.returncode == 1, run.stderr
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr, run.stderr
    assert "\\x1b]0;owned\\x07" in run.stderr, run.stderr


def test_a_noreboot_install_leaves_its_patches_pending_reboot_and_records_the_time(
    system_root: Path, baseline_file: Path
) -> None:
    """SSM: patches a NoReboot Install installed are INSTALLED_PENDING_REBOOT until the machine
    boots, and LastNoRebootInstallOperationTime is recorded; a directory root never boots."""
    run = patchctl(
        "install", "--root", str(system_root), "--baseline", str(baseline_file),
        "--reboot-option", "NoReboot", "-o", "json",
    )  # fmt: skip
    document = json.loads(run.stdout)
    # pwtest-shadow is not installed: its security version is not apt's candidate (SSM's rule).
    installed = {"pwtest-lib", "pwtest-tool", "pwtest-kernel"}
    # Without NoReboot only pwtest-kernel (it asked for the reboot) is pending.
    assert {n for n, (s, _) in _states(document).items() if s == "INSTALLED_PENDING_REBOOT"} == (
        installed
    )
    recorded = document["lastNoRebootInstallOperationTime"]
    assert recorded.endswith("+00:00")
    scanned = patchctl(
        "scan", "--root", str(system_root), "--baseline", str(baseline_file), "--no-refresh",
        "-o", "json",
    )  # fmt: skip
    again = json.loads(scanned.stdout)
    assert {n for n, (s, _) in _states(again).items() if s == "INSTALLED_PENDING_REBOOT"} == (
        installed
    )
    assert again["lastNoRebootInstallOperationTime"] == recorded
    assert again["summary"]["complianceStatus"] == "NON_COMPLIANT"
    table = patchctl(
        "scan", "--root", str(system_root), "--baseline", str(baseline_file), "--no-refresh"
    )
    assert f"node-1: last Install with NoReboot at {recorded}" in table.stdout


def test_an_install_override_list_installs_its_patches_instead_of_the_approved_ones(
    system_root: Path, baseline_file: Path, tmp_path: Path
) -> None:
    """SSM's InstallOverrideList: the listed patches are installed whatever the baseline says,
    and reported INSTALLED_OTHER (the baseline does not approve them); approvals wait."""
    overrides = tmp_path / "override.yaml"
    overrides.write_text("patches:\n  - id: pwtest-oth*\n")
    run = patchctl(
        "install", "--root", str(system_root), "--baseline", str(baseline_file),
        "--install-override-list", str(overrides), "-o", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert [(p["name"], p["result"]) for p in document["install"]["patches"]] == [
        ("pwtest-other", "INSTALLED")
    ]
    states = _states(document)
    assert states["pwtest-other"] == ("INSTALLED_OTHER", "1.1-1")
    assert states["pwtest-lib"] == ("MISSING", "1.0-2")  # approved, but not on the list
    assert dpkg_state(system_root)["pwtest-other"][0] == "1.1-1"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("patches:\n  - id: pwtest-other\n    title: '*1.1*'\n", ":3: patches[0].title: title"),
        ("patches: []\n", ":1: patches: List should have at least 1 item"),
        ("- id: pwtest-other\n", ":1: Input should be a valid dictionary"),
        ("patches:\n  - name: x\n", ":2: patches[0]"),
    ],
)
def test_a_bad_install_override_list_is_refused_with_its_line(
    system_root: Path, baseline_file: Path, tmp_path: Path, text: str, error: str
) -> None:
    overrides = tmp_path / "override.yaml"
    overrides.write_text(text)
    before = (system_root / "var/lib/dpkg/status").read_text()
    run = patchctl(
        "install", "--root", str(system_root), "--baseline", str(baseline_file), "--no-refresh",
        "--install-override-list", str(overrides),
    )  # fmt: skip
    assert run.returncode == 1
    assert f"{overrides}{error}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert (system_root / "var/lib/dpkg/status").read_text() == before
