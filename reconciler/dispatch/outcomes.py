"""Stage: dispatch. Between the engine's verdicts and the agent's documents: which pins to send,
and what an install result means for the next inventory. Pure; one way for the CLI and the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.api.enums import Operation, PatchState
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


def patch_outcomes(outcome: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-patch entries of an agent install result."""
    patches = outcome.get("patches", [])
    return [p for p in patches if isinstance(p, dict)] if isinstance(patches, list) else []


def install_failed(outcome: Mapping[str, Any]) -> bool:
    return any(p.get("result") == "FAILED" for p in patch_outcomes(outcome))


def architectures(result: InstanceEvaluation) -> dict[tuple[str, str], str]:
    """(name, version) -> architecture of an evaluation's patches (pins may omit it)."""
    return {(p.name, p.version): p.arch for p in result.patches}


def after_install(
    inventory: Inventory, outcome: Mapping[str, Any], arch: Mapping[tuple[str, str], str]
) -> Inventory:
    """The inventory taken after an install, marked as such, with what could not be installed
    (named with the architecture of the patch it was pinned from, from ``arch``)."""
    failed = [
        FailedPatch(
            name=str(p["name"]),
            arch=arch.get((str(p["name"]), str(p["version"])), str(p.get("arch") or "")),
            version=str(p["version"]),
            reason=" ".join(str(p.get(k, "")) for k in ("message", "rollback")).strip(),
        )
        for p in patch_outcomes(outcome)
        if p.get("result") == "FAILED"
    ]
    return inventory.model_copy(
        update={"operation": Operation.INSTALL, "failed": (*inventory.failed, *failed)}
    )
