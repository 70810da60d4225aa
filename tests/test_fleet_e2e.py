"""End to end on the multi-host test fleet (tests/netfleet.py, docs/test-fleet.md): ten machines,
each with its own address, sshd and Debian root, listed by hand as ManagedInstances (root logins
over SSH) in a real Git repository; one ``patchctl reconcile`` scans them, installs the approved
updates inside the open window and converges them (issue 14 item 6).

What a user would notice: dpkg on each machine has installed exactly the approved updates, once;
the report and the store say every machine is COMPLIANT under the commit; a second run does
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.state import StateStore
from tests.fleet import BASELINE, BASELINE_YAML, documents, dpkg_installs, open_window_yaml
from tests.git_servers import Upstream
from tests.netfleet import FLEET_SKIP, Fleet
from tests.test_loop_e2e import file_url, reconcile_cli, revision_of

pytestmark = pytest.mark.skipif(bool(FLEET_SKIP), reason=FLEET_SKIP or "-")

MACHINES = 10
# The fleet's machines start with lib 1.0-1, tool 2.0-1 and other 1.0-1: lib and tool have
# security updates, other only a non-security one, which the baseline does not approve.
AFTER = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1", "pwtest-other": "1.0-1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("e2e-fleet"), MACHINES) as machines:
        yield machines


def test_one_reconcile_scans_installs_and_converges_ten_machines_over_ssh(
    fleet: Fleet, tmp_path: Path
) -> None:
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    upstream.write("fleet.yaml", documents(BASELINE_YAML, open_window_yaml(max_concurrency="5")))
    upstream.write("instances.yaml", documents(*(fleet.instance_yaml(m) for m in fleet.machines)))
    sha = upstream.commit("ten machines, root over SSH")
    state = tmp_path / "state" / "state.db"
    ssh_dir = ("--ssh-dir", str(fleet.directory))

    report = reconcile_cli(file_url(upstream), state, *ssh_dir)

    names = [m.name for m in fleet.machines]
    assert report["revision"] == revision_of(sha) and report["refused"] == []
    assert report["jobs"] == {"Scan succeeded": MACHINES, "Install succeeded": MACHINES}
    assert report["converged"] is True
    assert {row["instance"]: row["complianceStatus"] for row in report["instances"]} == {
        name: "COMPLIANT" for name in names
    }
    for machine in fleet.machines:
        assert AFTER.items() <= machine.versions().items(), machine.name
        installs = dpkg_installs(machine.root)
        assert installs[("pwtest-lib", "1.0-2")] == installs[("pwtest-tool", "2.1-1")] == 1
        assert ("pwtest-other", "1.1-1") not in installs
    with StateStore(state) as store:
        latest = store.latest_scans()
        assert sorted(latest) == names
        for name, record in latest.items():
            assert record.evaluation["summary"]["complianceStatus"] == "COMPLIANT", name
            assert (record.revision, record.baseline) == (revision_of(sha), BASELINE), name
            assert record.inventory["facts"]["hostname"] == name  # each machine answered itself

    again = reconcile_cli(file_url(upstream), state, *ssh_dir)
    assert again["jobs"] == {} and again["converged"] is True
    for machine in fleet.machines:
        assert dpkg_installs(machine.root)[("pwtest-lib", "1.0-2")] == 1
