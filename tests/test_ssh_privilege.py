"""Privilege and reach over SSH (issue 14 item 2): ``become: sudo`` and ``becomeUser``, the Install
refused to a non-root login, ``proxyJump`` through a bastion, and ``<--ssh-dir>/config``.

Everything is real: OpenSSH's sshd with real unprivileged users and real sudoers rules, run by
the host's sudo, in a mount namespace where the lab's account files and sudoers.d are
bind-mounted over the host's (tests/sudolab.py; the host's are never changed); the bastion case
puts the machine in a network namespace that only the bastion reaches; the agent is the real
zipapp installing from a real apt repository into real directory roots (tests/aptlab.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.apt import Apt
from reconciler.api.resources import SshConnection
from reconciler.dispatch import AgentFailed, InstallRequest, SshPool, transport_for
from reconciler.dispatch.ssh import SshTransport
from reconciler.state import StateStore
from tests import test_dispatch_ssh
from tests.aptlab import Repo, dpkg_state, make_root
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import API, BASELINE_YAML, at_now, documents, open_window_yaml, versions
from tests.sshd import have_sshd
from tests.sudolab import (
    LOGIN,
    NORULE,
    OTHER,
    PASSWORD,
    TTY,
    USERS,
    Bastion,
    SudoLab,
    start_bastion,
    start_lab,
)

pytestmark = [
    needs_apt,
    pytest.mark.skipif(
        not have_sshd() or shutil.which("sudo") is None or shutil.which("unshare") is None,
        reason="needs root, sshd, sudo, unshare and python3",
    ),
]
PIN = "pwtest-lib=1.0-2"
# The SSH transport tests' fixtures: the agent zipapp built once per module, a pool per test.
agent, pool = test_dispatch_ssh.agent, test_dispatch_ssh.pool


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SudoLab]:
    with start_lab(tmp_path_factory.mktemp("sudolab")) as server:
        yield server


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SudoLab, Bastion]]:
    """A machine in a network of its own, and the bastion that alone reaches it."""
    with start_lab(tmp_path_factory.mktemp("hidden"), private_network=True) as server:
        bastion = start_bastion(server)
        yield server, bastion
        bastion.stop()


@pytest.fixture
def machine_root(lab: SudoLab, apt_repo: Repo, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Debian root owned by root, with refreshed lists: ``/srv/NAME`` on the machine."""
    name = request.node.name.replace("[", "-").replace("]", "")
    path = make_root(
        lab.srv / name, apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED
    )
    Apt(str(path)).refresh()
    yield f"/srv/{name}"
    shutil.rmtree(path)


def connect(
    lab: SudoLab,
    pool: SshPool,
    agent: Path,
    *,
    ssh_dir: Path | None = None,
    name: str = "web-1",
    **fields: Any,
) -> SshTransport:
    """The transport the loop would build for a ManagedInstance with ``fields`` (None: the
    field is not written)."""
    spec: dict[str, Any] = {
        "type": "ssh",
        "host": "127.0.0.1",
        "port": lab.sshd.port,
        "identityFile": str(lab.sshd.client_key_file),
        "knownHostsFile": str(lab.sshd.known_hosts_file),
        **fields,
    }
    transport = transport_for(
        SshConnection.model_validate({k: v for k, v in spec.items() if v is not None}),
        pool=pool,
        agent=agent,
        connect_timeout=10.0,
        command_timeout=120.0,
        ssh_dir=ssh_dir or lab.sshd.directory,
        name=name,
        trust_root_scripts=True,  # the lab roots have no /bin/sh (conftest.py)
    )
    assert isinstance(transport, SshTransport)
    transport.python = "/usr/bin/python3"  # what the sudoers rules name
    return transport


def cached_agents(lab: SudoLab, user: str) -> list[Path]:
    return sorted((lab.home_of(user) / ".cache/patchwarden").glob("agent-*.pyz"))


def test_become_sudo_installs_as_root_from_the_login_users_cache(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str
) -> None:
    """A NOPASSWD rule: the agent runs as root and installs into a root only root may write;
    its zipapp is the one in the login user's own cache."""
    machine = connect(lab, pool, agent, user=LOGIN, become="sudo", root=machine_root)
    result = machine.install(InstallRequest((PIN,), reboot_option="NoReboot"))
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    state = dpkg_state(lab.srv / Path(machine_root).name)
    assert state["pwtest-lib"] == ("1.0-2", "install ok installed")
    [cached] = cached_agents(lab, LOGIN)
    assert cached.stat().st_uid == USERS[LOGIN]
    assert not (lab.directory / "root-home/.cache").exists()
    # Someone removes the cached agent: the shell cannot open it for sudo, and it is copied again.
    cached.unlink()
    assert machine.scan(refresh=False).installed
    assert cached_agents(lab, LOGIN) == [cached] and pool.uploads == 2


def test_sudos_refusals_are_one_clear_error_at_once(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str
) -> None:
    """No rule, a rule that asks for a password, requiretty: each is BecomeRefused naming the
    instance, the login user and what to add to sudoers, and sudo's own words come after ours.
    sudo -n never waits for a password: a wait would end as Timeout, not BecomeRefused."""
    advice = {
        PASSWORD: f"'{PASSWORD} ALL=(root) NOPASSWD: /usr/bin/python3'",
        NORULE: f"'{NORULE} ALL=(root) NOPASSWD: /usr/bin/python3'",
        TTY: f"'Defaults:{TTY} !requiretty'",
    }
    for user, fix in advice.items():
        machine = connect(lab, pool, agent, user=user, become="sudo", root=machine_root)
        machine.command_timeout = 60.0
        with pytest.raises(AgentFailed) as refused:
            machine.scan(refresh=False)
        message = refused.value.message
        assert refused.value.code == "BecomeRefused", message
        assert message.startswith(f"ManagedInstance web-1 ({user}@127.0.0.1:{lab.sshd.port}): ")
        assert f"for the login user {user}: " in message and fix in message
        assert "(sudo said: sudo: " in message


def test_become_user_runs_the_agent_as_that_user(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str
) -> None:
    """becomeUser: a root only pwother may read is scanned as pwother, although the agent's
    zipapp sits in pwlogin's private cache (0700). An Install as pwother is refused up front."""
    path = lab.srv / Path(machine_root).name
    for item in [path, *path.rglob("*")]:
        shutil.chown(item, USERS[OTHER], USERS[OTHER])
    path.chmod(0o700)
    as_login = connect(lab, pool, agent, user=LOGIN, root=machine_root)
    with pytest.raises(AgentFailed):
        as_login.scan(refresh=False)
    machine = connect(
        lab, pool, agent, user=LOGIN, become="sudo", becomeUser=OTHER, root=machine_root
    )
    names = {p.name for p in machine.scan(refresh=False).installed}
    assert "pwtest-lib" in names
    assert (lab.home_of(LOGIN) / ".cache/patchwarden").stat().st_mode & 0o777 == 0o700
    with pytest.raises(AgentFailed) as refused:
        machine.install(InstallRequest((PIN,)))
    assert refused.value.code == "InstallNeedsRoot"
    assert "become runs the agent as pwother" in refused.value.message


def test_an_install_as_a_non_root_login_without_become_is_refused_before_connecting(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str
) -> None:
    logins = lab.sshd.accepted_logins()
    machine = connect(lab, pool, agent, user=LOGIN, root=machine_root)
    with pytest.raises(AgentFailed) as refused:
        machine.install(InstallRequest((PIN,)))
    assert refused.value.code == "InstallNeedsRoot"
    assert refused.value.message == (
        f"ManagedInstance web-1: {LOGIN}@127.0.0.1:{lab.sshd.port}: an Install needs root; the "
        f"login user is {LOGIN}: set spec.connection.become: sudo (with a sudoers rule for "
        f"{LOGIN}), or log in as root"
    )
    assert pool.connections_opened == 0 and lab.sshd.accepted_logins() == logins
    assert dpkg_state(lab.srv / Path(machine_root).name)["pwtest-lib"][0] == "1.0-1"


def test_a_scan_as_a_non_root_login_reads_apt_unprivileged(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str
) -> None:
    """Scans stay allowed without become: apt's databases are world-readable. What needs root
    is refreshing a directory root's package lists (they belong to root): that scan fails with
    apt's reason. (On the machine itself, "/", the agent keeps private lists as a non-root user.)"""
    as_login = connect(lab, pool, agent, user=LOGIN, root=machine_root)
    as_root = connect(lab, pool, agent, user=LOGIN, become="sudo", root=machine_root)
    unprivileged = as_login.scan(refresh=False, instance_id="web-1")
    privileged = as_root.scan(refresh=False, instance_id="web-1")
    assert unprivileged.updates
    assert unprivileged.model_dump(exclude={"collected_at"}) == privileged.model_dump(
        exclude={"collected_at"}
    )
    with pytest.raises(AgentFailed) as failed:
        as_login.scan(refresh=True)
    assert failed.value.code == "RepositoryError" and "Permission denied" in failed.value.message


def ssh_dir_of(lab: SudoLab, directory: Path, config: str) -> Path:
    """An operator's SSH directory: the lab's key as ``lab_key``, its known_hosts, ``config``."""
    directory.mkdir()
    shutil.copy(lab.sshd.client_key_file, directory / "lab_key")
    shutil.copy(lab.sshd.known_hosts_file, directory / "known_hosts")
    (directory / "config").write_text(config)
    return directory


def test_proxy_jump_reaches_a_machine_only_the_bastion_reaches(
    hidden: tuple[SudoLab, Bastion], pool: SshPool, agent: Path, apt_repo: Repo, tmp_path: Path
) -> None:
    """proxyJump in the ManagedInstance, and as ProxyJump of an alias in <--ssh-dir>/config: both
    machines ride on one pooled bastion connection, whose host key is checked too."""
    lab, bastion = hidden
    root = make_root(
        lab.srv / "behind", apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED
    )
    Apt(str(root)).refresh()
    direct = connect(lab, pool, agent, user=LOGIN, become="sudo", root="/srv/behind")
    with pytest.raises(AgentFailed) as unreachable:
        direct.scan(refresh=False)
    assert unreachable.value.code == "SshUnreachable"
    config = (
        f"Host hidden-web\n  HostName 127.0.0.1\n  Port {lab.sshd.port}\n  ProxyJump jumpbox\n"
        f"Host jumpbox\n  HostName 127.0.0.1\n  Port {bastion.port}\n  User root\n"
    )
    ssh_dir = ssh_dir_of(lab, tmp_path / "ssh", config)
    files = {"identityFile": "lab_key", "knownHostsFile": "known_hosts", "root": "/srv/behind"}
    jump = f"root@127.0.0.1:{bastion.port}"
    first = connect(
        lab, pool, agent, ssh_dir=ssh_dir, user=LOGIN, become="sudo", proxyJump=jump, **files
    )
    result = first.install(InstallRequest((PIN,), reboot_option="NoReboot"))
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    second = connect(
        lab, pool, agent, ssh_dir=ssh_dir, name="web-2", host="hidden-web", port=None, **files
    )
    installed = {p.name: p.version for p in second.scan(refresh=False).installed}
    assert installed["pwtest-lib"] == "1.0-2"
    assert bastion.accepted_logins() == 1
    (ssh_dir / "known_hosts").write_text(lab.sshd.known_hosts_file.read_text().splitlines()[0])
    with SshPool() as fresh, pytest.raises(AgentFailed) as rejected:
        connect(
            lab,
            fresh,
            agent,
            ssh_dir=ssh_dir,
            host="hidden-web",
            port=None,
            identityFile="lab_key",
            knownHostsFile="known_hosts",
        ).scan(refresh=False)
    assert rejected.value.code == "SshHostKeyRejected"
    assert "the bastion: root@127.0.0.1:" in rejected.value.message


def test_an_ssh_config_alias_supplies_host_port_user_and_key_and_written_fields_win(
    lab: SudoLab, pool: SshPool, agent: Path, machine_root: str, tmp_path: Path
) -> None:
    config = (
        f"Host web-*\n  HostName 127.0.0.1\n  Port {lab.sshd.port}\n  User {NORULE}\n"
        "  IdentityFile lab_key\n"
    )
    ssh_dir = ssh_dir_of(lab, tmp_path / "ssh", config)
    fields: dict[str, Any] = {
        "host": "web-1",
        "port": None,
        "identityFile": None,
        "knownHostsFile": "known_hosts",
        "become": "sudo",
        "root": machine_root,
    }
    # The config's user: it has no sudo rule, and the refusal names it.
    with pytest.raises(AgentFailed) as refused:
        connect(lab, pool, agent, ssh_dir=ssh_dir, **fields).scan(refresh=False)
    assert refused.value.code == "BecomeRefused"
    assert f"({NORULE}@127.0.0.1:{lab.sshd.port})" in refused.value.message
    # The ManagedInstance's user wins over the config's.
    machine = connect(lab, pool, agent, ssh_dir=ssh_dir, user=LOGIN, **fields)
    result = machine.install(InstallRequest((PIN,), reboot_option="NoReboot"))
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        (
            "Host web-1\n  IdentityFile {outside}\n",
            "SshFileRefused",
            "IdentityFile {outside} in {ssh_dir}/config (Host web-1) is outside the SSH directory",
        ),
        ("Include {outside}\n", "SshConfigInvalid", "Include {outside} leaves the SSH directory"),
        (
            "Host web-1\n  Port {secret}\n",
            "SshConfigInvalid",
            "line 2 of {ssh_dir}/config: Invalid Port",
        ),
        (
            'Match exec "touch {outside}-ran"\n',
            "SshConfigInvalid",
            "Match exec is not supported",
        ),
        ("Host web-1\n  ProxyCommand touch {outside}-ran\n", "SshConfigInvalid", "use ProxyJump"),
    ],
)
def test_a_config_that_leaves_the_ssh_dir_or_cannot_be_read_is_refused_without_connecting(
    lab: SudoLab, pool: SshPool, agent: Path, tmp_path: Path, config: str, code: str, words: str
) -> None:
    """Nothing outside --ssh-dir is read, no command runs, and the file is not quoted."""
    outside, secret = tmp_path / "outside-key", "s3cr3t-line-of-the-file"
    shutil.copy(lab.sshd.client_key_file, outside)
    ssh_dir = tmp_path / "ssh"
    ssh_dir_of(lab, ssh_dir, config.format(outside=outside, secret=secret))
    logins = lab.sshd.accepted_logins()
    with pytest.raises(AgentFailed) as refused:
        connect(
            lab,
            pool,
            agent,
            ssh_dir=ssh_dir,
            host="web-1",
            identityFile=None,
            knownHostsFile="known_hosts",
        ).scan(refresh=False)
    assert refused.value.code == code
    message = refused.value.message
    assert message.startswith("ManagedInstance web-1: ")
    assert words.format(outside=outside, ssh_dir=ssh_dir) in message and secret not in message
    assert pool.connections_opened == 0 and lab.sshd.accepted_logins() == logins
    assert not (tmp_path / "outside-key-ran").exists()  # no command ran


def test_patchctl_reconcile_installs_through_sudo_on_an_ssh_config_alias(
    lab: SudoLab, machine_root: str, tmp_path: Path
) -> None:
    """End to end: a window's Install on ``host: web-sudo``, which only --ssh-dir's config
    resolves (HostName, Port, User pwlogin, IdentityFile), with become: sudo. The job scans and
    installs as root and the root's dpkg shows the security update."""
    config = (
        f"Host web-sudo\n  HostName 127.0.0.1\n  Port {lab.sshd.port}\n  User {LOGIN}\n"
        "  IdentityFile lab_key\n"
    )
    ssh_dir = ssh_dir_of(lab, tmp_path / "ssh", config)
    source = tmp_path / "source"
    source.mkdir()
    instance = (
        f"{API}\nkind: ManagedInstance\nmetadata:\n  name: web-sudo\n  labels: {{fleet: e2e}}\n"
        "spec:\n  connection:\n    type: ssh\n    host: web-sudo\n    become: sudo\n"
        f"    knownHostsFile: known_hosts\n    root: {machine_root}\n"
    )
    (source / "fleet.yaml").write_text(documents(BASELINE_YAML, open_window_yaml(), instance))
    state = tmp_path / "state.db"
    argv = ["reconcile", "--source", str(source), "--state", str(state), "--ssh-dir", str(ssh_dir)]
    argv += at_now()
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATCHWARDEN_TRUST_ROOT_SCRIPTS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with StateStore(state) as store:
        jobs = store.latest_jobs()
    install = (jobs["web-sudo"].result or {})["install"]
    results = {p["name"]: p["result"] for p in install["patches"]}
    # pwtest-fail's new version fails its maintainer script on purpose (tests/conftest.py).
    assert results == {**dict.fromkeys(results, "INSTALLED"), "pwtest-fail": "FAILED"}
    assert versions(lab.srv / Path(machine_root).name)["pwtest-lib"] == "1.0-2"
    assert cached_agents(lab, LOGIN)
