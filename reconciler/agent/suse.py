"""Stage: agent. SUSE systems (SLES 12/15, openSUSE Leap): scan and install through zypper, on top
of :mod:`reconciler.agent.zypper`. Standard library only.

SSM's SUSE rule (reference §3.1): every package in a zypper *patch* is security-relevant; the
patch's category is the classification and its severity the severity. So each update is reported
per package version, with the patches that ship it in ``advisoryIds``.
"""

import functools
import platform
import re
from typing import Dict, List, Optional, Tuple

from reconciler.agent import holds
from reconciler.agent import install as flow
from reconciler.agent.errors import InstallRefused
from reconciler.agent.facts import facts
from reconciler.agent.install import Applied, Plan, Target, VersionRollback
from reconciler.agent.outcome import inventory
from reconciler.agent.patchnames import blocked_by, rpm_names
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
    solver_problem_providers,
    zypper_spec,
)

Versions = Dict[Tuple[str, str], str]
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
    document = inventory(
        root,
        instance_id,
        operation,
        machine,
        installed,
        _updates(installed, candidates, patches, contents),
    )
    return holds.report(document, holds.zypper_locks(root), "zypper-locks")


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


# Install exact pins; the result says what changed, per package (install.py has the flow).
# zypper's rpm runs every scriptlet chrooted into the root, never on this host, so there is
# nothing for trust_root_scripts to allow.
install = functools.partial(
    flow.install,
    parse_pin,
    lambda root, lock_timeout, _: ZypperInstall(Zypper(root, lock_timeout)),
)


class ZypperInstall(VersionRollback):
    """The install flow's steps on zypper: a ``--dry-run`` naming the patches the pins complete,
    zypper's exit codes, and rollback with ``install --oldpackage``."""

    system: Zypper  # the driver Backend.__init__ keeps, typed

    def holds(self) -> Tuple[str, List[str]]:
        return "zypper lock", holds.zypper_locks(self.system.root)

    def versions_now(self, names: List[str]) -> Versions:
        return self.system.rpm_versions(names)

    def state(self, table: Versions, pin: Pin) -> List[str]:
        found = _lookup(table, pin[0], pin[1])
        return [found] if found else []

    def plan(self, pins: List[Pin], blocked: List[str], before: Versions) -> Plan:
        names = [p[0] for p in pins]
        patches = _completed_patches(self.system, pins, before)
        # Naming a patch installs it even when it is interactive (reboot-suggested): zypper only
        # skips those in `zypper patch` without --with-interactive. Naming exactly the patches
        # the approved versions complete is what records them as applied, and yields exit 102.
        specs = [zypper_spec(p) for p in pins] + ["patch:" + p.name for p in patches]
        plan = self.system.install(specs, dry_run=True)
        refuse_unknown(plan)
        summary = parse_install_summary(plan.stdout)
        _refuse_blocked(summary, blocked)
        dependencies = [
            {"name": s.get("name", ""), "arch": s.get("arch", ""), "version": s.get("edition", "")}
            for s in _changed(summary)
            if s.get("name") not in names
        ]
        return Plan(dependencies, {"includedPatches": [p.name for p in patches]}, (specs, patches))

    def needs_held(self, pins: List[Pin], holds: List[str]) -> Dict[str, str]:
        """A dry run of all the pins; only when it changes or needs a held package, one per pin
        to tell which. A lock on the machine stops zypper's solver with a problem naming the
        providers the lock keeps out; a declared hold it would upgrade as a dependency."""
        together = self._needs(pins)
        if not flow.held_needed(pins, holds, {p[0]: together for p in pins}):
            return {}
        if len(pins) == 1:
            return flow.held_needed(pins, holds, {pins[0][0]: together})
        return flow.held_needed(pins, holds, {p[0]: self._needs([p]) for p in pins})

    def _needs(self, pins: List[Pin]) -> List[str]:
        """The packages a dry run of ``pins`` would change, or names as the providers it
        cannot install (a solver problem)."""
        plan = self.system.install([zypper_spec(p) for p in pins], dry_run=True)
        summary = parse_install_summary(plan.stdout)
        return [s.get("name", "") for s in _changed(summary)] + solver_problem_providers(plan)

    def simulated_reboot(self, plan: Plan) -> Dict[str, object]:
        _, patches = plan.detail
        return {
            "required": False,
            "performed": False,
            "wouldBeRequired": any(p.reboot or p.interactive for p in patches),
        }

    def apply(self, pins: List[Pin], plan: Plan) -> Applied:
        specs, _ = plan.detail
        outcome = self.system.install(specs, dry_run=False)
        if outcome.rc == EXIT_INFO_RESTART_NEEDED:
            outcome = self.system.install(specs, dry_run=False)  # zypper updated itself: again
        output = outcome.stdout + "\n" + outcome.stderr
        return Applied(outcome.rc, output, {"exitCode": outcome.rc}, errors(outcome))

    def failure(self, pin: Pin, after: Versions, applied: Applied) -> str:
        # rpm keeps a package whose %post fails installed, and zypper exits 107: the package is
        # there but not set up, so the patch counts as FAILED with rpm's message.
        script = [
            line.strip()
            for line in applied.output.splitlines()
            if "scriptlet failed" in line and "({}-".format(pin[0]) in line
        ]
        if self.state(after, pin) == [pin[2]] and not script:
            return ""
        return (
            " / ".join(script)
            or " / ".join(applied.detail)
            or "not installed: zypper reported no error"
        )

    def previous(
        self, before: Versions, now: Versions, pin: Pin
    ) -> Tuple[str, List[str], List[str]]:
        name, arch, _ = pin
        was = _lookup(before, name, arch)
        installed_arch = next((a for (n, a), v in before.items() if n == name and v == was), arch)
        return installed_arch, self.state(before, pin), self.state(now, pin)

    def not_offered(self, targets: List[Target]) -> Dict[str, str]:
        """A dry run sorts out the previous versions no enabled repository offers any more."""
        plan = self.system.install([zypper_spec(t.previous) for t in targets], dry_run=True)
        refused = {}  # type: Dict[str, str]
        for message in errors(plan):
            if not message.startswith("No provider of"):
                continue
            # "No provider of 'NAME.ARCH=VERSION' found." (or 'NAME=VERSION')
            for name, _, was in [t.previous for t in targets]:
                if re.search("'{}[.= ]".format(re.escape(name)), message):
                    why = "{} {} is in no enabled repository any more (zypper: {})"
                    refused.setdefault(name, why.format(name, was, message.rstrip(".")))
        return refused

    def put_back(self, previous: List[Pin]) -> str:
        done = self.system.install([zypper_spec(p) for p in previous], dry_run=False)
        return "zypper install --oldpackage failed (exit {}): {}".format(
            done.rc, " / ".join(errors(done)) or "no error"
        )

    def reboot_needed(self, plan: Plan, applied: Applied) -> Tuple[bool, str]:
        _, patches = plan.detail
        why = [p.name for p in patches if p.reboot]
        needed = applied.rc == EXIT_INFO_REBOOT_NEEDED
        if needed and not self.system.is_host:
            self.system.record_reboot(why or ["zypper exit code 102"])
        return needed, "patches ask for a reboot: {}".format(
            ", ".join(why) or "zypper exit code 102"
        )


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


def _changed(summary: Dict[str, List[Dict[str, str]]]) -> List[Dict[str, str]]:
    """The packages (not patches) a dry run's summary installs, upgrades or downgrades."""
    return [
        s
        for kind in ("to-install", "to-upgrade", "to-downgrade")
        for s in summary.get(kind, [])
        if s.get("type", "package") == "package"
    ]


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
            pattern = blocked_by(blocked, rpm_names(name, s.get("arch", ""), s.get("edition", "")))
            if pattern is not None:
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
