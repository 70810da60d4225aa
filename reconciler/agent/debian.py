"""Stage: agent. Debian-family systems (DEBIAN, UBUNTU, RASPBIAN): the scan and install
operations on top of :mod:`reconciler.agent.apt`. Standard library only.
"""

import functools
from typing import Dict, List, Optional, Tuple

from reconciler.agent import holds
from reconciler.agent import install as flow
from reconciler.agent.apt import Apt, check_scripts_trusted, parse_pin
from reconciler.agent.facts import facts
from reconciler.agent.install import Applied, Backend, Patch, Pin, Plan
from reconciler.agent.outcome import inventory


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
    holds.report(document, system.holds(), "apt-mark")
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


def _installer(root: str, lock_timeout: int, trust_root_scripts: bool) -> "AptInstall":
    check_scripts_trusted(root, trust_root_scripts)  # before anything in the root changes
    return AptInstall(Apt(root, lock_timeout=lock_timeout, trust_root_scripts=trust_root_scripts))


# Install exact pins; the result says what changed, per package (install.py has the flow).
install = functools.partial(flow.install, parse_pin, _installer)


Versions = Dict[Tuple[str, str], Tuple[str, str]]  # (name, arch) -> (version, dpkg status)


class AptInstall(Backend):
    """The install flow's steps on apt and dpkg: recovery of an interrupted dpkg, apt's
    simulation, dpkg's status read back, and rollback of a pin dpkg left unconfigured."""

    system: Apt  # the driver Backend.__init__ keeps, typed

    def versions_now(self, names: List[str]) -> Versions:
        return self.system.versions_now(names)

    def state(self, table: Versions, pin: Pin) -> List[str]:
        found = _lookup(table, pin[0], pin[1])
        return list(found) if found else []

    def holds(self) -> Tuple[str, List[str]]:
        return "apt-mark hold", self.system.holds()

    def recover(self) -> List[Dict[str, object]]:
        return self.system.recover()

    def needs_held(self, pins: List[Pin], holds: List[str]) -> Dict[str, str]:
        return self.system.needs_held(pins, holds)

    def plan(self, pins: List[Pin], blocked: List[str], before: Versions) -> Plan:
        plan = self.system.simulate(pins, blocked)
        return Plan(plan.dependencies, {}, plan)

    def apply(self, pins: List[Pin], plan: Plan) -> Applied:
        outcome = self.system.install(pins)
        return Applied(outcome.rc, outcome.stdout + "\n" + outcome.stderr, {}, None)

    def failure(self, pin: Pin, after: Versions, applied: Applied) -> str:
        if self.state(after, pin) == [pin[2], "ii"]:
            return ""
        return (
            _package_errors(pin[0], applied.output)
            or "not installed: apt/dpkg reported no specific error"
        )

    def roll_back(self, failed: List[Tuple[Pin, Patch]], before: Versions) -> None:
        # A pin dpkg configured stays: only a half-configured or half-installed one breaks
        # every later apt run.
        for pin, patch in failed:
            if str(patch.get("stateAfter", "")).split(" ")[-1] != "ii":
                patch.update(_roll_back(self.system, pin, before))

    def reboot_needed(self, plan: Plan, applied: Applied) -> Tuple[bool, str]:
        pending = self.system.reboot_pending()
        return bool(pending), ", ".join(p for p in pending if p) or "the machine asked for it"


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
