"""Stage: evaluation. Package holds (issue 20 item 3): name patterns a PatchGroup or a
ManagedInstance declares, and the holds the machine's package manager already keeps (apt-mark
hold, dnf versionlock, zypper locks), which the agent reports in the inventory.

A held update is never installed and never MISSING: it is counted as SSM counts a patch rejected
with ALLOW_AS_DEPENDENCY that is not installed (no row, compliant), and listed apart in the
evaluation's ``held`` with the hold that caught it. The installed version is judged by the
baseline as usual (docs/guardrails.md). Pure: no I/O, no clock. May import ``reconciler.api``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from reconciler.api.inventory import AvailableUpdate, Inventory
from reconciler.api.resources import ManagedInstance, PatchGroup
from reconciler.evaluation.results import HeldPatch


@dataclass(frozen=True, slots=True)
class Hold:
    """One package-name pattern and who holds it."""

    pattern: str
    source: str  # for the reason: "patch group 'web'", "apt-mark hold on the machine"


_TOOLS = {
    "apt-mark": "apt-mark hold",
    "dnf-versionlock": "dnf versionlock",
    "zypper-locks": "zypper lock",
}


def declared_holds(group: PatchGroup | None, instance: ManagedInstance | None) -> tuple[Hold, ...]:
    """The holds ``group`` and ``instance`` declare, the group's first."""
    found: list[Hold] = []
    if group is not None:
        where = f"patch group {group.metadata.name!r}"
        found.extend(Hold(pattern, where) for pattern in group.spec.holds)
    if instance is not None:
        where = f"managed instance {instance.metadata.name!r}"
        found.extend(Hold(pattern, where) for pattern in instance.spec.holds)
    return tuple(found)


def machine_holds(inventory: Inventory) -> tuple[Hold, ...]:
    """The holds the machine's package manager keeps, as the agent reported them."""
    return tuple(Hold(h.name, f"{_TOOLS[h.tool]} on the machine") for h in inventory.held)


def split_held(
    updates: Sequence[AvailableUpdate], holds: Iterable[Hold]
) -> tuple[tuple[AvailableUpdate, ...], tuple[HeldPatch, ...]]:
    """``updates`` no hold names, and the held ones with the first hold naming each."""
    patterns = tuple(holds)
    kept: list[AvailableUpdate] = []
    held: list[HeldPatch] = []
    for update in updates:
        hold = next((h for h in patterns if fnmatchcase(update.name, h.pattern)), None)
        if hold is None:
            kept.append(update)
            continue
        why = f"held: {hold.pattern!r} ({hold.source}); never installed, not counted as missing"
        held.append(
            HeldPatch(update.name, update.arch, update.version, why, update.installed_version)
        )
    return tuple(kept), tuple(held)
