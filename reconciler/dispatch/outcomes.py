"""Stage: dispatch. Between the engine's verdicts and the agent's documents: which pins to send,
and what an install result means for the next inventory. Pure; one way for the CLI and the loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.enums import Operation, PatchState
from reconciler.api.install import InstallResult
from reconciler.api.inventory import FailedPatch, Inventory
from reconciler.evaluation.results import InstanceEvaluation, PatchResult

INSTALLABLE_STATES = frozenset({PatchState.MISSING, PatchState.FAILED})


def pins_for(result: InstanceEvaluation, native_arch: str) -> tuple[str, ...]:
    """``name[:arch]=version`` for every approved patch to install: MISSING, or FAILED before
    (tried again), unless it needs a package rejected with BLOCK."""
    return tuple(
        _pin(p, native_arch)
        for p in result.patches
        if p.state in INSTALLABLE_STATES and p.installable
    )


def _pin(patch: PatchResult, native_arch: str) -> str:
    qualified = (
        patch.name if patch.arch in ("", "all", native_arch) else f"{patch.name}:{patch.arch}"
    )
    return f"{qualified}={patch.version}"


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
