"""Stage: agent. The machine's boot id, and a reboot the reconcile loop asks for and then waits
for (``boot-id`` and ``reboot`` subcommands, docs/reboots.md).

The loop records the boot id before it asks for the reboot and polls until it changes, so the
reboot starts detached: the result reaches the controller before the machine goes down.
``--if-boot-id`` makes asking again harmless (a restarted controller that cannot tell whether
its request got through): a machine that already booted since is not rebooted twice. Only the
host itself is ever rebooted, never for a directory root. Standard library only; touches nothing
but the process it starts.
"""

import os
import time
from typing import Dict, List, Optional

from reconciler.agent.errors import AgentError
from reconciler.agent.outcome import API_VERSION
from reconciler.agent.runner import BASE_ENV

BOOT_ID = "/proc/sys/kernel/random/boot_id"
SHUTDOWN = ("/sbin/shutdown", "/usr/sbin/shutdown")
REBOOT = ("/sbin/reboot", "/usr/sbin/reboot")
DELAY = 1.0
"""Seconds between answering and rebooting: the answer must leave over SSH before sshd stops."""


class NotTheHost(AgentError):
    """A reboot asked for a directory root: the host is not what was patched."""

    code = "NotTheHost"


class RebootUnavailable(AgentError):
    """Neither shutdown nor reboot exists on the machine, or the boot id cannot be read."""

    code = "RebootUnavailable"


def boot_id() -> str:
    """The kernel's id of the current boot: a new one after every reboot."""
    try:
        with open(BOOT_ID, encoding="ascii") as handle:
            found = handle.read().strip()
    except OSError as exc:
        raise RebootUnavailable("cannot read {}: {}".format(BOOT_ID, exc.strerror)) from None
    if not found:
        raise RebootUnavailable("{} is empty".format(BOOT_ID))
    return found


def boot_document() -> Dict[str, object]:
    """``boot-id``'s output."""
    return {"apiVersion": API_VERSION, "kind": "Boot", "bootId": boot_id()}


def reboot(root: str, if_boot_id: Optional[str]) -> Dict[str, object]:
    """Start a reboot of this host, detached, unless it booted since ``if_boot_id``; the
    document says the boot id now and whether the reboot was started."""
    if root != "/":
        raise NotTheHost(
            "--root {} is a directory root: only the host itself is rebooted".format(root)
        )
    current = boot_id()
    document = {
        "apiVersion": API_VERSION,
        "kind": "Reboot",
        "bootId": current,
        "started": False,
    }  # type: Dict[str, object]
    if if_boot_id is not None and if_boot_id != current:
        document["reason"] = "already booted since boot id " + if_boot_id
        return document
    _detached(_command())
    document["started"] = True
    return document


def _command() -> List[str]:
    for path in SHUTDOWN:
        if os.path.exists(path):
            return [path, "-r", "now", "patchwarden: reboot after patching"]
    for path in REBOOT:
        if os.path.exists(path):
            return [path]
    raise RebootUnavailable("neither shutdown nor reboot is in /sbin or /usr/sbin")


def _detached(argv: List[str]) -> None:
    """Run ``argv`` in a new session after :data:`DELAY`, with no tie to this process: its
    stdio is /dev/null, so the SSH session ends when the agent exits."""
    if os.fork() != 0:
        return
    try:  # the child: never returns into the agent
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(DELAY)
        os.execve(argv[0], argv, dict(BASE_ENV))
    finally:
        os._exit(127)
