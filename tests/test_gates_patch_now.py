"""Patch now and safety gates (issue 20 item 1, docs/patch-now.md): ``--gates-from
WINDOW[/TASK]`` makes that window task's gates, as the revision in force has them at each plan,
guard the request's installs; a bad reference is refused naming it, and nothing is recorded."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from reconciler.api.enums import Operation
from reconciler.api.oneoff import OneOffTargets
from reconciler.loop.reboots import gate_refusal
from reconciler.plan import Action, GateReading, Observed, plan
from tests.git_servers import free_port
from tests.test_loop_e2e import patchctl
from tests.test_patch_now import one_off
from tests.test_plan import BASELINE, NOON, instances, reasons, scanned, snap, window

# test_plan's window, closed at NOON, its Install task gated, and a Scan task.
WINDOW = window(
    schedule="cron(0 3 * * ? *)", extra_tasks="    - {name: scan, operation: Scan}\n"
).replace(
    "priority: 2,",
    "priority: 2, gates: [{name: quiet, prometheus: {url: 'http://prometheus:9090', query: up}}],",
)


def test_a_gate_of_the_named_task_holds_the_requests_installs_not_its_scans() -> None:
    snapshot = snap(BASELINE, WINDOW, instances(2))
    opening = one_off(OneOffTargets(instances=["node-1", "node-2"]), NOON - timedelta(minutes=30))
    opening = opening.model_copy(update={"gates_from": "noon/install"})
    gate = snapshot.windows["noon"].spec.tasks[0].gates[0]
    # node-1 was scanned since the request (its install is next), node-2 before it (a rescan).
    scans = {
        "node-1": scanned(snapshot, age=timedelta(minutes=10)),
        "node-2": scanned(snapshot, age=timedelta(hours=1)),
    }
    blocked = {gate.key: GateReading(True, "the query returns 1 series: up{}")}
    result = plan(snapshot, "r1", Observed(scans, one_offs=[opening], readings=blocked), NOON)
    assert [(a.instance, a.operation) for a in result.actions] == [("node-2", "Scan")]
    assert reasons(result)["node-1"] == (
        f"patch now {opening.id}: gate quiet of task install of noon blocks: "
        "the query returns 1 series: up{}"
    )
    opened = {gate.key: GateReading(False, "the query returns nothing")}
    result = plan(snapshot, "r1", Observed(scans, one_offs=[opening], readings=opened), NOON)
    assert ("node-1", "Install") in [(a.instance, a.operation) for a in result.actions]
    # The task named is read at each plan: once it is gone, nothing says the gate is open.
    gone = snap(BASELINE, WINDOW.replace("name: install", "name: patch"), instances(2))
    result = plan(gone, "r1", Observed(scans, one_offs=[opening], readings=opened), NOON)
    assert reasons(result)["node-1"] == (
        f"patch now {opening.id}: --gates-from noon/install: window noon has no task "
        "'install'; patch, scan"
    )


def test_gates_from_is_checked_and_recorded(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text("\n---\n".join([BASELINE, WINDOW, instances(1)]))
    common = ("--group", "web", "--source", str(config), "--state", str(tmp_path / "s.db"))
    cases = {
        ("--gates-from", "noon"): "--gates-from noon: window noon has several tasks: name one "
        "(install, scan); nothing recorded",
        ("--gates-from", "noon/scan"): "--gates-from noon/scan: task scan of window noon has "
        "no gates; nothing recorded",
        ("--gates-from", "noon/install", "--operation", "Scan"): "--gates-from: a Scan changes "
        "nothing and takes no gates; nothing recorded",
    }
    for args, message in cases.items():
        run = patchctl("patch-now", *common, *args)
        assert (run.returncode, run.stderr.splitlines()[-1]) == (1, f"patchctl: {message}"), args
    recorded = patchctl("patch-now", *common, "--gates-from", "noon/install", "-o", "json")
    assert recorded.returncode == 0, recorded.stderr
    listed = patchctl("patch-now", "--list", "--state", str(tmp_path / "s.db"), "-o", "json")
    assert [entry["gatesFrom"] for entry in json.loads(listed.stdout)] == ["noon/install"]


def test_a_one_off_reboot_reads_the_gates_from_task_again() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    snapshot = snap(BASELINE, WINDOW.replace("http://prometheus:9090", url), instances(1))
    action = Action(
        Operation.INSTALL, "node-1", "k", "r", "debian-prod", "h", None, "patch-now", "pn-1"
    )
    assert gate_refusal(snapshot, action) == ""  # without --gates-from: no gates
    refused = gate_refusal(snapshot, action, "noon/install")
    assert refused.startswith("gate quiet of task install of noon blocks: cannot be read: ")
    assert gate_refusal(snapshot, action, "noon/gone") == (
        "--gates-from noon/gone: window noon has no task 'gone'; install, scan"
    )
