"""Stage: dispatch — running the agent where the machine is (local and SSH now; Kubernetes Jobs
and SSM later), behind one protocol. Turns the agent's JSON into api documents; decides nothing.

``transport_for`` picks the transport for a ManagedInstance's connection. The SSH names are
imported on first use: asyncssh (and cryptography under it) costs ~80 ms at import, which every
``patchctl`` command would pay otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.api.resources import LocalConnection, SshConnection
from reconciler.dispatch.base import AgentFailed, Transport
from reconciler.dispatch.local import LocalTransport

if TYPE_CHECKING:
    from reconciler.dispatch.ssh import SshPool, SshTransport

__all__ = ["AgentFailed", "LocalTransport", "SshPool", "SshTransport", "Transport", "transport_for"]


def __getattr__(name: str) -> object:
    if name in ("SshPool", "SshTransport"):
        from reconciler.dispatch import ssh

        return getattr(ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def transport_for(
    connection: LocalConnection | SshConnection,
    *,
    pool: SshPool | None = None,
    connect_timeout: float | None = None,
    command_timeout: float | None = None,
    agent: Path | None = None,
) -> Transport:
    """The transport that reaches ``connection``'s machine. ``pool`` shares SSH connections
    between transports (give every SSH transport of a reconcile the same one, and close it at the
    end); timeouts left out take the transport's defaults; ``agent`` is the zipapp to copy."""
    if isinstance(connection, LocalConnection):
        if command_timeout is None:
            return LocalTransport(connection.root)
        return LocalTransport(connection.root, timeout=command_timeout)
    from reconciler.dispatch import ssh

    return ssh.SshTransport(
        connection.host,
        port=connection.port,
        user=connection.user,
        identity_file=connection.identity_file,
        known_hosts_file=connection.known_hosts_file,
        root=connection.root,
        connect_timeout=ssh.CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        command_timeout=ssh.COMMAND_TIMEOUT if command_timeout is None else command_timeout,
        agent=agent,
        pool=pool,
    )
