"""Stage: dispatch. Between the engine's verdicts and the agent's documents: which pins to send,
and what an install result means for the next inventory. Pure; one way for the CLI and the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from reconciler.api.enums import Operation
from reconciler.api.install import INSTALLED, InstallResult
from reconciler.api.inventory import FailedPatch, InstalledPackage, Inventory, PackageFacts
from reconciler.evaluation.pins import override_pins, pins_for
from reconciler.evaluation.results import InstanceEvaluation

__all__ = [  # the pins are the engine's (the planner needs them too); sent from here
    "after_install",
    "architectures",
    "assumed_installed",
    "install_failed",
    "override_pins",
    "pins_for",
]


def install_failed(outcome: InstallResult) -> bool:
    return bool(outcome.failed)


def architectures(result: InstanceEvaluation) -> dict[tuple[str, str], str]:
    """(name, version) -> architecture of an evaluation's patches (pins may omit it)."""
    return {(p.name, p.version): p.arch for p in result.patches}


def after_install(
    inventory: Inventory, outcome: InstallResult, arch: Mapping[tuple[str, str], str]
) -> Inventory:
    """The inventory taken after an install, marked as such, with what could not be installed
    (named with the architecture of the patch it was pinned from, from ``arch``)."""
    failed = [
        FailedPatch(
            name=p.name,
            arch=arch.get((p.name, p.version), p.arch or ""),
            version=p.version,
            reason=f"{p.message} {p.rollback}".strip(),
        )
        for p in outcome.failed
    ]
    return inventory.model_copy(
        update={"operation": Operation.INSTALL, "failed": (*inventory.failed, *failed)}
    )


def assumed_installed(inventory: Inventory, outcome: InstallResult, now: datetime) -> Inventory:
    """The last inventory with what ``outcome`` installed, for a machine that cannot be
    rescanned (it did not come back from its reboot): each INSTALLED patch at its version,
    installed ``now``, no longer offered, and, when the install needs a reboot, the machine
    needing it for them, so they count INSTALLED_PENDING_REBOOT until a scan says otherwise."""
    done = {(p.name, p.version) for p in outcome.patches if p.result == INSTALLED}
    taken = [u for u in inventory.updates if (u.name, u.version) in done]
    if not taken:
        return inventory
    replaced = {(u.name, u.arch) for u in taken}
    installed = [p for p in inventory.installed if (p.name, p.arch) not in replaced]
    for update in taken:
        fields = {name: getattr(update, name) for name in PackageFacts.model_fields}
        installed.append(InstalledPackage(**fields, installed_time=now))
    now_at = {(u.name, u.arch): u.version for u in taken}
    updates = [
        u.model_copy(
            update={"installed_version": now_at.get((u.name, u.arch), u.installed_version)}
        )
        for u in inventory.updates
        if (u.name, u.version) not in done
    ]
    facts = inventory.facts
    if outcome.reboot is not None and outcome.reboot.required:
        names = {*facts.reboot_required_packages, *(u.name for u in taken)}
        facts = facts.model_copy(
            update={"reboot_required": True, "reboot_required_packages": tuple(sorted(names))}
        )
    return inventory.model_copy(
        update={"installed": tuple(installed), "updates": tuple(updates), "facts": facts}
    )
