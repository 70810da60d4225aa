"""Progressive rollouts driven by the loop (issue 15, docs/rollouts.md): three Debian roots (real
apt and dpkg), one per stage dev -> staging -> prod, each stage with its own daily window, and a
clock the test moves. What a user notices: what dpkg installed on each root and when, what the
plan says a waiting machine waits for, and the stages' verdicts on the pass summary."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.rollout import Verdict
from reconciler.sources.directory import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Pkg, Repo, make_root
from tests.conftest import INSTALLED, SECURITY, STABLE, needs_apt
from tests.fleet import API, BASELINE, ManualClock, documents, versions

pytestmark = needs_apt

STAGES = ("dev", "staging", "prod")
BEFORE = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
PATCHED = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1"}
UNPATCHED = {"pwtest-lib": "1.0-1", "pwtest-tool": "2.0-1"}
# Released mid-rollout: a security update of pwtest-other (stable has only 1.1-1).
LATE = Pkg("pwtest-other", "1.2-1")
DAY1 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
"""Before the windows (daily at 12:00 UTC for 4 h): scans only."""


def at(day: int, hour: int, minute: int = 30) -> datetime:
    return DAY1.replace(hour=hour, minute=minute) + timedelta(days=day - 1)


def fleet_yaml(roots: dict[str, Path], dev_task_fields: str = "") -> str:
    groups = [
        f"""\
{API}
kind: PatchGroup
metadata:
  name: {stage}
spec:
  selector:
    matchLabels: {{ring: {stage}}}
  baselines:
    DEBIAN: {BASELINE}
"""
        for stage in STAGES
    ]
    windows = [
        f"""\
{API}
kind: MaintenanceWindow
metadata:
  name: {stage}-noon
spec:
  schedule: cron(0 12 * * ? *)
  duration: 4
  cutoff: 1
  targets:
    patchGroups: [{stage}]
  tasks:
    - name: install
      operation: Install
      rebootOption: NoReboot
{dev_task_fields if stage == "dev" else ""}"""
        for stage in STAGES
    ]
    instances = [
        f"""\
{API}
kind: ManagedInstance
metadata:
  name: {stage}-1
  labels: {{ring: {stage}}}
spec:
  connection: {{type: local, root: {roots[stage]}}}
"""
        for stage in STAGES
    ]
    rollout = f"""\
{API}
kind: Rollout
metadata:
  name: web
spec:
  stages:
    - {{name: dev, patchGroups: [dev], bakeTime: 1d}}
    - {{name: staging, patchGroups: [staging], bakeTime: 1d}}
    - {{name: prod, patchGroups: [prod]}}
"""
    baseline = f"""\
{API}
kind: PatchBaseline
metadata:
  name: {BASELINE}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required, Important, Standard, Optional, Extra]
      complianceLevel: HIGH
"""
    return documents(baseline, *groups, *windows, *instances, rollout)


class Fleet:
    """The three roots, their repository, the config directory and the state file."""

    def __init__(self, tmp_path: Path, dev_task_fields: str = "") -> None:
        self.repo = Repo(tmp_path / "repo")
        self.repo.root.mkdir()
        self.repo.root.chmod(0o755)
        self.repo.add("stable", *STABLE, origin="Debian", label="Debian")
        self.repo.add("stable-security", *SECURITY, origin="Debian", label="Debian-Security")
        self.repo.publish()
        self.roots = {
            stage: make_root(
                tmp_path / stage, self.repo.uri, ["stable", "stable-security"], installed=BEFORE
            )
            for stage in STAGES
        }
        self.config = tmp_path / "config"
        self.config.mkdir()
        (self.config / "fleet.yaml").write_text(fleet_yaml(self.roots, dev_task_fields))
        self.state = tmp_path / "state.db"
        self.clock = ManualClock(DAY1)

    def loop(self) -> Reconciler:
        """A new loop on the same state file (a restart keeps nothing in memory)."""
        return Reconciler(
            DirectorySource(self.config),
            StateStore(self.state),
            lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
            clock=self.clock,
            wait=lambda seconds: None,
        )

    def release(self, pkg: Pkg) -> None:
        self.repo.add("stable-security", *SECURITY, pkg, origin="Debian", label="Debian-Security")
        self.repo.publish()

    def versions(self, stage: str) -> dict[str, str]:
        return versions(self.roots[stage])

    def patched(self) -> dict[str, bool]:
        """Each stage's root: has dpkg installed the security updates?"""
        return {s: self.versions(s)["pwtest-lib"] == PATCHED["pwtest-lib"] for s in STAGES}


def run(reconciler: Reconciler, clock: ManualClock, moment: datetime) -> dict[str, Verdict]:
    clock.advance_to(moment)
    summary = reconciler.reconcile()
    (decision,) = summary.rollouts
    return {stage.stage: stage.verdict for stage in decision.stages}


def wait_reason(reconciler: Reconciler, instance: str) -> str:
    plan = reconciler.plan()
    assert plan is not None
    return next(w.reason for w in plan.waits if w.instance == instance)


def test_stages_promote_only_after_each_bake_and_a_restart_continues_the_bake(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    assert set(run(reconciler, fleet.clock, DAY1).values()) == {Verdict.WAITING}
    assert fleet.patched() == dict.fromkeys(STAGES, False)  # scanned, nothing installed

    verdicts = run(reconciler, fleet.clock, at(1, 12))
    assert verdicts["dev"] is Verdict.INSTALL  # frozen at the pass's start, then installed
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}
    assert {k: fleet.versions("dev")[k] for k in PATCHED} == PATCHED

    # A restart in the middle of dev's bake: a new loop on the same state file.
    reconciler = fleet.loop()
    verdicts = run(reconciler, fleet.clock, at(2, 12, 10))
    assert verdicts["staging"] is Verdict.WAITING
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}
    assert wait_reason(reconciler, "staging-1") == (
        "rollout web: stage staging waits: stage dev baked 23 h of 24 h"
    )

    verdicts = run(reconciler, fleet.clock, at(2, 12, 30))
    assert verdicts == {"dev": Verdict.BAKED, "staging": Verdict.INSTALL, "prod": Verdict.WAITING}
    assert fleet.patched() == {"dev": True, "staging": True, "prod": False}

    run(reconciler, fleet.clock, at(3, 12, 29))
    assert fleet.patched()["prod"] is False
    run(reconciler, fleet.clock, at(3, 12, 31))
    assert fleet.patched() == dict.fromkeys(STAGES, True)
    assert {k: fleet.versions("prod")[k] for k in PATCHED} == PATCHED


def test_a_failing_health_check_in_dev_halts_and_later_stages_install_nothing(
    tmp_path: Path,
) -> None:
    failing = "      healthChecks: [{name: app, command: {argv: [/bin/false]}}]\n"
    fleet = Fleet(tmp_path, dev_task_fields=failing)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # dev installs; its health check fails
    for day in (1, 2, 3, 4):
        verdicts = run(reconciler, fleet.clock, at(day, 13))
        assert set(verdicts.values()) == {Verdict.HALTED}
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}
    assert wait_reason(reconciler, "prod-1") == (
        "rollout web: halted: 1 of 1 dev machines failed health checks, limit 0%"
    )


def test_a_version_released_mid_rollout_waits_for_the_next_cycle(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # frozen; dev installs
    fleet.release(LATE)
    run(reconciler, fleet.clock, at(2, 12))  # staging installs the snapshot only
    run(reconciler, fleet.clock, at(3, 12))  # prod likewise; the cycle is done after its bake
    for stage in STAGES:
        assert {k: fleet.versions(stage)[k] for k in PATCHED} == PATCHED, stage
        assert fleet.versions(stage)["pwtest-other"] == "1.0-1", stage
    run(reconciler, fleet.clock, at(4, 12))  # the next cycle freezes the late version: dev
    assert fleet.versions("dev")["pwtest-other"] == LATE.version
    assert fleet.versions("prod")["pwtest-other"] == "1.0-1"


def test_no_stage_installs_outside_its_own_window(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))
    run(reconciler, fleet.clock, at(2, 12))
    run(reconciler, fleet.clock, at(3, 18))  # prod's turn, but its window closed at 16:00
    assert fleet.patched()["prod"] is False
    assert fleet.patched()["staging"] is True


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rollout_status_and_plan_show_stages_and_the_snapshot(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))
    where = ["--source", str(fleet.config), "--state", str(fleet.state)]
    when = ["--now", at(2, 8, 0).isoformat()]  # staging's scan not stale yet

    shown = patchctl("rollout", "status", "web", *where, *when, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    (web,) = json.loads(shown.stdout)
    assert web["snapshot"].startswith("sha256:") and web["cycle"] == 1
    assert web["frozenAt"] == at(1, 12).isoformat()
    assert [(s["stage"], s["verdict"], s["reason"]) for s in web["stages"]] == [
        ("dev", "Baking", "stage dev baked 19 h of 24 h"),
        ("staging", "Waiting", "stage staging waits: stage dev baked 19 h of 24 h"),
        ("prod", "Waiting", "stage prod waits: stage dev baked 19 h of 24 h"),
    ]
    table = patchctl("rollout", "status", *where, *when)
    assert table.returncode == 0, table.stderr
    assert f"Rollout web: cycle 1, snapshot {web['snapshot']}" in table.stdout
    assert "Baking" in table.stdout

    planned = patchctl("plan", *where, *when, "-o", "json")
    assert planned.returncode == 0, planned.stderr
    waits = {w["instance"]: w for w in json.loads(planned.stdout)["waits"]}
    assert waits["staging-1"]["rollout"] == {
        "name": "web",
        "stage": "staging",
        "snapshot": web["snapshot"],
    }
    assert waits["staging-1"]["reason"] == (
        "rollout web: stage staging waits: stage dev baked 19 h of 24 h"
    )
    with StateStore(fleet.state) as store:
        scan = store.latest_scan("dev-1")
    assert scan is not None
    inventory = tmp_path / "dev-1.json"
    inventory.write_text(json.dumps(scan.inventory))
    explained = patchctl("explain", "dev-1", *where, "--inventory", str(inventory), "-o", "json")
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["rollout"] == {
        "name": "web",
        "stage": "dev",
        "snapshot": web["snapshot"],
    }
    table = patchctl("explain", "dev-1", *where, "--inventory", str(inventory))
    assert f"rollout:     web, stage dev, snapshot {web['snapshot']}" in table.stdout
    # plan and status record nothing: the store's rollout history is the loop's alone.
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}

    unknown = patchctl("rollout", "status", "db", *where, *when)
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines() == [
        "patchctl: no Rollout named 'db' in force (Rollouts: web)"
    ]
