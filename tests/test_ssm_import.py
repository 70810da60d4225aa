"""``patchctl import ssm``: custom patch baselines, patch-group registrations and maintenance
windows (targets, AWS-RunPatchBaseline tasks) from AWS Systems Manager become resources that
``patchctl validate`` accepts, with a report of what could not be carried over and why.

SSM itself is not reachable from the tests. The responses in ``tests/ssmdata/account`` are
RECORDED BY HAND in the documented AWS response shapes (not captured from an account); they are
read as files (``--from-files``) and served as SSM's JSON API on loopback (tests/ssmlab.py) for
the boto3 path, which botocore parses against SSM's service model as it would AWS's answers.
moto's server (an emulator) does not implement GetPatchBaseline, DescribePatchGroups nor
GetMaintenanceWindowTask, so it cannot stand in for SSM here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import awslab, ssmlab

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = ssmlab.ACCOUNT
WINDOW_TASK = "018b31c3-2d77-4b9e-bd48-c91edEXAMPLE"


def patchctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def documents(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(out.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def imported(out: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = patchctl("import", "ssm", *args, "--out", str(out), "-o", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report: dict[str, Any] = json.loads(done.stdout)
    return report


EXPECTED_NOT_CARRIED = [
    (
        "PatchBaseline",
        "Win-Everything",
        "approveAfterDays: Input should be less than or equal to 360",
    ),
    ("PatchGroup", "windows", "its baseline Win-Everything was not imported"),
    ("WindowTarget", "Prod-Tuesday-Night/pets", "InstanceIds: only tag:KEY and tag-key targets"),
    (
        "WindowTask",
        "Prod-Tuesday-Night/restart-app",
        "AWS-RunShellScript: only AWS-RunPatchBaseline",
    ),
]


def assert_the_recorded_account(out: Path, report: dict[str, Any]) -> None:
    assert report["resources"] == {"PatchBaseline": 1, "PatchGroup": 3, "MaintenanceWindow": 1}
    notes = [(n["kind"], n["name"], n["reason"]) for n in report["notCarried"]]
    assert [(k, n) for k, n, _ in notes] == [(k, n) for k, n, _ in EXPECTED_NOT_CARRIED]
    for (_, _, reason), (_, _, expected) in zip(notes, EXPECTED_NOT_CARRIED, strict=True):
        assert expected in reason
    docs = documents(out)
    baseline = docs[("PatchBaseline", "prod-al2023")]["spec"]
    assert baseline["operatingSystem"] == "AMAZON_LINUX_2023"
    assert [r.get("approveAfterDays") for r in baseline["approvalRules"]] == [7, None]
    assert baseline["approvalRules"][1]["approveUntilDate"] == "2026-11-30"
    assert baseline["rejectedPatchesAction"] == "BLOCK"
    # A predefined baseline registered to a group is ours of the same SSM name.
    assert docs[("PatchGroup", "prod")]["spec"]["baselines"] == {
        "AMAZON_LINUX_2023": "prod-al2023",
        "UBUNTU": "aws-ubuntu-default",
    }
    web = docs[("PatchGroup", "web-servers")]
    assert web["spec"]["selector"] == {"matchLabels": {"patchwarden.io/patch-group": "Web Servers"}}
    assert web["metadata"]["annotations"] == {"patchwarden.io/ssm-name": "Web Servers"}
    window = docs[("MaintenanceWindow", "prod-tuesday-night")]["spec"]
    assert (window["schedule"], window["scheduleOffset"], window["cutoff"]) == (
        "cron(0 22 ? * TUE#2 *)",
        2,
        1,
    )
    assert window["targets"]["patchGroups"] == ["prod"]
    assert window["targets"]["selector"]["matchExpressions"] == [
        {"key": "Environment", "operator": "In", "values": ["Production", "Staging"]},
        {"key": "Patchable", "operator": "Exists"},
    ]
    assert window["tasks"] == [
        {
            "name": "install-patches",
            "operation": "Install",
            "rebootOption": "NoReboot",
            "priority": 1,
            "maxConcurrency": "10%",
            "maxErrors": "1",
            "cutoffBehavior": "CANCEL_TASK",
        }
    ]
    valid = patchctl("validate", str(out))
    assert valid.returncode == 0, valid.stderr


def test_saved_responses_become_resources_validate_accepts(tmp_path: Path) -> None:
    out = tmp_path / "imported"
    report = imported(out, "--from-files", str(ACCOUNT))
    assert_the_recorded_account(out, report)
    assert report["written"] == [
        str(out / name)
        for name in ("patch-baselines.yaml", "patch-groups.yaml", "maintenance-windows.yaml")
    ]


def test_the_table_report_names_each_object_and_why(tmp_path: Path) -> None:
    done = patchctl("import", "ssm", "--from-files", str(ACCOUNT), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 1 PatchBaseline, 3 PatchGroup, 1 MaintenanceWindow")
    for kind, name, why in EXPECTED_NOT_CARRIED:
        line = next(line for line in done.stdout.splitlines() if f" {name} " in line)
        assert kind in line and why in line


def test_a_task_saved_without_its_parameters_scans(tmp_path: Path) -> None:
    """describe-maintenance-window-tasks leaves out Operation: without the get-maintenance-window-
    task file the task is AWS-RunPatchBaseline's default, Scan."""
    saved = tmp_path / "saved"
    shutil.copytree(ACCOUNT, saved)
    (saved / "window-task-install.json").unlink()
    imported(tmp_path / "out", "--from-files", str(saved))
    window = documents(tmp_path / "out")[("MaintenanceWindow", "prod-tuesday-night")]
    task = window["spec"]["tasks"][0]
    assert (task["operation"], task["rebootOption"]) == ("Scan", "RebootIfNeeded")


def test_a_custom_baseline_named_as_a_predefined_one_is_reported(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    shutil.copytree(ACCOUNT, saved)
    raw = json.loads((saved / "baseline-prod-al2023.json").read_text())
    (saved / "baseline-prod-al2023.json").write_text(
        json.dumps({**raw, "Name": "AWS-Ubuntu-Default"})
    )
    report = imported(tmp_path / "out", "--from-files", str(saved))
    assert report["notCarried"][0] == {
        "kind": "PatchBaseline",
        "name": "AWS-Ubuntu-Default",
        "reason": "the resource name 'aws-ubuntu-default' is already taken: rename it in SSM",
    }
    assert patchctl("validate", str(tmp_path / "out")).returncode == 0


def test_a_tag_that_cannot_be_a_label_key_is_reported(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    shutil.copytree(ACCOUNT, saved)
    raw = json.loads((saved / "window-targets.json").read_text())
    raw["Targets"][1]["Targets"] = [{"Key": "tag:Cost Center", "Values": ["42"]}]
    (saved / "window-targets.json").write_text(json.dumps(raw))
    report = imported(tmp_path / "out", "--from-files", str(saved))
    (note,) = [n for n in report["notCarried"] if n["name"] == "Prod-Tuesday-Night/tagged"]
    assert note["reason"].startswith(
        "tag 'Cost Center' maps to 'Cost Center', which is not a label key"
    )
    window = documents(tmp_path / "out")[("MaintenanceWindow", "prod-tuesday-night")]
    assert window["spec"]["targets"] == {"patchGroups": ["prod"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"Instances": []}', "bad.json: not a response this import reads; save it with aws ssm"),
        ('{\n  "Mappings": [,]\n}', "bad.json:2: not JSON (Expecting value)"),
    ],
)
def test_a_file_that_is_not_a_saved_response_is_named(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "bad.json").write_text(content)
    done = patchctl("import", "ssm", "--from-files", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"patchctl: {tmp_path}/{message}")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_tasks_without_their_window_are_refused(tmp_path: Path) -> None:
    shutil.copy(ACCOUNT / "window-tasks.json", tmp_path)
    done = patchctl("import", "ssm", "--from-files", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert "no get-maintenance-window file for it" in done.stderr
    assert "aws ssm get-maintenance-window --window-id mw-0c50858d01EXAMPLE" in done.stderr


# -- through boto3 -------------------------------------------------------------------------------


@pytest.fixture
def ssm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ssmlab.RecordedSsm, dict[str, str]]]:
    env = awslab.isolated_aws(monkeypatch, tmp_path)
    with ssmlab.recorded_ssm() as lab:
        env.update(
            AWS_ACCESS_KEY_ID="recorded-key",
            AWS_SECRET_ACCESS_KEY="recorded-secret",
            AWS_ENDPOINT_URL_SSM=lab.url,
        )
        yield lab, env


def test_the_api_gives_what_the_saved_files_give(
    ssm: tuple[ssmlab.RecordedSsm, dict[str, str]], tmp_path: Path
) -> None:
    lab, env = ssm
    out = tmp_path / "imported"
    report = imported(out, "--region", "eu-central-1", env=env)
    assert_the_recorded_account(out, report)
    operations = [operation for operation, _ in lab.requests]
    # Read-only calls: nothing is created or changed in the account.
    assert all(op.startswith(("Describe", "Get")) for op in operations), operations
    assert lab.requests[0] == (
        "DescribePatchBaselines",
        {"Filters": [{"Key": "OWNER", "Values": ["Self"]}]},
    )
    assert (
        "GetMaintenanceWindowTask",
        {"WindowId": "mw-0c50858d01EXAMPLE", "WindowTaskId": WINDOW_TASK},
    ) in lab.requests


def test_a_denied_call_is_one_line_and_nothing_is_written(
    ssm: tuple[ssmlab.RecordedSsm, dict[str, str]], tmp_path: Path
) -> None:
    lab, env = ssm
    lab.denied.add("DescribePatchGroups")
    out = tmp_path / "imported"
    done = patchctl("import", "ssm", "--region", "eu-central-1", "--out", str(out), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "patchctl: cannot read SSM: An error occurred (AccessDeniedException)"
    )
    assert "not authorized to perform: ssm:DescribePatchGroups" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not out.exists()


def test_without_credentials_it_says_how_to_give_them(
    ssm: tuple[ssmlab.RecordedSsm, dict[str, str]], tmp_path: Path
) -> None:
    lab, env = ssm
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    done = patchctl("import", "ssm", "--region", "eu-central-1", "--out", str(tmp_path), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("patchctl: cannot read SSM: no usable AWS credentials")
    assert lab.requests == []


def test_without_a_region_it_says_how_to_give_one(
    ssm: tuple[ssmlab.RecordedSsm, dict[str, str]], tmp_path: Path
) -> None:
    _, env = ssm
    done = patchctl("import", "ssm", "--out", str(tmp_path), env=env)
    assert done.returncode == 1
    assert done.stderr == (
        "patchctl: cannot read SSM: no AWS region: give --region, or set AWS_REGION or a "
        "profile's region\n"
    )


def test_an_unknown_profile_is_named(
    ssm: tuple[ssmlab.RecordedSsm, dict[str, str]], tmp_path: Path
) -> None:
    _, env = ssm
    done = patchctl("import", "ssm", "--profile", "nope", "--out", str(tmp_path), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "patchctl: cannot read SSM: The config profile (nope) could not be found"
    )
