"""/metrics of ``patchctl run``, scraped for real: the process runs the loop over a directory
source driving real Debian systems (directory roots, real apt and dpkg), serves Prometheus'
text format on a loopback port, and the test parses it with prometheus-client's own parser and
compares every value with the fleet's real state (``patchctl compliance -o json``, dpkg, the
store). The sample Grafana dashboard is checked against the names the real endpoint exposes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.api.snapshot import build_snapshot
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.views.csvreport import LEVELS
from reconciler.state import StateStore
from tests.aptlab import Pkg, Repo, make_root
from tests.conftest import INSTALLED, needs_apt
from tests.factories import NOW
from tests.fleet import (
    API,
    BASELINE_YAML,
    GROUP,
    at_now,
    documents,
    local_instance_yaml,
    open_window_yaml,
    versions,
)
from tests.git_servers import free_port
from tests.test_report_s3 import record_scans
from tests.waiting import healthy, tail_of, wait_until

pytestmark = needs_apt

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
DASHBOARD = ROOT / "charts" / "grafana" / "patchwarden-dashboard.json"

# web-* miss the security updates of lib and tool (approved at HIGH); web-3 already has them.
# db-1 misses lib's and the kernel's (approved at CRITICAL); the kernel's asks for a reboot.
UNPATCHED_WEB = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
PATCHED_WEB = [
    Pkg("pwtest-lib", "1.0-2", priority="important", section="libs"),
    Pkg("pwtest-tool", "2.1-1", section="utils"),
    Pkg("pwtest-other", "1.0-1"),
]
DB = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-kernel")]


def baseline_and_group(group: str, level: str) -> str:
    return f"""\
{API}
kind: PatchBaseline
metadata:
  name: {group}-security
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required, Important, Standard, Optional, Extra]
      complianceLevel: {level}
---
{API}
kind: PatchGroup
metadata:
  name: {group}
spec:
  selector:
    matchLabels: {{role: {group}}}
  baselines:
    DEBIAN: {group}-security
"""


def instance_yaml(name: str, role: str, root: Path) -> str:
    return f"""\
{API}
kind: ManagedInstance
metadata:
  name: {name}
  labels: {{role: {role}}}
spec:
  connection: {{type: local, root: {root}}}
"""


@dataclass
class Scrape:
    """One scrape of /metrics: sample name -> [(labels, value)], and the family names."""

    samples: dict[str, list[tuple[dict[str, str], float]]]
    families: dict[str, str]  # name -> type

    def value(self, name: str, **labels: str) -> float:
        found = [v for got, v in self.samples.get(name, []) if got == labels]
        assert len(found) == 1, (name, labels, self.samples.get(name))
        return found[0]

    def by(self, name: str, label: str) -> dict[str, float]:
        return {got[label]: v for got, v in self.samples.get(name, [])}


def scrape(base: str) -> Scrape:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.status == 200
        return parsed(response.read().decode())


def parsed(text: str) -> Scrape:
    """Prometheus' text format as a :class:`Scrape`."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(samples, families)


def patchctl_json(*args: str) -> Any:
    run = subprocess.run(
        [*PATCHCTL, *args, "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def fleet_state(state: Path) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """What ``patchctl compliance`` says: instances by (status, group), and approved patches
    MISSING or FAILED by compliance level."""
    rows = patchctl_json("compliance", "--state", str(state))
    instances = Counter((row["complianceStatus"], row["patchGroup"] or "") for row in rows)
    missing: Counter[str] = Counter()
    for row in rows:
        patches = patchctl_json("compliance", row["instanceId"], "--state", str(state))
        outstanding = [p for p in patches if p["state"] in ("MISSING", "FAILED")]
        assert len(outstanding) == row["missingCount"] + row["failedCount"]
        missing.update(p["complianceLevel"] or "UNSPECIFIED" for p in outstanding)
    return instances, missing


def assert_fleet_metrics(metrics: Scrape, state: Path) -> None:
    instances, missing = fleet_state(state)
    for (status, group), count in instances.items():
        assert metrics.value("patchwarden_instances", status=status, group=group) == count
    # No series claims instances the store does not have.
    assert sum(v for _, v in metrics.samples["patchwarden_instances"]) == sum(instances.values())
    assert metrics.by("patchwarden_missing_patches", "severity") == {
        level: float(missing[level]) for level in LEVELS
    }


@pytest.fixture
def served(tmp_path: Path, apt_repo: Repo) -> Iterator[tuple[str, Path, Path, dict[str, Path]]]:
    """``patchctl run`` over a directory source: (base URL, source dir, state db, roots)."""

    def root(name: str, installed: list[Pkg]) -> Path:
        suites = ["stable", "stable-security"]
        return make_root(tmp_path / "fleet" / name, apt_repo.uri, suites, installed=installed)

    roots = {
        "web-1": root("web-1", UNPATCHED_WEB),
        "web-2": root("web-2", UNPATCHED_WEB),
        "web-3": root("web-3", PATCHED_WEB),
        "db-1": root("db-1", DB),
    }
    source = tmp_path / "source"
    source.mkdir()
    (source / "web.yaml").write_text(baseline_and_group("web", "HIGH"))
    (source / "db.yaml").write_text(baseline_and_group("db", "CRITICAL"))
    (source / "instances.yaml").write_text(
        documents(*(instance_yaml(n, n.partition("-")[0], r) for n, r in roots.items()))
    )
    state, log = tmp_path / "state" / "state.db", tmp_path / "run.log"
    port = free_port()
    argv = ["run", "--source", str(source), "--state", str(state), "--interval", "1", *at_now()]
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, *argv, "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", source, state, roots
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_metrics_of_patchctl_run_equal_the_fleets_real_state(
    tmp_path: Path, served: tuple[str, Path, Path, dict[str, Path]]
) -> None:
    base, source, state, roots = served
    log = tmp_path / "run.log"

    # 1. The first pass scans everyone; no window, so nothing is installed.
    wait_until("/healthz", lambda: healthy(base), timeout=60, detail=tail_of(log))
    first = scrape(base)
    assert first.value("patchwarden_jobs_total", operation="Scan", status="succeeded") == 4
    assert first.value("patchwarden_jobs_started_total", operation="Scan") == 4
    assert first.value("patchwarden_job_duration_seconds_count", operation="Scan") == 4
    assert first.value("patchwarden_snapshots_accepted_total") == 1
    assert first.value("patchwarden_snapshot_refusals_total") == 0
    assert first.value("patchwarden_patches_installed_total") == 0
    assert first.by("patchwarden_reboots_total", "performed") == {"true": 0, "false": 0}
    assert first.value("patchwarden_reconcile_passes_total") >= 1
    assert first.value("patchwarden_reconcile_duration_seconds_count") >= 1
    last = first.value("patchwarden_last_successful_reconcile_timestamp_seconds")
    # The loop's clock (started at --now: NOW plus the time the test session has run), never
    # the host's date.
    assert NOW.timestamp() <= last <= NOW.timestamp() + 86400
    # The fleet, as the user sees it, and as /metrics says it.
    assert first.value("patchwarden_instances", status="NON_COMPLIANT", group="web") == 2
    assert first.value("patchwarden_instances", status="COMPLIANT", group="web") == 1
    assert first.value("patchwarden_instances", status="NON_COMPLIANT", group="db") == 1
    assert first.value("patchwarden_instances", status="COMPLIANT", group="db") == 0
    assert first.by("patchwarden_missing_patches", "severity") == {
        **dict.fromkeys(LEVELS, 0.0),
        "HIGH": 4.0,  # lib and tool on web-1 and web-2
        "CRITICAL": 2.0,  # lib and kernel on db-1
    }
    assert_fleet_metrics(first, state)

    # 2. A window for the db group: db-1 is patched, its kernel asks for a reboot (recorded in a
    # directory root, never performed).
    window = open_window_yaml("db-now").replace("patchGroups: [fleet]", "patchGroups: [db]")
    (source / "window.yaml").write_text(window)

    def installed() -> bool:
        jobs = scrape(base).samples.get("patchwarden_jobs_total", [])
        return any(labels["operation"] == "Install" for labels, _ in jobs)

    wait_until("the install on db-1", installed, timeout=60, detail=tail_of(log))
    passes = scrape(base).value("patchwarden_reconcile_passes_total")
    wait_until(
        "the pass of the install to end",
        lambda: scrape(base).value("patchwarden_reconcile_passes_total") > passes,
        timeout=60,
        detail=tail_of(log),
    )
    second = scrape(base)
    assert versions(roots["db-1"]) == {"pwtest-lib": "1.0-2", "pwtest-kernel": "1.0-2"}
    assert second.value("patchwarden_jobs_total", operation="Install", status="succeeded") == 1
    assert second.value("patchwarden_jobs_started_total", operation="Install") == 1
    assert second.value("patchwarden_job_duration_seconds_count", operation="Install") == 1
    assert second.value("patchwarden_patches_installed_total") == 2
    assert second.value("patchwarden_reboots_total", performed="false") == 1
    assert second.value("patchwarden_snapshots_accepted_total") == 2
    with StateStore(state) as store:
        (job,) = [j for j in store.jobs() if j.operation == "Install"]
        assert job.instance == "db-1" and job.status == "succeeded"
        assert job.result is not None and job.result["install"]["reboot"]["required"] is True
    assert second.by("patchwarden_missing_patches", "severity")["CRITICAL"] == 0
    assert_fleet_metrics(second, state)

    # 3. A broken file: the revision is refused once, however many passes see it.
    (source / "broken.yaml").write_text(f"{API}\nkind: PatchBaseline\nmetadata: {{}}\n")
    wait_until(
        "the refusal",
        lambda: scrape(base).value("patchwarden_snapshot_refusals_total") == 1,
        timeout=60,
        detail=tail_of(log),
    )
    passes = scrape(base).value("patchwarden_reconcile_passes_total")
    wait_until(
        "three more passes",
        lambda: scrape(base).value("patchwarden_reconcile_passes_total") >= passes + 3,
        timeout=60,
        detail=tail_of(log),
    )
    third = scrape(base)
    assert third.value("patchwarden_snapshot_refusals_total") == 1
    assert third.value("patchwarden_snapshots_accepted_total") == 2
    assert healthy(base)  # the last good revision is still in force
    assert_fleet_metrics(third, state)

    # The sample dashboard asks only for what this endpoint serves.
    assert_dashboard_queries_exist(third)


def test_every_labelled_counter_is_served_at_zero_before_its_first_event(tmp_path: Path) -> None:
    """increase() sees a counter's first increment only if the series was there, at 0, before
    it: a fleet with no instances yet (no job, no install, no reboot) already serves them."""
    source = tmp_path / "source"
    source.mkdir()
    port, log = free_port(), tmp_path / "run.log"
    argv = ["run", "--source", str(source), "--state", str(tmp_path / "state.db")]
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, *argv, "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until("/healthz", lambda: healthy(base), timeout=60, detail=tail_of(log))
        metrics = scrape(base)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    for operation in ("Scan", "Install"):
        assert metrics.value("patchwarden_jobs_started_total", operation=operation) == 0
        assert metrics.value("patchwarden_job_duration_seconds_count", operation=operation) == 0
        for status in ("succeeded", "failed"):
            jobs = metrics.value("patchwarden_jobs_total", operation=operation, status=status)
            assert jobs == 0
    assert metrics.by("patchwarden_reboots_total", "performed") == {"true": 0, "false": 0}
    assert metrics.value("patchwarden_patches_installed_total") == 0
    assert metrics.by("patchwarden_missing_patches", "severity") == dict.fromkeys(LEVELS, 0.0)


def test_the_instance_gauge_counts_the_instances_in_force_scanned_or_not(tmp_path: Path) -> None:
    """After a pass the fleet is the snapshot's instances: web-1 by its scan, web-2 (no scan
    yet: a Node whose scan Job has not reported) NOT_SCANNED in the group its labels select;
    old-1, deleted from the configuration, is no longer counted though its scan stays stored."""
    snapshot = build_snapshot(
        [
            ("group.yaml", BASELINE_YAML.encode()),
            ("web-1.yaml", local_instance_yaml("web-1", tmp_path).encode()),
            ("web-2.yaml", local_instance_yaml("web-2", tmp_path).encode()),
        ]
    )
    with StateStore(tmp_path / "state.db") as store:
        record_scans(store, {"web-1": (GROUP, 0), "old-1": (GROUP, 0)})
        metrics = LoopMetrics(store)
        metrics.refresh()  # before a first pass: what the store holds
        assert parsed(metrics.render().decode()).by("patchwarden_instances", "status") == {
            "COMPLIANT": 2.0,
            "NON_COMPLIANT": 0.0,
            "NOT_SCANNED": 0.0,
        }
        metrics.refresh(snapshot)
        after = parsed(metrics.render().decode())
    assert after.by("patchwarden_instances", "status") == {
        "COMPLIANT": 1.0,
        "NON_COMPLIANT": 0.0,
        "NOT_SCANNED": 1.0,
    }
    assert {labels["group"] for labels, _ in after.samples["patchwarden_instances"]} == {GROUP}


# --- the Grafana dashboard ---------------------------------------------------------------------

_NAME = re.compile(r"\b(patchwarden_[a-zA-Z0-9_:]*)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])
    return [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]


def exposed_names(metrics: Scrape) -> set[str]:
    """Every sample name /metrics can serve: the samples seen and each family's series names."""
    names = set(metrics.samples)
    for family, kind in metrics.families.items():
        names |= {family + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    return names


def assert_dashboard_queries_exist(metrics: Scrape) -> None:
    exposed = exposed_names(metrics)
    queries = dashboard_queries()
    used = {name for expr in queries for name in _NAME.findall(expr)}
    assert used, "the dashboard queries no patchwarden metric"
    assert used <= exposed, f"not served by /metrics: {sorted(used - exposed)}"


def test_the_dashboard_is_an_importable_grafana_dashboard_over_a_prometheus_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard["templating"]["list"]
    datasource = [v for v in variables if v["type"] == "datasource"]
    assert [v["query"] for v in datasource] == ["prometheus"]
    name = datasource[0]["name"]
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == f"${{{name}}}", panel["title"]
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    queries = " ".join(dashboard_queries())
    for metric in (
        "patchwarden_instances",
        "patchwarden_missing_patches",
        "patchwarden_jobs_total",
        "patchwarden_job_duration_seconds_bucket",
        "patchwarden_reconcile_duration_seconds_bucket",
        "patchwarden_last_successful_reconcile_timestamp_seconds",
        "patchwarden_snapshot_refusals_total",
    ):
        assert metric in queries, metric
    # Every query names only metrics a (fresh) LoopMetrics registers.
    fresh = Scrape({}, {})
    for family in text_string_to_metric_families(LoopMetrics().render().decode()):
        fresh.families[family.name] = family.type
    used = {name for expr in dashboard_queries() for name in _NAME.findall(expr)}
    assert used <= exposed_names(fresh), sorted(used - exposed_names(fresh))
