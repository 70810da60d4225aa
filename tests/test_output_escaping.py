"""What a hostile managed machine reports is shown as text, never run: formula injection in every
CSV Patchwarden writes (``-o csv`` and the CSV report files), and rich markup, emoji codes and
terminal escape sequences in tables (issue 12, items 4 and 8).

The hostile values reach the store the way a compromised agent's scan would put them there: as
the inventory's facts (the host name) and the evaluated patches (names, versions, CVE fields).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.state import StateStore

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 28, 10, tzinfo=UTC)
HOSTNAME = '=HYPERLINK("http://evil.example/fix","Click to fix")'
# Each hostile name, and what a spreadsheet must be given instead: the text, after a quote.
HOSTILE = {
    "=cmd|' /C calc'!A0": "'=cmd|' /C calc'!A0",
    "+SUM(1,1)": "'+SUM(1,1)",
    "-2+3": "'-2+3",
    "@SUM(1,1)": "'@SUM(1,1)",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\r=1+1",
}
HARMLESS = "openssl"


def _patch(name: str, version: str, cve: str) -> dict[str, object]:
    return {
        "name": name,
        "arch": "amd64",
        "version": version,
        "installedVersion": "1",
        "state": "MISSING",
        "classification": "Security",
        "severity": "High",
        "complianceLevel": "HIGH",
        "cves": [cve],
        "reason": "approved by approvalRules[0]",
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    patches = [_patch(name, "2", "CVE-2026-0001") for name in HOSTILE]
    # A version and a CVE field that start with "-": text like any other, so quoted too.
    patches.append(_patch(HARMLESS, "-1", "-CVE-2026-0002"))
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        store.record_scan(
            instance="web-1",
            operation="Scan",
            revision="main@sha1:aaa",
            baseline="debian-prod",
            baseline_hash="h",
            job_id=None,
            started_at=T0,
            finished_at=T0 + timedelta(seconds=5),
            inventory={
                "facts": {"operatingSystem": "DEBIAN", "osId": "debian", "hostname": HOSTNAME},
                "installed": [],
            },
            evaluation={
                "patchGroup": "web",
                "patches": patches,
                "summary": {"complianceStatus": "NON_COMPLIANT", "missingCount": len(patches)},
            },
        )
    return path


def patchctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        env=env,
    )
    # Decoded by hand: text mode would turn a carriage return inside a CSV cell into a newline.
    return subprocess.CompletedProcess(
        run.args, run.returncode, run.stdout.decode(), run.stderr.decode()
    )


def _csv(text: str) -> list[dict[str, str]]:
    # newline="" keeps a carriage return inside a quoted cell, as a spreadsheet reads it.
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_compliance_csv_quotes_formulas_from_the_machine_and_keeps_other_values(
    state: Path,
) -> None:
    run = patchctl("compliance", "web-1", "--state", str(state), "-o", "csv")
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in _csv(run.stdout)}
    assert set(rows) == set(HOSTILE.values()) | {HARMLESS}
    assert rows[HARMLESS]["version"] == "'-1" and rows[HARMLESS]["cves"] == "'-CVE-2026-0002"
    assert rows["'+SUM(1,1)"]["cves"] == "CVE-2026-0001"  # harmless text is untouched
    assert rows["'+SUM(1,1)"]["state"] == "MISSING" and rows["'+SUM(1,1)"]["version"] == "2"
    summary = _csv(patchctl("compliance", "--state", str(state), "-o", "csv").stdout)
    assert summary[0]["missingCount"] == str(len(HOSTILE) + 1)  # numbers stay numbers


def test_csv_report_files_quote_the_host_name_package_names_and_cves(
    state: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    run = patchctl("report", "--to", str(out), "--state", str(state), "--instance", "web-1")
    assert run.returncode == 0, run.stderr
    (summary,) = _csv((next(out.glob("compliance-summary-*.csv"))).read_bytes().decode())
    assert summary["Instance name"] == "'" + HOSTNAME
    assert summary["Instance ID"] == "web-1" and summary["Index"] == "1"
    detail = _csv(next(out.glob("compliance-detail-web-1-*.csv")).read_bytes().decode())
    by_name = {r["Patch name"]: r for r in detail}
    assert set(by_name) == set(HOSTILE.values()) | {HARMLESS}
    assert {r["Instance name"] for r in detail} == {"'" + HOSTNAME}
    assert by_name[HARMLESS]["CVE ID"] == "'-CVE-2026-0002"
    assert by_name[HARMLESS]["KB ID/Patch ID"] == "openssl.amd64"
    assert by_name["'=cmd|' /C calc'!A0"]["KB ID/Patch ID"] == "'=cmd|' /C calc'!A0.amd64"
    # No cell of any file starts as a formula.
    cells = [value for row in [summary, *detail] for value in row.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]


# --- tables (rich) ------------------------------------------------------------------------------

LINK = "[link=http://evil.example]click[/link]"
ESCAPE = "\x1b]8;;http://evil.example\x07x\x1b]8;;\x07\x1b[2J"  # a hyperlink, then clear screen


def _hostile_inventory(tmp_path: Path) -> Path:
    inventory = json.loads((ROOT / "examples/inventories/web-1.json").read_text())
    inventory["instanceId"] = "web-1[/bogus]:smile:"
    inventory["facts"]["hostname"] = "web-1" + ESCAPE
    names = {"openssl": "[/bogus]", "libssl3": LINK}
    for package in inventory["installed"] + inventory["updates"]:
        package["name"] = names.get(package["name"], package["name"])
    package = next(p for p in inventory["updates"] if p["name"] == LINK)
    package["cves"] = ["CVE-2026-0101" + ESCAPE]
    path = tmp_path / "web-1.json"
    path.write_text(json.dumps(inventory))
    return path


def test_evaluate_table_shows_markup_and_escapes_in_names_as_text(tmp_path: Path) -> None:
    # A terminal, wide enough that no cell folds: what people see when they run it themselves.
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "500", "TERM": "xterm-256color"}
    run = patchctl(
        "evaluate",
        "--baseline",
        "examples/baselines/ubuntu-prod.yaml",
        "--inventory",
        str(_hostile_inventory(tmp_path)),
        "--now",
        "2026-11-28T12:00:00Z",
        "-o",
        "table",
        env=env,
    )
    assert run.returncode == 0, run.stderr  # was: internal error: MarkupError
    assert run.stderr == ""
    assert "\x1b]8;" not in run.stdout  # no terminal hyperlink, whoever named the package
    assert "\x1b[2J" not in run.stdout
    text = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout)  # rich's own colours
    assert "web-1[/bogus]:smile:" in text
    assert "[/bogus].amd64" in text and f"{LINK}.amd64" in text
    assert "CVE-2026-0101\\x1b]8;;http://evil.example\\x07x" in text
    assert "MISSING" in text and "NON_COMPLIANT" in text
