"""A concurrency slot freed by a succeeding install starts the next install the plan queued
behind it at once, not after the next plan: planning a fleet on a loaded controller takes
seconds, and the slot used to idle through it (issue 14 item 7). maxConcurrency and maxErrors
stay exact. Real apt and dpkg on directory roots; real SQLite store; a clock the test sets."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from reconciler.api.install import InstallResult
from reconciler.dispatch import transport_for
from reconciler.dispatch.base import InstallRequest
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
    Wrapped,
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


@dataclass
class _Held(Wrapped):
    """A machine's transport whose install, once done, returns only when the test releases it:
    installs end one at a time, in the order the test chooses."""

    release: threading.Event

    def install(self, request: InstallRequest) -> InstallResult:
        result = self.inner.install(request)
        wait_until("the test to release the install", self.release.is_set)
        return result


def _one_install_ends_per_plan(loop: Reconciler, releases: dict[str, threading.Event]) -> list[int]:
    """Plan n releases the n-th machine's install, after waiting until n + 2 installs have
    started: the install queued behind the one that ended before this plan must already run,
    started in the freed slot without this plan. Returns the plans made."""
    plans: list[int] = []
    plan = loop.parts.observation.plan

    def held() -> Plan | None:
        n = len(plans)
        if n:
            wanted = min(len(NAMES), n + 2)
            wait_until(
                f"{wanted} installs started before plan {n}",
                lambda: len(loop.store.jobs(window="noon")) >= wanted,
            )
        if n < len(NAMES):
            releases[NAMES[n]].set()
        plans.append(n)
        return plan()

    loop.parts.observation.plan = held  # type: ignore[method-assign]
    return plans


@needs_apt
def test_a_slot_freed_by_an_install_starts_the_next_queued_install_without_a_new_plan(
    tmp_path: Path, apt_repo: Repo
) -> None:
    releases = {name: threading.Event() for name in NAMES}
    spy = Spy(
        lambda instance: _Held(
            transport_for(instance.spec.connection, trust_root_scripts=True),
            releases[instance.metadata.name],
        )
    )
    loop, roots = _loop(tmp_path, apt_repo, spy)
    plans = _one_install_ends_per_plan(loop, releases)

    summary = loop.reconcile()

    assert summary.jobs == {"Install succeeded": 4}
    assert spy.peak == 2  # maxConcurrency held as the machines saw it
    assert sorted(spy.installs) == NAMES
    assert [versions(root)["pwtest-lib"] for root in roots.values()] == ["1.0-2"] * 4
    assert len(plans) > len(NAMES)  # one plan per completion, and the first
    loop.store.close()
