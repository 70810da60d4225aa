"""The multi-host test fleet (tests/netfleet.py) does what docs/test-fleet.md says: machines with
their own address, sshd, root and dpkg database, an unprivileged login with a real sudoers rule, a
reboot that drops the connection and comes back with a new boot id, and the host left alone.

Everything is real: the machines' Debian root comes from mmdebstrap, their sshd and sudo are
Debian's, and the agent scans them over SSH as the controller would.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.api.resources import ManagedInstance, SshConnection
from reconciler.dispatch import AgentFailed, InstallRequest, SshPool, SshTransport
from reconciler.dispatch.agent_bundle import build_agent
from tests.netfleet import ADMIN, FLEET_SKIP, INSTALLED, Fleet, ansible_environment

pytestmark = pytest.mark.skipif(bool(FLEET_SKIP), reason=FLEET_SKIP or "-")
HOST_STATUS = Path("/var/lib/dpkg/status")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def host_dpkg() -> str:
    """The host's dpkg status before the module's fleet exists."""
    return _digest(HOST_STATUS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, host_dpkg: str) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("netfleet"), 3) as machines:
        yield machines


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent(tmp_path_factory.mktemp("agent") / "agent.pyz")


def transport(fleet: Fleet, name: str, pool: SshPool, agent: Path) -> SshTransport:
    machine = fleet[name]
    return SshTransport(
        machine.address,
        user="root",
        identity_file=str(fleet.key_file),
        known_hosts_file=str(fleet.known_hosts_file),
        connect_timeout=15.0,
        command_timeout=120.0,
        agent=agent,
        pool=pool,
    )


def test_admin_logs_in_and_sudo_works_without_a_password(fleet: Fleet) -> None:
    machine = fleet["m01"]
    assert machine.ssh("id -un", user=ADMIN).strip() == ADMIN
    assert machine.ssh("sudo -n id -u", user=ADMIN).strip() == "0"
    # The rule is a real sudoers rule: admin is not root without sudo, and root logs in too.
    assert machine.ssh("id -u", user=ADMIN).strip() != "0"
    assert machine.ssh("id -u").strip() == "0"


def test_each_machine_has_its_own_address_and_hostname(fleet: Fleet) -> None:
    for machine in fleet.machines:
        # sshd's view of the connection: "client port server port".
        name, connection = machine.ssh('hostname; echo "$SSH_CONNECTION"').splitlines()
        assert name == machine.name and connection.split()[2] == machine.address
        assert connection.split()[0] == fleet.gateway
    assert len({m.address for m in fleet.machines}) == 3
    # The machines' sshd is the root's own, not the host's: it runs chrooted in the machine.
    assert fleet["m02"].ssh("readlink /proc/1/root") == "/\n"


def test_a_machine_is_a_bastion_for_the_others(fleet: Fleet) -> None:
    """The machines share the bridge, so one can carry an SSH connection to another (what a
    connection's proxyJump does): here OpenSSH's client through m01 to m02, as admin both ways."""
    ssh = shlex.join(fleet.ssh_argv(ADMIN))
    jump = f"ProxyCommand={ssh} -W %h:%p {fleet['m01'].address}"
    done = subprocess.run(
        [*fleet.ssh_argv(ADMIN), "-o", jump, fleet["m02"].address, "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "m02\n"), done.stderr
    assert f"from {fleet['m01'].address}" in (fleet["m02"].directory / "sshd.log").read_text()


def test_each_machine_has_its_own_dpkg_database(fleet: Fleet) -> None:
    one, two = fleet["m01"], fleet["m02"]
    before = two.versions()
    assert {p.name: p.version for p in INSTALLED}.items() <= before.items()
    one.ssh("apt-get update -qq && apt-get install -y -qq pwtest-other=1.1-1 >/dev/null")
    assert one.versions()["pwtest-other"] == "1.1-1"
    assert two.versions() == before
    assert "pwtest-other\t1.1-1" in one.ssh("dpkg-query -W pwtest-other")


def test_the_agent_scans_a_machine_over_ssh(fleet: Fleet, agent: Path) -> None:
    with SshPool() as pool:
        inventory = transport(fleet, "m03", pool, agent).scan(instance_id="m03")
    installed = {p.name: p.version for p in inventory.installed}
    assert installed["pwtest-lib"] == "1.0-1" and "openssh-server" in installed
    assert inventory.facts.hostname == "m03" and inventory.facts.os_version == "12"
    updates = {u.name: u.version for u in inventory.updates}
    assert updates["pwtest-lib"] == "1.0-2" and updates["pwtest-tool"] == "2.1-1"


def test_a_reboot_drops_the_connection_and_comes_back_with_a_new_boot_id(
    fleet: Fleet, agent: Path
) -> None:
    machine = fleet["m03"]
    first = machine.ssh("cat /proc/sys/kernel/random/boot_id").strip()
    assert first == machine.boot_id
    boots = machine.boots
    with SshPool() as pool:
        remote = transport(fleet, "m03", pool, agent)
        remote.scan(refresh=False)  # the pool now holds a connection to the machine
        with machine.held_down():
            held = subprocess.Popen(
                [*fleet.ssh_argv(), machine.address, "touch /run/before-reboot; reboot"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert held.wait(timeout=60) == 255, "the session of `reboot` is cut off"
            assert not machine.up
            with pytest.raises(AgentFailed) as down:
                remote.scan(refresh=False)
            assert down.value.code == "SshUnreachable"
        machine.wait_boots(boots + 1)
        after = machine.ssh("cat /proc/sys/kernel/random/boot_id").strip()
        assert after == machine.boot_id and after != first
        # A fresh /run, as after a real boot; the pool reconnects by itself.
        assert machine.ssh("ls /run/before-reboot 2>/dev/null || echo gone").strip() == "gone"
        assert remote.scan(refresh=False).facts.hostname == "m03"


def test_the_agents_scheduled_reboot_happens_after_it_answered(fleet: Fleet, agent: Path) -> None:
    """The agent reboots with ``shutdown -r +1``: its result comes back first, then the machine
    goes down and returns."""
    machine = fleet["m02"]
    boots, first = machine.boots, machine.boot_id
    machine.ssh("/sbin/shutdown -r +1 'patchwarden: reboot after patching'")
    machine.wait_boots(boots + 1)
    assert machine.boot_id != first
    with pytest.raises(AssertionError, match="only reboots"):
        machine.ssh("shutdown -h now")


def test_an_install_over_ssh_changes_only_that_machine(fleet: Fleet, agent: Path) -> None:
    with SshPool() as pool:
        result = transport(fleet, "m01", pool, agent).install(
            InstallRequest(("pwtest-lib=1.0-2",), reboot_option="NoReboot")
        )
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    assert fleet["m01"].versions()["pwtest-lib"] == "1.0-2"
    assert fleet["m02"].versions()["pwtest-lib"] == "1.0-1"


def test_a_reset_machine_is_back_to_where_the_fleet_started(fleet: Fleet) -> None:
    machine = fleet["m03"]
    machine.ssh("apt-get update -qq && apt-get install -y -qq pwtest-other=1.1-1 >/dev/null")
    boots = machine.boots
    machine.reset()
    assert machine.boots == boots + 1 and machine.up
    assert machine.versions()["pwtest-other"] == "1.0-1"
    assert machine.ssh("dpkg-query -W -f '${Version}' pwtest-other") == "1.0-1"


def test_ansible_reaches_the_machines_through_the_inventory(fleet: Fleet, tmp_path: Path) -> None:
    path = fleet.ansible_inventory(
        tmp_path / "hosts.ini",
        {"web": fleet.machines[:2], "db": fleet.machines[2:]},
        user=ADMIN,
        become=True,
    )
    text = path.read_text()
    assert "[web]\nm01 ansible_host=" in text and "[db]\nm03 ansible_host=" in text
    ansible = Path(sys.executable).with_name("ansible")
    if not ansible.exists():
        pytest.skip("ansible-core is not installed (the ansible extra)")
    done = subprocess.run(
        [str(ansible), "web", "-i", str(path), "-m", "command", "-a", "id -u", "-o"],
        capture_output=True,
        text=True,
        env={**os.environ, **ansible_environment(tmp_path)},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = sorted(done.stdout.splitlines())
    assert [line.split(" |")[0] for line in lines] == ["m01", "m02"]
    assert all(line.endswith("(stdout) 0") for line in lines), lines  # admin became root


def test_a_machines_managed_instance_reaches_it_as_root_or_as_admin_with_sudo(
    fleet: Fleet,
) -> None:
    machine = fleet["m02"]
    as_root = ManagedInstance.model_validate(yaml.safe_load(fleet.instance_yaml(machine)))
    connection = as_root.spec.connection
    assert isinstance(connection, SshConnection)
    assert (connection.host, connection.user, connection.become) == (machine.address, "root", None)
    assert connection.known_hosts_file == str(fleet.known_hosts_file)
    text = fleet.instance_yaml(machine, user=ADMIN, become=True, labels={"tier": "web"})
    as_admin = ManagedInstance.model_validate(yaml.safe_load(text))
    assert as_admin.metadata.labels == {"tier": "web"}
    assert isinstance(as_admin.spec.connection, SshConnection)
    assert (as_admin.spec.connection.user, as_admin.spec.connection.become) == (ADMIN, "sudo")


def test_the_hosts_packages_are_untouched(fleet: Fleet, host_dpkg: str) -> None:
    fleet["m02"].ssh("apt-get update -qq && apt-get install -y -qq pwtest-tool=2.1-1 >/dev/null")
    assert fleet["m02"].versions()["pwtest-tool"] == "2.1-1"
    assert _digest(HOST_STATUS) == host_dpkg
    assert (
        "pwtest"
        not in subprocess.run(
            ["dpkg-query", "-W"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_closing_the_fleet_removes_its_namespaces_links_and_mounts(tmp_path: Path) -> None:
    with Fleet(tmp_path / "small", 1) as small:
        prefix, root = small.prefix, small["m01"].root
        assert small["m01"].up
    assert prefix not in _names()
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


def test_a_new_fleet_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    """A pytest killed with SIGKILL leaves its machines running; the next fleet removes them,
    their namespaces, links and mounts (and leaves live fleets alone: the module's keeps working)."""
    script = (
        "import sys; from pathlib import Path; from tests.netfleet import Fleet\n"
        f"fleet = Fleet(Path({str(tmp_path / 'killed')!r}), 1)\n"
        "print(fleet.prefix, fleet['m01'].root, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    prefix, root = child.stdout.readline().split()
    child.kill()
    child.wait()
    assert prefix in _names() and root in Path("/proc/self/mountinfo").read_text()

    with Fleet(tmp_path / "next", 1) as after:
        assert prefix not in _names() and after.prefix in _names()
        assert root not in Path("/proc/self/mountinfo").read_text()


def _names() -> str:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return netns + subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
