"""Stage: dispatch. Between the engine's verdicts and the agent's documents: which pins to send,
and what an install result means for the next inventory. Pure; one way for the CLI and the loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.enums import Operation
from reconciler.api.install import InstallResult
from reconciler.api.inventory import FailedPatch, Inventory
from reconciler.evaluation.pins import override_pins, pins_for
from reconciler.evaluation.results import InstanceEvaluation

__all__ = [  # the pins are the engine's (the planner needs them too); sent from here
    "after_install",
    "architectures",
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
