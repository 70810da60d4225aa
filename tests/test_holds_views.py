"""Held updates in the views (issue 20 item 3, docs/guardrails.md): ``patchctl compliance``
counts them per instance (``heldCount``), the JSON report sums them, the dashboard shows them,
and ``plan`` names them for an instance that has installs to do too."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from reconciler.plan import Observed, plan
from reconciler.report.views.dashboard import render as render_dashboard
from reconciler.report.views.export import report_document
from reconciler.state import StateStore
from tests.test_compliance_views import T0, _evaluation, _inventory, patchctl
from tests.test_plan import BASELINE, NOON, instances, scanned, snap, window

HELD = {
    "name": "openssl",
    "arch": "amd64",
    "version": "3.0.15-1",
    "installedVersion": "3.0.14-1",
    "state": "HELD",
    "reason": "held: 'openssl' (patch group 'web'); never installed, not counted as missing",
}


def test_compliance_report_and_dashboard_count_held_packages(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        for name, evaluation in (
            ("web-1", {**_evaluation("web", 1), "held": [HELD]}),
            ("web-2", _evaluation("web", 0)),
        ):
            store.record_scan(
                instance=name, operation="Scan", revision="main@sha1:aaa",
                baseline="debian-prod", baseline_hash="h", job_id=None, started_at=T0,
                finished_at=T0 + timedelta(seconds=5), inventory=_inventory(),
                evaluation=evaluation,
            )  # fmt: skip
        latest = store.latest_scans()
    run = patchctl("compliance", "--state", str(path), "-o", "json")
    assert run.returncode == 0, run.stderr
    assert {r["instanceId"]: r["heldCount"] for r in json.loads(run.stdout)} == {
        "web-1": 1,
        "web-2": 0,
    }
    listed = patchctl("compliance", "--state", str(path), "-o", "csv").stdout
    assert [row["heldCount"] for row in csv.DictReader(io.StringIO(listed))] == ["1", "0"]
    document = report_document(latest, {}, now=T0 + timedelta(hours=1))
    assert document["summary"]["heldCount"] == 1
    html = render_dashboard(document)
    assert '<div class="value">1</div><div class="label">Held packages</div>' in html
    assert '<th scope="col">Held</th>' in html  # web-1 needs attention: its row shows it


def test_plan_names_held_packages_of_an_instance_with_installs_to_do() -> None:
    snapshot = snap(BASELINE, window(), instances(1))
    scan = replace(scanned(snapshot), held=("openssl", "postgresql-15"))
    result = plan(snapshot, "r1", Observed({"node-1": scan}), NOON)
    (action,) = result.actions
    assert action.reason.endswith(
        "install of window noon is open; held, never installed: openssl, postgresql-15"
    )
