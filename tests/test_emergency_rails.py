"""Emergency CVE runs and the rails that were not asked yet (docs/guardrails.md, "Emergency CVE
runs"): the gates guarding a target are read again before its reboot, as for window tasks and
rollout stages; a target in a halted rollout waits until it is resumed, unless the run was asked
with ``--override-halt REASON`` (audited). The loop runs in-process on a real store, with the
scripted SSH machine of tests/test_reboots.py (as a RHEL one whose update fixes the CVE) and a
real Alertmanager (the request through patchctl: tests/test_emergency.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from reconciler.rollout import freeze
from reconciler.state import StateStore
from tests.fleet import GROUP, window_yaml
from tests.promlab import Alertmanager
from tests.test_emergency import CVE, HALT, request_emergency
from tests.test_gates import paged_during_install
from tests.test_reboots import IN_WINDOW, Fleet, Machine, ssh_instance


def rhel_machine() -> Machine:
    """test_reboots' machine as a RHEL one: em-lib's update fixes CVE and asks for a reboot."""
    notice = {"security": True, "classification": "Security", "severity": "Critical"}
    return Machine(
        package="em-lib",
        operating_system="REDHAT_ENTERPRISE_LINUX",
        notice={**notice, "cves": [CVE]},
    )


def gate(alertmanager: Alertmanager) -> str:
    return (
        "      gates:\n        - name: quiet\n"
        f"          alertmanager: {{url: '{alertmanager.url}', matchers: ['severity=\"page\"']}}\n"
    )


def test_a_gate_that_closes_during_an_emergency_install_leaves_the_reboot_pending(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """The window's Install task's gate guards the emergency run's install (no window needs to
    be open) and, read again right before the reboot, its reboot too."""
    machine = rhel_machine()
    # A window on 1 January only: the emergency run needs none, its task's gate still guards.
    window = window_yaml("new-year", "cron(0 0 1 1 ? *)", task_fields=gate(alertmanager))
    fleet = Fleet(tmp_path, {"web-1": machine}, window, ssh_instance("web-1"))
    paged_during_install(machine, alertmanager)
    with StateStore(tmp_path / "state.db") as store:
        loop = fleet.loop(store)
        loop.reconcile()  # the scan: no window is open
        assert machine.installs == []
        request_emergency(store, fleet.config, now=fleet.clock.now)
        fleet.clock.advance_to(IN_WINDOW + timedelta(minutes=1))
        loop.reconcile()
        job = next(j for j in store.jobs(instance="web-1") if j.operation == "Install")
    assert machine.installs == [("em-lib=1.0-2",)] and machine.reboots == []
    reboot = job.result["install"]["reboot"]
    assert (reboot["required"], reboot["performed"]) == (True, False)
    assert reboot["reason"] == (
        "reboot needed (em-lib); gate quiet of task install-security of new-year blocks: "
        "1 alert(s) firing: LatencyHigh: left pending until the gate opens"
    )


ROLLOUT = f"""\
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata: {{name: rings}}
spec:
  stages:
    - {{name: dev, patchGroups: [{GROUP}]}}
"""


def halted_fleet(tmp_path: Path, store: StateStore, machine: Machine) -> Fleet:
    """web-1 (``machine``), scanned, in the dev stage of rollout rings, which halted."""
    window = window_yaml("new-year", "cron(0 0 1 1 ? *)")
    fleet = Fleet(tmp_path, {"web-1": machine}, window, ssh_instance("web-1"), ROLLOUT)
    fleet.loop(store).reconcile()  # the scan: no window is open
    now = fleet.clock.now
    store.record_rollout_cycle("rings", freeze({"other": ["x=1"]}, now), now=now)
    store.record_rollout_halt("rings", HALT, now=now)
    return fleet


def test_an_emergency_run_waits_for_a_halted_rollout_until_it_is_resumed(tmp_path: Path) -> None:
    machine = rhel_machine()
    with StateStore(tmp_path / "state.db") as store:
        fleet = halted_fleet(tmp_path, store, machine)
        opening = request_emergency(store, fleet.config, now=fleet.clock.now)
        loop = fleet.loop(store)
        loop.reconcile()
        plan = loop.plan()
        assert plan is not None and machine.installs == []
        (wait,) = [w for w in plan.waits if w.instance == "web-1"]
        assert wait.reason == (
            f"emergency {opening.id}: rollout rings is halted ({HALT}): waits until it is "
            "resumed; ask again with --override-halt REASON to patch its machines anyway"
        )
        store.record_rollout_resume("rings", now=fleet.clock.now)
        loop.reconcile()
    assert machine.installs == [("em-lib=1.0-2",)]


def test_an_emergency_run_with_the_halt_overridden_installs_in_the_halted_rollout(
    tmp_path: Path,
) -> None:
    machine = rhel_machine()
    with StateStore(tmp_path / "state.db") as store:
        fleet = halted_fleet(tmp_path, store, machine)
        now = fleet.clock.now
        request_emergency(store, fleet.config, now=now, override_halt="INC-9: exploited")
        fleet.loop(store).reconcile()
        assert store.rollout_record("rings").halted == HALT  # the rollout itself stays halted
    assert machine.installs == [("em-lib=1.0-2",)]
