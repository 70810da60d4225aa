"""A concurrency slot freed by a succeeding install starts the next install the plan queued
behind it at once, not after the next plan: planning a fleet on a loaded controller takes
seconds, and the slot used to idle through it (issue 14 item 7). maxConcurrency and maxErrors
stay exact. Real apt and dpkg on directory roots; real SQLite store; a clock the test sets."""

from __future__ import annotations

from pathlib import Path

from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.plan import Plan
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import (
    BASELINE_YAML,
    ManualClock,
    Spy,
    documents,
    local_instance_yaml,
    make_fleet,
    versions,
    window_yaml,
)
from tests.test_window_executions import BEFORE_NOON, IN_WINDOW, LIB, NOON_DAILY
from tests.waiting import wait_until

NAMES = ["a", "b", "c", "d"]


def _loop(tmp_path: Path, apt_repo: Repo, spy: Spy) -> tuple[Reconciler, dict[str, Path]]:
    """Four machines with pwtest-lib's security update missing, scanned before noon; a noon
    window whose Install task runs at most 2 at a time; more workers than that."""
    roots = make_fleet(tmp_path / "machines", apt_repo, NAMES, LIB)
    (tmp_path / "config").mkdir()
    window = window_yaml("noon", NOON_DAILY, max_concurrency="2")
    instances = (local_instance_yaml(n, r) for n, r in roots.items())
    (tmp_path / "config" / "fleet.yaml").write_text(documents(BASELINE_YAML, window, *instances))
    clock = ManualClock(BEFORE_NOON)
    loop = Reconciler(
        DirectorySource(tmp_path / "config"),
        StateStore(tmp_path / "state.db"),
        spy,
        clock=clock,
        workers=4,
    )
    loop.reconcile()  # 09:00: every machine scanned; the window is closed
    clock.advance_to(IN_WINDOW)
    return loop, roots


def _plans_wait_for_refills(loop: Reconciler) -> list[int]:
    """Make every plan after the pass's first wait until each slot an install freed by
    succeeding is taken again: the refill must not need that plan. Returns the plans' count."""
    plans: list[int] = []
    plan = loop.parts.observation.plan

    def held() -> Plan | None:
        if plans:
            wait_until("the freed slots taken again before the next plan", _slots_refilled(loop))
        plans.append(len(plans))
        return plan()

    loop.parts.observation.plan = held  # type: ignore[method-assign]
    return plans


def _slots_refilled(loop: Reconciler):  # type: ignore[no-untyped-def]
    def check() -> bool:
        jobs = loop.store.jobs(window="noon")
        succeeded = sum(job.status == "succeeded" for job in jobs)
        return len(jobs) >= min(len(NAMES), succeeded + 2)

    return check


@needs_apt
def test_a_slot_freed_by_an_install_starts_the_next_queued_install_without_a_new_plan(
    tmp_path: Path, apt_repo: Repo
) -> None:
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    loop, roots = _loop(tmp_path, apt_repo, spy)
    plans = _plans_wait_for_refills(loop)

    summary = loop.reconcile()

    assert summary.jobs == {"Install succeeded": 4}
    assert spy.peak == 2  # maxConcurrency held as the machines saw it
    assert sorted(spy.installs) == NAMES
    assert [versions(root)["pwtest-lib"] for root in roots.values()] == ["1.0-2"] * 4
    assert len(plans) >= 2
    loop.store.close()
