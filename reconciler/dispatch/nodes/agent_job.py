"""Stage: dispatch — an I/O edge, run inside a node Job's container (``patchctl node-agent``).
Runs the agent on the node's host and leaves its JSON document, exit code and the end of its
stderr in a ConfigMap, where the controller reads it: a pod's logs would need a kubelet
connection and more permissions, a ConfigMap only ``create`` and ``update`` in one namespace.

On the host: the agent zipapp is copied into the host directory mounted into the container
(once per version, under its SHA-256), then run by the host's own ``python3`` inside the host's
mount, UTS, IPC, network and PID namespaces (``nsenter -t 1``, or ``--host-pid``), so it uses
the host's apt, dnf or zypper and their configuration exactly as on a machine reached over SSH
(against the node setting ``agentRoot``'s tree when one is set, the agent's ``--root``).
``--no-nsenter`` runs it in this container instead (with the agent's own ``--root``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.dispatch.nodes.model import result_configmap
from reconciler.kube import (
    API_FAILURES,
    ApiException,
    Kube,
    Kubeconfig,
    KubeconfigError,
    api_client,
)

NAMESPACES = ("-m", "-u", "-i", "-n", "-p")
"""nsenter's options for the host's mount, UTS, IPC, network and PID namespaces."""
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STORE_DELAYS = (1.0, 2.0, 4.0, 8.0)
"""Seconds between attempts to store the result: the install has happened (and a reboot may be
a minute away), so an API blip must not lose its result."""


@dataclass(frozen=True)
class NodeAgentCall:
    """One run of the wrapper, from its command line."""

    configmap: str
    namespace: str
    node: str
    agent: Path
    host_dir: Path
    agent_args: tuple[str, ...]
    host_pid: int = 1
    """The host process whose namespaces are entered: the host's init, unless it cannot be."""
    nsenter: bool = True
    kubeconfig: str | None = None


def _on_host(agent: Path, host_dir: Path) -> Path:
    """The agent's path in ``host_dir`` (the same path on the host), copied there if needed."""
    data = agent.read_bytes()
    target = host_dir / f"agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not target.is_file() or target.stat().st_size != len(data):
        host_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=host_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)  # a concurrent Job never runs half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def agent_argv(call: NodeAgentCall) -> tuple[list[str], dict[str, str] | None]:
    """The command that runs the agent, and its environment (None: inherit)."""
    if not call.nsenter:
        return [sys.executable, "-I", "-S", str(call.agent), *call.agent_args], None
    path = _on_host(call.agent, call.host_dir)
    # -I -S: none of the host's PYTHON* variables or site-packages reach the agent; a minimal
    # environment keeps the container's variables off the host.
    argv = [
        "nsenter",
        "-t",
        str(call.host_pid),
        *NAMESPACES,
        "--",
        "/usr/bin/env",
        "python3",
        "-I",
        "-S",
        str(path),
        *call.agent_args,
    ]
    return argv, {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}


def store(kube: Kube, configmap: dict[str, object], namespace: str, name: str) -> None:
    """Create the result ConfigMap, or replace one of that name."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    try:
        kube.create(path, configmap)
    except ApiException as exc:
        if exc.status != 409:
            raise
        kube.request("PUT", f"{path}/{name}", body=configmap)


def run_node_agent(call: NodeAgentCall) -> int:
    """Run the agent and store its result; 0 once stored (the agent's own exit code travels in
    the ConfigMap), 1 when it could not be stored (the Job then fails)."""
    try:
        argv, env = agent_argv(call)
        done = subprocess.run(  # noqa: S603 - argv list: nsenter or this interpreter, our agent
            argv, capture_output=True, text=True, env=env, check=False
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except OSError as exc:  # no nsenter, no python3 on the host, unwritable host directory
        stdout, stderr, code = "", f"cannot run the agent: {exc}", 127
    configmap = result_configmap(call.configmap, call.namespace, call.node, stdout, code, stderr)
    for delay in (*STORE_DELAYS, None):
        try:
            where = Kubeconfig(Path(call.kubeconfig) if call.kubeconfig else None)
            with api_client(where) as api:
                store(Kube(api), configmap, call.namespace, call.configmap)
            return 0
        except KubeconfigError as exc:
            error: Exception = exc
            break  # no kubeconfig: trying again changes nothing
        except API_FAILURES as exc:  # refused, or the API unreachable
            error = exc
            if delay is None:
                break
            time.sleep(delay)
    print(
        f"node-agent: cannot store the result in ConfigMap {call.configmap}: {error}",
        file=sys.stderr,
    )
    sys.stderr.write(stderr[-4096:])
    return 1


def parse_agent_args(argv: Sequence[str]) -> tuple[str, ...]:
    return tuple(argv[1:] if argv and argv[0] == "--" else argv)
