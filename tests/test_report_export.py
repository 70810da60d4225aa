"""`patchctl report --format csv|json|html`: the JSON document says what `patchctl compliance`
says, the dashboard draws it (one SVG mark per group, level and day) with hostile names escaped,
and the CSV keeps SSM's columns; all read from a real state database."""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enrolment import Provenance
from reconciler.report.views import export
from reconciler.state import StateStore
from tests.test_compliance_views import T0, _evaluation, _inventory, patchctl

NOW = T0 + timedelta(hours=1)
HOSTILE = "<script>alert(1)</script>"
HOSTILE_PATCH = '<img src=x onerror="alert(2)">'


def _critical(evaluation: dict[str, Any], name: str = "openssl") -> dict[str, Any]:
    """``evaluation`` with one more MISSING patch of CRITICAL compliance level."""
    evaluation["patches"].append(
        {
            "name": name,
            "arch": "amd64",
            "version": "3.0.2",
            "installedVersion": "3.0.1",
            "state": "MISSING",
            "classification": "Security",
            "severity": "Critical",
            "complianceLevel": "CRITICAL",
            "cves": ["CVE-2026-9999"],
            "reason": "approved by approvalRules[0]",
        }
    )
    summary = evaluation["summary"]
    summary.update(complianceStatus="NON_COMPLIANT", complianceSeverity="CRITICAL")
    summary["missingCount"] += 1
    summary["criticalNonCompliantCount"] = 1
    return evaluation


def fleet_state(path: Path) -> Path:
    """Five instances over four days: web-1 goes from 3 missing to compliant, web-2 and the
    hostile one stay non-compliant, db-1 is compliant, `lonely` has no patch group."""
    day = timedelta(days=1)
    scans: list[tuple[str, datetime, str, dict[str, Any], str]] = [
        ("web-1", T0 - 3 * day, "main@sha1:aaa", _critical(_evaluation("web", 2)), "Scan"),
        ("web-1", T0 - 2 * day, "main@sha1:aaa", _evaluation("web", 2), "Scan"),
        ("web-1", T0, "main@sha1:bbb", _evaluation("web", 0), "Install"),
        ("web-2", T0 - 2 * day, "main@sha1:aaa", _evaluation("web", 1), "Scan"),
        ("web-2", T0 - day, "main@sha1:bbb", _evaluation("web", 1, failed=1), "Install"),
        ("db-1", T0 - day, "main@sha1:bbb", _evaluation("db", 0), "Scan"),
        ("lonely", T0, "main@sha1:bbb", _evaluation(None, 1), "Scan"),  # type: ignore[arg-type]
        (HOSTILE, T0, "main@sha1:bbb", _critical(_evaluation(HOSTILE, 0), HOSTILE_PATCH), "Scan"),
    ]
    with StateStore(path) as store:
        for instance, when, revision, evaluation, operation in scans:
            store.record_scan(
                instance=instance,
                operation=operation,
                revision=revision,
                baseline="debian-prod",
                baseline_hash="h",
                job_id=None,
                started_at=when - timedelta(seconds=30),
                finished_at=when,
                inventory=_inventory(),
                evaluation=evaluation,
            )
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return fleet_state(tmp_path / "state.db")


def _report(state: Path, out: Path, *args: str) -> list[Path]:
    run = patchctl("report", "--to", str(out), "--state", str(state), *args)
    assert run.returncode == 0, run.stderr
    return [Path(line) for line in run.stdout.splitlines()]


def _compliance(state: Path, *args: str) -> Any:
    run = patchctl("compliance", *args, "--state", str(state), "-o", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _build(state: Path, fmt: str, **scope: Any) -> dict[str, bytes]:
    with StateStore(state) as store:
        data = export.read_input(store, fmt)
    return export.build_report(data, fmt, now=NOW, **scope)


def test_json_report_says_what_patchctl_compliance_says(state: Path, tmp_path: Path) -> None:
    (path,) = _report(state, tmp_path / "out", "--format", "json")
    assert re.fullmatch(r"compliance-report-\d{8}T\d{6}Z\.json", path.name)
    document = json.loads(path.read_text())
    assert (document["apiVersion"], document["kind"]) == (
        "patchwarden.io/v1alpha1",
        "ComplianceReportData",
    )
    assert document["instances"] == _compliance(state)
    assert document["groups"] == [
        *_compliance(state, "--group", HOSTILE),
        *_compliance(state, "--group", "db"),
        *_compliance(state, "--group", "web"),
    ]
    summary = document["summary"]
    assert (summary["instances"], summary["compliant"], summary["nonCompliant"]) == (5, 2, 3)
    assert summary["compliantPercent"] == 40.0
    assert (summary["missingCount"], summary["failedCount"]) == (3, 1)
    assert summary["nonCompliantByComplianceLevel"] == {
        "CRITICAL": 1,
        "HIGH": 2,
        "MEDIUM": 0,
        "LOW": 0,
        "INFORMATIONAL": 0,
        "UNSPECIFIED": 0,
    }
    assert document["revisions"] == [
        {"revision": "main@sha1:bbb", "instances": 5},
    ]
    # The hostile instance has a critical patch missing, web-2 a failed one, lonely one missing.
    assert document["worstInstances"] == [HOSTILE, "web-2", "lonely"]
    # Without --instance, only the patches that need attention.
    assert document["patchesIncluded"] == "nonCompliant"
    assert [p["name"] for p in document["patches"]["web-2"]] == ["pkg0"]
    assert document["patches"]["db-1"] == []


def test_json_report_says_where_each_generated_instance_was_enrolled_from(
    state: Path, tmp_path: Path
) -> None:
    """As ``patchctl compliance -o json``: an ``enrolled`` field on generated instances only."""
    with StateStore(state) as store:
        store.record_enrolled({"web-2": Provenance("ec2-prod", "i-0abc")}, T0)
    (path,) = _report(state, tmp_path / "out", "--format", "json")
    rows = json.loads(path.read_text())["instances"]
    assert rows == _compliance(state)
    assert {r["instanceId"]: r.get("enrolled") for r in rows if "enrolled" in r} == {
        "web-2": "from InstanceSource ec2-prod, host i-0abc"
    }


def test_json_for_one_instance_has_every_patch_and_its_history(state: Path, tmp_path: Path) -> None:
    (path,) = _report(state, tmp_path / "out", "--format", "json", "--instance", "web-1")
    assert path.name.startswith("compliance-report-web-1-")
    document = json.loads(path.read_text())
    assert [r["instanceId"] for r in document["instances"]] == ["web-1"]
    assert document["patchesIncluded"] == "all"
    assert document["patches"] == {"web-1": _compliance(state, "web-1")}
    assert document["history"] == {"web-1": _compliance(state, "web-1", "--history")}
    assert [h["missingCount"] for h in document["history"]["web-1"]] == [3, 2, 0]


def test_report_now_is_the_files_time_and_the_trends_last_day(state: Path, tmp_path: Path) -> None:
    """`patchctl report --now`: the report as it would have been made then, whatever the date."""
    (path,) = _report(state, tmp_path / "out", "--format", "json", "--now", "2026-11-27T08:00:00Z")
    assert path.name == "compliance-report-20261127T080000Z.json"
    document = json.loads(path.read_text())
    assert document["generatedAt"] == "2026-11-27T08:00:00+00:00"
    assert [p["date"] for p in document["trend"]] == ["2026-11-25", "2026-11-26", "2026-11-27"]


def test_trend_sums_each_instances_newest_scan_per_day(state: Path) -> None:
    (content,) = _build(state, "json").values()
    trend = json.loads(content)["trend"]
    assert [(p["date"], p["instances"], p["missingCount"], p["failedCount"]) for p in trend] == [
        ("2026-11-25", 1, 3, 0),  # web-1: 3 missing
        ("2026-11-26", 2, 3, 0),  # web-1: 2, web-2: 1
        ("2026-11-27", 3, 3, 1),  # web-2's install failed one; db-1 compliant
        ("2026-11-28", 5, 3, 1),  # web-1 installed; lonely and the hostile one: 1 each
    ]


def test_csv_is_ssms_report_scoped_to_a_group(state: Path, tmp_path: Path) -> None:
    (path,) = _report(state, tmp_path / "out", "--group", "web")
    assert re.fullmatch(r"compliance-summary-\d{8}T\d{6}Z\.csv", path.name)
    with path.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames is not None and len(reader.fieldnames) == 17
        assert [r["Instance ID"] for r in reader] == ["web-1", "web-2"]


def _html(state: Path, **scope: Any) -> str:
    (content,) = _build(state, "html", **scope).values()
    return content.decode()


def _chart(html: str, key: str) -> str:
    match = re.search(rf'<svg class="chart" data-chart="{key}".*?</svg>', html, re.S)
    assert match, f"no {key} chart"
    return match.group(0)


def test_dashboard_draws_groups_severities_and_days(state: Path) -> None:
    html = _html(state)
    by_group = _chart(html, "by-group")
    bars = re.findall(r'<rect class="bar" data-group="([^"]*)" data-series="(\w+)"', by_group)
    assert sorted(bars) == sorted(
        [
            ("&lt;script&gt;alert(1)&lt;/script&gt;", "NON_COMPLIANT"),
            ("(no patch group)", "NON_COMPLIANT"),
            ("db", "COMPLIANT"),
            ("web", "COMPLIANT"),
            ("web", "NON_COMPLIANT"),
        ]
    )
    by_severity = _chart(html, "by-severity")
    levels = re.findall(
        r'data-series="(\w+)" x="[\d.]+" y="[\d.]+" width="[\d.]+" '
        r'height="([\d.]+)"',
        by_severity,
    )
    heights = {level: float(h) for level, h in levels}
    assert list(heights) == ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED"]
    assert heights["HIGH"] == 2 * heights["CRITICAL"] > 0 == heights["MEDIUM"]
    over_time = _chart(html, "over-time")
    days = re.findall(r'<circle class="point" data-date="([\d-]+)" data-value="(\d+)"', over_time)
    assert days == [
        ("2026-11-25", "3"),
        ("2026-11-26", "3"),
        ("2026-11-27", "4"),
        ("2026-11-28", "4"),
    ]
    for chart in (by_group, by_severity, over_time):
        assert 'role="img"' in chart and "<title" in chart and "<desc" in chart
    # A table with the same numbers follows every chart.
    assert html.count("<table>") == 3 + 2  # three charts, the worst instances, the revisions
    assert "40%" in html and "main@sha1:bbb" in html


def test_dashboard_escapes_names_and_titles_from_the_data(state: Path) -> None:
    html = _html(state, instance=HOSTILE)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html
    # Nothing is fetched: no script, stylesheet, font or image from anywhere.
    assert not re.search(r"<link|@import|url\(|https?://(?!www\.w3\.org/2000/svg)", html)
    assert "default-src 'none'" in html


def test_report_file_names_never_carry_a_path(state: Path) -> None:
    assert list(_build(state, "csv", instance=HOSTILE)) == [
        "compliance-summary-20261128T110000Z.csv",
        "compliance-detail-_script_alert_1___script_-20261128T110000Z.csv",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--instance", "nope"), "no scan of 'nope' is recorded"),
        (("--group", "nope"), "no instance of patch group 'nope' has a recorded scan"),
        (("--group", "db", "--instance", "web-1"), "no scan of 'web-1' in patch group 'db'"),
        (("--format", "pdf"), "invalid choice: 'pdf'"),
    ],
)
def test_bad_requests_are_clear_errors(
    state: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    run = patchctl("report", "--to", str(tmp_path / "out"), "--state", str(state), *args)
    assert run.returncode in (1, 2) and message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["csv", "json", "html"])
def test_an_empty_store_gives_an_empty_report(tmp_path: Path, fmt: str) -> None:
    """A scheduled report can run before the first scan: empty, not an error."""
    with StateStore(tmp_path / "state.db") as store:
        data = export.read_input(store, fmt)
    (content,) = export.build_report(data, fmt, now=NOW).values()
    if fmt == "json":
        document = json.loads(content)
        assert document["instances"] == [] and document["trend"] == []
        assert document["summary"]["compliantPercent"] is None
    elif fmt == "html":
        assert "No scans recorded yet." in content.decode()
    else:
        assert content.decode().count("\n") == 1  # the header only
