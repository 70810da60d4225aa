"""Stage: agent. RPM-family systems (Amazon Linux, RHEL, CentOS, Oracle, Rocky, Alma): the scan
and install operations on top of :mod:`reconciler.agent.dnf`. Standard library only.

dnf drives RHEL/Oracle/Rocky/Alma 8+, CentOS Stream and Amazon Linux 2022/2023; yum 3 drives
Amazon Linux (1 and 2) and RHEL/CentOS/Oracle 7. ``PATCHWARDEN_RPM_TOOL=dnf|yum`` overrides the
choice (a machine upgraded in place, or tests driving the yum path through a ``yum`` name for dnf).
"""

import functools
import os
import platform
from typing import Dict, List, Optional, Tuple

from reconciler.agent import holds
from reconciler.agent import install as flow
from reconciler.agent.dnf import CORE_PACKAGES, Dnf, Key, Pin, parse_pin
from reconciler.agent.facts import facts, operating_system, read_os_release
from reconciler.agent.install import Applied, Plan, Target, VersionRollback
from reconciler.agent.outcome import inventory

Versions = Dict[Key, List[str]]

_YUM_SYSTEMS = ("AMAZON_LINUX", "AMAZON_LINUX_2")
_YUM_MAJOR = ("REDHAT_ENTERPRISE_LINUX", "CENTOS", "ORACLE_LINUX")


def tool_for(root: str) -> str:
    """dnf or yum for the system at ``root``, by OS and version."""
    override = os.environ.get("PATCHWARDEN_RPM_TOOL", "")
    if override in ("dnf", "yum"):
        return override
    release = read_os_release(root)
    os_name = operating_system(release)
    major = release.get("VERSION_ID", "").split(".")[0]
    if os_name in _YUM_SYSTEMS or (os_name in _YUM_MAJOR and major in ("5", "6", "7")):
        return "yum"
    return "dnf"


def _system(root: str, lock_timeout: int) -> Dnf:
    release = read_os_release(root)
    return Dnf(root, release.get("VERSION_ID", ""), tool_for(root), lock_timeout)


def scan(
    root: str,
    instance_id: Optional[str],
    refresh: bool,
    operation: str = "Scan",
    private_state: Optional[str] = None,
) -> Dict[str, object]:
    """The inventory document of the system at ``root``. (``private_state`` is accepted for the
    contract; dnf's cache of a directory root is inside the root already.)"""
    system = _system(root, lock_timeout=60)
    if refresh:
        system.refresh()
    updates = system.updates(cache_only=not refresh)
    installed = system.installed()
    system.annotate_installed(installed)
    machine = facts(root, platform.machine() or "x86_64")
    # needs-restarting -r's rule on the host: a core package installed after the boot, or a
    # newer kernel than the running one. A directory root never booted: nothing pending.
    booted = str(machine.get("bootTime") or "")
    pending = sorted(
        {
            str(p["name"])
            for p in installed
            if booted and p["name"] in CORE_PACKAGES and str(p.get("installedTime") or "") > booted
        }
    )
    if system.running_kernel_outdated() and "kernel" not in pending:
        pending.append("kernel")
    if pending:
        machine["rebootRequired"] = True
        machine["rebootRequiredPackages"] = pending
    document = inventory(root, instance_id, operation, machine, installed, updates)
    return holds.report(document, holds.dnf_versionlocks(root), "dnf-versionlock")


# Install exact pins; the result says what changed, per package (install.py has the flow).
# rpm runs every scriptlet chrooted into the root (--installroot), never on this host, so
# there is nothing for trust_root_scripts to allow.
install = functools.partial(
    flow.install, parse_pin, lambda root, lock_timeout, _: DnfInstall(_system(root, lock_timeout))
)


class DnfInstall(VersionRollback):
    """The install flow's steps on dnf or yum: a dry run with ``--assumeno``, the tool's own
    history of the transaction, and rollback with ``downgrade``."""

    system: Dnf  # the driver Backend.__init__ keeps, typed

    def holds(self) -> Tuple[str, List[str]]:
        return "dnf versionlock", holds.dnf_versionlocks(self.system.root)

    def needs_held(self, pins: List[Pin], holds: List[str]) -> Dict[str, str]:
        return flow.held_needed(pins, holds, self.system.held_dependants(pins, holds))

    def versions_now(self, names: List[str]) -> Versions:
        return self.system.versions_now(names)

    def state(self, table: Versions, pin: Pin) -> List[str]:
        return _lookup(table, pin[0], pin[1])

    def plan(self, pins: List[Pin], blocked: List[str], before: Versions) -> Plan:
        plan = self.system.plan(pins, blocked)
        names = [p[0] for p in pins]
        dependencies = [
            {"name": p["name"], "arch": p["arch"], "version": p["version"], "action": p["action"]}
            for p in plan.packages
            if p["name"] not in names
        ]
        return Plan(dependencies, {}, plan)

    def apply(self, pins: List[Pin], plan: Plan) -> Applied:
        previous = self.system.last_transaction().get("id")
        outcome = self.system.install(pins)
        # What changed, as the tool itself recorded it (not only what rpm shows afterwards).
        history = self.system.last_transaction()
        fields = {"history": history if history.get("id") not in (None, previous) else {}}
        return Applied(outcome.rc, outcome.stdout + "\n" + outcome.stderr, fields, None)

    def failure(self, pin: Pin, after: Versions, applied: Applied) -> str:
        failure = _scriptlet_failure(pin, applied.output)
        if pin[2] in self.state(after, pin) and not failure:
            return ""
        return (
            failure or _tool_errors(applied.output) or "not installed (exit {})".format(applied.rc)
        )

    def previous(
        self, before: Versions, now: Versions, pin: Pin
    ) -> Tuple[str, List[str], List[str]]:
        """The (name, arch) a pin names as rpm has it (a pin may leave the arch out), with its
        versions before and now."""
        name, arch, _ = pin
        keys = sorted(
            k for k in set(before) | set(now) if k[0] == name and (not arch or k[1] == arch)
        )
        key = keys[0] if keys else (name, arch)
        return key[1], before.get(key, []), now.get(key, [])

    def not_offered(self, targets: List[Target]) -> Dict[str, str]:
        offered = self.system.available_versions([t.pin[0] for t in targets])
        refused = {}  # type: Dict[str, str]
        for target in targets:
            name, arch, was = target.previous
            versions = offered.get((name, arch), {})
            if was not in versions:
                refused[name] = (
                    "{} {} is in no enabled repository any more (they offer {}), so there is "
                    "nothing to downgrade to".format(
                        name, was, ", ".join(versions) or "no version of it"
                    )
                )
        return refused

    def put_back(self, previous: List[Pin]) -> str:
        done = self.system.downgrade(previous)
        return "{} downgrade failed (exit {}): {}".format(
            self.system.tool, done.rc, _tool_errors(done.stdout + "\n" + done.stderr) or "no error"
        )

    def reboot_needed(self, plan: Plan, applied: Applied) -> Tuple[bool, str]:
        """needs-restarting -r's rule: a reboot is needed when a core package (kernel, glibc,
        systemd...) changed, or the running kernel is not the newest installed one (host only)."""
        changed = [str(p["name"]) for p in plan.detail.packages]
        core = sorted({n for n in changed if n in CORE_PACKAGES})
        pending = core + (["kernel"] if self.system.running_kernel_outdated() and not core else [])
        return bool(pending), "updated: " + ", ".join(pending)


def _lookup(table: Versions, name: str, arch: str) -> List[str]:
    found = []  # type: List[str]
    for (n, a), versions in table.items():
        if n == name and (not arch or a == arch):
            found.extend(versions)
    return found


def _scriptlet_failure(pin: Pin, output: str) -> str:
    """rpm keeps a package whose %post failed installed; dnf and yum only say so in their
    output ("Error in POSTIN scriptlet in rpm package NAME", "%post(NAME-V-R.A) scriptlet
    failed"), so the result has to come from there."""
    name, _, evr = pin
    # "(NAME-VERSION-RELEASE." exactly: a package whose name starts with NAME is another one
    # (yum 3 also says "Non-fatal POSTIN scriptlet failure in rpm package NAME-V-R.ARCH").
    exact = "{}-{}.".format(name, evr.split(":")[-1])
    found = []  # type: List[str]
    for line in output.splitlines():
        text = line.strip()
        if "scriptlet" not in text.lower():
            continue
        if (text.endswith("package " + name) or "(" + exact in text or " " + exact in text) and (
            "fail" in text.lower() or "error" in text.lower()
        ):
            found.append(text)
    return " / ".join(found)


def _tool_errors(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return " / ".join(ln for ln in lines if ln.startswith("Error"))[:1000]
