"""Stage: agent. What every backend's results share: timestamps and the reboot decision.

``RebootIfNeeded`` reboots only when the machine needs it, only the host, and only when allowed
(``--allow-reboot``); in a directory root the reboot is recorded, never executed. Standard library
only.
"""

from typing import Dict, List, Optional

from reconciler.agent import AGENT_VERSION, noreboot
from reconciler.agent.runner import run
from reconciler.agent.stamps import utc_stamp

API_VERSION = "patchwarden.io/v1alpha1"


def now() -> str:
    """The current time, UTC, as the documents write it."""
    return utc_stamp()


def reboot(needed: bool, why: str, option: str, is_host: bool, allow: bool) -> Dict[str, object]:
    """The ``reboot`` part of an install result; reboots the host when all conditions hold."""
    if option == "NoReboot" or not needed:
        return {"required": needed, "performed": False}
    if not is_host:
        return {
            "required": True,
            "performed": False,
            "recorded": True,
            "reason": "directory root: reboot recorded, not executed ({})".format(why),
        }
    if not allow:
        return {
            "required": True,
            "performed": False,
            "reason": "reboot needed ({}); pass --allow-reboot to let the agent reboot it".format(
                why
            ),
            "why": why,  # the reconcile loop reboots SSH machines itself, saying why
        }
    done = run(["/sbin/shutdown", "-r", "+1", "patchwarden: reboot after patching"], timeout=60)
    return {"required": True, "performed": done.rc == 0, "reason": why}


def inventory(
    root: str,
    instance_id: Optional[str],
    operation: str,
    machine: Dict[str, object],
    installed: List[Dict[str, object]],
    updates: List[Dict[str, object]],
) -> Dict[str, object]:
    """The inventory document (``reconciler/api/inventory.py``), as every backend reports it."""
    document = {
        "apiVersion": API_VERSION,
        "kind": "Inventory",
        "instanceId": instance_id or str(machine.get("hostname") or root),
        "collectedAt": now(),
        "agentVersion": AGENT_VERSION,
        "operation": operation,
        "facts": machine,
        "installed": installed,
        "updates": updates,
    }  # type: Dict[str, object]
    pending = noreboot.read(root)
    if pending is not None:
        document["noRebootInstall"] = pending
    return document


def install_result(simulate: bool) -> Dict[str, object]:
    """The start of an install result document; the backend fills in what happened."""
    return {
        "apiVersion": API_VERSION,
        "kind": "InstallResult",
        "simulate": simulate,
        "startedAt": now(),
        "recovery": [],
    }
