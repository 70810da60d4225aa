"""Stage: agent. Debian-family systems (DEBIAN, UBUNTU, RASPBIAN): the scan and install
operations on top of :mod:`reconciler.agent.apt`. Standard library only.
"""

from typing import Dict, List, Optional, Tuple

from reconciler.agent.apt import Apt, parse_pin
from reconciler.agent.facts import facts
from reconciler.agent.outcome import install_result, inventory, now, reboot


def _system(root: str, lock_timeout: int, private_state: Optional[str] = None) -> Apt:
    return Apt(root, lock_timeout=lock_timeout, private_state=private_state)


def scan(
    root: str,
    instance_id: Optional[str],
    refresh: bool,
    operation: str = "Scan",
    private_state: Optional[str] = None,
) -> Dict[str, object]:
    """The inventory document of the system at ``root``."""
    system = _system(root, lock_timeout=60, private_state=private_state)
    if refresh:
        system.refresh()
    installed, updates, broken = system.inventory()
    machine = facts(root, system.architecture())
    document = inventory(root, instance_id, operation, machine, installed, updates)
    if broken:
        document["failed"] = [
            {
                "name": b["name"],
                "arch": b["arch"],
                "version": b["version"],
                "reason": "dpkg left the package {}".format(b["state"]),
            }
            for b in broken
            if b["name"]
        ]
    return document


def install(
    root: str,
    pin_texts: List[str],
    blocked: List[str],
    simulate: bool,
    reboot_option: str,
    allow_reboot: bool,
    lock_timeout: int,
) -> Dict[str, object]:
    """Install exact pins; the result says what changed, per package."""
    pins = [parse_pin(p) for p in pin_texts]  # refuses invalid pins before anything runs
    system = _system(root, lock_timeout)
    result = install_result(simulate)
    before = system.versions_now([p[0] for p in pins])
    result["recovery"] = [] if simulate else system.recover()
    plan = system.simulate(pins, blocked)
    result["dependencies"] = plan.dependencies
    if simulate:
        result["patches"] = [_planned(p, before) for p in pins]
        result["changed"] = False
        result["reboot"] = {"required": False, "performed": False}
        return result
    outcome = system.install(pins)
    after = system.versions_now([p[0] for p in pins] + [d["name"] for d in plan.dependencies])
    patches = [_outcome(p, before, after, outcome.stdout + "\n" + outcome.stderr) for p in pins]
    for pin, patch in zip(pins, patches):
        if patch["result"] == "FAILED" and str(patch.get("stateAfter", "")).split(" ")[-1] != "ii":
            patch.update(_roll_back(system, pin, before))
    result["patches"] = patches
    result["changed"] = any(p["changed"] for p in patches) or bool(result["recovery"])
    pending = system.reboot_pending()
    result["reboot"] = reboot(
        bool(pending),
        ", ".join(p for p in pending if p) or "the machine asked for it",
        reboot_option,
        system.is_host,
        allow_reboot,
    )
    result["finishedAt"] = now()
    return result


Pin = Tuple[str, str, str]
Versions = Dict[Tuple[str, str], Tuple[str, str]]


def _roll_back(system: Apt, pin: Pin, before: Versions) -> Dict[str, object]:
    """Put back the version that was installed before a failed upgrade, so the machine is not
    left with a half-configured package that makes every later apt run fail."""
    name, arch, _ = pin
    was = _lookup(before, name, arch)
    if was is None:
        return {"rolledBack": False, "rollback": "nothing to restore: it was not installed before"}
    done = system.downgrade(name, arch, was[0])
    now = _lookup(system.versions_now([name]), name, arch)
    if done.rc == 0 and now is not None and now == (was[0], "ii"):
        return {
            "rolledBack": True,
            "stateAfter": "{} ii".format(was[0]),
            "rollback": "restored {} {}".format(name, was[0]),
        }
    state = "{} {}".format(*now) if now else "absent"
    return {
        "rolledBack": False,
        "stateAfter": state,
        "rollback": "could not restore {} {}: the package is left {}; repair it by hand".format(
            name, was[0], state
        ),
    }


def _planned(pin: Pin, before: Versions) -> Dict[str, object]:
    name, arch, version = pin
    current = _lookup(before, name, arch)
    already = current is not None and current[0] == version
    return {
        "name": name,
        "arch": arch,
        "version": version,
        "result": "UNCHANGED" if already else "WOULD_INSTALL",
        "changed": False,
    }


def _outcome(pin: Pin, before: Versions, after: Versions, output: str) -> Dict[str, object]:
    name, arch, version = pin
    was, now = _lookup(before, name, arch), _lookup(after, name, arch)
    if now is not None and now[0] == version and now[1] == "ii":
        changed = was is None or was[0] != version
        return {
            "name": name,
            "arch": arch or "",
            "version": version,
            "result": "INSTALLED" if changed else "UNCHANGED",
            "changed": changed,
        }
    message = _package_errors(name, output) or "not installed: apt/dpkg reported no specific error"
    state = "{} {}".format(now[0], now[1]) if now else "absent"
    return {
        "name": name,
        "arch": arch or "",
        "version": version,
        "result": "FAILED",
        "changed": now != was,
        "message": message,
        "stateAfter": state,
    }


def _lookup(table: Versions, name: str, arch: str) -> Optional[Tuple[str, str]]:
    for (n, a), value in table.items():
        if n == name and (not arch or a == arch):
            return value
    return None


def _package_errors(name: str, output: str) -> str:
    lines = output.splitlines()
    found = []  # type: List[str]
    for index, line in enumerate(lines):
        if "error processing" in line and " {} ".format(name) in line + " ":
            found.append(line.strip())
            found.extend(nxt.strip() for nxt in lines[index + 1 : index + 3] if nxt.startswith(" "))
        elif line.startswith("E:") and name in line:
            found.append(line.strip())
    return " / ".join(found)
