"""Stage: agent. The install flow every backend shares (apt/dpkg, dnf/yum, zypper), so exact-pin
installs are checked, simulated, run, read back, rolled back and reported the same way everywhere.

1. The pins are checked (the backend's ``parse_pin``) before anything runs, before the backend
   even opens the system. 2. The pinned packages' versions are read. 3. What an interrupted run
   left is repaired (apt only). 4. The package manager simulates the install, refused when it
   would install a BLOCKed package or remove anything; ``--simulate`` stops there. 5. The install
   runs. 6. Each pin is read back: INSTALLED, UNCHANGED or FAILED. 7. FAILED pins are rolled back.
8. The reboot decision; a NoReboot Install records what it installed (:mod:`noreboot`).

Standard library only. It runs no command itself: every step that touches the machine is a
method of the backend (:class:`Backend`), which holds only what its package manager does its own
way. The result's fields are those of docs/agent.md, in one order for every backend.
"""

import fnmatch
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Sequence, Tuple

from reconciler.agent import noreboot
from reconciler.agent.facts import boot_time
from reconciler.agent.outcome import install_result, now, reboot

Pin = Tuple[str, str, str]  # name, arch ("" = native), version as the package manager spells it
Key = Tuple[str, str]  # name, arch
Patch = Dict[str, object]  # one pin's entry in the result's "patches"

FIELDS = (
    "apiVersion", "kind", "simulate", "startedAt", "recovery", "dependencies", "includedPatches",
    "history", "patches", "exitCode", "changed", "reboot", "finishedAt",
)  # fmt: skip


class Plan(NamedTuple):
    """What the package manager's simulation says the install would do."""

    dependencies: Sequence[Mapping[str, object]]  # the packages it pulls in beyond the pins
    fields: Mapping[str, object]  # further result fields of this backend (zypper: includedPatches)
    detail: Any  # what the backend's later steps need from its simulation


class Applied(NamedTuple):
    """What the install run did, as the package manager said it."""

    rc: int
    output: str  # stdout and stderr: where scriptlet and maintainer-script failures are told
    fields: Mapping[str, object]  # further result fields (dnf: history; zypper: exitCode)
    detail: Any  # what the backend's later steps need from the run


class Backend:
    """What each package manager does its own way; :func:`install` is the flow they share.
    ``Versions`` tables map (name, arch) to what the package manager shows for it."""

    def __init__(self, system: Any) -> None:
        self.system = system  # the package manager's driver (Apt, Dnf, Zypper)
        self.is_host = bool(system.is_host)

    def versions_now(self, names: List[str]) -> Dict[Key, Any]:
        """The installed state of the packages ``names``."""
        raise NotImplementedError

    def state(self, table: Dict[Key, Any], pin: Pin) -> List[str]:
        """What ``table`` shows for the pin's package: its version(s) (several for an
        install-only package), and for dpkg its status too; [] when it is not installed."""
        raise NotImplementedError

    def recover(self) -> List[Dict[str, object]]:
        """Repair what an interrupted run left; the actions taken."""
        return []

    def holds(self) -> Tuple[str, List[str]]:
        """(tool, names or globs) the package manager holds on the machine: pins of those are
        reported HELD and never sent to it (docs/guardrails.md)."""
        return "", []

    def needs_held(self, pins: List[Pin], holds: List[str]) -> Dict[str, str]:
        """Pin name -> the held package (a name ``holds`` matches) that installing it would have
        to change: such a pin is left out, HELD, so the others still install. Each backend asks
        its package manager's own depsolve (apt, dnf and zypper; docs/agent.md)."""
        return {}

    def plan(self, pins: List[Pin], blocked: List[str], before: Dict[Key, Any]) -> Plan:
        """Simulate the install; InstallRefused for a BLOCKed package or a removal."""
        raise NotImplementedError

    def simulated_reboot(self, plan: Plan) -> Dict[str, object]:
        return {"required": False, "performed": False}

    def apply(self, pins: List[Pin], plan: Plan) -> Applied:
        raise NotImplementedError

    def failure(self, pin: Pin, after: Dict[Key, Any], applied: Applied) -> str:
        """Why the pin is not installed and set up after the run; "" when it is."""
        raise NotImplementedError

    def roll_back(self, failed: List[Tuple[Pin, Patch]], before: Dict[Key, Any]) -> None:
        """Put back what the failed pins replaced; each patch says what happened."""
        raise NotImplementedError

    def reboot_needed(self, plan: Plan, applied: Applied) -> Tuple[bool, str]:
        """(needed, why) after the run."""
        raise NotImplementedError


def install(
    parse_pin: Callable[[str], Pin],
    open_backend: Callable[[str, int, bool], Backend],
    root: str,
    pin_texts: List[str],
    blocked: List[str],
    simulate: bool,
    reboot_option: str,
    allow_reboot: bool,
    lock_timeout: int,
    trust_root_scripts: bool = False,
    declared: Sequence[str] = (),
) -> Dict[str, object]:
    """Install exact pins; the result says what changed, per package. A backend module's
    ``install`` is this with its ``parse_pin`` and ``open_backend(root, lock_timeout,
    trust_root_scripts)``; the backend refuses a root whose maintainer scripts would run on this
    host unless ``trust_root_scripts`` (the operator's ``--trust-root-scripts``). ``declared``:
    the hold patterns of the machine's patch group and instance (``--hold``)."""
    pins = [parse_pin(p) for p in pin_texts]  # refuses invalid pins before anything runs
    backend = open_backend(root, lock_timeout, trust_root_scripts)
    result = install_result(simulate)
    # A hold made on the machine after the scan the pins came from: the package manager would
    # refuse the pin (apt) or skip it (dnf, zypper), which the flow would report FAILED.
    holds = _hold_sources(*backend.holds(), declared)
    held, pins = _without_held(pins, holds)
    # An update that needs a held package at a newer version: left out like SSM's BLOCK leaves
    # out a rejected package's dependants, so that the other pins still install.
    dependants, pins = _needing_held(backend, pins, holds)
    held += dependants
    if not pins:
        result.update(patches=held, dependencies=[], recovery=[], changed=False)
        result["reboot"] = reboot(False, "", reboot_option, backend.is_host, allow_reboot)
        return _in_order(result)
    before = backend.versions_now([p[0] for p in pins])
    result["recovery"] = [] if simulate else backend.recover()
    plan = backend.plan(pins, blocked, before)
    result["dependencies"] = plan.dependencies
    result.update(plan.fields)
    if simulate:
        result["patches"] = held + [_planned(backend, p, before) for p in pins]
        result["changed"] = False
        result["reboot"] = backend.simulated_reboot(plan)
        return _in_order(result)
    applied = backend.apply(pins, plan)
    after = backend.versions_now([p[0] for p in pins])
    patches = [_outcome(backend, p, before, after, applied) for p in pins]
    failed = [(p, patch) for p, patch in zip(pins, patches) if patch["result"] == "FAILED"]
    if failed:
        backend.roll_back(failed, before)
    result.update(applied.fields)
    result["patches"] = held + patches
    result["changed"] = any(p["changed"] for p in patches) or bool(result["recovery"])
    needed, why = backend.reboot_needed(plan, applied)
    result["reboot"] = reboot(needed, why, reboot_option, backend.is_host, allow_reboot)
    result["finishedAt"] = now()
    if reboot_option == "NoReboot":  # what it installed awaits a boot (SSM's pending reboot)
        noreboot.record(root, str(result["finishedAt"]), boot_time(root), patches)
    return _in_order(result)


def _hold_sources(tool: str, names: List[str], declared: Sequence[str]) -> Dict[str, str]:
    """Each hold pattern -> who holds it, as messages say it: the machine's own first."""
    holds = {name: "on the machine ({} {})".format(tool, name) for name in names}
    for pattern in declared:
        holds.setdefault(pattern, "by the patch group or instance ({!r})".format(pattern))
    return holds


def _without_held(pins: List[Pin], holds: Dict[str, str]) -> Tuple[List[Patch], List[Pin]]:
    """(the HELD outcomes of the pins ``holds`` hold, the other pins)."""
    held, kept = [], []  # type: List[Patch], List[Pin]
    for pin in pins:
        hold = next((n for n in holds if fnmatch.fnmatchcase(pin[0], n)), None)
        if hold is None:
            kept.append(pin)
            continue
        held.append(_held(pin, "held {}: not installed".format(holds[hold])))
    return held, kept


def _needing_held(
    backend: Backend, pins: List[Pin], holds: Dict[str, str]
) -> Tuple[List[Patch], List[Pin]]:
    """(the HELD outcomes of the pins that need a held package changed, the other pins)."""
    needs = backend.needs_held(pins, list(holds)) if pins and holds else {}
    held = []  # type: List[Patch]
    for pin in (p for p in pins if p[0] in needs):
        name = needs[pin[0]]
        hold = next(n for n in holds if fnmatch.fnmatchcase(name, n))
        held.append(_held(pin, "needs {}, held {}: not installed".format(name, holds[hold])))
    return held, [p for p in pins if p[0] not in needs]


def held_needed(
    pins: List[Pin], holds: List[str], needed: Mapping[str, List[str]]
) -> Dict[str, str]:
    """Pin name -> the first held package (not itself a pin) of those ``needed`` names for it:
    what a backend's ``needs_held`` answers from its package manager's depsolve."""
    pinned = {p[0] for p in pins}
    out = {}  # type: Dict[str, str]
    for name in sorted(pinned & set(needed)):
        held = [n for n in needed[name] if n not in pinned and _matches(n, holds)]
        if held:
            out[name] = sorted(held)[0]
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _held(pin: Pin, message: str) -> Patch:
    return {
        "name": pin[0],
        "arch": pin[1],
        "version": pin[2],
        "result": "HELD",
        "changed": False,
        "message": message,
    }


def _in_order(result: Dict[str, object]) -> Dict[str, object]:
    # Every backend's result lists its fields in the order the documents always had, whichever
    # step produced them (dnf's history comes before the patches, zypper's exit code after).
    ordered = {k: result[k] for k in FIELDS if k in result}
    ordered.update(result)
    return ordered


def _planned(backend: Backend, pin: Pin, before: Dict[Key, Any]) -> Patch:
    name, arch, version = pin
    # A dpkg status word is never a version (Debian versions start with a digit).
    already = version in backend.state(before, pin)
    return {
        "name": name,
        "arch": arch,
        "version": version,
        "result": "UNCHANGED" if already else "WOULD_INSTALL",
        "changed": False,
    }


def _outcome(
    backend: Backend, pin: Pin, before: Dict[Key, Any], after: Dict[Key, Any], applied: Applied
) -> Patch:
    name, arch, version = pin
    entry = {"name": name, "arch": arch, "version": version}  # type: Patch
    failure = backend.failure(pin, after, applied)
    was, is_now = backend.state(before, pin), backend.state(after, pin)
    if not failure:
        changed = version not in was
        entry.update(result="INSTALLED" if changed else "UNCHANGED", changed=changed)
        return entry
    entry.update(
        result="FAILED",
        # Install-only packages list several versions, in the package manager's order.
        changed=sorted(is_now) != sorted(was),
        message=failure,
        stateAfter=" ".join(is_now) or "absent",
    )
    return entry


# -- rollback by exact version (dnf, zypper): put back the version each failed pin replaced ------


class Target(NamedTuple):
    """A failed pin that can be rolled back."""

    pin: Pin
    patch: Patch
    previous: Pin  # the package as it was: name, installed arch, the version to put back
    now: List[str]  # what is installed instead


class VersionRollback(Backend):
    """A backend that rolls back by installing the previous exact version again."""

    def previous(
        self, before: Dict[Key, Any], now: Dict[Key, Any], pin: Pin
    ) -> Tuple[str, List[str], List[str]]:
        """(installed arch, versions before, versions now) of the pin's package."""
        raise NotImplementedError

    def not_offered(self, targets: List[Target]) -> Dict[str, str]:
        """name -> why, for the targets whose previous version no enabled repository offers."""
        raise NotImplementedError

    def put_back(self, previous: List[Pin]) -> str:
        """Install the previous versions again; why it failed, for the patches it did not fix."""
        raise NotImplementedError

    def roll_back(self, failed: List[Tuple[Pin, Patch]], before: Dict[Key, Any]) -> None:
        """rpm keeps a package whose scriptlet failed installed: put back the version each failed
        pin replaced, in one transaction, when a repository still offers it. Only the failed pins
        go back (the pins that installed cleanly stay), and each patch says what happened:
        ``rolledBack``, ``rollback`` (what was done, or precisely why not) and ``stateAfter``."""
        targets = _targets(self, failed, before)
        refused = self.not_offered(targets) if targets else {}
        for target in [t for t in targets if t.pin[0] in refused]:
            why = refused[target.pin[0]]
            target.patch.update(
                rolledBack=False, rollback=_not_rolled_back(target.pin[0], target.now, why)
            )
        targets = [t for t in targets if t.pin[0] not in refused]
        if not targets:
            return
        why_not = self.put_back([t.previous for t in targets])
        now = self.versions_now([t.pin[0] for t in targets])
        for target in targets:
            name, _, version = target.previous
            state = self.state(now, target.previous)
            target.patch["stateAfter"] = " ".join(state) or "absent"
            if state == [version]:
                restored = "restored {} {}".format(name, version)
                target.patch.update(rolledBack=True, changed=False, rollback=restored)
            else:
                target.patch.update(
                    rolledBack=False, rollback=_not_rolled_back(name, state, why_not)
                )


def _targets(
    backend: VersionRollback, failed: List[Tuple[Pin, Patch]], before: Dict[Key, Any]
) -> List[Target]:
    """The failed pins that can be put back; the others' patches say why not (rpm changed
    nothing, it was not installed before, it is install-only)."""
    current = backend.versions_now([pin[0] for pin, _ in failed])
    targets = []  # type: List[Target]
    for pin, patch in failed:
        name = pin[0]
        arch, was, is_now = backend.previous(before, current, pin)
        why = _not_restorable(name, was, is_now)
        if sorted(is_now) == sorted(was):
            patch.update(rolledBack=False, rollback=_nothing_to_roll_back(name, was))
        elif why:
            patch.update(rolledBack=False, rollback=_not_rolled_back(name, is_now, why))
        else:
            targets.append(Target(pin, patch, (name, arch, was[0]), is_now))
    return targets


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


def _nothing_to_roll_back(name: str, versions: List[str]) -> str:
    """The ``rollback`` text of a failed pin rpm did not install (its %pre failed, say)."""
    return "nothing to roll back: rpm did not change {} ({})".format(
        name, " ".join(versions) or "not installed"
    )


def _not_rolled_back(name: str, state: List[str], why: str) -> str:
    """The ``rollback`` text of a failed pin whose previous version could not be put back."""
    return "could not roll back {}: {}; it is left at {}; repair it by hand".format(
        name, why, " ".join(state) or "absent"
    )
