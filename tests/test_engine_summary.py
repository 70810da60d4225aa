"""``evaluate_summary`` (the counts without the rows) equals ``evaluate(...).summary``, always.

The fast path (``fast_summary``) counts from cached entries with ``map``/``sum`` instead of a
loop per row and hands some instances back to the full path; these tests compare it with the full
engine on the benchmark's synthetic fleet at several clocks, on every case of the engine's own
tests (they are re-run here with their ``evaluate`` checked), and on generated baselines and
inventories (hypothesis). Where the fast path declines an instance, they say why it may.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.synthetic_fleet import NOW as FLEET_NOW
from bench.synthetic_fleet import Member, build_fleet
from reconciler.api.inventory import FailedPatch, Inventory, NoRebootInstall, PatchRef
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import (
    DecisionCache,
    InstanceEvaluation,
    Summary,
    evaluate,
    evaluate_summary,
)
from reconciler.evaluation.summary import fast_summary
from tests import test_engine_apt, test_engine_rpm, test_engine_windows_macos
from tests.test_engine_properties import NOW, apt_cases, cases

ENGINE_TEST_MODULES = (test_engine_apt, test_engine_rpm, test_engine_windows_macos)
# The engine's own tests, collected here a second time with their `evaluate` checked (below).
_ENGINE_TESTS = {
    name: test
    for module in ENGINE_TEST_MODULES
    for name, test in vars(module).items()
    if name.startswith("test_") and callable(test)
}
assert len(_ENGINE_TESTS) == sum(
    1 for m in ENGINE_TEST_MODULES for n in vars(m) if n.startswith("test_")
), "two engine test modules share a test name"
globals().update(_ENGINE_TESTS)


def _fast(
    baseline: PatchBaseline, inventory: Inventory, now: datetime, cache: DecisionCache
) -> Summary | None:
    """The fast path alone (None when it hands the instance to the full path)."""
    product = inventory.facts.effective_product()
    return fast_summary(cache.decider(baseline, product, now), inventory)


def _may_decline(inventory: Inventory) -> bool:
    """The fast path declines only a failed Install, a package with 3+ approved updates, or one
    update listed twice, as the same object or as two equal ones (it cannot tell those apart
    without a loop)."""
    names = [(u.name, u.arch) for u in inventory.updates]
    versions = {(u.name, u.arch, u.version) for u in inventory.updates}
    twice = len(versions) < len(inventory.updates)
    return bool(inventory.failed) or twice or any(names.count(n) >= 3 for n in set(names))


def _assert_same(baseline: PatchBaseline, inventory: Inventory, now: datetime) -> None:
    expected = evaluate(baseline, inventory, now).summary
    assert evaluate_summary(baseline, inventory, now) == expected
    fast = _fast(baseline, inventory, now, DecisionCache())
    assert fast == expected or (fast is None and _may_decline(inventory))
    warm = DecisionCache()  # entries made by the full path, then counted by the fast path
    evaluate(baseline, inventory, now, cache=warm)
    assert evaluate_summary(baseline, inventory, now, cache=warm) == expected


# -- the synthetic fleet of bench/evaluate_fleet.py -------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> list[Member]:
    return build_fleet(300)


FLEET_CLOCKS = [
    FLEET_NOW,
    FLEET_NOW - timedelta(days=30),  # approve-after-days rules approve less
    FLEET_NOW + timedelta(days=365),
    datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC),  # same UTC day, other time
]


@pytest.mark.parametrize("now", FLEET_CLOCKS)
def test_summary_equals_full_evaluation_on_the_synthetic_fleet(
    fleet: list[Member], now: datetime
) -> None:
    full, fast, through = DecisionCache(), DecisionCache(), DecisionCache()
    declined = 0
    for member in fleet:
        expected = evaluate(member.baseline, member.inventory, now, cache=full).summary
        got = _fast(member.baseline, member.inventory, now, fast)
        if got is None:
            declined += 1
            assert _may_decline(member.inventory), member.inventory.instance_id
        else:
            assert got == expected, member.inventory.instance_id
        assert evaluate_summary(member.baseline, member.inventory, now, cache=through) == expected
    # the fleet has reboots, Installs with a failed patch (2%) and packages with two updates:
    # the fast path must have decided nearly all of it, or this test proved little
    assert declined <= len(fleet) * 0.05
    assert any(m.inventory.facts.reboot_required for m in fleet)


# -- every case of the engine's own tests ------------------------------------------------------

_checked: list[int] = []


@pytest.fixture(autouse=True)
def _check_every_engine_evaluation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While a test of this module runs, every ``evaluate`` the engine tests call also checks
    ``evaluate_summary`` against the summary it returns."""

    def checked(
        baseline: PatchBaseline, inventory: Inventory, now: datetime, **kwargs: Any
    ) -> InstanceEvaluation:
        result = evaluate(baseline, inventory, now, **kwargs)
        _assert_same(baseline, inventory, now)
        _checked.append(1)
        return result

    for module in ENGINE_TEST_MODULES:
        monkeypatch.setattr(module, "evaluate", checked)
    yield


def test_engine_tests_are_collected_here_and_checked() -> None:
    """Guards the re-collection above: the engine tests are in this module's namespace."""
    here = sys.modules[__name__]
    assert len(_ENGINE_TESTS) > 40
    assert all(getattr(here, name) is test for name, test in _ENGINE_TESTS.items())
    test_engine_apt.test_rejected_wins_over_approved()
    assert _checked  # the wrapper ran


# -- generated baselines and inventories -------------------------------------------------------


@st.composite
def varied_cases(draw: st.DrawFn) -> tuple[PatchBaseline, Inventory]:
    """cases() of test_engine_properties, plus boot and install times (pending reboot), a
    NoReboot Install's record, a failed install, and an update object listed twice."""
    baseline, inventory, _ = draw(cases())
    boot = NOW - timedelta(days=draw(st.integers(0, 5)))
    installed = tuple(
        p.model_copy(
            update={"installed_time": draw(st.none() | st.just(boot + timedelta(hours=h)))}
        )
        for p, h in zip(
            inventory.installed,
            draw(st.lists(st.integers(-48, 48), min_size=len(inventory.installed))),
            strict=False,
        )
    )
    if installed and draw(st.booleans()):  # two versions installed (installonly kernels)
        installed = (*installed, installed[0].model_copy(update={"version": "0.9-1.el9"}))
    updates = inventory.updates
    if updates and draw(st.booleans()):
        updates = (*updates, updates[0])  # the same object twice
    failed = inventory.failed
    if updates and draw(st.booleans()):
        bad = draw(st.sampled_from(updates))
        failed = (FailedPatch(name=bad.name, arch=bad.arch, version=bad.version, reason="E"),)
    facts = inventory.facts.model_copy(update={"boot_time": draw(st.none() | st.just(boot))})
    no_reboot = None
    if installed and draw(st.booleans()):  # a NoReboot Install before or after the boot
        chosen = draw(st.lists(st.sampled_from(installed), max_size=3))
        no_reboot = NoRebootInstall(
            time=boot + timedelta(hours=draw(st.integers(-48, 48))),
            patches=tuple(PatchRef(name=p.name, arch=p.arch, version=p.version) for p in chosen),
        )
    update: dict[str, Any] = {
        "installed": installed,
        "updates": updates,
        "facts": facts,
        "failed": failed,
        "no_reboot_install": no_reboot,
    }
    return baseline, inventory.model_copy(update=update)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(varied_cases(), st.integers(-60, 60))
def test_summary_equals_full_evaluation_on_generated_cases(
    case: tuple[PatchBaseline, Inventory], days: int
) -> None:
    baseline, inventory = case
    _assert_same(baseline, inventory, NOW + timedelta(days=days))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(apt_cases(), st.integers(-3, 3))
def test_summary_equals_full_evaluation_with_shadowed_apt_versions(
    case: tuple[PatchBaseline, Inventory, dict[str, Any]], days: int
) -> None:
    baseline, inventory, _ = case
    _assert_same(baseline, inventory, NOW + timedelta(days=days))
