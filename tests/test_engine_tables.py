"""The fleet tables (interned versions, per-baseline decision arrays) give ``evaluate(...).summary``.

``FleetTables.summaries`` counts whole fleets from numpy arrays and hands some instances to the
engine; these tests compare every summary with the reference, ``evaluate``, on the benchmark's
synthetic fleet at several clocks, on fleets of generated baselines and inventories sharing one
index (hypothesis), and when new versions arrive after the tables were filled.
"""
# `fleet` (imported below) is test_engine_summary's fixture: the synthetic fleet, 300 instances.

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.synthetic_fleet import NOW as FLEET_NOW
from bench.synthetic_fleet import Member
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import DecisionCache, evaluate
from reconciler.evaluation.tables import (
    DecisionTable,
    FleetTables,
    IndexedInventory,
    VersionIndex,
    table_summaries,
)
from tests.test_engine_properties import NOW, apt_cases
from tests.test_engine_summary import FLEET_CLOCKS, fleet, varied_cases


def _check(cases: list[tuple[PatchBaseline, Inventory]], now: datetime) -> int:
    """Asserts the tables' summaries equal evaluate()'s; returns how many the tables declined."""
    index = VersionIndex()
    members = [(baseline, index.index(inventory)) for baseline, inventory in cases]
    tables = FleetTables(index)
    got = tables.summaries(members, now)
    # the reference shares its Deciders across instances, as the reconcile loop's does (a fresh
    # Decider per instance would decide each of its 2,300 packages again: minutes on the fleet)
    reference = DecisionCache()
    for (baseline, item), summary in zip(members, got, strict=True):
        expected = evaluate(baseline, item.inventory, now, cache=reference).summary
        assert summary == expected, item.inventory
    by_table: dict[int, tuple[DecisionTable, list[IndexedInventory]]] = {}
    for baseline, item in members:
        table = tables.table(baseline, item.inventory, now)
        by_table.setdefault(id(table), (table, []))[1].append(item)
    return sum(s is None for t, items in by_table.values() for s in table_summaries(t, items))


@pytest.mark.parametrize("now", FLEET_CLOCKS)
def test_tables_equal_full_evaluation_on_the_synthetic_fleet(
    fleet: list[Member], now: datetime
) -> None:
    # the whole fleet at its own clock, every third instance at the others (each run is mostly
    # the reference building every row: the file stays well under a minute)
    fleet = fleet if now == FLEET_NOW else fleet[::3]
    declined = _check([(m.baseline, m.inventory) for m in fleet], now)
    # the tables counted every instance, Installs with a failed patch (2%), reboots and packages
    # with two approved updates included, or this test proved little
    assert declined == 0
    assert any(m.inventory.failed for m in fleet)
    assert any(m.inventory.facts.reboot_required for m in fleet)


__all__ = ["fleet"]  # the fixture, used by name


def test_versions_arriving_after_the_tables_are_filled(fleet: list[Member]) -> None:
    """A second batch brings versions the index and the tables have not seen: both grow, and
    the packages' ranks take the new versions in."""
    index = VersionIndex()
    tables = FleetTables(index)
    reference = DecisionCache()
    for half in (fleet[:150], fleet[150:]):
        members = [(m.baseline, index.index(m.inventory)) for m in half]
        got = tables.summaries(members, FLEET_NOW)
        expected = [
            evaluate(m.baseline, m.inventory, FLEET_NOW, cache=reference).summary for m in half
        ]
        assert got == expected


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(varied_cases(), min_size=1, max_size=4), st.integers(-60, 60))
def test_tables_equal_full_evaluation_on_generated_fleets(
    cases: list[tuple[PatchBaseline, Inventory]], days: int
) -> None:
    _check(cases, NOW + timedelta(days=days))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(apt_cases(), min_size=1, max_size=4), st.integers(-3, 3))
def test_tables_equal_full_evaluation_with_shadowed_apt_versions(
    cases: list[tuple[PatchBaseline, Inventory, object]], days: int
) -> None:
    _check([(baseline, inventory) for baseline, inventory, _ in cases], NOW + timedelta(days=days))
