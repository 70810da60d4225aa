"""Stage: dispatch — running the agent where the machine is (local, SSH, a Kubernetes Node
through a Job; SSM later), behind one protocol. Turns the agent's JSON into api documents;
decides nothing.

``transport_for`` picks the transport for a ManagedInstance's connection. The SSH and Kubernetes
names are imported on first use: asyncssh (and cryptography under it) costs ~80 ms at import,
the Kubernetes client ~0.5 s, which every ``patchctl`` command would pay otherwise.

The files an SSH connection names (``identityFile``, ``knownHostsFile``, and the SSH client
configuration ``config`` with the files it names) are read only inside the operator's SSH
directory (``ssh_dir``, ``--ssh-dir``; :mod:`reconciler.dispatch.sshconfig`): a resource comes
from whoever may commit, and must not make the controller read its other files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.api.resources import KubernetesConnection, LocalConnection, SshConnection
from reconciler.dispatch.base import AgentFailed, InstallRequest, Transport
from reconciler.dispatch.local import LocalTransport

if TYPE_CHECKING:
    from reconciler.dispatch.nodes import NodeLocks, NodeSettings, NodeTransport
    from reconciler.dispatch.ssh import SshPool, SshTransport

__all__ = [
    "AgentFailed",
    "InstallRequest",
    "LocalTransport",
    "NodeSettings",
    "NodeTransport",
    "SshPool",
    "SshTransport",
    "Transport",
    "default_ssh_dir",
    "transport_for",
]


def __getattr__(name: str) -> object:
    if name in ("SshPool", "SshTransport"):
        from reconciler.dispatch import ssh

        return getattr(ssh, name)
    if name in ("NodeSettings", "NodeTransport"):
        from reconciler.dispatch import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def transport_for(
    connection: LocalConnection | SshConnection | KubernetesConnection,
    *,
    pool: SshPool | None = None,
    connect_timeout: float | None = None,
    command_timeout: float | None = None,
    agent: Path | None = None,
    kubernetes: Any = None,
    node_settings: NodeSettings | None = None,
    node_locks: NodeLocks | None = None,
    ssh_dir: Path | None = None,
    name: str | None = None,
    trust_root_scripts: bool = False,
    trust_local_hooks: bool = False,
) -> Transport:
    """The transport that reaches ``connection``'s machine. ``pool`` shares SSH connections
    between transports (give every SSH transport of a reconcile the same one, and close it at the
    end); timeouts left out take the transport's defaults; ``agent`` is the zipapp to copy.
    ``kubernetes`` is the API client (``kubernetes.client.ApiClient``) that reaches Nodes, with
    ``node_settings`` for their Jobs (defaults when left out) and ``node_locks`` shared by every
    node transport and ``resume_nodes`` of the caller (the process's when left out).
    ``ssh_dir`` is where an SSH connection's files must be (:func:`default_ssh_dir` when left
    out); ``name``, the ManagedInstance's, is named in errors. ``trust_root_scripts`` (the
    operator's, from the CLI) lets a local or SSH connection's directory root run maintainer
    scripts on its machine; a node's agent works on the host itself and never needs it.
    ``trust_local_hooks`` (the operator's) lets a local connection run window tasks' hooks."""
    if isinstance(connection, KubernetesConnection):
        if kubernetes is None:
            raise AgentFailed(
                "NoKubernetesClient",
                f"node {connection.node}: a kubernetes connection needs the Kubernetes API: "
                "run `patchctl controller` (or give the reconciler an API client)",
            )
        from reconciler.dispatch import nodes

        settings = node_settings or nodes.NodeSettings()
        return nodes.NodeTransport(kubernetes, connection.node, settings, node_locks)
    if isinstance(connection, LocalConnection):
        timeout = LocalTransport.timeout if command_timeout is None else command_timeout
        return LocalTransport(connection.root, timeout, trust_root_scripts=trust_root_scripts,
                              trust_hooks=trust_local_hooks)  # fmt: skip
    directory = default_ssh_dir() if ssh_dir is None else ssh_dir
    timeouts = (connect_timeout, command_timeout)
    return _ssh_transport(connection, directory, name, timeouts, agent, pool, trust_root_scripts)


def _ssh_transport(
    connection: SshConnection,
    ssh_dir: Path,
    name: str | None,
    timeouts: tuple[float | None, float | None],
    agent: Path | None,
    pool: SshPool | None,
    trust_root_scripts: bool,
) -> SshTransport:
    """The SSH transport, with what ``<ssh_dir>/config`` adds to the connection's fields."""
    from reconciler.dispatch import ssh, sshconfig

    reach = sshconfig.reach(connection, ssh_dir, name)
    connect_timeout, command_timeout = timeouts
    return ssh.SshTransport(
        reach.host,
        port=reach.port,
        user=reach.user,
        identity_file=reach.identity_files,
        known_hosts_file=reach.known_hosts_file,
        jump=reach.jump,
        become=connection.become == "sudo",
        become_user=connection.become_user,
        name=name,
        root=connection.root,
        connect_timeout=ssh.CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        command_timeout=ssh.COMMAND_TIMEOUT if command_timeout is None else command_timeout,
        agent=agent,
        pool=pool,
        trust_root_scripts=trust_root_scripts,
    )


def default_ssh_dir() -> Path:
    """The SSH directory of the user running patchctl, ``~/.ssh``: where its own keys are."""
    return Path.home() / ".ssh"
