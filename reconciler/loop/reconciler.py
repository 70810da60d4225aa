"""Stage: loop. :class:`Reconciler` builds the loop's parts from what it is given (source, store,
transports, observers, clock) and runs a pass as its tuple of steps (:mod:`reconciler.loop.passes`).

Holds no logic of its own: it wires the parts and answers for them; may not decide anything.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import structlog

from reconciler.api.snapshot import Snapshot
from reconciler.loop.common import Clock, Emitter, InForce, Log, PassSummary, TransportFor, utc_now
from reconciler.loop.desired import Pinned, Refresher, enrolment_report
from reconciler.loop.executions import WindowExecutions
from reconciler.loop.exports import ReportExporter
from reconciler.loop.gatespells import GateSpells
from reconciler.loop.hooks import Wait
from reconciler.loop.jobs import JobDone, JobRunner
from reconciler.loop.observed import Observation
from reconciler.loop.passes import STEPS, LoopParts, PassContext, Step, job_threads
from reconciler.loop.reboots import RebootSettings
from reconciler.loop.rollouts import RolloutSteering
from reconciler.loop.workers import JobQueue, queue_pool
from reconciler.plan import Action, Observed, Plan, Settings
from reconciler.report.notify.occurrences import Observer
from reconciler.sources.base import HasRepository, Source
from reconciler.sources.enrol import DISCOVERERS, Enrolment
from reconciler.state import JobRecord, StateBackend

EXPORT_GRACE = 5.0
"""Seconds a pass waits for the report exports it started: a directory or a reachable bucket
is done by then, so the attempt is recorded (and in the controller's status) in the same pass;
a destination that does not answer goes on in the background and holds no pass longer."""


class LoopOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Reconciler` a loop built on it passes through."""

    settings: Settings
    clock: Clock
    workers: int
    log: Log
    pinned: Pinned | None
    observers: Sequence[Observer]
    on_job_done: JobDone | None
    s3_endpoint_url: str | None
    ec2_endpoint_url: str | None
    report_dir: Path | None
    export_grace: float
    reboot_settings: RebootSettings
    job_queue: JobQueue | None


class Reconciler:
    """Desired state from a source, observed state in a store, jobs on transports."""

    def __init__(
        self,
        source: Source,
        store: StateBackend,
        transport_for: TransportFor,
        *,
        settings: Settings = Settings(),  # noqa: B008 - frozen value
        clock: Clock = utc_now,
        workers: int = 10,
        log: Log = None,
        pinned: Pinned | None = None,
        observers: Sequence[Observer] = (),
        on_job_done: JobDone | None = None,
        s3_endpoint_url: str | None = None,
        ec2_endpoint_url: str | None = None,
        report_dir: Path | None = None,
        export_grace: float = EXPORT_GRACE,
        steps: Sequence[Step] = STEPS,
        wait: Wait | None = None,
        reboot_settings: RebootSettings = RebootSettings(),  # noqa: B008 - frozen value
        job_queue: JobQueue | None = None,
    ) -> None:
        """``pinned(revision)`` is a source reading exactly that earlier revision (a Git commit):
        after a restart, it brings back the last good revision when the current one is refused.
        ``observers`` receive every Occurrence (audit log, events, metrics); ``on_job_done`` each
        finished job; ``s3_endpoint_url`` is where reports to s3:// go when not the configured
        endpoint, ``ec2_endpoint_url`` where ec2 InstanceSources are listed; ``report_dir`` the
        directory reports' directory destinations must be in (default: ``reports/`` beside the
        store); ``steps`` are a pass's steps, in order; ``wait``
        waits between health check attempts and boot id reads (default: until the loop stops);
        ``job_queue``: jobs are queued there for ``patchctl worker`` processes, not run here."""
        self.source, self.store, self.settings, self.clock = source, store, settings, clock
        self.log: Log = log or structlog.get_logger("patchwarden")
        self.stopping = threading.Event()
        self.steps = tuple(steps)
        in_force = InForce()
        self.emit = Emitter(observers, clock, self.log, in_force)
        executions = WindowExecutions(store, in_force, clock, self.emit)
        self.enrolment = _enrolment(source, store, clock, self.emit, self.log, ec2_endpoint_url)
        refresher = self._refresher(in_force, pinned)
        jobs = JobRunner(
            store, in_force, transport_for, executions, clock=clock, log=self.log, emit=self.emit,
            on_job_done=on_job_done, wait=wait or self.stopping.wait,
            reboot_settings=reboot_settings,
        )  # fmt: skip
        self.parts = LoopParts(
            in_force=in_force,
            refresher=refresher,
            observation=Observation(store, in_force, settings, clock),
            jobs=jobs,
            executions=executions,
            exporter=ReportExporter(store, clock, self.log, s3_endpoint_url, report_dir),
            rollouts=RolloutSteering(store, in_force, clock, self.emit),
            spells=GateSpells(clock, self.emit),
            stopping=self.stopping,
            workers=workers,
            export_grace=export_grace,
            pool=job_threads if job_queue is None else queue_pool(job_queue, in_force, jobs, clock),
        )

    def _refresher(self, in_force: InForce, pinned: Pinned | None) -> Refresher:
        """The source step's reader, which also enrols the InstanceSources' machines."""
        refresher = Refresher(
            self.source, self.store, in_force, pinned=pinned, clock=self.clock, log=self.log,
            emit=self.emit,
        )  # fmt: skip
        refresher.enrolment = self.enrolment
        return refresher

    # -- what the loop holds now (the controller's status, the CLI and tests read it) ----------

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self.emit.observers

    @property
    def snapshot(self) -> Snapshot | None:
        return self.parts.in_force.snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot | None) -> None:
        self.parts.in_force.snapshot = snapshot  # a benchmark's or test's snapshot in force

    @property
    def revision(self) -> str | None:
        return self.parts.in_force.revision

    @revision.setter
    def revision(self, revision: str | None) -> None:
        self.parts.in_force.revision = revision

    @property
    def submitted(self) -> dict[str, Action]:
        return self.parts.observation.submitted

    @submitted.setter
    def submitted(self, submitted: dict[str, Action]) -> None:
        self.parts.observation.submitted = submitted

    # -- steps, one at a time ------------------------------------------------------------------

    def refresh(self, summary: PassSummary | None = None) -> None:
        """Fetch the source; accept the new revision whole or keep the last good one."""
        self.parts.refresher.refresh(summary)

    def observe(self, now: datetime | None = None) -> Observed:
        return self.parts.observation.observe(now)

    def plan(self) -> Plan | None:
        return self.parts.observation.plan()

    def close_window_executions(self) -> None:
        self.parts.executions.close()

    def export_reports(self) -> None:
        """Start exporting the scheduled reports due now; returns without waiting."""
        self.parts.exporter.start(self.parts.in_force)

    def wait_for_exports(self, timeout: float | None = None) -> bool:
        """Wait until no export is queued or running (at most ``timeout`` s); True when none is."""
        return self.parts.exporter.wait(timeout)

    def recover(self) -> list[JobRecord]:
        """Jobs a crash left running: mark them abandoned; the planner rescans their machines."""
        abandoned = self.store.abandon_running_jobs(self.clock())
        for job in abandoned:
            self.log.warning(
                "job left in flight by a previous run",
                job=job.id,
                key=job.key,
                instance=job.instance,
            )
        return abandoned

    # -- running -------------------------------------------------------------------------------

    def reconcile(self, *, until_idle: bool = True, max_jobs: int | None = None) -> PassSummary:
        """One pass: every step in order. ``until_idle``: dispatch until nothing more can start
        now, else one planning round; ``max_jobs`` caps the jobs started."""
        summary = PassSummary()
        context = PassContext(self.parts, summary, until_idle=until_idle, max_jobs=max_jobs)
        for step in self.steps:
            step(context)
        return summary


def _enrolment(
    source: Source,
    store: StateBackend,
    clock: Clock,
    emit: Emitter,
    log: Log,
    ec2_endpoint_url: str | None,
) -> Enrolment:
    """The InstanceSources' machines: their files are the source's own (a directory, a Git
    commit), their last good lists are kept in the store, and what happens is told through
    ``emit``."""
    return Enrolment(
        DISCOVERERS,
        clock=clock,
        repository=source.repository if isinstance(source, HasRepository) else None,
        lists=store,
        report=enrolment_report(emit, log),
        ec2_endpoint_url=ec2_endpoint_url,
    )
