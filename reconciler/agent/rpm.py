"""Stage: agent. RPM-family systems (Amazon Linux, RHEL, CentOS, Oracle, Rocky, Alma): the scan
and install operations on top of :mod:`reconciler.agent.dnf`. Standard library only.

dnf drives RHEL/Oracle/Rocky/Alma 8+, CentOS Stream and Amazon Linux 2022/2023; yum 3 drives
Amazon Linux (1 and 2) and RHEL/CentOS/Oracle 7. ``PATCHWARDEN_RPM_TOOL=dnf|yum`` overrides the
choice (a machine upgraded in place, or tests driving the yum path through a ``yum`` name for dnf).
"""

import os
import platform
from typing import Dict, List, Optional, Tuple

from reconciler.agent.dnf import CORE_PACKAGES, Dnf, Key, Pin, parse_pin
from reconciler.agent.facts import facts, operating_system, read_os_release
from reconciler.agent.outcome import install_result, inventory, now, reboot

Versions = Dict[Key, List[str]]
Patch = Dict[str, object]

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
    return inventory(root, instance_id, operation, machine, installed, updates)


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
    names = [p[0] for p in pins]
    before = system.versions_now(names)
    plan = system.plan(pins, blocked)
    result["dependencies"] = [
        {"name": p["name"], "arch": p["arch"], "version": p["version"], "action": p["action"]}
        for p in plan.packages
        if p["name"] not in names
    ]
    if simulate:
        result["patches"] = [_planned(p, before) for p in pins]
        result["changed"] = False
        result["reboot"] = {"required": False, "performed": False}
        return result
    previous = system.last_transaction().get("id")
    outcome = system.install(pins)
    output = outcome.stdout + "\n" + outcome.stderr
    # What changed, as the tool itself recorded it (not only what rpm shows afterwards).
    history = system.last_transaction()
    result["history"] = history if history.get("id") not in (None, previous) else {}
    after = system.versions_now(names + [str(d["name"]) for d in plan.packages])
    patches = [_outcome(p, before, after, output, outcome.rc) for p in pins]
    failed = [(pin, patch) for pin, patch in zip(pins, patches) if patch["result"] == "FAILED"]
    if failed:
        _roll_back(system, failed, before)
    result["patches"] = patches
    result["changed"] = any(p["changed"] for p in patches)
    changed_names = [str(p["name"]) for p in plan.packages]
    result["reboot"] = _reboot(system, reboot_option, allow_reboot, changed_names, output)
    result["finishedAt"] = now()
    return result


def _roll_back(system: Dnf, failed: List[Tuple[Pin, Patch]], before: Versions) -> None:
    """Put back the versions installed before the failed pins, as the Debian backend does. rpm
    keeps a package whose %post or %posttrans failed installed (set up halfway, and dnf exits 0
    after a failed %post); a failed %pre leaves the old version. Only the failed pins go back,
    in one ``downgrade`` transaction: the pins that installed cleanly stay (``history undo`` of
    the whole transaction would take those security fixes back out too). Each patch gets
    ``rolledBack``, ``rollback`` (what happened, or precisely why not) and ``stateAfter``."""
    names = [pin[0] for pin, _ in failed]
    current = system.versions_now(names)
    offered = None  # type: Optional[Dict[Key, Dict[str, str]]]
    targets = []  # type: List[Tuple[Pin, Patch, Key, str]]
    for pin, patch in failed:
        name, arch, _ = pin
        key, was, is_now = _installed_key(before, current, name, arch)
        if sorted(is_now) == sorted(was):
            patch.update(rolledBack=False, rollback=nothing_to_roll_back(name, was))
            continue
        why = _not_restorable(name, was, is_now)
        if not why:
            if offered is None:
                offered = system.available_versions(names)
            if was[0] not in offered.get(key, {}):
                why = (
                    "{} {} is in no enabled repository any more (they offer {}), so there is "
                    "nothing to downgrade to".format(
                        name, was[0], ", ".join(offered.get(key, {})) or "no version of it"
                    )
                )
        if why:
            patch.update(rolledBack=False, rollback=not_rolled_back(name, is_now, why))
            continue
        targets.append((pin, patch, key, was[0]))
    if not targets:
        return
    done = system.downgrade([(key[0], key[1], version) for _, _, key, version in targets])
    restored = system.versions_now([key[0] for _, _, key, _ in targets])
    for pin, patch, key, version in targets:
        state = restored.get(key, [])
        patch["stateAfter"] = " ".join(state) or "absent"
        if state == [version]:
            patch.update(
                rolledBack=True,
                changed=False,
                rollback="restored {} {}".format(pin[0], version),
            )
        else:
            why = "{} downgrade failed (exit {}): {}".format(
                system.tool, done.rc, _tool_errors(done.stdout + "\n" + done.stderr) or "no error"
            )
            patch.update(rolledBack=False, rollback=not_rolled_back(pin[0], state, why))


def _installed_key(
    before: Versions, now: Versions, name: str, arch: str
) -> Tuple[Key, List[str], List[str]]:
    """The (name, arch) a pin names as rpm has it (a pin may leave the arch out), with its
    versions before and now."""
    keys = sorted(k for k in set(before) | set(now) if k[0] == name and (not arch or k[1] == arch))
    key = keys[0] if keys else (name, arch)
    return key, before.get(key, []), now.get(key, [])


def _not_restorable(name: str, was: List[str], now: List[str]) -> str:
    if not was:
        return "nothing to restore: it was not installed before"
    if len(was) > 1 or len(now) > 1:
        # Install-only packages (kernel) keep old versions side by side: the old one is still
        # there to boot, and removing the new one is a decision for a person.
        return "{} is install-only ({} installed side by side); {} is still installed".format(
            name, " ".join(now), " ".join(was)
        )
    return ""


def nothing_to_roll_back(name: str, versions: List[str]) -> str:
    """The ``rollback`` text of a failed pin rpm did not install (its %pre failed, say)."""
    return "nothing to roll back: rpm did not change {} ({})".format(
        name, " ".join(versions) or "not installed"
    )


def not_rolled_back(name: str, state: List[str], why: str) -> str:
    """The ``rollback`` text of a failed pin whose previous version could not be put back."""
    return "could not roll back {}: {}; it is left at {}; repair it by hand".format(
        name, why, " ".join(state) or "absent"
    )


def _lookup(table: Dict[Key, List[str]], name: str, arch: str) -> List[str]:
    found = []  # type: List[str]
    for (n, a), versions in table.items():
        if n == name and (not arch or a == arch):
            found.extend(versions)
    return found


def _planned(pin: Pin, before: Dict[Key, List[str]]) -> Dict[str, object]:
    name, arch, version = pin
    already = version in _lookup(before, name, arch)
    return {
        "name": name,
        "arch": arch,
        "version": version,
        "result": "UNCHANGED" if already else "WOULD_INSTALL",
        "changed": False,
    }


def _outcome(
    pin: Pin, before: Dict[Key, List[str]], after: Dict[Key, List[str]], output: str, rc: int
) -> Dict[str, object]:
    name, arch, version = pin
    was, now = _lookup(before, name, arch), _lookup(after, name, arch)
    failure = _scriptlet_failure(pin, output)
    if version in now and not failure:
        changed = version not in was
        return {
            "name": name,
            "arch": arch,
            "version": version,
            "result": "INSTALLED" if changed else "UNCHANGED",
            "changed": changed,
        }
    message = failure or _tool_errors(output) or "not installed (exit {})".format(rc)
    return {
        "name": name,
        "arch": arch,
        "version": version,
        "result": "FAILED",
        "changed": sorted(now) != sorted(was),
        "message": message,
        "stateAfter": " ".join(now) or "absent",
    }


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


def _reboot(
    system: Dnf, option: str, allow: bool, changed: List[str], output: str
) -> Dict[str, object]:
    """needs-restarting -r's rule: a reboot is needed when a core package (kernel, glibc,
    systemd...) changed, or the running kernel is not the newest installed one (host only)."""
    core = sorted({n for n in changed if n in CORE_PACKAGES})
    pending = core + (["kernel"] if system.running_kernel_outdated() and not core else [])
    why = "updated: " + ", ".join(pending)
    return reboot(bool(pending), why, option, system.is_host, allow)
