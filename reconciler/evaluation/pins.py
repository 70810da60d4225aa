"""Stage: evaluation. Which exact versions an Install sends to the agent (``name[:arch]=version``
pins): the approved missing patches of an evaluation, or SSM's InstallOverrideList, which names
the patches to install instead of the baseline's approvals
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-aws-runpatchbaseline.html).
Pure: no I/O, no clock. May import ``reconciler.api`` and the engine's own modules only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reconciler.api.enums import Family, PatchState, family_of
from reconciler.api.inventory import AvailableUpdate, Inventory
from reconciler.evaluation.engine import without_held
from reconciler.evaluation.holds import Hold
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


def frozen_in_place(
    inventory: Inventory, later: Sequence[str], frozen: Iterable[str]
) -> tuple[str, ...]:
    """For each pin of ``later`` (approved after a rollout's snapshot was frozen), the frozen pin
    of the same package when the machine has an older version than it. Without it, the other
    frozen pins pull the later version in as a dependency (apt resolves one to its candidate,
    the newest): a library's update released mid-cycle would reach a later stage unbaked."""
    newer = comparator(family_of(inventory.facts.operating_system))
    installed = {
        _pin(update, inventory.facts.arch).partition("=")[0]: update.installed_version
        for update in inventory.updates
        if update.installed_version is not None
    }
    waiting = {pin.partition("=")[0] for pin in later}
    in_place = []
    for pin in sorted(frozen):
        name, _, version = pin.partition("=")
        have = installed.get(name)
        if name in waiting and have is not None and newer(have, version) < 0:
            in_place.append(pin)
    return tuple(in_place)


def _pin(patch: PatchResult | AvailableUpdate, native_arch: str) -> str:
    qualified = (
        patch.name if patch.arch in ("", "all", native_arch) else f"{patch.name}:{patch.arch}"
    )
    return f"{qualified}={patch.version}"


def override_pins(
    patch_ids: Sequence[str], inventory: Inventory, holds: Sequence[Hold] = ()
) -> tuple[str, ...]:
    """SSM's InstallOverrideList: pins of the newest update of each installed package that one
    of ``patch_ids`` names (in the approvedPatches forms), whatever the baseline approves.
    Packages not installed are left alone, as a baseline's approvals leave them, and so are
    held packages: a hold wins over the override list too."""
    inventory, _ = without_held(inventory, holds)
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
