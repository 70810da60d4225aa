"""Emergency CVE runs and the rails that were not asked yet (docs/guardrails.md, "Emergency CVE
runs"): the gates guarding a target are read again before its reboot, as for window tasks and
rollout stages. The loop runs in-process on a real store, with the scripted SSH machine of
tests/test_reboots.py (as a RHEL one whose update fixes the CVE) and a real Alertmanager."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from reconciler.state import StateStore
from tests.fleet import window_yaml
from tests.promlab import Alertmanager
from tests.test_emergency import CVE, request_emergency
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
