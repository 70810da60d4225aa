"""Stage: agent. The machine's record of Installs run with RebootOption NoReboot.

SSM keeps such a record on the node (its patch-states configuration file) so that the patches a
NoReboot Install installed stay ``INSTALLED_PENDING_REBOOT`` until the node boots, and reports
``LastNoRebootInstallOperationTime``
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-aws-runpatchbaseline.html).
Ours is one JSON file in the agent's own state directory below the root: an Install with NoReboot
adds the patches it changed, a scan reports the file as the inventory's ``noRebootInstall``, and
the engine compares its time with the boot time. Writes only that file; standard library only.
"""

import json
import os
from typing import Dict, List, Optional

from reconciler.agent.stamps import stamp_seconds

RECORD = "/var/lib/patchwarden/no-reboot-install.json"


def _path(root: str) -> str:
    return os.path.join(root, RECORD.lstrip("/"))


def read(root: str) -> Optional[Dict[str, object]]:
    """The record (``{"time", "patches"}``), or None when no NoReboot Install changed anything
    or the file is unreadable (a damaged record must not stop a scan)."""
    try:
        with open(_path(root), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("time"), str):
        return None
    patches = record.get("patches")
    return {"time": record["time"], "patches": patches if isinstance(patches, list) else []}


def record(
    root: str, finished_at: str, boot: Optional[str], patches: List[Dict[str, object]]
) -> None:
    """Add the ``patches`` an Install with NoReboot installed, finished at ``finished_at``; what
    was recorded before the last boot (``boot``, both ISO-8601 UTC) is dropped, as a reboot
    ends the pending state."""
    changed = [
        {"name": p["name"], "arch": p.get("arch") or "", "version": p["version"]}
        for p in patches
        if p.get("changed") and p.get("result") == "INSTALLED"
    ]
    if not changed:
        return
    previous = read(root)
    kept = []  # type: List[object]
    if previous is not None and (
        boot is None or stamp_seconds(str(previous["time"])) > stamp_seconds(boot)
    ):
        earlier = previous["patches"]
        kept = [p for p in earlier if p not in changed] if isinstance(earlier, list) else []
    path = _path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"time": finished_at, "patches": kept + changed}, handle, indent=1)
    os.replace(temporary, path)  # a reader never sees half a record
