"""Stage: evaluation. Which patch group and which baseline apply to an instance, and why.

SSM's resolution (reference §4): the instance's group (at most one) names a baseline for the
instance's OS; with no group, or no baseline for that OS in it, the default baseline for the OS
applies (a user baseline marked defaultBaseline, else the predefined one). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.api.enums import OperatingSystem
from reconciler.api.resources import GROUP_LABEL, PatchBaseline, PatchGroup
from reconciler.api.snapshot import Snapshot


@dataclass(frozen=True)
class Resolution:
    """The effective group and baseline of one instance, with the reason for each."""

    group: PatchGroup | None
    group_reason: str
    baseline: PatchBaseline | None
    baseline_reason: str


def resolve(snapshot: Snapshot, labels: Mapping[str, str], os: OperatingSystem) -> Resolution:
    """The group that selects ``labels`` and the baseline that applies to ``os`` there."""
    groups = snapshot.groups_of(labels)
    group = groups[0] if groups else None
    if group is None:
        group_reason = "no patch group selects this instance's labels"
    elif group.spec.selector is None:
        group_reason = f"labelled {GROUP_LABEL}={group.metadata.name}"
    else:
        group_reason = f"labels match the selector of patch group {group.metadata.name!r}"
    named = group.spec.baselines.get(os) if group else None
    if group is not None and named is not None:
        why = f"patch group {group.metadata.name!r} names {named!r} for {os}"
        return Resolution(group, group_reason, snapshot.baseline(named), why)
    baseline = snapshot.default_baseline(os)
    where = (
        f"patch group {group.metadata.name!r} names no baseline for {os}"
        if group
        else "no patch group"
    )
    if baseline is None:
        return Resolution(group, group_reason, None, f"{where}, and there is no default for {os}")
    kind = "user default" if baseline.metadata.name in snapshot.baselines else "predefined default"
    return Resolution(
        group,
        group_reason,
        baseline,
        f"{where}: the {kind} baseline for {os}, {baseline.metadata.name!r}",
    )
