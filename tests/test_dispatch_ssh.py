"""The ssh transport against a real OpenSSH server on loopback (tests/sshd.py), running the real
agent zipapp with the host's python3 against real apt roots (tests/aptlab.py).

The remote machine is this host, so a root built by a test is the same directory on both sides:
a scan over SSH must equal the local transport's scan of that root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.apt import Apt
from reconciler.api.inventory import Inventory
from reconciler.api.resources import LocalConnection, SshConnection
from reconciler.dispatch import (
    AgentFailed,
    InstallRequest,
    LocalTransport,
    SshPool,
    SshTransport,
    transport_for,
)
from reconciler.dispatch.agent_bundle import agent_bytes, agent_zipapp, build_agent
from reconciler.dispatch.base import AgentCommand, install_result_of
from tests.aptlab import Repo, make_root
from tests.conftest import INSTALLED, needs_apt
from tests.sshd import Sshd, have_sshd, known_hosts_line, start_sshd, write_key
from tests.waiting import wait_until

pytestmark = [
    needs_apt,
    pytest.mark.skipif(not have_sshd(), reason="needs /usr/sbin/sshd, python3 and root"),
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent(tmp_path_factory.mktemp("agent") / "agent.pyz")


@pytest.fixture
def pool() -> Iterator[SshPool]:
    with SshPool() as shared:
        yield shared


@pytest.fixture
def remote_dir(tmp_path: Path) -> str:
    # A private agent cache per test, so "uploaded once" is not decided by an earlier test.
    return str(tmp_path / "remote-cache")


def ssh(sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, **options: object) -> SshTransport:
    settings: dict[str, object] = {
        "port": sshd.port,
        "identity_file": str(sshd.client_key_file),
        "known_hosts_file": str(sshd.known_hosts_file),
        "connect_timeout": 10.0,
        "command_timeout": 120.0,
        "agent": agent,
        "remote_dir": remote_dir,
        "pool": pool,
        # Debian's python3, as the brief's machines have; root's login PATH here may put a pyenv
        # shim first, which works too (the scan-equality test uses the default "python3").
        "python": "/usr/bin/python3",
        # The lab roots have no /bin/sh: their installs need the operator's trust (conftest.py).
        "trust_root_scripts": True,
    }
    settings.update(options)
    return SshTransport("127.0.0.1", **settings)  # type: ignore[arg-type]


def test_scan_over_ssh_equals_the_local_scan(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root), python="python3")
    over_ssh = remote.scan(refresh=False, instance_id="node-1")
    local = LocalTransport(str(system_root)).scan(refresh=False, instance_id="node-1")
    assert over_ssh.updates, "the root has pending updates"
    assert over_ssh.model_dump(exclude={"collected_at"}) == local.model_dump(
        exclude={"collected_at"}
    )
    # With a refresh too (apt-get update inside the root, over SSH).
    assert remote.scan(instance_id="node-1").updates == over_ssh.updates


def test_install_over_ssh_installs_the_pin(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root))
    result = remote.install(InstallRequest(("pwtest-lib=1.0-2",), reboot_option="NoReboot"))
    assert result.document()["kind"] == "InstallResult" and result.changed is True
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    installed = {p.name: p.version for p in remote.scan(refresh=False).installed}
    assert installed["pwtest-lib"] == "1.0-2"


@pytest.mark.parametrize("over", ["local", "ssh"])
def test_values_that_look_like_options_reach_the_agent_as_values(
    over: str, sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    """Issue 12.9: a rejectedPatches entry ``--simulate`` (BLOCK) used to reach the agent as
    ``--block --simulate``, which its argparse read as an option, so every install failed. Each
    value now travels as one ``--block=VALUE`` word: the odd pattern blocks nothing, the install
    happens for real, and a pattern after it still blocks."""
    transport: AgentCommand = (
        LocalTransport(str(system_root), trust_root_scripts=True)
        if over == "local"
        else ssh(sshd, agent, pool, remote_dir, root=str(system_root))
    )
    pins = ("pwtest-lib=1.0-2",)
    with pytest.raises(AgentFailed) as refused:
        transport.install(InstallRequest(pins, blocked=("--simulate", "pwtest-lib")))
    assert refused.value.code == "InstallRefused" and "'pwtest-lib'" in refused.value.message
    result = transport.install(
        InstallRequest(pins, blocked=("--simulate", "-x"), reboot_option="NoReboot")
    )
    assert result.changed is True and result.document()["simulate"] is False
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    installed = {p.name: p.version for p in transport.scan(refresh=False).installed}
    assert installed["pwtest-lib"] == "1.0-2"


def test_over_ssh_a_shell_less_root_is_refused_without_the_operators_trust(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    status = (system_root / "var/lib/dpkg/status").read_text()
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root), trust_root_scripts=False)
    with pytest.raises(AgentFailed) as refused:
        remote.install(InstallRequest(("pwtest-lib=1.0-2",), reboot_option="NoReboot"))
    assert refused.value.code == "UntrustedRoot" and str(system_root) in refused.value.message
    assert (system_root / "var/lib/dpkg/status").read_text() == status


def test_the_agent_is_copied_once_per_version(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root))
    remote.scan(refresh=False)
    copies = list(Path(remote_dir).glob("agent-*.pyz"))
    assert pool.uploads == 1 and len(copies) == 1
    assert copies[0].read_bytes() == agent.read_bytes()
    assert not list(Path(remote_dir).glob(".*.part")), "no upload leftovers"
    mtime = copies[0].stat().st_mtime_ns

    remote.scan(refresh=False)  # same connection: known to be there, not even checked
    with SshPool() as fresh:  # new connection: checked with one command, found, not copied
        ssh(sshd, agent, fresh, remote_dir, root=str(system_root)).scan(refresh=False)
        assert fresh.uploads == 0 and fresh.connections_opened == 1
    assert pool.uploads == 1 and copies[0].stat().st_mtime_ns == mtime

    # Removed behind our back: the next run notices and copies it again.
    copies[0].unlink()
    remote.scan(refresh=False)
    assert pool.uploads == 2 and copies[0].is_file()


def test_concurrent_scans_share_one_connection(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, tmp_path: Path, apt_repo: Repo
) -> None:
    roots = []
    for i in range(4):
        root = make_root(
            tmp_path / f"node-{i}", apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED
        )
        Apt(str(root)).refresh()
        roots.append(root)
    logins = sshd.accepted_logins()
    results: dict[int, Inventory | BaseException] = {}

    def scan(i: int) -> None:
        try:
            transport = ssh(sshd, agent, pool, remote_dir, root=str(roots[i]))
            results[i] = transport.scan(refresh=False, instance_id=f"node-{i}")
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(
        r.instance_id if isinstance(r, Inventory) else repr(r) for r in results.values()
    ) == [f"node-{i}" for i in range(4)]
    assert pool.connections_opened == 1 and pool.uploads == 1
    assert sshd.accepted_logins() - logins == 1  # sshd agrees: one login for the four scans


def test_a_dropped_connection_is_reopened(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path
) -> None:
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root))
    remote.scan(refresh=False)
    # What a server restart or an idle timeout does: sshd's per-connection process goes away.
    for pid in sshd.connection_pids():
        os.kill(pid, signal.SIGTERM)
    wait_until("sshd's connections to end", lambda: not sshd.connection_pids(), timeout=10)
    assert remote.scan(refresh=False).updates
    assert pool.connections_opened == 2 and pool.uploads == 1


def test_an_agent_error_comes_back_as_agent_failed(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path, tmp_path: Path
) -> None:
    remote = ssh(sshd, agent, pool, remote_dir, root=str(system_root))
    with pytest.raises(AgentFailed) as failed:
        # Unquoted, the remote shell would run the touch and hand the agent a valid pin.
        remote.install(InstallRequest((f"pwtest-lib=1.0-2; touch {tmp_path}/pwned",)))
    assert failed.value.code == "InvalidPin" and "pwned" in failed.value.message
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(AgentFailed) as missing:
        ssh(sshd, agent, pool, remote_dir, root=str(system_root / "nothing")).scan()
    assert missing.value.code == "UnsupportedSystem"


def test_an_install_result_the_schema_cannot_read_is_agent_failed() -> None:
    """Every transport reads the agent's install result with install_result_of: one it cannot
    read (a patch without a name) fails the job as AgentFailed, and what it can read keeps the
    fields the reconciler does not read, in the agent's order (what `patchctl install -o json`
    prints and the audit log records), so the store keeps the agent's document."""
    with pytest.raises(AgentFailed) as bad:
        install_result_of({"kind": "InstallResult", "patches": [{"version": "1.0-2"}]})
    assert bad.value.code == "BadInstallResult"
    assert "does not match the schema" in bad.value.message
    patches = [
        {"name": "pwtest-lib", "arch": "all", "version": "1.0-2", "result": "INSTALLED", "x": 1}
    ]
    reboot = {"required": True, "performed": False, "reason": "reboot-required"}
    document = {"kind": "InstallResult", "changed": True, "patches": patches, "reboot": reboot}
    result = install_result_of(document)
    assert json.dumps(result.document()) == json.dumps(document)
    assert json.dumps(result.stored()) == json.dumps(
        {
            "changed": True,
            "patches": patches,
            "dependencies": None,
            "recovery": None,
            "reboot": reboot,
        }
    )


def test_a_command_timeout_is_reported_and_the_pool_still_works(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, system_root: Path, tmp_path: Path
) -> None:
    slow = ssh(sshd, agent, pool, remote_dir, root=str(system_root), command_timeout=0.05)
    with pytest.raises(AgentFailed) as failed:
        slow.scan()  # apt-get update alone takes longer than 50 ms
    assert failed.value.code == "Timeout"
    # The same connection still answers (another root: the timed-out agent got TERM, but it is
    # not waited for, so its root is left alone).
    with pytest.raises(AgentFailed) as answered:
        ssh(sshd, agent, pool, remote_dir, root=str(tmp_path / "nothing")).scan()
    assert answered.value.code == "UnsupportedSystem" and pool.connections_opened == 1


@pytest.mark.parametrize("trust", ["none", "empty", "other key", "missing file"])
def test_an_unknown_host_key_is_refused(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, tmp_path: Path, trust: str
) -> None:
    known_hosts: str | None = str(tmp_path / "known_hosts")
    if trust == "none":
        known_hosts = None
    elif trust == "empty":
        Path(str(known_hosts)).write_text("")
    elif trust == "other key":
        other = write_key(tmp_path / "other_host_key")
        Path(str(known_hosts)).write_text(known_hosts_line(sshd.port, other))
    logins = sshd.accepted_logins()
    remote = ssh(sshd, agent, pool, remote_dir, known_hosts_file=known_hosts)
    with pytest.raises(AgentFailed) as failed:
        remote.scan()
    assert failed.value.code == "SshHostKeyRejected", failed.value
    assert sshd.accepted_logins() == logins and pool.uploads == 0


def test_the_users_own_known_hosts_is_never_a_fallback(
    sshd: Sshd,
    agent: Path,
    pool: SshPool,
    remote_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncssh falls back to ~/.ssh/known_hosts for an empty argument; an empty file of ours
    # must still reject the host even when the user's own file would trust it.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_file.read_text())
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "empty").write_text("")
    remote = ssh(sshd, agent, pool, remote_dir, known_hosts_file=str(tmp_path / "empty"))
    with pytest.raises(AgentFailed) as failed:
        remote.scan()
    assert failed.value.code == "SshHostKeyRejected"


def test_a_wrong_user_key_is_an_auth_failure(
    sshd: Sshd, agent: Path, pool: SshPool, remote_dir: str, tmp_path: Path
) -> None:
    write_key(tmp_path / "stranger")
    for identity, code in [
        (str(tmp_path / "stranger"), "SshAuthFailed"),
        (str(tmp_path / "no-such-key"), "SshAuthFailed"),
    ]:
        with pytest.raises(AgentFailed) as failed:
            ssh(sshd, agent, pool, remote_dir, identity_file=identity).scan()
        assert failed.value.code == code, failed.value


def test_a_closed_port_is_unreachable(agent: Path, pool: SshPool, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "known_hosts").write_text("")
    remote = SshTransport(
        "127.0.0.1",
        port=port,
        known_hosts_file=str(tmp_path / "known_hosts"),
        agent=agent,
        connect_timeout=5,
        pool=pool,
    )
    started = time.monotonic()
    with pytest.raises(AgentFailed) as failed:
        remote.scan()
    assert failed.value.code == "SshUnreachable" and time.monotonic() - started < 5


def test_transport_for_picks_the_transport(sshd: Sshd, agent: Path, pool: SshPool) -> None:
    local = transport_for(LocalConnection(type="local", root="/srv/node"), command_timeout=9)
    assert local == LocalTransport("/srv/node", timeout=9)
    connection = SshConnection(
        type="ssh",
        host="127.0.0.1",
        port=sshd.port,
        identity_file=str(sshd.client_key_file),
        known_hosts_file=str(sshd.known_hosts_file),
        root="/srv/node",
    )
    remote = transport_for(
        connection, pool=pool, agent=agent, connect_timeout=3, ssh_dir=sshd.directory
    )
    assert isinstance(remote, SshTransport)
    assert remote.pool is pool and remote.root == "/srv/node" and remote.connect_timeout == 3
    assert (remote.endpoint.port, remote.endpoint.user) == (sshd.port, "root")


@pytest.fixture
def home_with_the_key(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """HOME holding the key sshd authorises as ``~/.ssh/id_ed25519``, and a running ssh-agent
    (SSH_AUTH_SOCK) holding it too: where asyncssh looks for keys on its own."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sshd.client_key_file, home / ".ssh" / "id_ed25519")
    monkeypatch.setenv("HOME", str(home))
    socket = tmp_path / "agent.sock"
    ssh_agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        wait_until("ssh-agent to listen", socket.exists)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key_file)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        yield home
    finally:
        ssh_agent.terminate()
        ssh_agent.wait()


def test_without_an_identity_only_the_ssh_dirs_default_keys_are_offered(
    sshd: Sshd,
    agent: Path,
    pool: SshPool,
    remote_dir: str,
    system_root: Path,
    tmp_path: Path,
    home_with_the_key: Path,
) -> None:
    """docs/security.md: nothing is read outside --ssh-dir. asyncssh by itself offers
    ``~/.ssh/id_*`` and the ssh-agent's keys; the transport offers only the default key names
    inside the SSH directory, and never asks an ssh-agent."""
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    shutil.copy(sshd.known_hosts_file, ssh_dir / "known_hosts")
    connection = SshConnection(
        type="ssh",
        host="127.0.0.1",
        port=sshd.port,
        known_hosts_file=str(ssh_dir / "known_hosts"),
        root=str(system_root),
    )

    def scan() -> Inventory:
        remote = transport_for(connection, pool=pool, agent=agent, ssh_dir=ssh_dir)
        assert isinstance(remote, SshTransport)
        remote.remote_dir, remote.python = remote_dir, "/usr/bin/python3"
        return remote.scan(refresh=False)

    logins = sshd.accepted_logins()
    with pytest.raises(AgentFailed) as refused:
        scan()
    assert refused.value.code == "SshAuthFailed"
    assert "no key was offered: set identityFile, or put a key" in refused.value.message
    assert sshd.accepted_logins() == logins
    shutil.copy(sshd.client_key_file, ssh_dir / "id_ed25519")
    assert scan().updates
    assert sshd.accepted_logins() == logins + 1


def test_defaults_build_the_agent_and_own_a_pool(
    sshd: Sshd,
    remote_dir: str,
    system_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with SshTransport(
        "127.0.0.1",
        port=sshd.port,
        identity_file=str(sshd.client_key_file),
        known_hosts_file=str(sshd.known_hosts_file),
        root=str(system_root),
        remote_dir=remote_dir,
    ) as remote:  # no agent given: built on demand; no pool given: a private one
        assert remote.scan(refresh=False).updates
        (built,) = (tmp_path / "cache" / "patchwarden").glob("agent-*.pyz")
        assert (Path(remote_dir) / built.name).read_bytes() == built.read_bytes()
        thread = remote.pool._thread
        assert thread is not None and thread.is_alive()
    thread.join(timeout=5)
    assert not thread.is_alive(), "close() stops the private pool's loop"


def test_the_agent_bundle_is_reproducible_and_cached(tmp_path: Path) -> None:
    built = agent_zipapp(tmp_path)
    assert built.name.startswith("agent-") and os.access(built, os.X_OK)
    assert agent_zipapp(tmp_path) == built and list(tmp_path.iterdir()) == [built]
    assert built.read_bytes() == agent_bytes()
    # scripts/build-agent is the same build, runnable with a bare python3.
    out = tmp_path / "script.pyz"
    subprocess.run(["python3", "-I", "scripts/build-agent", str(out)], check=True, cwd=ROOT)
    assert out.read_bytes() == built.read_bytes()
