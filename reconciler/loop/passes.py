"""Stage: loop. One pass is an ordered tuple of small steps (:data:`STEPS`) over an explicit
:class:`PassContext`: ``refresh`` (the revision in force), ``close_executions`` (openings that
ended), ``rollouts`` (progressive rollouts' decisions, docs/rollouts.md), ``gates`` (each safety
gate read once, docs/guardrails.md), ``gate_spells`` (how long each has blocked), ``calendars``
(each ChangeCalendar read at the loop's clock), ``dispatch``
(plan, run jobs concurrently, refill freed slots from the plan's queue and re-plan as slots
free), ``export`` (scheduled reports). Another loop (the controller's) adds its own steps
around these.

Calls the loop's parts in order; may not touch the source, the store or transports itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.api.enums import JobStatus
from reconciler.api.gates import Gate
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch.calendars import read_calendars
from reconciler.dispatch.gates import read_gates
from reconciler.loop.common import InForce, PassSummary
from reconciler.loop.desired import Refresher
from reconciler.loop.executions import WindowExecutions
from reconciler.loop.exports import ReportExporter
from reconciler.loop.gatespells import GateSpells
from reconciler.loop.jobs import JobRunner
from reconciler.loop.observed import Observation
from reconciler.loop.rollouts import RolloutSteering
from reconciler.plan import Action, GateReading, Plan
from reconciler.report.views.gates import guarded
from reconciler.state import JobRecord

if TYPE_CHECKING:
    from reconciler.kube.rest import Kube

Running = dict[Future[JobRecord | None], Action]
Finished = tuple[Action, JobRecord | None]
PoolFactory = Callable[[int], Executor]
"""Where a pass's jobs run, given the number of workers: threads here (:func:`job_threads`), or
the job queue of ``patchctl worker`` processes (``reconciler.loop.workers``)."""


def job_threads(workers: int) -> Executor:
    """This process runs each job on a thread of its own."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")


@dataclass(frozen=True)
class LoopParts:
    """The parts a pass runs, built once with the loop."""

    in_force: InForce
    refresher: Refresher
    observation: Observation
    jobs: JobRunner
    executions: WindowExecutions
    exporter: ReportExporter
    rollouts: RolloutSteering
    spells: GateSpells
    stopping: threading.Event
    """Set to stop: running jobs finish, nothing new starts, no report is started."""
    workers: int
    export_grace: float
    """Seconds a pass waits for the report exports it started (see :func:`export`)."""
    pool: PoolFactory = job_threads


@dataclass(frozen=True)
class PassContext:
    """One pass: the loop's parts, what the caller asked for, and what the pass did so far."""

    parts: LoopParts
    summary: PassSummary
    until_idle: bool = True
    max_jobs: int | None = None


Step = Callable[[PassContext], None]


def refresh(context: PassContext) -> None:
    """Accept the source's revision whole, or keep the last good one."""
    context.parts.refresher.refresh(context.summary)
    context.summary.revision = context.parts.in_force.revision


def close_executions(context: PassContext) -> None:
    """Window executions whose opening has ended: SUCCESS, or TIMED_OUT while a job of it runs."""
    context.parts.executions.close()


def rollouts(context: PassContext) -> None:
    """Steer every Rollout in force (fold its members' results, decide, record a freeze or a
    halt) and hand each member's gate to the planner, before dispatch plans with it."""
    steered = context.parts.rollouts.steer()
    context.parts.observation.gates = steered.gates
    context.summary.rollouts = steered.decisions
    context.summary.rollout_views = context.parts.exporter.rollouts = steered.views


def gates(context: PassContext) -> None:
    """Read every safety gate of the revision in force once (docs/guardrails.md), before
    dispatch plans with the readings; a gate that cannot be read blocks."""
    context.parts.observation.readings = gate_readings(context.parts.in_force.snapshot)


def gate_readings(snapshot: Snapshot | None, kube: Kube | None = None) -> dict[str, GateReading]:
    """Every safety gate of ``snapshot`` read once (``patchctl plan`` shows the same);
    ``kube``: the API Kubernetes gates are read from (without one they block)."""
    return read_gates(_gates_of(snapshot), kube) if snapshot is not None else {}


def calendars(context: PassContext) -> None:
    """Read every ChangeCalendar of the revision in force at the loop's clock (its iCalendar
    URLs fetched once), before dispatch plans with them; one that cannot be read is closed."""
    observation = context.parts.observation
    snapshot = context.parts.in_force.snapshot
    now = observation.clock()
    observation.calendars = read_calendars(snapshot, now) if snapshot is not None else {}


def _gates_of(snapshot: Snapshot) -> list[Gate]:
    return [gate for _, gate in guarded(snapshot)]


def gate_spells(context: PassContext) -> None:
    """How long each gate has blocked each task and stage it guards (the metrics read it), and
    ``gate.blocked`` once a spell outlasts the gate's blockedThreshold."""
    parts = context.parts
    readings = parts.observation.readings
    context.summary.gates = parts.spells.follow(parts.in_force.snapshot, readings)


def dispatch(context: PassContext) -> None:
    """Plan and start jobs until nothing more can start now (``until_idle``), or one planning
    round otherwise. A slot freed by a succeeding job starts the install (or scan) the plan queued
    behind it at once (:func:`_refill`); completions also trigger a re-plan (:func:`_replan_due`),
    for the rest (after steering the rollouts again when :func:`_steer_again`); each plan's
    skipped and cancelled openings are recorded."""
    parts = context.parts
    running: Running = {}
    try:
        with parts.pool(parts.workers) as pool:
            _resume(context, pool, running)
            started = 0
            while not parts.stopping.is_set():
                current = parts.observation.plan()
                parts.executions.follow(current)
                parts.jobs.one_offs.follow(current)
                started += _submit(context, pool, running, current, started)
                if not running:
                    _settle(context.summary, current)
                    break
                # Collect and refill from the plan's queue until a re-plan is due.
                finished: list[Finished] = []
                while not _replan_due(context, running, finished):
                    finished = _collect(context, running)
                    if _steer_again(context.summary, finished):
                        rollouts(context)
                    started += _refill(context, pool, running, current, finished, started)
                if not context.until_idle and not running:
                    break
    finally:
        # A pass ended by an error (the store cannot write): its jobs have all returned now,
        # and an action that never claimed its key must not hold its budget slot forever.
        for action in running.values():
            parts.observation.submitted.pop(action.key, None)


def _replan_due(context: PassContext, running: Running, finished: list[Finished]) -> bool:
    """Whether to plan again now rather than wait for more completions. A plan reads the
    fleet's state and weighs every machine, so one per completion made a pass quadratic in the
    fleet; the plan's queue keeps slots busy meanwhile. Now: when nothing runs, when a job did
    not succeed (a budget's maxErrors, a retry or a halt may change), when the rollouts were
    steered again, or when an eighth of the
    workers is free (every completion with fewer than 16 workers, as before). At least one
    completion is collected first (``finished`` empty: none yet)."""
    if not finished:
        return False
    if not running or context.parts.stopping.is_set():
        return True
    if any(job is None or job.status != JobStatus.SUCCEEDED for _, job in finished):
        return True
    if _steer_again(context.summary, finished):
        return True  # the rollouts' gates were decided again: the queue may be out of date
    return context.parts.workers - len(running) >= max(1, context.parts.workers // 8)


def _steer_again(summary: PassSummary, finished: list[Finished]) -> bool:
    """Whether the rollouts must be steered again before the next plan of this pass: a freeze
    waited for the stages' scans (once they are in, the first stage installs in this pass, not
    in a later run), or an install failed (a halt stops its stage's other machines now)."""
    if not summary.rollouts:
        return False
    failed = any(job is not None and job.status == JobStatus.FAILED for _, job in finished)
    return failed or any(decision.freeze for decision in summary.rollouts)


def export(context: PassContext) -> None:
    """After dispatch, so that a report shows this pass's results. A directory or a reachable
    bucket is done within the grace, so the attempt is recorded in the same pass; a destination
    that does not answer goes on in the background and holds no pass longer."""
    parts = context.parts
    if not parts.stopping.is_set():
        parts.exporter.start(parts.in_force)
        parts.exporter.wait(parts.export_grace)


STEPS: tuple[Step, ...] = (
    refresh,
    close_executions,
    rollouts,
    gates,
    gate_spells,
    calendars,
    dispatch,
    export,
)


def _submit(
    context: PassContext,
    pool: Executor,
    running: Running,
    current: Plan | None,
    started: int,
) -> int:
    """Start the plan's actions; how many were started."""
    max_jobs = context.max_jobs
    # One job per machine at a time: a submitted job may not have claimed its key yet, so the
    # planner cannot see it; skip its machine here.
    busy = {action.instance for action in running.values()}
    fresh = [a for a in (current.actions if current else ()) if a.instance not in busy]
    count = 0
    for action in fresh:
        if max_jobs is not None and started + count >= max_jobs:
            break
        _start(context, pool, running, action)
        count += 1
    return count


def _refill(
    context: PassContext,
    pool: Executor,
    running: Running,
    current: Plan | None,
    finished: list[Finished],
    started: int,
) -> int:
    """Start at once, in each slot a job freed by succeeding, the next install (or scan outside
    any window) the plan queued behind it (``Plan.queued``), instead of leaving the slot idle
    while the next plan is made (a plan of a fleet takes a while; the next plan counts these as
    running). Only a job the
    plan counted as running, or planned itself, frees one of its slots; an opening with a job
    that did not succeed in this batch waits for the next plan (its maxErrors may be spent).
    The cutoff is checked when the job claims its key, as for every job. How many started."""
    if current is None or context.parts.stopping.is_set():
        return 0
    unsure = {_slot(a) for a, job in finished if job is None or job.status != JobStatus.SUCCEEDED}
    # The plan's budgets counted its running jobs and its own actions as holding slots.
    held = current.running | {action.key for action in current.actions}
    freed = Counter(_slot(a) for a, _ in finished if a.key in held and _slot(a) not in unsure)
    busy = {action.instance for action in running.values()}
    count = 0
    for action in current.queued:
        if context.max_jobs is not None and started + count >= context.max_jobs:
            break
        if freed[_slot(action)] > 0 and action.instance not in busy:
            freed[_slot(action)] -= 1
            _start(context, pool, running, action)
            count += 1
    return count


def _slot(action: Action) -> tuple[str | None, str | None, str | None]:
    """The budgets an action counts against: its (window, task, opening)."""
    return action.window, action.task, action.opening


def _start(context: PassContext, pool: Executor, running: Running, action: Action) -> None:
    """Hand ``action`` to a worker; it holds its budget slot until its job is claimed."""
    context.parts.observation.submitted[action.key] = action
    running[pool.submit(context.parts.jobs.execute, action)] = action


def _resume(context: PassContext, pool: Executor, running: Running) -> None:
    """Finish the jobs an earlier run left waiting for a reboot: they are still running in the
    store (their machine busy, their concurrency slot taken) until their worker here ends."""
    if context.parts.stopping.is_set():
        return
    for resumption in context.parts.jobs.resumable():
        running[pool.submit(context.parts.jobs.resume, resumption)] = resumption.action


def _collect(context: PassContext, running: Running) -> list[Finished]:
    """Wait for at least one job to finish; count the finished ones and return them."""
    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
    finished: list[Finished] = []
    for future in done:
        action = running.pop(future)
        context.parts.observation.submitted.pop(action.key, None)
        job = future.result()
        if job is not None:
            context.summary.count(action.operation, job.status)
        finished.append((action, job))
    return finished


def _settle(summary: PassSummary, current: Plan | None) -> None:
    """Nothing runs and nothing more can start: why each instance waits."""
    summary.waits = [(w.instance, w.reason) for w in (current.waits if current else ())]
    summary.converged = current is not None and current.converged
