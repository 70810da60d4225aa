"""Stage: evaluation. Which exact versions an Install sends to the agent (``name[:arch]=version``
pins): the approved missing patches of an evaluation, or SSM's InstallOverrideList, which names
the patches to install instead of the baseline's approvals
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-aws-runpatchbaseline.html).
Pure: no I/O, no clock. May import ``reconciler.api`` and the engine's own modules only.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.api.enums import Family, PatchState, family_of
from reconciler.api.inventory import AvailableUpdate, Inventory
from reconciler.evaluation.matching import compile_id, package_names
from reconciler.evaluation.results import InstanceEvaluation, PatchResult
from reconciler.evaluation.versions import comparator

INSTALLABLE_STATES = frozenset({PatchState.MISSING, PatchState.FAILED})
APPROVED_STATES = INSTALLABLE_STATES | {PatchState.INSTALLED, PatchState.INSTALLED_PENDING_REBOOT}
"""States of a version the baseline approves (installed or to install): what a rollout freezes."""


def pins_for(result: InstanceEvaluation, native_arch: str) -> tuple[str, ...]:
    """``name[:arch]=version`` for every approved patch to install: MISSING, or FAILED before
    (tried again), unless it needs a package rejected with BLOCK."""
    return tuple(
        _pin(p, native_arch)
        for p in result.patches
        if p.state in INSTALLABLE_STATES and p.installable
    )


def approved_pins(result: InstanceEvaluation, native_arch: str) -> tuple[str, ...]:
    """``name[:arch]=version`` of every version the baseline approves on this instance, installed
    or to install: a rollout snapshot is the union of these over a baseline's instances, so a
    later stage may install a version an earlier stage already had."""
    return tuple(
        _pin(p, native_arch) for p in result.patches if p.state in APPROVED_STATES and p.installable
    )


def _pin(patch: PatchResult | AvailableUpdate, native_arch: str) -> str:
    qualified = (
        patch.name if patch.arch in ("", "all", native_arch) else f"{patch.name}:{patch.arch}"
    )
    return f"{qualified}={patch.version}"


def override_pins(patch_ids: Sequence[str], inventory: Inventory) -> tuple[str, ...]:
    """SSM's InstallOverrideList: pins of the newest update of each installed package that one
    of ``patch_ids`` names (in the approvedPatches forms), whatever the baseline approves.
    Packages not installed are left alone, as a baseline's approvals leave them."""
    family = family_of(inventory.facts.operating_system)
    matchers = [compile_id(patch_id, family) for patch_id in patch_ids]
    newer = comparator(family)
    best: dict[tuple[str, str], AvailableUpdate] = {}
    for update in inventory.updates:
        if not _installable(update, family):
            continue
        names = package_names(update, family)
        if not any(m.matches(update, family, names) for m in matchers):
            continue
        key = (update.name, update.arch)
        if key not in best or newer(update.version, best[key].version) > 0:
            best[key] = update
    return tuple(_pin(update, inventory.facts.arch) for update in best.values())


def _installable(update: AvailableUpdate, family: Family) -> bool:
    # apt installs its candidate only; other versions are listed for the security rule.
    installed = update.installed_version is not None or family is Family.WINDOWS
    return installed and update.applicable and update.candidate
