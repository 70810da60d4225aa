"""``patchctl findings``: non-compliant instances as AWS Security Finding Format (ASFF) findings,
from what the real loop recorded (``patchctl reconcile`` over real Debian systems in directory
roots).

Every finding is validated against the authoritative schema: botocore's model of Security Hub's
``BatchImportFindings`` input (required members, types, string patterns), plus the two
attributes the ASFF documentation also requires (``Severity``, ``Types``; "Required top-level
attributes in ASFF", AWS Security Hub User Guide).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from botocore.validate import ParamValidator

from reconciler.report.views import findings
from reconciler.state import ScanRecord, StateStore
from tests.aptlab import Pkg, Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import BASELINE_YAML, documents, local_instance_yaml, make_fleet

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
EC2_ID = "i-0123456789abcdef0"
ASFF_ALSO_REQUIRED = ("Severity", "Types")

BEFORE = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
PATCHED = [
    Pkg("pwtest-lib", "1.0-2", priority="important", section="libs"),
    Pkg("pwtest-tool", "2.1-1", section="utils"),
    Pkg("pwtest-other", "1.0-1"),
]


def batch_import_input() -> Shape:
    model = botocore.session.get_session().get_service_model("securityhub")
    return model.operation_model("BatchImportFindings").input_shape


def schema_errors(found: list[dict[str, Any]]) -> list[str]:
    """What Security Hub's API model says is wrong with ``BatchImportFindings(Findings=found)``:
    botocore's own validation (required members, types, ranges), then every string pattern of
    the model, which botocore leaves to the service."""
    shape = batch_import_input()
    report = ParamValidator().validate({"Findings": found}, shape)
    errors = [report.generate_report()] if report.has_errors() else []
    errors += list(_patterns(found, shape.members["Findings"], "Findings"))
    for index, finding in enumerate(found):
        errors += [
            f"Findings[{index}]: missing {k}" for k in ASFF_ALSO_REQUIRED if k not in finding
        ]
    return errors


def _patterns(value: Any, shape: Shape, path: str) -> Any:
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                yield from _patterns(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _patterns(item, shape.member, f"{path}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from _patterns(key, shape.key, f"{path} key {key!r}")
            yield from _patterns(item, shape.value, f"{path}[{key!r}]")
    elif shape.type_name == "string" and isinstance(value, str):
        pattern = shape.metadata.get("pattern")
        if pattern and not re.fullmatch(pattern, value, re.DOTALL):
            yield f"{path}: {value!r} does not match {pattern}"
        if "enum" in shape.metadata and value not in shape.metadata["enum"]:
            yield f"{path}: {value!r} is not one of {shape.metadata['enum']}"


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def asff_time(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def to_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --- from the real loop ----------------------------------------------------------------------


@needs_apt
def test_findings_of_a_real_fleet_are_valid_asff_one_per_non_compliant_instance(
    tmp_path: Path, apt_repo: Repo
) -> None:
    # web-1 misses approved patches (HIGH); the EC2-named instance is in no group, so the
    # predefined Debian baseline (UNSPECIFIED) judges it; web-3 is compliant: no finding.
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", EC2_ID], BEFORE)
    roots |= make_fleet(tmp_path / "fleet", apt_repo, ["web-3"], PATCHED)
    source = tmp_path / "source"
    source.mkdir()
    instances = [local_instance_yaml(n, r) for n, r in roots.items()]
    ungrouped = instances[1].replace("labels: {fleet: e2e}", "labels: {}")
    (source / "instances.yaml").write_text(documents(instances[0], ungrouped, instances[2]))
    (source / "fleet.yaml").write_text(BASELINE_YAML)
    state = tmp_path / "state" / "state.db"
    reconcile = ["reconcile", "--source", str(source), "--state", str(state), "-o", "json"]
    assert patchctl(*reconcile).returncode == 0
    # A new revision changes web-1's baseline (not its verdict): rescanned, still non-compliant.
    (source / "fleet.yaml").write_text(
        BASELINE_YAML.replace(
            "spec:\n  operatingSystem", "spec:\n  description: v2\n  operatingSystem", 1
        )
    )
    second = patchctl(*reconcile)
    assert second.returncode == 0, second.stderr
    revision = json.loads(second.stdout)["revision"]

    run = patchctl("findings", "--state", str(state), "-o", "json")

    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert schema_errors(found) == []
    assert [f["Resources"][0]["Id"] for f in found] == [EC2_ID, "web-1"]
    ec2, web = found
    rows = {
        row["instanceId"]: row
        for row in json.loads(patchctl("compliance", "--state", str(state), "-o", "json").stdout)
    }
    assert rows["web-3"]["complianceStatus"] == "COMPLIANT"
    for finding in found:
        row = rows[finding["Resources"][0]["Id"]]
        assert row["complianceStatus"] == "NON_COMPLIANT"
        assert finding["SchemaVersion"] == "2018-10-08"
        assert finding["Types"] == ["Software and Configuration Checks/Patch Management/Compliance"]
        assert finding["Compliance"] == {"Status": "FAILED"}
        assert finding["AwsAccountId"] == "000000000000"
        assert finding["ProductArn"] == (
            "arn:aws:securityhub:us-east-1:000000000000:product/000000000000/default"
        )
        summary = finding["PatchSummary"]
        assert summary["Id"] == row["baseline"]
        assert (summary["MissingCount"], summary["FailedCount"]) == (
            row["missingCount"],
            row["failedCount"],
        )
        assert summary["InstalledCount"] == row["installedCount"]
        assert summary["Operation"] == "SCAN"
        assert finding["Severity"]["Original"] == row["complianceSeverity"]
        assert finding["ProductFields"]["patchwarden/baseline"] == row["baseline"]
        assert finding["ProductFields"]["patchwarden/revision"] == row["revision"]
    # Severity as SSM maps it: a HIGH rule's patches give HIGH; the predefined baseline's
    # UNSPECIFIED gives INFORMATIONAL (ASFF has no UNSPECIFIED).
    assert web["Severity"] == {"Label": "HIGH", "Original": "HIGH"}
    assert ec2["Severity"] == {"Label": "INFORMATIONAL", "Original": "UNSPECIFIED"}
    assert web["Resources"][0]["Type"] == "Other"
    assert ec2["Resources"][0]["Type"] == "AwsEc2Instance"
    assert web["ProductFields"]["patchwarden/patchGroup"] == "fleet"
    assert web["ProductFields"]["patchwarden/revision"] == revision  # the rescan's
    assert web["PatchSummary"]["MissingCount"] == 2
    # Dated by the store: created when web-1 became non-compliant (its first scan), updated by
    # its latest scan.
    with StateStore(state) as store:
        history = sorted(store.scan_history("web-1"), key=lambda s: s.finished_at)
    assert len(history) == 2
    assert asff_time(web["CreatedAt"]) == to_ms(history[0].finished_at)
    assert asff_time(web["FirstObservedAt"]) == to_ms(history[0].finished_at)
    assert asff_time(web["UpdatedAt"]) == to_ms(history[1].finished_at)
    assert asff_time(web["PatchSummary"]["OperationEndTime"]) == to_ms(history[1].finished_at)
    assert web["Id"] != ec2["Id"]

    # To a file, for `aws securityhub batch-import-findings --findings file://...`; for
    # another account and region.
    out = tmp_path / "out" / "findings.json"
    to_file = patchctl(
        "findings", "--state", str(state), "--to", str(out),
        "--account-id", "111122223333", "--region", "eu-west-1",
    )  # fmt: skip
    assert to_file.returncode == 0, to_file.stderr
    assert f"{out}: 2 finding(s)" in to_file.stderr
    written = json.loads(out.read_text())
    assert schema_errors(written) == []
    assert {f["AwsAccountId"] for f in written} == {"111122223333"}
    assert {f["ProductArn"] for f in written} == {
        "arn:aws:securityhub:eu-west-1:111122223333:product/111122223333/default"
    }
    assert {f["Resources"][0]["Region"] for f in written} == {"eu-west-1"}

    table = patchctl("findings", "--state", str(state), "-o", "table")
    assert table.returncode == 0 and EC2_ID in table.stdout and "INFORMATIONAL" in table.stdout


def test_a_malformed_account_id_is_refused_in_one_line(tmp_path: Path) -> None:
    run = patchctl("findings", "--state", str(tmp_path / "state.db"), "--account-id", "12345")
    assert run.returncode == 1
    assert run.stderr == "patchctl: --account-id '12345': an AWS account id is 12 digits\n"


# --- the severity mapping --------------------------------------------------------------------


def scan(instance: str, severity: str, status: str, at: datetime) -> ScanRecord:
    """A recorded scan as the store returns it (only what a finding reads)."""
    outstanding = {"complianceStatus": status, "complianceSeverity": severity}
    return ScanRecord(
        id=1,
        instance=instance,
        operation="Install",
        revision="main@sha1:" + "c" * 40,
        baseline="b",
        baseline_hash="h" * 64,
        job_id="j",
        started_at=at,
        finished_at=at,
        inventory={},
        evaluation={
            "operatingSystem": "DEBIAN",
            "patchGroup": None,
            "patches": [],
            "summary": {**outstanding, "missingCount": 1, "failedCount": 0},
        },
    )


@pytest.mark.parametrize(
    ("ssm", "label"),
    [
        ("CRITICAL", "CRITICAL"),
        ("HIGH", "HIGH"),
        ("MEDIUM", "MEDIUM"),
        ("LOW", "LOW"),
        ("INFORMATIONAL", "INFORMATIONAL"),
        ("UNSPECIFIED", "INFORMATIONAL"),
    ],
)
def test_each_compliance_severity_maps_to_the_asff_label_ssm_uses(ssm: str, label: str) -> None:
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    latest = {"mi-0123456789abcdef0": scan("mi-0123456789abcdef0", ssm, "NON_COMPLIANT", at)}
    (finding,) = findings.findings(latest, {})
    assert finding["Severity"] == {"Label": label, "Original": ssm}
    assert finding["Resources"][0]["Type"] == "AwsEc2Instance"  # a hybrid node, as SSM does
    assert finding["PatchSummary"]["Operation"] == "INSTALL"
    assert schema_errors([finding]) == []
    # The validation is strict: SSM's UNSPECIFIED is no ASFF label, and a title is required.
    untitled = {k: v for k, v in finding.items() if k != "Title"}
    assert len(schema_errors([{**untitled, "Severity": {"Label": "UNSPECIFIED"}}])) == 2
    assert batch_import_input().members["Findings"].member.members["Severity"].members[
        "Label"
    ].enum == ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


def test_a_finding_is_dated_from_when_the_instance_last_became_non_compliant() -> None:
    def at(hour: int) -> datetime:
        return datetime(2026, 11, 28, hour, 0, tzinfo=UTC)

    history = [
        scan("web-1", "HIGH", "NON_COMPLIANT", at(1)),
        scan("web-1", "", "COMPLIANT", at(2)),
        scan("web-1", "HIGH", "NON_COMPLIANT", at(3)),
        scan("web-1", "HIGH", "NON_COMPLIANT", at(4)),
    ]
    (finding,) = findings.findings({"web-1": history[-1]}, {"web-1": history[::-1]})
    assert (finding["CreatedAt"], finding["UpdatedAt"]) == (
        "2026-11-28T03:00:00.000Z",
        "2026-11-28T04:00:00.000Z",
    )
    assert findings.findings({"web-1": history[1]}, {"web-1": history}) == []  # compliant


def test_an_unwritable_findings_file_is_a_one_line_error(tmp_path: Path) -> None:
    """``--to`` a directory (or anywhere not writable) says so; no internal error."""
    run = patchctl("findings", "--state", str(tmp_path / "state.db"), "--to", str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.startswith(f"patchctl: --to {tmp_path}: cannot write the findings")
    assert "internal error" not in run.stderr and len(run.stderr.splitlines()) == 1
