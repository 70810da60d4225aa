"""`patchctl compliance`: per instance, per patch, per group (SSM's DescribePatchGroupState) and the
history of an instance's compliance with the revision behind each change, read from a real state
database, in every output format."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from reconciler.api.enrolment import Provenance
from reconciler.state import StateStore

T0 = datetime(2026, 11, 28, 10, tzinfo=UTC)


def _evaluation(group: str, missing: int, failed: int = 0) -> dict[str, object]:
    status = "NON_COMPLIANT" if missing or failed else "COMPLIANT"
    patches = [
        {
            "name": f"pkg{i}",
            "arch": "amd64",
            "version": "2",
            "installedVersion": "1",
            "state": "MISSING",
            "classification": "Security",
            "severity": "High",
            "complianceLevel": "HIGH",
            "cves": [f"CVE-2026-{i:04d}"],
            "reason": "approved by approvalRules[0]",
        }
        for i in range(missing)
    ]
    patches += [
        {
            "name": "bash",
            "arch": "amd64",
            "version": "5.2",
            "installedVersion": "5.2",
            "state": "INSTALLED",
            "complianceLevel": "UNSPECIFIED",
            "cves": [],
            "reason": "approved",
        }
    ]
    return {
        "patchGroup": group,
        "patches": patches,
        "summary": {
            "complianceStatus": status,
            "complianceSeverity": "HIGH" if missing else None,
            "missingCount": missing,
            "failedCount": failed,
            "installedCount": 1,
            "securityNonCompliantCount": missing,
        },
    }


def _inventory() -> dict[str, object]:
    return {
        "facts": {"operatingSystem": "DEBIAN"},
        "installed": [
            {
                "name": "bash",
                "arch": "amd64",
                "version": "5.2",
                "installedTime": "2026-11-01T00:00:00Z",
            }
        ],
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with StateStore(path) as store:

        def record(
            instance: str,
            minutes: int,
            revision: str,
            evaluation: dict[str, object],
            op: str = "Scan",
        ) -> None:
            store.record_scan(
                instance=instance,
                operation=op,
                revision=revision,
                baseline="debian-prod",
                baseline_hash="h",
                job_id=None,
                started_at=T0 + timedelta(minutes=minutes),
                finished_at=T0 + timedelta(minutes=minutes, seconds=5),
                inventory=_inventory(),
                evaluation=evaluation,
            )

        record("web-1", 0, "main@sha1:aaa", _evaluation("web", 2))
        record("web-1", 10, "main@sha1:aaa", _evaluation("web", 2))  # no change: not a history row
        record("web-1", 20, "main@sha1:bbb", _evaluation("web", 0), "Install")
        record("web-2", 0, "main@sha1:aaa", _evaluation("web", 1))
        record("db-1", 0, "main@sha1:aaa", _evaluation("db", 0))
    return path


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120
    )


def test_one_row_per_instance_with_its_latest_operation_and_revision(state: Path) -> None:
    run = patchctl("compliance", "--state", str(state), "-o", "json")
    assert run.returncode == 0, run.stderr
    rows = {r["instanceId"]: r for r in json.loads(run.stdout)}
    assert set(rows) == {"web-1", "web-2", "db-1"}
    assert (
        rows["web-1"]["complianceStatus"],
        rows["web-1"]["operation"],
        rows["web-1"]["revision"],
    ) == ("COMPLIANT", "Install", "main@sha1:bbb")
    assert (
        rows["web-2"]["complianceStatus"],
        rows["web-2"]["missingCount"],
        rows["web-2"]["patchGroup"],
    ) == ("NON_COMPLIANT", 1, "web")
    # InstancePatchState's count; 0, since Patchwarden names every NOT_APPLICABLE patch
    assert rows["web-2"]["unreportedNotApplicableCount"] == 0


def test_csv_has_a_header_and_one_line_per_instance(state: Path) -> None:
    run = patchctl("compliance", "--state", str(state), "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert [r["instanceId"] for r in rows] == ["db-1", "web-1", "web-2"]
    assert rows[2]["missingCount"] == "1" and rows[2]["complianceSeverity"] == "HIGH"


def test_the_fleet_table_says_which_source_each_generated_instance_comes_from(
    state: Path,
) -> None:
    """With any instance enrolled, the fleet-wide view gets a short ``from`` column (table and
    CSV) and an ``enrolled`` field on generated instances (JSON), as ``plan`` has."""
    with StateStore(state) as store:
        store.record_enrolled({"web-2": Provenance("ec2-prod", "i-0abc")}, T0)
    table = patchctl("compliance", "--state", str(state))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    # The table is wider than a terminal: rich folds each heading and cell over several lines.
    header = [line.split("┃")[1:3] for line in lines if line.startswith("┃")]
    columns = ["".join(cell.strip() for cell in column) for column in zip(*header, strict=True)]
    assert columns == ["instanceId", "from"]
    shown: list[list[str]] = []
    for line in lines:
        if line.startswith("│"):
            first, second = (cell.strip() for cell in line.split("│")[1:3])
            if first:
                shown.append([first, second])
            else:
                shown[-1][1] += second
    assert shown == [["db-1", "-"], ["web-1", "-"], ["web-2", "ec2-prod"]]
    rows = list(
        csv.DictReader(
            io.StringIO(patchctl("compliance", "--state", str(state), "-o", "csv").stdout)
        )
    )
    assert [r["from"] for r in rows] == ["", "", "ec2-prod"]
    data = json.loads(patchctl("compliance", "--state", str(state), "-o", "json").stdout)
    assert {r["instanceId"]: r.get("enrolled") for r in data} == {
        "db-1": None,
        "web-1": None,
        "web-2": "from InstanceSource ec2-prod, host i-0abc",
    }


def test_without_enrolled_instances_the_fleet_table_has_no_from_column(state: Path) -> None:
    run = patchctl("compliance", "--state", str(state), "-o", "csv")
    assert "from" not in next(csv.reader(io.StringIO(run.stdout)))
    assert all(
        "enrolled" not in r
        for r in json.loads(patchctl("compliance", "--state", str(state), "-o", "json").stdout)
    )


def test_one_instance_lists_every_patch_with_cves_and_installed_time(state: Path) -> None:
    run = patchctl("compliance", "web-2", "--state", str(state), "-o", "yaml")
    patches = {p["name"]: p for p in yaml.safe_load(run.stdout)}
    assert patches["pkg0"]["state"] == "MISSING" and patches["pkg0"]["cves"] == "CVE-2026-0000"
    assert patches["bash"]["installedTime"] == "2026-11-01T00:00:00Z"


def test_group_state_counts_instances_as_ssm_does(state: Path) -> None:
    run = patchctl("compliance", "--group", "web", "--state", str(state), "-o", "json")
    (group,) = json.loads(run.stdout)
    assert (
        group["instances"],
        group["instancesWithMissingPatches"],
        group["instancesWithInstalledPatches"],
    ) == (2, 1, 2)
    assert group["instancesWithSecurityNonCompliantPatches"] == 1
    assert group["instancesWithUnreportedNotApplicablePatches"] == 0


def test_history_shows_each_change_and_the_revision_that_made_it(state: Path) -> None:
    run = patchctl("compliance", "web-1", "--history", "--state", str(state), "-o", "json")
    history = json.loads(run.stdout)
    assert [(h["complianceStatus"], h["revision"], h["operation"]) for h in history] == [
        ("NON_COMPLIANT", "main@sha1:aaa", "Scan"),
        ("COMPLIANT", "main@sha1:bbb", "Install"),
    ]


def test_unknown_instance_is_a_clear_error(state: Path) -> None:
    run = patchctl("compliance", "nope", "--state", str(state))
    assert run.returncode == 1 and "no scan of 'nope' is recorded" in run.stderr
    assert "Traceback" not in run.stderr


def test_csv_reports_have_exactly_ssms_columns(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    run = patchctl("report", "--to", str(out), "--state", str(state), "--instance", "web-2")
    assert run.returncode == 0, run.stderr
    (summary,) = out.glob("compliance-summary-*.csv")
    (detail,) = out.glob("compliance-detail-web-2-*.csv")
    with summary.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == [
            "Index",
            "Instance ID",
            "Instance name",
            "Instance IP",
            "Platform name",
            "Platform version",
            "SSM Agent version",
            "Patch baseline",
            "Patch group",
            "Compliance status",
            "Compliance severity",
            "Noncompliant Critical severity patch count",
            "Noncompliant High severity patch count",
            "Noncompliant Medium severity patch count",
            "Noncompliant Low severity patch count",
            "Noncompliant Informational severity patch count",
            "Noncompliant Unspecified severity patch count",
        ]
        (row,) = list(reader)
    assert (row["Compliance status"], row["Noncompliant High severity patch count"]) == (
        "NON_COMPLIANT",
        "1",
    )
    with detail.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == [
            "Index",
            "Instance ID",
            "Instance name",
            "Patch name",
            "KB ID/Patch ID",
            "Patch state",
            "Last report time",
            "Compliance level",
            "Patch severity",
            "Patch classification",
            "CVE ID",
            "Patch baseline",
            "Logs URL",
            "Instance IP",
            "Platform name",
            "Platform version",
            "SSM Agent version",
        ]
        rows = {r["Patch name"]: r for r in reader}
    assert rows["pkg0"]["Patch state"] == "MISSING" and rows["pkg0"]["CVE ID"] == "CVE-2026-0000"
    assert rows["pkg0"]["KB ID/Patch ID"] == "pkg0.amd64"


def test_report_of_all_instances_is_one_summary(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    assert patchctl("report", "--to", str(out), "--state", str(state)).returncode == 0
    (summary,) = out.glob("*.csv")
    assert [r["Instance ID"] for r in csv.DictReader(summary.open())] == ["db-1", "web-1", "web-2"]
