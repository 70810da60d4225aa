"""Window executions are recorded with SSM's statuses: IN_PROGRESS with an opening's first job,
FAILED when a job of it fails, SUCCESS once the opening has ended without a failure; CANCELLED
when a CANCEL_TASK cutoff leaves installs unstarted, TIMED_OUT when a job outlasts the opening,
SKIPPED_OVERLAPPING for an opening that begins while the previous execution runs (real SQLite
store, and PostgreSQL for the tests without machines; real apt and dpkg on directory roots)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.api.install import InstallResult
from reconciler.api.resources import ManagedInstance
from reconciler.dispatch import transport_for
from reconciler.dispatch.base import InstallRequest, Transport
from reconciler.loop import Reconciler
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE_YAML,
    ManualClock,
    Wrapped,
    documents,
    local_instance_yaml,
    make_fleet,
    versions,
    window_yaml,
)

WINDOW = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: noon}
spec:
  schedule: cron(0 12 * * ? *)
  duration: 3
  cutoff: 1
  targets: {patchGroups: [web]}
  tasks: [{name: install, operation: Install}]
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec: {}
"""


@contextmanager
def _noon_window(
    tmp_path: Path, now: list[datetime], store: StateStore
) -> Iterator[tuple[StateStore, Reconciler]]:
    """The WINDOW snapshot refreshed into a fresh store (either backend), under the clock
    ``now[0]``; no jobs run (no transport)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fleet.yaml").write_text(WINDOW)
    loop = Reconciler(
        DirectorySource(tmp_path / "config"),
        store,
        lambda i: None,  # type: ignore[arg-type,return-value]
        clock=lambda: now[0],
    )
    loop.refresh()
    yield store, loop


def test_window_executions_follow_their_openings(tmp_path: Path, state_store: StateStore) -> None:
    now = [datetime(2026, 11, 28, 12, 30, tzinfo=UTC)]
    with _noon_window(tmp_path, now, state_store) as (store, loop):
        loop.parts.executions.started("noon", "2026-11-28T12:00:00Z")
        loop.parts.executions.started("noon", "2026-11-27T12:00:00Z")
        store.record_window_execution(
            window="noon", opening="2026-11-27T12:00:00Z", status="FAILED", now=now[0]
        )
        loop.close_window_executions()
        status = {e["opening"]: e["status"] for e in store.window_executions("noon")}
        assert status == {"2026-11-28T12:00:00Z": "IN_PROGRESS", "2026-11-27T12:00:00Z": "FAILED"}
        now[0] += timedelta(hours=3)  # 15:30: today's opening has ended
        loop.close_window_executions()
        status = {e["opening"]: e["status"] for e in store.window_executions("noon")}
        assert status == {"2026-11-28T12:00:00Z": "SUCCESS", "2026-11-27T12:00:00Z": "FAILED"}


def test_an_execution_whose_job_still_runs_when_the_opening_ends_is_timed_out(
    tmp_path: Path, state_store: StateStore
) -> None:
    """Another process's job (or one this process lost track of) still running at the end."""
    now = [datetime(2026, 11, 28, 12, 30, tzinfo=UTC)]
    with _noon_window(tmp_path, now, state_store) as (store, loop):
        for opening in ("2026-11-28T12:00:00Z", "2026-11-27T12:00:00Z"):
            loop.parts.executions.started("noon", opening)
        store.claim_job(
            key="k",
            instance="web-1",
            operation="Install",
            window="noon",
            task="install",
            opening="2026-11-28T12:00:00Z",
            revision="r",
            payload={},
            now=now[0],
        )
        now[0] += timedelta(hours=3)  # 15:30: the opening has ended, its job still runs
        loop.close_window_executions()
        status = {e["opening"]: e["status"] for e in store.window_executions("noon")}
        assert status == {"2026-11-28T12:00:00Z": "TIMED_OUT", "2026-11-27T12:00:00Z": "SUCCESS"}


# --- On real Debian roots (apt and dpkg), with a clock the test moves -------------------------
# A long install is an install during which the clock moves: the transport below runs the real
# apt/dpkg transaction to its end, then sets the clock to when that "long" run finished. No
# sleep, and dpkg is never interrupted (Patchwarden never kills a running transaction).

NOON_DAILY = "cron(0 12 * * ? *)"
OPENING = "2026-11-28T12:00:00Z"
BEFORE_NOON = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
IN_WINDOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
PAST_CUTOFF = datetime(2026, 11, 28, 15, 10, tzinfo=UTC)  # 4 h window, cutoff 1 h: 15:00
PAST_END = datetime(2026, 11, 28, 16, 10, tzinfo=UTC)
LIB = [p for p in INSTALLED if p.name == "pwtest-lib"]  # 1.0-1; security update 1.0-2


@dataclass
class LongInstalls:
    """Transports whose install on a machine named in ``until`` ends at that time (the clock)."""

    clock: ManualClock
    until: dict[str, datetime]

    def __call__(self, instance: ManagedInstance) -> Transport:
        inner = transport_for(instance.spec.connection, trust_root_scripts=True)
        finish = self.until.get(instance.metadata.name)
        return _Long(inner, lambda: finish and self.clock.advance_to(finish))  # type: ignore[func-returns-value]


@dataclass
class _Long(Wrapped):
    done: Callable[[], object]

    def install(self, request: InstallRequest) -> InstallResult:
        result = self.inner.install(request)
        self.done()
        return result


def fleet_loop(
    tmp_path: Path, apt_repo: Repo, names: list[str], window: str, until: dict[str, datetime]
) -> tuple[Reconciler, dict[str, Path], ManualClock, list[Occurrence]]:
    """Debian roots with pwtest-lib's security update missing, the window, one worker (actions
    wait in its queue), scanned before noon."""
    roots = make_fleet(tmp_path / "machines", apt_repo, names, LIB)
    (tmp_path / "config").mkdir()
    instances = (local_instance_yaml(n, r) for n, r in roots.items())
    (tmp_path / "config" / "fleet.yaml").write_text(documents(BASELINE_YAML, window, *instances))
    clock = ManualClock(BEFORE_NOON)
    seen: list[Occurrence] = []
    loop = Reconciler(
        DirectorySource(tmp_path / "config"),
        StateStore(tmp_path / "state.db"),
        LongInstalls(clock, until),
        clock=clock,
        workers=1,
        observers=[seen.append],
    )
    loop.reconcile()  # 09:00: every machine scanned; the window is closed
    assert loop.store.jobs(window="noon") == []
    return loop, roots, clock, seen


def executions(loop: Reconciler) -> dict[str, str]:
    return {e["opening"]: e["status"] for e in loop.store.window_executions("noon")}


def announced(seen: list[Occurrence]) -> list[str]:
    return [o.detail["status"] for o in seen if o.kind is Kind.WINDOW_EXECUTION_CHANGED]


@needs_apt
@pytest.mark.parametrize(
    ("behaviour", "outcome"), [("CANCEL_TASK", "CANCELLED"), ("CONTINUE_TASK", "SUCCESS")]
)
def test_installs_queued_when_the_cutoff_passes_never_start(
    tmp_path: Path, apt_repo: Repo, behaviour: str, outcome: str
) -> None:
    window = window_yaml("noon", NOON_DAILY, cutoff_behavior=behaviour)
    loop, roots, clock, seen = fleet_loop(
        tmp_path, apt_repo, ["a", "b", "c"], window, {"a": PAST_CUTOFF}
    )
    clock.advance_to(IN_WINDOW)
    summary = loop.reconcile()  # a, b and c planned at 12:30; a's install runs until 15:10
    assert [v["pwtest-lib"] for v in map(versions, roots.values())] == ["1.0-2", "1.0-1", "1.0-1"]
    assert [job.instance for job in loop.store.jobs(window="noon")] == ["a"]  # b, c never began
    assert "past its cutoff" in dict(summary.waits)["b"]
    if behaviour == "CANCEL_TASK":
        assert executions(loop) == {OPENING: "CANCELLED"}
    else:
        assert executions(loop) == {OPENING: "IN_PROGRESS"}  # a's install may still be followed
    clock.advance_to(PAST_END)
    loop.reconcile()
    assert executions(loop) == {OPENING: outcome}
    assert announced(seen) == ["IN_PROGRESS", outcome]
    assert [v["pwtest-lib"] for v in map(versions, roots.values())] == ["1.0-2", "1.0-1", "1.0-1"]


@needs_apt
def test_an_install_still_running_at_the_window_end_times_the_execution_out(
    tmp_path: Path, apt_repo: Repo
) -> None:
    window = window_yaml("noon", NOON_DAILY, cutoff_behavior="CANCEL_TASK")
    loop, roots, clock, seen = fleet_loop(tmp_path, apt_repo, ["a"], window, {"a": PAST_END})
    clock.advance_to(IN_WINDOW)
    loop.reconcile()
    assert versions(roots["a"])["pwtest-lib"] == "1.0-2"  # the transaction ran to its end
    (job,) = loop.store.jobs(window="noon")
    assert job.status == "succeeded"
    assert executions(loop) == {OPENING: "TIMED_OUT"}
    clock.advance_to(PAST_END + timedelta(hours=1))
    loop.reconcile()
    assert executions(loop) == {OPENING: "TIMED_OUT"}
    assert announced(seen) == ["IN_PROGRESS", "TIMED_OUT"]


@needs_apt
def test_an_opening_that_begins_while_the_previous_execution_runs_is_skipped(
    tmp_path: Path, apt_repo: Repo
) -> None:
    # Openings at 12:00 and 14:00, 4 h each: they overlap from 14:00 to 16:00.
    window = window_yaml("noon", "cron(0 12,14 * * ? *)", max_concurrency="1")
    later = "2026-11-28T14:00:00Z"
    at_1430 = datetime(2026, 11, 28, 14, 30, tzinfo=UTC)
    until = {"a": at_1430, "b": PAST_CUTOFF}
    loop, roots, clock, seen = fleet_loop(tmp_path, apt_repo, ["a", "b", "c"], window, until)
    clock.advance_to(IN_WINDOW)
    summary = loop.reconcile()
    # a ran 12:30-14:30; b then started in the 12:00 opening (before its 15:00 cutoff), and ran
    # past that cutoff, so c waits; the 14:00 opening ran nothing.
    jobs = loop.store.jobs(window="noon")
    assert [(job.instance, job.opening) for job in jobs] == [("a", OPENING), ("b", OPENING)]
    assert executions(loop) == {OPENING: "IN_PROGRESS", later: "SKIPPED_OVERLAPPING"}
    assert "past its cutoff" in dict(summary.waits)["c"]
    clock.advance_to(datetime(2026, 11, 28, 16, 30, tzinfo=UTC))  # 12:00's opening has ended
    summary = loop.reconcile()
    assert executions(loop) == {OPENING: "SUCCESS", later: "SKIPPED_OVERLAPPING"}
    assert "SKIPPED_OVERLAPPING" in dict(summary.waits)["c"]  # 14:00 is still open, and skipped
    assert [v["pwtest-lib"] for v in map(versions, roots.values())] == ["1.0-2", "1.0-2", "1.0-1"]
    assert announced(seen) == ["IN_PROGRESS", "SKIPPED_OVERLAPPING", "SUCCESS"]
