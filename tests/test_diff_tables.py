"""``patchctl diff``'s comparison from the fleet tables equals the per-instance reference.

``compare`` judges most instances together from the engine's tables (difftables.py) and the
others one by one; ``reference_compare`` judges every instance one by one through ``evaluate``
and string sets, as ``compare`` did before the tables. These tests prove the two give the same
Diff (its whole JSON document: instances, verdict lists, compliance, windows, what each next
opening would install) on the benchmark's fleet with a reviewed change, and on generated
fleets whose baselines change between the revisions (hypothesis).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.synthetic_fleet import NOW as FLEET_NOW
from bench.synthetic_fleet import Member
from bench.synthetic_revisions import revisions
from reconciler.api.inventory import Inventory
from reconciler.api.resources import (
    MaintenanceWindow,
    ManagedInstance,
    PatchBaseline,
    PatchGroup,
)
from reconciler.api.snapshot import Snapshot
from reconciler.report.views.diff import Diff, compare, reference_compare
from tests.test_engine_properties import NOW, cases
from tests.test_engine_summary import fleet, varied_cases

HEADER = {"apiVersion": "patchwarden.io/v1alpha1"}


def _assert_same(found: Diff, expected: Diff) -> None:
    assert found.document() == expected.document()
    assert found.changed == expected.changed


def test_the_benchmark_change_on_the_synthetic_fleet(fleet: list[Member]) -> None:
    """The reviewed change of bench/diff_fleet.py: an approveAfterDays, a rejected pattern, a
    classification list and a window's day; Installs with a failed patch go the reference way."""
    some = fleet[:120]
    before, after = revisions(some)
    inventories = [m.inventory for m in some]
    found = compare(before, after, inventories, FLEET_NOW)
    _assert_same(found, reference_compare(before, after, inventories, FLEET_NOW))
    # the change does something on most machines, or this test proved little
    assert len(found.instances) > 60
    assert sum(len(c.no_longer_approved) for c in found.instances) > 1000
    assert any(i.changed for i in found.installs)


__all__ = ["fleet"]  # the fixture, used by name


@st.composite
def revised_fleets(draw: st.DrawFn) -> tuple[Snapshot, Snapshot, list[Inventory]]:
    """Instances in groups of their own, each group naming one of a few baselines for the
    instance's OS (some listing another's version objects in another order); the after revision changes some baselines (or keeps an equal copy), moves
    some instances out, adds holds; an Install window targets every instance by label."""
    pool = draw(st.lists(cases(), min_size=1, max_size=3))
    before = {f"b{n}": _named(b, f"b{n}") for n, (b, _, _) in enumerate(pool)}
    after = {
        name: _named(draw(st.sampled_from([b, *[c[0] for c in pool]])), name)
        if draw(st.booleans())
        else b.model_copy()
        for name, b in before.items()
    }
    inventories, old, new = [], [], []
    for n, (_, inventory) in enumerate(draw(st.lists(varied_cases(), min_size=1, max_size=5))):
        if inventories and draw(st.booleans()):  # the same version objects in another order
            first = inventories[0]
            inventory = first.model_copy(update={"updates": first.updates[::-1]})
        inventories.append(_varied(draw, inventory, f"i-{n}"))
        name = draw(st.sampled_from(sorted(before)))
        os = str(inventory.facts.operating_system)
        old.append(_member(n, os, name, ()))
        if draw(st.integers(0, 5)):
            holds = draw(st.sampled_from([(), (), ("kernel",), ("open*",)]))
            new.append(_member(n, os, draw(st.sampled_from(sorted(before))), holds))
    return _snapshot(before, old), _snapshot(after, new), inventories


def _named(baseline: PatchBaseline, name: str) -> PatchBaseline:
    return baseline.model_copy(
        update={"metadata": baseline.metadata.model_copy(update={"name": name})}
    )


def _varied(draw: st.DrawFn, inventory: Inventory, name: str) -> Inventory:
    """``inventory`` named ``name``, sometimes with a second update object of the same name,
    architecture and version but other facts (one string, two versions), or a noarch copy; half
    without a failed or NoReboot Install, so that most go through the tables."""
    more: dict[str, Any] = {}
    if draw(st.booleans()):
        more = {"failed": (), "no_reboot_install": None}
    updates = inventory.updates
    if updates and draw(st.booleans()):
        twin = updates[0].model_copy(update={"classification": "Security", "advisory_ids": ()})
        updates = (*updates, twin)
    if updates and draw(st.booleans()):
        updates = (*updates, updates[-1].model_copy(update={"arch": "noarch"}))
    return inventory.model_copy(update={"instance_id": name, "updates": updates, **more})


def _member(n: int, os: str, baseline: str, holds: tuple[str, ...]) -> tuple[Any, Any]:
    group = PatchGroup.model_validate(
        {**HEADER, "kind": "PatchGroup", "metadata": {"name": f"g{n}"},
         "spec": {"baselines": {os: baseline}, "holds": list(holds)}}
    )  # fmt: skip
    instance = ManagedInstance.model_validate(
        {**HEADER, "kind": "ManagedInstance",
         "metadata": {"name": f"i-{n}", "labels": {"patchwarden.io/patch-group": f"g{n}", "role": "web"}},
         "spec": {"connection": {"type": "local"}}}
    )  # fmt: skip
    return group, instance


WINDOW = MaintenanceWindow.model_validate(
    {**HEADER, "kind": "MaintenanceWindow", "metadata": {"name": "all"},
     "spec": {"schedule": "cron(0 3 ? * SUN *)", "duration": 3, "cutoff": 1,
              "targets": {"selector": {"matchLabels": {"role": "web"}}},
              "tasks": [{"name": "install", "operation": "Install",
                         "maxConcurrency": "1", "maxErrors": "0"}]}}
)  # fmt: skip


def _snapshot(baselines: dict[str, PatchBaseline], members: list[tuple[Any, Any]]) -> Snapshot:
    return Snapshot(
        baselines=baselines,
        groups={g.metadata.name: g for g, _ in members},
        instances={i.metadata.name: i for _, i in members},
        windows={"all": WINDOW},
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(revised_fleets(), st.integers(-30, 30))
def test_tables_equal_the_reference_on_generated_fleets(
    case: tuple[Snapshot, Snapshot, list[Inventory]], days: int
) -> None:
    before, after, inventories = case
    now = NOW + timedelta(days=days)
    expected = reference_compare(before, after, inventories, now)
    _assert_same(compare(before, after, inventories, now), expected)
