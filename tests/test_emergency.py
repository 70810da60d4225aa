"""Emergency CVE runs (issue 20 item 4): ``patchctl emergency --cve`` freezes the versions whose
update notices fix one CVE, and the loop installs only those, now, without waiting for
approveAfterDays, never a held or rejected package, through the rollout's rings in order, the
safety gates guarding each machine and the run's budgets; Debian and Ubuntu machines, whose
indexes carry no CVE ids, are refused.

Real dnf/rpm on directory roots (local transport), a real SQLite store and patchctl processes;
the loop runs in-process with an injected clock where approveAfterDays matters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.oneoff import OneOffOpening, OneOffStatus, OneOffTargets
from reconciler.api.resources import WindowTask
from reconciler.api.snapshot import build_snapshot
from reconciler.dispatch import transport_for
from reconciler.evaluation.emergency import affected, cve_fixes
from reconciler.evaluation.holds import Hold
from reconciler.loop import Reconciler
from reconciler.plan import emergency_fix
from reconciler.report.notify.events.shapes import to_event
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.rollout import freeze
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.factories import baseline, inventory
from tests.fleet import ManualClock, Spy, window_yaml
from tests.rpmlab import (
    Notice,
    Rpm,
    base_and_updates,
    build_rpms,
    build_suse_repos,
    make_suse_root,
    rpm_q,
    seed_rpm_root,
)

CVE = "CVE-2026-1111"
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
OLD = [Rpm("em-lib", "1.0"), Rpm("em-net", "1.0"), Rpm("em-doc", "1.0")]
NEW = [Rpm("em-lib", "1.0", "2"), Rpm("em-net", "1.0", "2"), Rpm("em-doc", "1.0", "2")]
NOTICES = [
    # Issued the day before NOW: a baseline with approveAfterDays 7 approves neither yet.
    Notice("EM-2026-1", "security", (NEW[0],), "Critical", "2026-11-27 00:00:00", cves=(CVE,)),
    Notice(
        "EM-2026-2",
        "security",
        (NEW[1],),
        "Important",
        "2026-11-27 00:00:00",
        cves=("CVE-2026-2222",),
    ),
    Notice("EM-2026-3", "bugfix", (NEW[2],), issued="2026-11-27 00:00:00"),
]
BEFORE = {"em-lib": "1.0-1", "em-net": "1.0-1", "em-doc": "1.0-1"}
FIXED = {**BEFORE, "em-lib": "1.0-2"}

FLEET = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: rhel-security}
spec:
  operatingSystem: REDHAT_ENTERPRISE_LINUX
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: CLASSIFICATION, values: [Security]}]}
      approveAfterDays: 7
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: dev}
spec:
  selector: {matchLabels: {ring: dev}}
  baselines: {REDHAT_ENTERPRISE_LINUX: rhel-security}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: prod}
spec:
  selector: {matchLabels: {ring: prod}}
  baselines: {REDHAT_ENTERPRISE_LINUX: rhel-security}
---
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata: {name: rings}
spec:
  stages:
    - {name: dev, patchGroups: [dev], bakeTime: 2d}
    - {name: prod, patchGroups: [prod]}
"""

# A window on 1 January only, whose Install task's gate cannot be read (nothing listens on the
# discard port), so it blocks: the emergency run must respect it outside the window too.
GATED_WINDOW = "---\n" + window_yaml(
    "new-year",
    "cron(0 0 1 1 ? *)",
    group="prod",
    task_fields="      gates:\n"
    "        - {name: quiet, prometheus: {url: 'http://127.0.0.1:9', query: up == 0}}\n",
)

needs_rpm = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dnf", "rpmbuild")), reason="dnf and rpmbuild are needed"
)


# --- which versions: pure, on inventories ------------------------------------------------------


def _rhel(*updates: dict[str, Any], os: str = "REDHAT_ENTERPRISE_LINUX") -> Any:
    installed = [{"name": u["name"], "version": "1.0-1"} for u in updates]
    return inventory(
        os,
        installed,
        [{"installedVersion": "1.0-1", "candidate": True, **u} for u in updates],
    )


def test_only_the_fixes_of_the_cve_neither_held_nor_rejected_are_pinned() -> None:
    machine = _rhel(
        {"name": "em-lib", "version": "1.0-2", "cves": [CVE]},
        {"name": "em-ssl", "version": "1.0-3", "cves": [CVE]},
        {"name": "em-web", "version": "1.0-2", "cves": [CVE]},
        {"name": "em-net", "version": "1.0-2", "cves": ["CVE-2026-2222"]},
    )
    rejecting = baseline(
        "REDHAT_ENTERPRISE_LINUX",
        {
            "patchFilterGroup": {
                "patchFilters": [{"key": "CLASSIFICATION", "values": ["Security"]}]
            },
            "approveAfterDays": 7,
        },
        rejectedPatches=["em-web"],
    )
    fixes = cve_fixes(CVE, rejecting, machine, [Hold("em-ssl", "patch group 'prod'")])
    assert fixes.pins == ("em-lib=1.0-2",)
    assert fixes.refused() == "held: em-ssl; rejected by the baseline: em-web"


def test_debian_and_unscanned_machines_are_refused_with_what_to_do() -> None:
    machines = "---\n".join(
        f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
        f"metadata: {{name: {name}}}\nspec: {{connection: {{type: local}}}}\n"
        for name in ("deb-1", "rhel-1", "new-1")
    )
    snapshot = build_snapshot([("fleet.yaml", machines.encode())])
    debian = inventory("DEBIAN")
    rhel = _rhel({"name": "em-lib", "version": "1.0-2", "cves": [CVE]})
    with pytest.raises(ValueError, match=r"deb-1: DEBIAN keeps no CVE ids offline .*patch-now"):
        affected(CVE, snapshot, ["deb-1", "rhel-1"], {"deb-1": debian, "rhel-1": rhel})
    with pytest.raises(ValueError, match=r"new-1 has no scan .* --operation Scan"):
        affected(CVE, snapshot, ["new-1"], {"new-1": None})
    with pytest.raises(ValueError, match="no selected machine's latest scan offers a fix"):
        affected("CVE-2026-9999", snapshot, ["rhel-1"], {"rhel-1": rhel})


# --- on real dnf roots ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("emrepos")
    built = build_rpms(work / "build", [*OLD, *NEW])
    return base_and_updates(work, [built[r] for r in OLD], [built[r] for r in NEW], NOTICES)


def _fleet(tmp_path: Path, repos: dict[str, str], rings: dict[str, str], extra: str = "") -> Path:
    config = tmp_path / "config"
    config.mkdir()
    instances = []
    for name, ring in rings.items():
        root = seed_rpm_root(
            tmp_path / name, "rhel9", repos, [r.name for r in OLD], seed_release="rhel9"
        )
        instances.append(
            f"---\napiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
            f"metadata: {{name: {name}, labels: {{ring: {ring}}}}}\n"
            f"spec: {{connection: {{type: local, root: {root}}}}}\n"
        )
    (config / "fleet.yaml").write_text(FLEET + extra + "".join(instances))
    return config


def _versions(root: Path) -> dict[str, str]:
    return {name: evr for name, evr in rpm_q(root).items() if name.startswith("em-")}


def _loop(config: Path, store: StateStore, clock: ManualClock, spy: Spy) -> Reconciler:
    return Reconciler(DirectorySource(config), store, spy, clock=clock)


def request_emergency(
    store: StateStore,
    config: Path,
    concurrency: str = "3",
    cve: str = CVE,
    errors: str = "1",
    now: datetime = NOW,
    override_halt: str | None = None,
) -> OneOffOpening:
    """What ``patchctl emergency --cve CVE`` records, at ``now`` (the injected NOW), with
    ``--override-halt override_halt`` when given."""
    snapshot = DirectorySource(config).snapshot()[1]
    latest = store.latest_scans()
    scans = {
        name: _inventory(latest[name].inventory) if name in latest else None
        for name in sorted(snapshot.instances)
    }
    fix, targets = emergency_fix(cve, snapshot, sorted(snapshot.instances), scans, now, "INC-7")
    opening = OneOffOpening(
        id="em-test",
        targets=OneOffTargets(instances=list(targets)),
        task=WindowTask.model_validate(
            {
                "name": "patch-now",
                "operation": "Install",
                "maxConcurrency": concurrency,
                "maxErrors": errors,
            }
        ),
        requested_by="alice",
        os_user="alice",
        created_at=now,
        expires_at=now + timedelta(minutes=60),
        emergency=fix,
        override_halt=override_halt,
    )
    store.record_one_off(opening, now=now)
    return opening


def _inventory(document: Any) -> Any:
    from reconciler.api.inventory import Inventory

    return Inventory.model_validate(document)


@needs_rpm
def test_the_fix_goes_out_now_ring_by_ring_and_nothing_else(
    tmp_path: Path, repos: dict[str, str]
) -> None:
    config = _fleet(tmp_path, repos, {"dev-1": "dev", "prod-1": "prod", "prod-2": "prod"})
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    clock = ManualClock(NOW - timedelta(minutes=5))
    with StateStore(tmp_path / "state.db") as store:
        loop = _loop(config, store, clock, spy)
        loop.reconcile()  # scans only: no window is open and approveAfterDays holds both back
        assert spy.installs == []
        opening = request_emergency(store, config)
        assert opening.emergency is not None
        assert opening.emergency.versions == {"rhel-security": ["em-lib:noarch=1.0-2"]}
        clock.advance_to(NOW + timedelta(minutes=1))
        loop.reconcile()
        (record,) = store.one_offs()
        jobs = store.one_off_jobs([opening.id])
    assert record.status is OneOffStatus.SUCCESS
    # The dev ring first; prod only once dev was done (no bake time in an emergency run).
    assert spy.installs[0] == "dev-1" and sorted(spy.installs[1:]) == ["prod-1", "prod-2"]
    installs = {j.instance: j for j in jobs if j.operation == "Install"}
    assert installs["prod-1"].created_at >= installs["dev-1"].created_at
    for name in ("dev-1", "prod-1", "prod-2"):
        assert _versions(tmp_path / name) == FIXED, name


@needs_rpm
def test_a_blocking_gate_keeps_its_machines_waiting_and_the_budget_caps_the_rest(
    tmp_path: Path, repos: dict[str, str]
) -> None:
    config = _fleet(
        tmp_path, repos, {"dev-1": "dev", "dev-2": "dev", "prod-1": "prod"}, GATED_WINDOW
    )
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    clock = ManualClock(NOW - timedelta(minutes=5))
    with StateStore(tmp_path / "state.db") as store:
        loop = _loop(config, store, clock, spy)
        loop.reconcile()
        opening = request_emergency(store, config, concurrency="1")
        clock.advance_to(NOW + timedelta(minutes=1))
        loop.reconcile()
        (record,) = store.one_offs()
        plan = loop.plan()
    assert spy.peak == 1 and sorted(spy.installs) == ["dev-1", "dev-2"]
    assert record.status is OneOffStatus.IN_PROGRESS
    assert plan is not None
    (wait,) = [w for w in plan.waits if w.instance == "prod-1"]
    assert wait.reason.startswith(
        f"emergency {opening.id}: gate quiet of task install-security of new-year blocks: "
        "cannot be read"
    )
    assert _versions(tmp_path / "prod-1") == BEFORE
    assert _versions(tmp_path / "dev-1") == FIXED


# The same baseline, groups and rings for SLES machines.
SUSE_FLEET = FLEET.replace("REDHAT_ENTERPRISE_LINUX", "SUSE").replace("rhel-security", "suse")

needs_zypper = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("zypper", "rpmbuild")), reason="zypper, rpmbuild needed"
)


@pytest.fixture(scope="module")
def suse_repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_suse_repos(tmp_path_factory.mktemp("emsuse"))


def _suse_fleet(tmp_path: Path, repos: Path, rings: dict[str, str], installed: list[str]) -> Path:
    config = tmp_path / "config"
    config.mkdir()
    machines = "".join(
        f"---\napiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
        f"metadata: {{name: {name}, labels: {{ring: {ring}}}}}\nspec: {{connection: "
        f"{{type: local, root: {make_suse_root(tmp_path / name, repos, installed, with_shell=True)}}}}}\n"
        for name, ring in rings.items()
    )
    (config / "fleet.yaml").write_text(SUSE_FLEET + machines)
    return config


def _run(config: Path, tmp_path: Path, cve: str, errors: str = "1") -> tuple[Any, Spy]:
    """Scan, request an emergency run of ``cve`` at NOW, run it; its record and the spy."""
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    clock = ManualClock(NOW - timedelta(minutes=5))
    with StateStore(tmp_path / "state.db") as store:
        loop = _loop(config, store, clock, spy)
        loop.reconcile()  # no window: the security patches stay missing
        opening = request_emergency(store, config, cve=cve, errors=errors)
        clock.advance_to(NOW + timedelta(minutes=1))
        loop.reconcile()
        (record,) = store.one_offs()
    assert record.opening == opening
    return record, spy


@needs_zypper
def test_a_suse_machine_installs_only_the_patch_that_fixes_the_cve(
    tmp_path: Path, suse_repos: Path
) -> None:
    """SUSE's patches name their CVEs as issues: CVE-2024-1002 is patch 2's, demo-net only."""
    old = ["demo-lib-1.0-1", "demo-net-1.0-1", "demo-web-1.0-1"]
    config = _suse_fleet(tmp_path, suse_repos, {"sles-1": "dev"}, old)
    record, _ = _run(config, tmp_path, "CVE-2024-1002")
    assert record.opening.emergency.versions == {"suse": ["demo-net:noarch=1.0-2"]}
    assert record.status is OneOffStatus.SUCCESS
    assert rpm_q(tmp_path / "sles-1", "demo-lib", "demo-net", "demo-web") == {
        "demo-lib": "1.0-1",
        "demo-net": "1.0-2",
        "demo-web": "1.0-1",
    }


@needs_zypper
def test_a_failure_in_an_earlier_ring_stops_the_later_rings(
    tmp_path: Path, suse_repos: Path
) -> None:
    """demo-bad's %post fails: dev-1's install fails, prod-1 never installs (maxErrors allows
    more failures: the ring order, not the budget, stops it) and the run ends FAILED."""
    config = _suse_fleet(
        tmp_path, suse_repos, {"dev-1": "dev", "prod-1": "prod"}, ["demo-bad-1.0-1"]
    )
    record, spy = _run(config, tmp_path, "CVE-2024-1008", errors="5")
    assert record.status is OneOffStatus.FAILED
    assert spy.installs == ["dev-1"]
    assert rpm_q(tmp_path / "prod-1", "demo-bad") == {"demo-bad": "1.0-1"}


def test_emergency_occurrences_are_events_without_the_whole_document() -> None:
    occurrence = Occurrence(
        Kind.EMERGENCY_REQUESTED,
        NOW,
        "main@sha1:abc",
        author="alice",
        detail={"id": "em-1", "cve": CVE, "instances": ["dev-1"], "document": {"id": "em-1"}},
    )
    event = to_event(occurrence)
    assert event is not None
    assert (event.type, event.detail_type, event.subject) == (
        "io.patchwarden.emergency.requested",
        "Emergency CVE Run State-change Notification",
        "em-1",
    )
    assert event.detail["state"] == "requested" and "document" not in event.detail


# --- through patchctl ----------------------------------------------------------------------------


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=600
    )


@needs_rpm
def test_patchctl_records_audits_runs_and_lists_an_emergency_run(
    tmp_path: Path, repos: dict[str, str]
) -> None:
    config = _fleet(tmp_path, repos, {"dev-1": "dev", "prod-1": "prod"})
    state, audit = str(tmp_path / "state.db"), tmp_path / "audit.jsonl"
    common = ("--source", str(config), "--state", state, "--audit-log", str(audit))
    refused = patchctl("emergency", "--cve", CVE, *common)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"patchctl: emergency {CVE}: instance dev-1 has no scan to read CVE ids from"
    )
    assert patchctl("reconcile", "--source", str(config), "--state", state).returncode == 0
    run = patchctl(
        "emergency", "--cve", CVE, "--group", "dev", "--reason", "INC-7", *common, "--wait",
        "-o", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    outcome = json.loads(run.stdout)
    assert outcome["status"] == "SUCCESS"
    assert outcome["emergency"]["cve"] == CVE and outcome["targets"]["instances"] == ["dev-1"]
    assert _versions(tmp_path / "dev-1") == FIXED and _versions(tmp_path / "prod-1") == BEFORE
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    kinds = [line["kind"] for line in lines]
    assert "emergency.requested" in kinds and "emergency.status" in kinds
    # Its targets, for the controller's Events on each ManagedInstance.
    statuses = [line["detail"] for line in lines if line["kind"] == "emergency.status"]
    assert all(detail["instances"] == ["dev-1"] for detail in statuses), statuses
    listed = patchctl("emergency", "list", "--state", state, "-o", "json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [outcome["id"]]
    extra = patchctl("emergency", "list", "--cve", CVE, "--state", state)
    assert extra.stderr == "patchctl: emergency list takes no --cve\n"
    asked = patchctl("emergency", "--cve", CVE, "--group", "prod", *common)
    assert asked.returncode == 0, asked.stderr
    assert f"Emergency {CVE}, snapshot sha256:" in asked.stdout
    assert "em-lib:noarch=1.0-2" in asked.stdout
    run_id = asked.stdout.split()[1].rstrip(":")
    cancelled = patchctl("emergency", "cancel", run_id, *common[2:], "-o", "json")
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED", cancelled.stderr
    shown = patchctl("emergency", "status", run_id, "--state", state, "-o", "json")
    assert json.loads(shown.stdout)["status"] == "CANCELLED"
    assert _versions(tmp_path / "prod-1") == BEFORE


# A window over the prod ring naming a change calendar that is always closed (DEFAULT_CLOSED
# with no open period): a kill switch for prod only.
FROZEN_PROD = (
    "---\n"
    + window_yaml("new-year", "cron(0 0 1 1 ? *)", group="prod").replace(
        "\nspec:\n", "\nspec:\n  changeCalendars: [freeze]\n", 1
    )
    + "---\napiVersion: patchwarden.io/v1alpha1\nkind: ChangeCalendar\n"
    "metadata: {name: freeze}\nspec: {type: DEFAULT_CLOSED}\n"
)


def test_a_closed_change_calendar_refuses_an_emergency_run_unless_overridden_and_audited(
    tmp_path: Path, repos: dict[str, str]
) -> None:
    """Change calendars guard emergency runs as they guard patch-now (docs/guardrails.md): a
    closed one refuses the run with nothing recorded; --override-calendar REASON records it and
    audits the override, naming the calendar; a ring no calendar guards needs no override."""
    config = _fleet(tmp_path, repos, {"dev-1": "dev", "prod-1": "prod"}, FROZEN_PROD)
    state, audit = str(tmp_path / "state.db"), tmp_path / "audit.jsonl"
    common = ("--source", str(config), "--state", state, "--audit-log", str(audit))
    assert patchctl("reconcile", "--source", str(config), "--state", state).returncode == 0
    refused = patchctl("emergency", "--cve", CVE, "--group", "prod", *common)
    assert refused.returncode == 1
    assert refused.stderr.startswith("patchctl: emergency: change calendar 'freeze' is closed"), (
        refused.stderr
    )
    assert refused.stderr.rstrip().endswith(
        "give --override-calendar REASON to patch anyway; nothing recorded"
    )
    assert "em-" not in patchctl("emergency", "list", "--state", state).stdout
    needless = patchctl("emergency", "--cve", CVE, "--group", "dev", "--override-calendar", "x",
                        *common)  # fmt: skip
    assert needless.returncode == 1 and "no change calendar guarding" in needless.stderr
    overridden = patchctl(
        "emergency", "--cve", CVE, "--group", "prod", "--override-calendar", "CAB-1234 exploited",
        *common,
    )  # fmt: skip
    assert overridden.returncode == 0, overridden.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    [override] = [line for line in lines if line["kind"] == "calendar.overridden"]
    assert override["detail"]["run"] == "emergency"
    assert override["detail"]["reason"] == "CAB-1234 exploited"
    assert override["detail"]["instances"] == ["prod-1"]
    assert override["detail"]["calendars"][0].startswith("change calendar 'freeze' is closed")
    assert [line["kind"] for line in lines].count("emergency.requested") == 1


HALT = "halted: 1 of 1 dev machines failed health checks, limit 0%"


@needs_rpm
def test_patchctl_refuses_a_halted_rollouts_machines_unless_the_halt_is_overridden_and_audited(
    tmp_path: Path, repos: dict[str, str]
) -> None:
    """As --override-calendar: refused with nothing recorded, naming the rollout, its halt and
    the targets in it; an override that overrides nothing is refused; one given is kept with
    the run and audited (an event), and the rollout stays halted."""
    config = _fleet(tmp_path, repos, {"dev-1": "dev", "prod-1": "prod"})
    state, audit = str(tmp_path / "state.db"), tmp_path / "audit.jsonl"
    common = ("--cve", CVE, "--source", str(config), "--state", state, "--audit-log", str(audit))
    assert patchctl("reconcile", "--source", str(config), "--state", state).returncode == 0
    needless = patchctl("emergency", "--group", "dev", "--override-halt", "x", *common)
    assert needless.stderr == (
        "patchctl: emergency: --override-halt: no rollout of the targets is halted; nothing "
        "recorded\n"
    )
    with StateStore(Path(state)) as store:
        store.record_rollout_cycle("rings", freeze({"other": ["x=1"]}, NOW), now=NOW)
        store.record_rollout_halt("rings", HALT, now=NOW)
    refused = patchctl("emergency", *common)
    assert (refused.returncode, refused.stderr) == (
        1,
        f"patchctl: emergency: rollout rings is halted ({HALT}): dev-1, prod-1; give "
        "--override-halt REASON to patch anyway; nothing recorded\n",
    )
    assert "em-" not in patchctl("emergency", "list", "--state", state).stdout
    asked = patchctl("emergency", *common, "--override-halt", "INC-9: exploited", "-o", "json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["overrideHalt"] == "INC-9: exploited"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    [override] = [line for line in lines if line["kind"] == "rollout.halt.overridden"]
    assert override["detail"] == {
        "id": json.loads(asked.stdout)["id"],
        "run": "emergency",
        "instances": ["dev-1", "prod-1"],
        "osUser": override["detail"]["osUser"],
        "rollouts": [f"rollout rings is halted ({HALT}): dev-1, prod-1"],
        "reason": "INC-9: exploited",
    }
