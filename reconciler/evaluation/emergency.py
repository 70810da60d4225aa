"""Stage: evaluation. Emergency CVE runs (issue 20 item 4, docs/guardrails.md "Emergency CVE
runs"): which versions of a scanned machine fix one CVE, as its update notices say.

The CVE is treated as an ``approvedPatches`` entry of the machine's baseline: SSM approves an
explicitly named patch whatever the approval rules and ``approveAfterDays`` say, and
``rejectedPatches`` still wins over it ("rejection always wins"); a hold wins too
(``evaluation.holds``). Only the RPM family (updateinfo references) and SUSE (patches' issue
references) carry CVE ids in the inventory: apt's indexes carry none, so Debian and Ubuntu
machines cannot answer and are refused with :func:`unreadable`.

Pure: no I/O, no clock. May import ``reconciler.api`` and the engine's own modules only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.api.enums import Family, OperatingSystem, family_of
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation.holds import Hold, declared_holds, machine_holds, split_held
from reconciler.evaluation.matching import compile_id, package_names
from reconciler.evaluation.pins import override_pins
from reconciler.evaluation.resolve import resolve

CVE_FAMILIES = frozenset({Family.RPM, Family.SUSE})
"""Families whose inventory says which CVEs an update fixes."""


@dataclass(frozen=True, slots=True)
class CveFixes:
    """What an emergency run may install on one machine for one CVE, and what it may not."""

    pins: tuple[str, ...]
    """``name[:arch]=version``: the newest update of each installed package that fixes it."""
    held: tuple[str, ...] = ()
    """Packages with a fix that a hold keeps off the machine."""
    rejected: tuple[str, ...] = ()
    """Packages whose fix the baseline's ``rejectedPatches`` names."""

    def refused(self) -> str:
        """``held: a; rejected by the baseline: b`` (empty when nothing was left out)."""
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (("held", self.held), ("rejected by the baseline", self.rejected))
            if names
        ]
        return "; ".join(parts)


def unreadable(os: OperatingSystem) -> str:
    """Why a machine of ``os`` cannot say which update fixes a CVE ("" when it can)."""
    if family_of(os) in CVE_FAMILIES:
        return ""
    if family_of(os) is Family.APT:
        return (
            f"{os} keeps no CVE ids offline (apt's indexes carry none): patch it with "
            "patch-now once its baseline approves the fixed version"
        )
    return f"{os} reports no CVE ids in its inventory"


def cve_fixes(
    cve: str, baseline: PatchBaseline, inventory: Inventory, holds: Sequence[Hold] = ()
) -> CveFixes:
    """The updates of ``inventory`` whose notices reference ``cve``: the newest such version of
    each installed package, unless held (declared ``holds`` or the machine's own) or rejected by
    ``baseline`` (whatever its rejectedPatchesAction)."""
    family = family_of(inventory.facts.operating_system)
    # Matched by the update's CVE ids on every family: SSM takes no CVE ids in SUSE's patch
    # lists (so compile_id reads one as a name there), but SUSE's patches carry them.
    fixes = compile_id(cve, Family.RPM)
    fixing = [u for u in inventory.updates if fixes.matches(u, family, package_names(u, family))]
    kept, held = split_held(fixing, (*holds, *machine_holds(inventory)))
    rejections = [compile_id(entry, family) for entry in baseline.spec.rejected_patches]
    allowed, rejected = [], set()
    for update in kept:
        if any(m.matches(update, family, package_names(update, family)) for m in rejections):
            rejected.add(update.name)
        else:
            allowed.append(update)
    # "*" names every package left: the newest installable version of each, as the override
    # list picks one.
    pins = override_pins(["*"], inventory.model_copy(update={"updates": tuple(allowed)}))
    return CveFixes(
        tuple(sorted(pins)), tuple(sorted({h.name for h in held})), tuple(sorted(rejected))
    )


@dataclass(frozen=True, slots=True)
class Affected:
    """The machines an emergency run targets and the versions it freezes."""

    instances: tuple[str, ...]
    """The selected machines whose latest scan offers a fix, sorted."""
    versions: Mapping[str, tuple[str, ...]]
    """Baseline name -> the union of the fixes over its affected machines."""


def affected(
    cve: str, snapshot: Snapshot, selected: Sequence[str], scans: Mapping[str, Inventory | None]
) -> Affected:
    """Which of ``selected`` have a fix of ``cve`` in their latest scan (``scans``: instance ->
    its inventory, None when it has none), and the fixes per baseline. ValueError, one line,
    when any selected machine cannot answer (never scanned; a family without CVE data) or
    none has a fix: an emergency run never leaves a machine out silently."""
    for name in selected:
        inventory = scans.get(name)
        if inventory is None:
            raise ValueError(
                f"instance {name} has no scan to read CVE ids from: scan it first "
                f"(patchctl patch-now --instance {name} --operation Scan)"
            )
        cannot = unreadable(inventory.facts.operating_system)
        if cannot:
            raise ValueError(f"instance {name}: {cannot}; leave it out with --group")
    found: dict[str, list[str]] = {}
    versions: dict[str, set[str]] = {}
    for name in selected:
        inventory = scans[name]
        assert inventory is not None
        fixes = _fixes_on(cve, snapshot, name, inventory)
        if fixes is not None and fixes[1].pins:
            found[name] = list(fixes[1].pins)
            versions.setdefault(fixes[0], set()).update(fixes[1].pins)
    if not found:
        raise ValueError(f"no selected machine's latest scan offers a fix of {cve}")
    frozen = {name: tuple(sorted(pins)) for name, pins in sorted(versions.items())}
    return Affected(tuple(sorted(found)), frozen)


def _fixes_on(
    cve: str, snapshot: Snapshot, name: str, inventory: Inventory
) -> tuple[str, CveFixes] | None:
    instance = snapshot.instances[name]
    resolution = resolve(snapshot, instance.metadata.labels, inventory.facts.operating_system)
    if resolution.baseline is None:
        return None
    holds = declared_holds(resolution.group, instance)
    return resolution.baseline.metadata.name, cve_fixes(cve, resolution.baseline, inventory, holds)
