"""Awaited reboots on real machines (issue 14 item 3, docs/reboots.md): the multi-host test fleet
(tests/netfleet.py), each machine with its own sshd, Debian root and boot id, whose reboot drops
every connection and comes back with a new boot id. A security update's postinst asks for a
reboot, as a kernel's does; the loop installs it over SSH, reboots the machine, keeps the job (and
its maxConcurrency slot) while it is down, sees the new boot id, rescans, and records.

Machines are held down while the test looks (Machine.held_down), so nothing depends on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import JobStatus
from reconciler.dispatch import SshPool, transport_for
from reconciler.loop import Reconciler, clock_from
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Pkg
from tests.factories import NOW
from tests.fleet import BASELINE_YAML, at_now, documents, dpkg_installs, open_window_yaml
from tests.git_servers import free_port
from tests.netfleet import FLEET_SKIP, INSTALLED, REBOOTING, Fleet, Machine, default_repo
from tests.test_loop_e2e import reconcile_cli
from tests.waiting import tail_of, wait_until

pytestmark = pytest.mark.skipif(bool(FLEET_SKIP), reason=FLEET_SKIP or "-")

ROOT = Path(__file__).resolve().parent.parent
KERNEL = Pkg("pwtest-kernel", "1.0-1", section="kernel")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("rebootfleet")
    repo = default_repo(directory / "repo", extra_security=[REBOOTING])
    with Fleet(directory, 2, repo=repo, installed=[*INSTALLED, KERNEL]) as machines:
        yield machines


@pytest.fixture
def machines(fleet: Fleet) -> list[Machine]:
    """The fleet's machines as it started them (each test installs and reboots)."""
    fleet.reset()
    return fleet.machines


def _config(directory: Path, fleet: Fleet) -> Path:
    directory.mkdir()
    window = open_window_yaml(max_concurrency="1")
    instances = [fleet.instance_yaml(m) for m in fleet.machines]
    (directory / "fleet.yaml").write_text(documents(BASELINE_YAML, window, *instances))
    return directory


def _held(stack: contextlib.ExitStack, machines: list[Machine]) -> dict[str, contextlib.ExitStack]:
    holds = {}
    for machine in machines:
        holds[machine.name] = stack.enter_context(contextlib.ExitStack())
        holds[machine.name].enter_context(machine.held_down())
    return holds


def test_the_loop_reboots_each_machine_holds_its_slot_and_rescans_after_the_new_boot(
    tmp_path: Path, fleet: Fleet, machines: list[Machine]
) -> None:
    config = _config(tmp_path / "config", fleet)
    boot_ids = {m.name: m.boot_id for m in machines}
    seen: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack, SshPool() as pool:
        holds = _held(stack, machines)
        store = stack.enter_context(StateStore(tmp_path / "state.db"))

        def pause(seconds: float) -> bool:
            """Between two reads of the boot id: look at what the loop shows, then let the
            machine (down, held) come back."""
            [(job, phase)] = store.rebooting_jobs()
            machine = fleet[job.instance]
            if job.instance not in seen:
                wait_until(f"{machine.name} to go down", lambda: not machine.up)
                current = reconciler.plan()
                assert current is not None
                seen[job.instance] = {
                    "boot": phase.boot_id,
                    "waits": {w.instance: w.reason for w in current.waits},
                }
                booted = machine.boots
                holds[job.instance].close()
                machine.wait_boots(booted + 1)
            return False

        reconciler = Reconciler(
            DirectorySource(config),
            store,
            lambda i: transport_for(i.spec.connection, pool=pool, ssh_dir=fleet.directory),
            wait=pause,
            workers=1,  # the second machine's scan is done before the first one's install
            clock=clock_from(NOW),
        )
        summary = reconciler.reconcile()

        assert summary.jobs == {"Scan succeeded": 2, "Install succeeded": 2}, summary
        assert summary.converged
        installs = [j for j in store.jobs() if j.operation == "Install"]
        for job in installs:
            machine = fleet[job.instance]
            assert job.status == JobStatus.SUCCEEDED
            reboot = job.result["install"]["reboot"] if job.result else {}
            assert reboot["performed"] and reboot["awaited"], reboot
            assert reboot["bootIdBefore"] == boot_ids[machine.name] == seen[machine.name]["boot"]
            assert reboot["bootId"] == machine.boot_id != boot_ids[machine.name]
            assert reboot["reason"] == "reboot needed (pwtest-kernel)"
            assert machine.versions()["pwtest-kernel"] == "1.0-2"
            latest = store.latest_scan(machine.name)
            assert latest is not None and latest.job_id == job.id
            assert latest.compliance_status == "COMPLIANT"
            assert latest.count("installedPendingRebootCount") == 0
            assert latest.finished_at >= job.created_at
    # While the first machine was down its job held the one slot of maxConcurrency "1".
    first, second = (j.instance for j in installs)
    assert seen[first]["waits"][first] == "a job is running on it"
    assert "maxConcurrency 1 of install-security reached" in seen[first]["waits"][second]


def _patchctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", *args]


def kill_run_mid_reboot(
    fleet: Fleet, machines: list[Machine], common: list[str], state: Path, log: Path
) -> str:
    """Start ``patchctl run *common`` with ``machines`` held down, SIGKILL it once a machine is
    down for the reboot its job waits for, and release them; the instance of that job."""
    with contextlib.ExitStack() as stack:
        _held(stack, machines)
        with log.open("wb") as err:
            process = subprocess.Popen(
                _patchctl("run", *common, *at_now(), "--listen", f"127.0.0.1:{free_port()}"),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:

            def rebooting() -> list[str]:
                assert process.poll() is None, log.read_text()[-3000:]
                with StateStore(state) as store:
                    return [job.instance for job, _ in store.rebooting_jobs()]

            in_flight = wait_until(
                "a job waiting for its reboot", rebooting, timeout=120, detail=tail_of(log)
            )
            wait_until(f"{in_flight[0]} to go down", lambda: not fleet[in_flight[0]].up)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return in_flight[0]


def test_a_controller_killed_mid_reboot_is_restarted_and_finishes_without_a_second_install(
    tmp_path: Path, fleet: Fleet, machines: list[Machine]
) -> None:
    config = _config(tmp_path / "config", fleet)
    state = tmp_path / "state.db"
    common = ["--source", str(config), "--state", str(state), "--ssh-dir", str(fleet.directory)]
    first = machines[0]
    down = kill_run_mid_reboot(fleet, machines, common, state, tmp_path / "run.log")
    # Released: the machine boots again while no controller runs.
    rebooted = fleet[down]
    rebooted.wait_up()
    with StateStore(state) as store:
        [left] = [j for j in store.jobs() if j.operation == "Install"]
        assert (left.instance, left.status) == (rebooted.name, JobStatus.RUNNING)

    report = reconcile_cli(str(config), state, "--ssh-dir", str(fleet.directory))
    assert report["converged"], report
    with StateStore(state) as store:
        finished = store.job(left.id)
        assert finished is not None and finished.status == JobStatus.SUCCEEDED
        assert finished.result is not None
        reboot = finished.result["install"]["reboot"]
        assert reboot["awaited"] and reboot["bootId"] == rebooted.boot_id
        assert [j.status for j in store.jobs() if j.status == JobStatus.ABANDONED] == []
        latest = store.latest_scan(rebooted.name)
        assert latest is not None and latest.job_id == left.id
        assert latest.compliance_status == "COMPLIANT"
    # Each machine installed the reboot-asking update exactly once, as dpkg's own log says.
    for machine in machines:
        assert dpkg_installs(machine.root)[("pwtest-kernel", "1.0-2")] == 1, machine.name
        assert machine.versions()["pwtest-kernel"] == "1.0-2"
    assert first.boots >= 2
