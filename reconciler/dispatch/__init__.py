"""Stage: dispatch — running the agent where the machine is (local, SSH, a Kubernetes Node
through a Job; SSM later), behind one protocol. Turns the agent's JSON into api documents;
decides nothing.

``transport_for`` picks the transport for a ManagedInstance's connection. The SSH and Kubernetes
names are imported on first use: asyncssh (and cryptography under it) costs ~80 ms at import,
the Kubernetes client ~0.5 s, which every ``patchctl`` command would pay otherwise.

The files an SSH connection names (``identityFile``, ``knownHostsFile``) are read only inside the
operator's SSH directory (``ssh_dir``, ``--ssh-dir``; :mod:`reconciler.paths`): a resource comes
from whoever may commit, and must not make the controller read its other files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.api.resources import KubernetesConnection, LocalConnection, SshConnection
from reconciler.dispatch.base import AgentFailed, InstallRequest, Transport
from reconciler.dispatch.local import LocalTransport
from reconciler.paths import OutsideDirectory, confine

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
    from reconciler.dispatch import ssh

    directory = default_ssh_dir() if ssh_dir is None else ssh_dir
    return ssh.SshTransport(
        connection.host,
        port=connection.port,
        user=connection.user,
        identity_file=_in_ssh_dir(connection.identity_file, "identityFile", directory, name),
        known_hosts_file=_in_ssh_dir(
            connection.known_hosts_file, "knownHostsFile", directory, name
        ),
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


def _in_ssh_dir(path: str | None, field: str, ssh_dir: Path, name: str | None) -> str | None:
    """``path`` resolved inside ``ssh_dir``; AgentFailed (the job fails, nothing is read) when
    it lies outside."""
    if not path:  # none given: the transport says what is missing
        return None
    try:
        return str(confine(path, ssh_dir))
    except OutsideDirectory:
        resource = f"ManagedInstance {name}: " if name else ""
        raise AgentFailed(
            "SshFileRefused",
            f"{resource}spec.connection.{field} {path} is outside the SSH directory {ssh_dir}: "
            "put the file there (a relative name is read inside it), or start patchctl with "
            "--ssh-dir naming the directory that holds it",
        ) from None
