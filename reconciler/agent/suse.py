"""Stage: agent. SUSE systems (SLES 12/15, openSUSE Leap): scan and install through zypper, on top
of :mod:`reconciler.agent.zypper`. Standard library only.

SSM's SUSE rule (reference §3.1): every package in a zypper *patch* is security-relevant; the
patch's category is the classification and its severity the severity. So each update is reported
per package version, with the patches that ship it in ``advisoryIds``.
"""

import fnmatch
import platform
import re
from typing import Dict, List, Optional, Tuple

from reconciler.agent.errors import InstallRefused
from reconciler.agent.facts import facts
from reconciler.agent.outcome import install_result, inventory, now, reboot
from reconciler.agent.rpm import not_rolled_back, nothing_to_roll_back
from reconciler.agent.zypper import (
    CLASSIFICATIONS,
    EXIT_INFO_REBOOT_NEEDED,
    EXIT_INFO_RESTART_NEEDED,
    SEVERITIES,
    Patch,
    Pin,
    Update,
    Zypper,
    errors,
    parse_install_summary,
    parse_pin,
    parse_rpm_query,
    refuse_unknown,
    zypper_spec,
)

_SEVERITY_RANK = {"Critical": 4, "Important": 3, "Moderate": 2, "Low": 1}


def scan(
    root: str,
    instance_id: Optional[str],
    refresh: bool,
    operation: str = "Scan",
    private_state: Optional[str] = None,
) -> Dict[str, object]:
    """The inventory document of the system at ``root``. ``private_state`` is not needed: a
    directory root keeps zypper's state inside the root, and on the host zypper needs root."""
    system = Zypper(root)
    rpm = system.rpm_query()  # rpm reads the db while zypper runs (zypper's lock is its own)
    # A failed refresh fails the scan naming the repository: no inventory from stale data.
    candidates, all_patches = system.updates_and_patches(refresh)
    patches = [p for p in all_patches if p.status in ("needed", "optional")]
    contents = system.patch_packages([p.name for p in patches])
    rpm_result = rpm.result(300)
    installed = parse_rpm_query(rpm_result.stdout) if rpm_result.rc == 0 else system.installed()
    machine = facts(root, platform.machine() or "x86_64")
    if system.reboot_pending():
        machine["rebootRequired"] = True
    return inventory(
        root,
        instance_id,
        operation,
        machine,
        installed,
        _updates(installed, candidates, patches, contents),
    )


def _updates(
    installed: List[Dict[str, object]],
    candidates: List[Update],
    patches: List[Patch],
    contents: Dict[str, List[Tuple[str, str, str]]],
) -> List[Dict[str, object]]:
    """One entry per package version: zypper's candidates, plus any version a patch ships that
    is not the candidate (``candidate: false``), so a patch-based baseline can still approve it."""
    have = {}  # type: Dict[str, List[Tuple[str, str]]]
    for pkg in installed:
        have.setdefault(str(pkg["name"]), []).append((str(pkg["arch"]), str(pkg["version"])))
    out = {}  # type: Dict[Tuple[str, str, str], Dict[str, object]]
    for cand in candidates:
        out[(cand.name, cand.arch, cand.version)] = {
            "name": cand.name,
            "arch": cand.arch,
            "version": cand.version,
            "installedVersion": cand.installed_version or None,
            "repository": cand.repository or None,
            "security": False,
            "candidate": True,
        }
    for patch in patches:
        for name, arch, version in contents.get(patch.name, []):
            for inst_arch, inst_version in have.get(name, []):
                if (
                    arch and arch != inst_arch and inst_arch != "noarch"
                ) or inst_version == version:
                    continue
                key = (name, arch or inst_arch, version)
                entry = out.setdefault(
                    key,
                    {
                        "name": name,
                        "arch": key[1],
                        "version": version,
                        "installedVersion": inst_version,
                        "repository": patch.repository or None,
                        "candidate": False,
                    },
                )
                _add_patch(entry, patch)
    return [{k: v for k, v in e.items() if v is not None} for e in out.values()]


def _add_patch(entry: Dict[str, object], patch: Patch) -> None:
    """Fold a patch into a package version: a version several patches ship takes the most
    severe severity, Security over other categories, and the earliest issue date."""
    ids = list(entry.get("advisoryIds") or [])  # type: ignore[call-overload]
    ids.append(patch.name)
    entry["advisoryIds"] = ids
    entry["security"] = True
    entry["cves"] = sorted(set(list(entry.get("cves") or []) + patch.cves))  # type: ignore[call-overload]
    if patch.bugzilla:
        entry["bugzillaIds"] = sorted(
            set(list(entry.get("bugzillaIds") or []) + patch.bugzilla)  # type: ignore[call-overload]
        )
    category = CLASSIFICATIONS.get(patch.category.lower(), patch.category.title() or "Optional")
    if entry.get("classification") != "Security":
        entry["classification"] = category
    severity = SEVERITIES.get(patch.severity.lower())
    if severity and _SEVERITY_RANK[severity] > _SEVERITY_RANK.get(str(entry.get("severity")), 0):
        entry["severity"] = severity
    if patch.issued and (not entry.get("issued") or patch.issued < str(entry["issued"])):
        entry["issued"] = patch.issued
    if patch.reboot or patch.interactive:
        entry["rebootSuggested"] = True


def install(
    root: str,
    pin_texts: List[str],
    blocked: List[str],
    simulate: bool,
    reboot_option: str,
    allow_reboot: bool,
    lock_timeout: int,
) -> Dict[str, object]:
    """Install exact pins (and the patches they complete); the result says what changed."""
    pins = [parse_pin(p) for p in pin_texts]  # refuses invalid pins before anything runs
    system = Zypper(root, lock_timeout)
    result = install_result(simulate)
    names = [p[0] for p in pins]
    before = system.rpm_versions(names)
    patches = _completed_patches(system, pins, before)
    # Naming a patch installs it even when it is interactive (reboot-suggested): zypper only
    # skips those in `zypper patch` without --with-interactive. Naming exactly the patches the
    # approved versions complete is what records them as applied, and yields exit code 102.
    specs = [zypper_spec(p) for p in pins] + ["patch:" + p.name for p in patches]
    plan = system.install(specs, dry_run=True)
    refuse_unknown(plan)
    summary = parse_install_summary(plan.stdout)
    _refuse_blocked(summary, blocked)
    result["dependencies"] = [
        {"name": s.get("name", ""), "arch": s.get("arch", ""), "version": s.get("edition", "")}
        for kind in ("to-install", "to-upgrade", "to-downgrade")
        for s in summary.get(kind, [])
        if s.get("type", "package") == "package" and s.get("name") not in names
    ]
    result["includedPatches"] = [p.name for p in patches]
    if simulate:
        result["patches"] = [_planned(p, before) for p in pins]
        result["changed"] = False
        result["reboot"] = {
            "required": False,
            "performed": False,
            "wouldBeRequired": any(p.reboot or p.interactive for p in patches),
        }
        return result
    outcome = system.install(specs, dry_run=False)
    if outcome.rc == EXIT_INFO_RESTART_NEEDED:
        outcome = system.install(specs, dry_run=False)  # zypper updated itself: run it again
    output = outcome.stdout + "\n" + outcome.stderr
    after = system.rpm_versions(names)
    outcomes = [_outcome(p, before, after, output, errors(outcome)) for p in pins]
    failed = [(p, r) for p, r in zip(pins, outcomes) if r["result"] == "FAILED"]
    if failed:
        _roll_back(system, failed, before)
    result["patches"] = outcomes
    result["exitCode"] = outcome.rc
    result["changed"] = any(p["changed"] for p in outcomes)
    needs_reboot = outcome.rc == EXIT_INFO_REBOOT_NEEDED
    result["reboot"] = _reboot(
        system, needs_reboot, [p.name for p in patches if p.reboot], reboot_option, allow_reboot
    )
    result["finishedAt"] = now()
    return result


def _roll_back(
    system: Zypper, failed: List[Tuple[Pin, Dict[str, object]]], before: Dict[Tuple[str, str], str]
) -> None:
    """Put back the versions installed before the failed pins, as the dnf backend does: rpm
    keeps a package whose %post failed installed (zypper exits 107). zypper has no history to
    undo, so the previous versions are installed again by exact version (``--oldpackage``),
    after a dry run that sorts out those no enabled repository offers any more."""
    current = system.rpm_versions([pin[0] for pin, _ in failed])
    targets = {}  # type: Dict[str, Tuple[Pin, Dict[str, object], Tuple[str, str, str]]]
    for pin, patch in failed:
        name, arch, _ = pin
        was, now_at = _lookup(before, name, arch), _lookup(current, name, arch)
        if was == now_at:
            patch.update(
                rolledBack=False, rollback=nothing_to_roll_back(name, [was] if was else [])
            )
        elif was is None:
            why = "nothing to restore: it was not installed before"
            patch.update(rolledBack=False, rollback=not_rolled_back(name, [str(now_at)], why))
        else:
            key_arch = next(a for (n, a), v in before.items() if n == name and v == was)
            targets[name] = (pin, patch, (name, key_arch, was))
    if not targets:
        return
    plan = system.install([zypper_spec(t[2]) for t in targets.values()], dry_run=True)
    for message in errors(plan):
        if message.startswith("No provider of"):
            # "No provider of 'NAME.ARCH=VERSION' found." (or 'NAME=VERSION')
            for name in [n for n in targets if re.search("'{}[.= ]".format(re.escape(n)), message)]:
                pin, patch, (_, _, was) = targets.pop(name)
                why = "{} {} is in no enabled repository any more (zypper: {})".format(
                    name, was, message.rstrip(".")
                )
                state = [_lookup(current, name, pin[1]) or ""]
                patch.update(rolledBack=False, rollback=not_rolled_back(name, state, why))
    if not targets:
        return
    done = system.install([zypper_spec(t[2]) for t in targets.values()], dry_run=False)
    restored = system.rpm_versions(list(targets))
    for name, (_pin, patch, (_, arch, was)) in targets.items():
        now_at = _lookup(restored, name, arch)
        patch["stateAfter"] = now_at or "absent"
        if now_at == was:
            patch.update(
                rolledBack=True, changed=False, rollback="restored {} {}".format(name, was)
            )
        else:
            why = "zypper install --oldpackage failed (exit {}): {}".format(
                done.rc, " / ".join(errors(done)) or "no error"
            )
            patch.update(rolledBack=False, rollback=not_rolled_back(name, [now_at or ""], why))


def _completed_patches(
    system: Zypper, pins: List[Pin], before: Dict[Tuple[str, str], str]
) -> List[Patch]:
    """The applicable patches whose every installed package is pinned to the patch's version."""
    pinned = {(p[0], p[2]) for p in pins}
    candidates = [p for p in system.patches() if p.status in ("needed", "optional")]
    contents = system.patch_packages([p.name for p in candidates])
    installed_names = {name for name, _ in before}
    chosen = []
    for patch in candidates:
        relevant = [(n, v) for n, _, v in contents.get(patch.name, []) if n in installed_names]
        if relevant and all(item in pinned for item in relevant):
            chosen.append(patch)
    return chosen


def _refuse_blocked(summary: Dict[str, List[Dict[str, str]]], blocked: List[str]) -> None:
    removed = [s.get("name", "") for s in summary.get("to-remove", [])]
    if removed:
        raise InstallRefused(
            "the install would remove {}".format(", ".join(removed)), {"remove": removed}
        )
    for kind in ("to-install", "to-upgrade", "to-downgrade", "to-reinstall"):
        for s in summary.get(kind, []):
            if s.get("type", "package") != "package":
                continue
            name = s.get("name", "")
            full = "{}-{}.{}".format(name, s.get("edition", ""), s.get("arch", ""))
            for pattern in blocked:
                if (
                    fnmatch.fnmatchcase(name, pattern)
                    or fnmatch.fnmatchcase(full, pattern)
                    or fnmatch.fnmatchcase(full + ".rpm", pattern)
                ):
                    raise InstallRefused(
                        "the install would install {}, which is rejected with BLOCK ({})".format(
                            full, pattern
                        ),
                        {"package": name, "pattern": pattern},
                    )


def _lookup(table: Dict[Tuple[str, str], str], name: str, arch: str) -> Optional[str]:
    for (n, a), version in table.items():
        if n == name and (not arch or a == arch):
            return version
    return None


def _planned(pin: Pin, before: Dict[Tuple[str, str], str]) -> Dict[str, object]:
    name, arch, version = pin
    already = _lookup(before, name, arch) == version
    return {
        "name": name,
        "arch": arch,
        "version": version,
        "result": "UNCHANGED" if already else "WOULD_INSTALL",
        "changed": False,
    }


def _outcome(
    pin: Pin,
    before: Dict[Tuple[str, str], str],
    after: Dict[Tuple[str, str], str],
    output: str,
    errs: List[str],
) -> Dict[str, object]:
    name, arch, version = pin
    was, now = _lookup(before, name, arch), _lookup(after, name, arch)
    entry = {"name": name, "arch": arch, "version": version}  # type: Dict[str, object]
    # rpm keeps a package whose %post fails installed, and zypper exits 107: the package is
    # there but not set up, so the patch counts as FAILED with rpm's message.
    script = [
        line.strip()
        for line in output.splitlines()
        if "scriptlet failed" in line and "({}-".format(name) in line
    ]
    if now == version and not script:
        changed = was != version
        entry.update({"result": "INSTALLED" if changed else "UNCHANGED", "changed": changed})
        return entry
    message = " / ".join(script) or " / ".join(errs) or "not installed: zypper reported no error"
    entry.update(
        {
            "result": "FAILED",
            "changed": now != was,
            "message": message,
            "stateAfter": now or "absent",
        }
    )
    return entry


def _reboot(
    system: Zypper, needed: bool, why: List[str], option: str, allow: bool
) -> Dict[str, object]:
    if needed and not system.is_host:
        system.record_reboot(why or ["zypper exit code 102"])
    reason = "patches ask for a reboot: {}".format(", ".join(why) or "zypper exit code 102")
    return reboot(needed, reason, option, system.is_host, allow)
