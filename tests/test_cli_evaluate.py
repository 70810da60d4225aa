"""`patchctl evaluate` and `patchctl explain` end to end on the example fleet (the evaluation
document of docs/ssm-semantics.md; the exit codes of README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from reconciler.state import StateStore

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-28T12:00:00Z"
CONTRACT_KEYS = {
    "instanceId",
    "operatingSystem",
    "baseline",
    "patchGroup",
    "operation",
    "patches",
    "summary",
}
PATCH_KEYS = {
    "name",
    "arch",
    "installedVersion",
    "version",
    "state",
    "classification",
    "severity",
    "complianceLevel",
    "cves",
    "reason",
}


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_evaluate_the_example_fleet_as_json() -> None:
    run = patchctl(
        "evaluate",
        "--source",
        "examples",
        "--inventory",
        "examples/inventories",
        "--now",
        NOW,
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    results = {r["instanceId"]: r for r in json.loads(run.stdout)}
    assert set(results) == {"web-1", "web-2", "web-3", "db-1", "db-2", "build-1"}
    for result in results.values():
        assert CONTRACT_KEYS <= set(result)
        assert all(PATCH_KEYS <= set(p) for p in result["patches"])
        assert result["summary"]["complianceStatus"] in ("COMPLIANT", "NON_COMPLIANT")
        # every NOT_APPLICABLE patch is named, so none is counted as unreported
        assert result["summary"]["unreportedNotApplicableCount"] == 0
    web1 = {p["name"]: p for p in results["web-1"]["patches"]}
    assert (results["web-1"]["patchGroup"], results["web-1"]["baseline"]) == ("web", "ubuntu-prod")
    assert web1["openssl"]["state"] == "MISSING" and web1["openssl"]["cves"] == [
        "CVE-2026-0101",
        "CVE-2026-0102",
    ]
    assert web1["telnetd"]["state"] == "INSTALLED_REJECTED"
    assert web1["linux-image-5.15.0-91-generic"]["state"] == "INSTALLED_PENDING_REBOOT"
    # curl's update comes from jammy-updates, so it is not approved; the installed version (from
    # the security pocket) is, so curl is INSTALLED, not MISSING.
    assert web1["curl"]["state"] == "INSTALLED" and web1["curl"]["version"] == "7.81.0-1ubuntu1.14"
    assert results["build-1"]["baseline"] == "aws-debian-default"
    assert results["build-1"]["summary"]["complianceStatus"] == "COMPLIANT"
    db1 = {p["name"]: p["state"] for p in results["db-1"]["patches"]}
    assert db1 == {
        "kernel": "MISSING",
        "openssh": "MISSING",
        "tzdata": "FAILED",
        "bash": "INSTALLED_OTHER",
    }


def test_fail_on_noncompliant_exits_3_and_yaml_output_parses() -> None:
    run = patchctl(
        "evaluate",
        "--source",
        "examples",
        "--inventory",
        "examples/inventories/web-1.json",
        "--now",
        NOW,
        "-o",
        "yaml",
        "--fail-on-noncompliant",
    )
    assert run.returncode == 3
    assert yaml.safe_load(run.stdout)["instanceId"] == "web-1"  # one instance: one object


def test_evaluate_with_a_single_baseline_file() -> None:
    run = patchctl(
        "evaluate",
        "--baseline",
        "examples/baselines/al2023-prod.yaml",
        "--inventory",
        "examples/inventories/web-2.json",
        "--now",
        NOW,
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["baseline"] == "al2023-prod" and result["patchGroup"] is None
    states = {p["name"]: p["state"] for p in result["patches"]}
    # curl's notice was updated 2026-11-25: a 7-day rule approves it on 2026-12-02.
    assert states == {
        "openssl-libs": "MISSING",
        "glibc": "MISSING",
        "kernel-debug": "INSTALLED_REJECTED",
        "curl-minimal": "INSTALLED_OTHER",
    }
    later = patchctl(
        "evaluate",
        "--baseline",
        "examples/baselines/al2023-prod.yaml",
        "--inventory",
        "examples/inventories/web-2.json",
        "--now",
        "2026-12-02T00:00:00Z",
        "-o",
        "json",
    )
    assert {p["name"]: p["state"] for p in json.loads(later.stdout)["patches"]}[
        "curl-minimal"
    ] == "MISSING"


def test_baseline_for_another_os_is_a_clear_error() -> None:
    run = patchctl(
        "evaluate",
        "--baseline",
        "examples/baselines/al2023-prod.yaml",
        "--inventory",
        "examples/inventories/web-1.json",
        "-o",
        "json",
    )
    assert run.returncode == 1
    assert "web-1 runs UBUNTU but baseline 'al2023-prod' is for AMAZON_LINUX_2023" in run.stderr
    assert "Traceback" not in run.stderr


def test_broken_inventory_names_file_and_field(tmp_path: Path) -> None:
    good = json.loads((ROOT / "examples/inventories/web-1.json").read_text())
    good["facts"]["operatingSystem"] = "UBUNTUX"
    (tmp_path / "bad.json").write_text(json.dumps(good, indent=2))
    run = patchctl("evaluate", "--source", "examples", "--inventory", str(tmp_path), "-o", "json")
    assert run.returncode == 1
    assert "bad.json:" in run.stderr and "facts.operatingSystem" in run.stderr
    assert "Traceback" not in run.stderr


def test_explain_says_which_group_baseline_and_rule_decided() -> None:
    run = patchctl(
        "explain",
        "web-1",
        "openbsd-inetd",
        "--source",
        "examples",
        "--inventory",
        "examples/inventories",
        "--now",
        NOW,
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["patchGroupReason"] == "labels match the selector of patch group 'web'"
    assert data["baselineReason"] == "patch group 'web' names 'ubuntu-prod' for UBUNTU"
    (patch,) = data["patches"]
    assert patch["reason"].startswith("approved by approvalRules[0]")
    assert "needs telnetd, rejected with BLOCK" in patch["reason"]


def test_explain_lists_updates_that_are_not_approved_and_why() -> None:
    run = patchctl(
        "explain",
        "web-1",
        "curl",
        "--source",
        "examples",
        "--inventory",
        "examples/inventories",
        "--now",
        NOW,
        "-o",
        "json",
    )
    (skipped,) = json.loads(run.stdout)["notApproved"]
    assert "not from the security repository" in skipped["reason"]


def _example_inventory(tmp_path: Path, name: str, edit: Callable[[dict], None]) -> Path:  # type: ignore[type-arg]
    """A copy of examples/inventories/NAME.json, changed by ``edit``, alone in a directory."""
    document = json.loads((ROOT / f"examples/inventories/{name}.json").read_text())
    edit(document)
    (tmp_path / f"{name}.json").write_text(json.dumps(document, indent=2))
    return tmp_path


def test_explain_says_a_shadowed_security_version_is_not_the_candidate(tmp_path: Path) -> None:
    # AWS's implicit rule on Ubuntu: the candidate version must come from the security pocket.
    # Here jammy-updates offers a newer openssl than jammy-security, so apt's candidate is not a
    # security update, and the agent reports the security version with candidate: false.
    def shadow(document: dict) -> None:  # type: ignore[type-arg]
        (ssl,) = [u for u in document["updates"] if u["name"] == "openssl"]
        newer = {**ssl, "version": "3.0.2-0ubuntu1.19", "repository": "jammy-updates"}
        newer.update(security=False, cves=[], advisoryIds=[])
        ssl["candidate"] = False
        document["updates"].append(newer)

    inventories = _example_inventory(tmp_path, "web-1", shadow)
    run = patchctl(
        "explain", "web-1", "openssl", "--source", "examples", "--inventory", str(inventories),
        "--now", NOW, "-o", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [p["state"] for p in data["patches"]] != ["MISSING"]
    reasons = {n["version"]: n["reason"] for n in data["notApproved"]}
    assert "a newer non-security version is the candidate" in reasons["3.0.2-0ubuntu1.18"]
    assert "not from the security repository" in reasons["3.0.2-0ubuntu1.19"]


def test_a_missing_critical_update_is_not_a_security_violation(tmp_path: Path) -> None:
    # Microsoft: CriticalUpdates fix non-security bugs; windows-prod still approves them.
    def reclassify(document: dict) -> None:  # type: ignore[type-arg]
        (kb,) = [u for u in document["updates"] if u["name"] == "KB5032198"]
        kb["classification"] = "CriticalUpdates"

    inventories = _example_inventory(tmp_path, "web-3", reclassify)
    run = patchctl(
        "evaluate", "--source", "examples", "--inventory", str(inventories), "--now", NOW,
        "-o", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["summary"]
    assert (summary["missingCount"], summary["criticalNonCompliantCount"]) == (1, 1)
    # only the waiting SecurityUpdates patch (AVAILABLE_SECURITY_UPDATE, NON_COMPLIANT) is left
    assert (summary["securityNonCompliantCount"], summary["availableSecurityUpdateCount"]) == (1, 1)


def test_explain_table_for_people() -> None:
    run = patchctl(
        "explain",
        "build-1",
        "--source",
        "examples",
        "--inventory",
        "examples/inventories",
        "--now",
        NOW,
        "-o",
        "table",
    )
    assert run.returncode == 0
    assert "the predefined default baseline for DEBIAN, 'aws-debian-default'" in " ".join(
        run.stdout.split()
    )


def test_usage_errors_exit_2() -> None:
    assert patchctl("evaluate", "--inventory", "x").returncode == 2
    assert (
        patchctl(
            "evaluate", "--source", "examples", "--inventory", "x", "--now", "yesterday"
        ).returncode
        == 2
    )


def test_piped_output_is_the_table_unless_o_asks_for_json() -> None:
    """As kubectl: `patchctl ... | less` shows what the terminal shows; scripts ask with -o."""
    source = ("--source", "examples", "--inventory", "examples/inventories", "--now", NOW)
    table = patchctl("evaluate", *source)
    assert table.returncode == 0, table.stderr
    assert "┃ Instance" in table.stdout and not table.stdout.startswith(("[", "{"))
    as_json = patchctl("evaluate", *source, "-o", "json")
    assert {r["instanceId"] for r in json.loads(as_json.stdout)} >= {"web-1", "db-1"}


def _explain_json(inventories: Path, now: str) -> dict[str, object]:
    run = patchctl(
        "explain",
        "web-2",
        "curl-minimal",
        "--source",
        "examples",
        "--inventory",
        str(inventories),
        "--now",
        now,
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def test_explain_shows_the_timestamp_it_counted_from_and_which_date_it_was(
    tmp_path: Path,
) -> None:
    # web-2 runs Amazon Linux 2023: approve-after-days counts from the notice's updated time.
    document = json.loads(Path("examples/inventories/web-2.json").read_text())
    (curl,) = (u for u in document["updates"] if u["name"] == "curl-minimal")
    curl["updated"] = "2026-11-25T09:15:00Z"
    (tmp_path / "web-2.json").write_text(json.dumps(document))
    early = _explain_json(tmp_path, "2026-12-02T09:14:59Z")
    (skipped,) = early["notApproved"]  # type: ignore[misc]
    assert skipped["reason"] == (
        "not approved: approvalRules[0] approves it from 2026-12-02T09:15:00Z "
        "(updated 2026-11-25T09:15:00Z + 7 days)"
    )
    late = _explain_json(tmp_path, "2026-12-02T09:15:01Z")
    (row,) = late["patches"]  # type: ignore[misc]
    assert row["state"] == "MISSING"
    assert "; updated 2026-11-25T09:15:00Z, approved since 2026-12-02T09:15:00Z)" in row["reason"]


def test_explain_with_state_counts_approve_after_days_from_first_seen(tmp_path: Path) -> None:
    # Patchwarden extension: an Ubuntu baseline that opts into approveAfterDaysFrom: FirstSeen
    # waits 7 days from the first scan the state store recorded for the version.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "examples", source, ignore=shutil.ignore_patterns("kubernetes"))
    ubuntu = source / "baselines/ubuntu-prod.yaml"
    ubuntu.write_text(
        ubuntu.read_text().replace(
            "      complianceLevel: HIGH\n",
            "      approveAfterDays: 7\n      complianceLevel: HIGH\n"
            "  approveAfterDaysFrom: FirstSeen\n",
        )
    )
    document = json.loads((ROOT / "examples/inventories/web-1.json").read_text())
    state = tmp_path / "state.db"
    seen = datetime(2026, 11, 25, 8, 15, 30, tzinfo=UTC)
    with StateStore(state) as store:
        store.record_scan(
            instance="db-9", operation="Scan", revision="r", baseline="b", baseline_hash="h",
            job_id=None, started_at=seen, finished_at=seen, inventory=document, evaluation={},
        )  # fmt: skip

    def explain(*extra: str) -> subprocess.CompletedProcess[str]:
        return patchctl(
            "explain", "web-1", "openssl", "--source", str(source), "--inventory",
            "examples/inventories", "--now", NOW, "-o", "json", *extra,
        )  # fmt: skip

    run = explain("--state", str(state))
    assert run.returncode == 0, run.stderr
    reasons = {n["version"]: n["reason"] for n in json.loads(run.stdout)["notApproved"]}
    assert reasons["3.0.2-0ubuntu1.18"] == (
        "not approved: approvalRules[0] approves it from 2026-12-02T08:15:30Z "
        "(first seen 2026-11-25T08:15:30Z + 7 days)"
    )
    # Without the store no first-seen time is known, and explain says so.
    reasons = {n["version"]: n["reason"] for n in json.loads(explain().stdout)["notApproved"]}
    assert "no scan has recorded this version yet" in reasons["3.0.2-0ubuntu1.18"]
    missing = explain("--state", str(tmp_path / "nope.db"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "nope.db").exists()
