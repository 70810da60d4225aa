"""Stage: loop. The reconcile loop: level-based, an ordered list of small steps per pass.

Each pass re-reads desired state (the source) and observed state (the store) and runs, in order:
``refresh`` (a new revision is accepted whole or refused whole; the last good one stays in force),
``plan`` (pure), ``dispatch`` (jobs claimed by idempotency key, run concurrently on transports),
``record`` (every result with its provenance), ``reports`` (scheduled ComplianceReports due now,
exported and recorded). Nothing is edge-triggered: a restart simply
re-reads both states; jobs a crash left "running" are marked abandoned and their machines
rescanned, so a snapshot is never installed twice and no result is lost.

The loop is where I/O meets the pure stages; it decides nothing itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from reconciler.api.enums import OperatingSystem, Operation
from reconciler.api.inventory import Inventory
from reconciler.api.resources import ComplianceReport, ManagedInstance
from reconciler.api.snapshot import Snapshot, SnapshotInvalid
from reconciler.dispatch import AgentFailed
from reconciler.dispatch.base import Transport
from reconciler.dispatch.outcomes import after_install, install_failed, pins_for
from reconciler.evaluation import InstanceEvaluation, evaluate, resolve
from reconciler.plan import (
    INSTALL,
    Action,
    Observed,
    ObservedJob,
    ObservedScan,
    Plan,
    Settings,
    baseline_digest,
    history_scope,
    plan,
)
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Kind, Observer, Occurrence
from reconciler.report.publish import PublishError, publish
from reconciler.report.publish.scheduled import report_files, reports_due, scope_instances
from reconciler.report.views import export
from reconciler.sources.base import Source, SourceError
from reconciler.state import JobRecord, ScanRecord, StateStore

Clock = Callable[[], datetime]
TransportFor = Callable[[ManagedInstance], Transport]

EXPORT_GRACE = 5.0
"""Seconds a pass waits for the report exports it started: a directory or a reachable bucket
is done by then, so the attempt is recorded (and in the controller's status) in the same pass;
a destination that does not answer goes on in the background and holds no pass longer."""
EXPORTER_IDLE = 60.0
"""Seconds the export thread waits for work before it ends (a new one starts when needed)."""
EXPORT_STOP_WAIT = 30.0
"""Seconds ``serve`` waits, on stop, for exports still running."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class PassSummary:
    """What one reconcile run did."""

    revision: str | None = None
    refused: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # "Scan succeeded" -> count
    waits: list[tuple[str, str]] = field(default_factory=list)
    converged: bool = False

    def count(self, operation: str, status: str) -> None:
        key = f"{operation} {status}"
        self.jobs[key] = self.jobs.get(key, 0) + 1


class Reconciler:
    """Desired state from a source, observed state in a store, jobs on transports."""

    def __init__(
        self,
        source: Source,
        store: StateStore,
        transport_for: TransportFor,
        *,
        settings: Settings = Settings(),  # noqa: B008 - frozen value
        clock: Clock = utc_now,
        workers: int = 10,
        log: Any = None,
        pinned: Callable[[str], Source] | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        """``pinned(revision)`` is a source reading exactly that earlier revision (a Git commit):
        after a restart, it brings back the last good revision when the current one is refused.
        ``observers`` receive every Occurrence (audit log, events, metrics)."""
        self.source, self.store, self.transport_for = source, store, transport_for
        self.pinned = pinned
        self.settings, self.clock, self.workers = settings, clock, workers
        self.log = log or structlog.get_logger("patchwarden")
        self.snapshot: Snapshot | None = None
        self.revision: str | None = None
        self.author = ""
        self.observers = list(observers)
        self._last_refused: str | None = None
        self.stopping = threading.Event()
        self.on_job_done: Callable[[JobRecord], None] | None = None
        self.submitted: dict[str, Action] = {}
        self.s3_endpoint_url: str | None = None
        """Where scheduled reports to s3:// go when not the configured endpoint."""
        self.export_grace = EXPORT_GRACE
        """Seconds a pass waits for the exports it started before it ends (see export_reports)."""
        self._exports: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._exporter: threading.Thread | None = None
        self._exporting: set[str] = set()  # reports queued or being exported
        self._exports_done = threading.Condition()
        # Jobs of one opening run concurrently: its execution status is read, then written and
        # announced, one job at a time (else two jobs both announce IN_PROGRESS, or a job that
        # starts late turns a FAILED execution back to IN_PROGRESS).
        self._window_lock = threading.Lock()

    def emit(
        self,
        kind: Kind,
        *,
        instance: str | None = None,
        job: str | None = None,
        revision: str | None = None,
        author: str | None = None,
        **detail: Any,
    ) -> None:
        """Tell every observer what happened; an observer's failure is logged, never raised."""
        occurrence = Occurrence(
            kind=kind,
            time=self.clock(),
            revision=revision if revision is not None else self.revision,
            author=author if author is not None else self.author,
            instance=instance,
            job=job,
            detail=detail,
        )
        for observer in self.observers:
            try:
                observer(occurrence)
            except Exception:
                self.log.exception("observer failed", observer=repr(observer), kind=str(kind))

    # -- steps --------------------------------------------------------------------------------

    def refresh(self, summary: PassSummary | None = None) -> None:
        """Fetch the source; accept the new revision whole or keep the last good one."""
        try:
            revision, snapshot = self.source.snapshot()
        except SnapshotInvalid as exc:
            self._restore_last_good()
            # A source's RevisionInvalid names the refused revision as a Revision value.
            refused = getattr(exc, "revision", None)
            self._refuse(
                str(refused or "unknown"),
                [str(p) for p in exc.problems],
                summary,
                author=getattr(refused, "author", ""),
            )
            return
        except SourceError as exc:
            self._restore_last_good()
            refused = getattr(exc, "revision", None)
            self._refuse(
                str(refused or "unreachable"),
                [str(exc)],
                summary,
                author=getattr(refused, "author", ""),
            )
            return
        if str(revision) != self.revision and not self._already_accepted(str(revision)):
            self.store.record_revision(
                revision=str(revision), accepted=True, problems=[], now=self.clock()
            )
            self.log.info(
                "snapshot accepted", revision=str(revision), instances=len(snapshot.instances)
            )
            self.emit(
                Kind.SNAPSHOT_ACCEPTED,
                revision=str(revision),
                author=revision.author,
                previous=self.revision,
                instances=len(snapshot.instances),
            )
        self.revision, self.snapshot, self.author = str(revision), snapshot, revision.author
        self._last_refused = None  # a refusal seen again after a good revision is news again

    def _already_accepted(self, revision: str) -> bool:
        """A restarted process meets the revision its predecessor accepted: not news."""
        newest = self.store.revisions(limit=1)
        return bool(newest) and newest[0].revision == revision and newest[0].accepted

    def _restore_last_good(self) -> None:
        """A fresh process (``patchctl reconcile``, a restarted ``run``) has no good snapshot in
        memory when the current revision is refused: read the store's last good one again."""
        if self.snapshot is not None or self.pinned is None:
            return
        good = self.store.last_good_revision()
        if good is None:
            return
        try:
            revision, snapshot = self.pinned(good.revision).snapshot()
        except (SnapshotInvalid, SourceError) as exc:
            self.log.warning(
                "last good revision unavailable", revision=good.revision, error=str(exc)
            )
            return
        if revision.sha != good.revision.rpartition(":")[2]:
            self.log.warning(
                "last good revision unavailable", revision=good.revision, got=str(revision)
            )
            return
        self.revision, self.snapshot = good.revision, snapshot
        self.log.info("last good revision restored", revision=good.revision)

    def _refuse(
        self,
        revision: str,
        problems: list[str],
        summary: PassSummary | None,
        author: str = "",
    ) -> None:
        if revision != self._last_refused:
            # A refused revision stays current until the next commit: tell people once.
            self._last_refused = revision
            self.emit(
                Kind.SNAPSHOT_REFUSED,
                revision=revision,
                author=author,
                keeping=self.revision,
                problems=problems[:50],
            )
        self.store.record_revision(
            revision=revision, accepted=False, problems=problems, now=self.clock()
        )
        self.log.warning(
            "snapshot refused", refused=revision, keeping=self.revision, problems=problems[:20]
        )
        if summary is not None:
            summary.refused.append(revision)

    def observe(self, now: datetime | None = None) -> Observed:
        """Observed state for a plan at ``now``: the latest scans, and only the jobs the planner
        can still act on (``plan.history_scope``), never the whole history: this runs after
        every job completion, and a fleet accumulates a year of jobs."""
        now = self.clock() if now is None else now
        scans = {name: _observed_scan(record) for name, record in self.store.latest_scans().items()}
        openings: tuple[tuple[str, str], ...] = ()
        failed_since = now - self.settings.retry_after
        if self.snapshot is not None:
            scope = history_scope(self.snapshot, now, self.settings)
            openings, failed_since = scope.openings, scope.failed_scans_since
        records = self.store.planning_jobs(openings=openings, failed_scans_since=failed_since)
        jobs = [_observed_job(job) for job in records]
        # Submitted jobs hold their budget slot before their worker has claimed them in the store.
        pending = list(self.submitted.values())
        claimed = self.store.claimed_keys(a.key for a in pending) if pending else set()
        jobs += [
            ObservedJob(a.key, a.instance, a.operation, "running", now, a.window, a.task, a.opening)
            for a in pending
            if a.key not in claimed
        ]
        return Observed(scans={k: v for k, v in scans.items() if v is not None}, jobs=jobs)

    def plan(self) -> Plan | None:
        if self.snapshot is None or self.revision is None:
            return None
        now = self.clock()  # one reading: the jobs observed are the ones this plan looks at
        return plan(self.snapshot, self.revision, self.observe(now), now, self.settings)

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

    # -- running ------------------------------------------------------------------------------

    def reconcile(self, *, until_idle: bool = True, max_jobs: int | None = None) -> PassSummary:
        """Refresh, then plan and dispatch until nothing more can start now (``until_idle``), or
        one planning round otherwise. Jobs run concurrently; each completion triggers a re-plan,
        so budgets are refilled as soon as a slot frees."""
        summary = PassSummary()
        self.refresh(summary)
        self.close_window_executions()
        summary.revision = self.revision
        started = 0
        running: dict[Future[JobRecord | None], Action] = {}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="job") as pool:
            while not self.stopping.is_set():
                current = self.plan()
                # One job per machine at a time: a submitted job may not have claimed its key yet,
                # so the planner cannot see it; skip its machine here.
                busy = {r.instance for r in running.values()}
                fresh = [a for a in (current.actions if current else ()) if a.instance not in busy]
                for action in fresh:
                    if max_jobs is not None and started >= max_jobs:
                        break
                    self.submitted[action.key] = action
                    running[pool.submit(self.execute, action)] = action
                    started += 1
                if not running:
                    summary.waits = [
                        (w.instance, w.reason) for w in (current.waits if current else ())
                    ]
                    summary.converged = current is not None and current.converged
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    action = running.pop(future)
                    self.submitted.pop(action.key, None)
                    job = future.result()
                    if job is not None:
                        summary.count(action.operation, job.status)
                if not until_idle and not running:
                    break
        if not self.stopping.is_set():
            # After dispatch, so that a report shows this pass's results.
            self.export_reports()
            self.wait_for_exports(self.export_grace)
        return summary

    def export_reports(self) -> None:
        """Scheduled ComplianceReports: start exporting each one due now (an opening of its
        schedule not exported yet, see ``report.scheduled``) on the Reconciler's one export
        thread, and return without waiting: an unreachable destination costs its timeouts there,
        not in the pass. A report whose export is still queued or running is not started again;
        each attempt is recorded, a failure retried on the next pass; it never stops the loop.
        ``wait_for_exports`` waits for them (a one-shot run, a stop, a test)."""
        if self.snapshot is None or not self.snapshot.reports:
            return
        snapshot, revision = self.snapshot, self.revision
        # Read what is in flight before what the store says was exported: an export leaves the
        # in-flight set only after recording its run, so a report is either seen busy here or
        # seen exported below, never neither (which would export an opening twice).
        with self._exports_done:
            busy = set(self._exporting)
        now = self.clock()
        for due in reports_due(snapshot.reports, self.store.last_exported_openings(), now):
            name = due.report.metadata.name
            if name in busy:
                self.log.info("report export still running", report=name, opening=due.opening)
                continue
            with self._exports_done:
                self._exporting.add(name)
            job = partial(self._export_report, due.report, due.opening, now, snapshot, revision)
            self._exports.put((name, job))
            self._start_exporter()

    def wait_for_exports(self, timeout: float | None = None) -> bool:
        """Wait until no export is queued or running, at most ``timeout`` seconds (None: no
        limit); True when none is left."""
        with self._exports_done:
            return self._exports_done.wait_for(lambda: not self._exporting, timeout)

    def _start_exporter(self) -> None:
        with self._exports_done:
            if self._exporter is None:
                # A daemon: a process that stops waits for exports a bounded time
                # (wait_for_exports), never for a destination that does not answer.
                self._exporter = threading.Thread(
                    target=self._export_worker, name="report-export", daemon=True
                )
                self._exporter.start()

    def _export_worker(self) -> None:
        while True:
            try:
                name, job = self._exports.get(timeout=EXPORTER_IDLE)
            except queue.Empty:
                with self._exports_done:
                    # A report is marked before it is queued: nothing marked, nothing coming;
                    # the next export_reports() starts a new thread.
                    if not self._exporting:
                        self._exporter = None
                        return
                continue
            try:
                job()
            except Exception:  # recording failed (store closed?); the next pass retries
                self.log.exception("report export crashed", report=name)
            finally:
                with self._exports_done:
                    self._exporting.discard(name)
                    self._exports_done.notify_all()

    def _export_report(
        self,
        report: ComplianceReport,
        opening: str,
        now: datetime,
        snapshot: Snapshot,
        revision: str | None,
    ) -> None:
        name, spec = report.metadata.name, report.spec
        locations: list[str] = []
        error: str | None = None
        try:
            data = export.read_input(self.store, spec.format)
            scope = scope_instances(snapshot, spec.scope)
            files = export.build_report(data, spec.format, now=now, instances=scope)
            locations = publish(
                report_files(name, files), spec.destination, endpoint_url=self.s3_endpoint_url
            )
        except (PublishError, export.ReportError) as exc:
            error = str(exc)
        except Exception as exc:  # a report must never stop patching
            self.log.exception("report export crashed", report=name)
            error = f"{type(exc).__name__}: {exc}"
        self.store.record_report_run(
            report=name,
            opening=opening,
            destination=spec.destination,
            format=spec.format,
            revision=revision,
            status="FAILED" if error else "SUCCESS",
            locations=locations,
            error=error,
            started_at=now,
            finished_at=self.clock(),
        )
        if error:
            self.log.warning("report export failed", report=name, opening=opening, error=error)
        else:
            self.log.info("report exported", report=name, opening=opening, locations=locations)

    def _window_started(self, window: str, opening: str) -> None:
        """An opening's first job makes its execution IN_PROGRESS (a FAILED one stays FAILED)."""
        with self._window_lock:
            known = {e["opening"]: e["status"] for e in self.store.window_executions(window)}
            if opening not in known:
                self._window_execution(window, opening, "IN_PROGRESS", None)

    def _window_execution(self, window: str, opening: str, status: str, before: str | None) -> None:
        self.store.record_window_execution(
            window=window, opening=opening, status=status, now=self.clock()
        )
        if status != before:
            self.emit(
                Kind.WINDOW_EXECUTION_CHANGED,
                window=window,
                opening=opening,
                status=status,
                previous=before,
            )

    def close_window_executions(self) -> None:
        """Executions whose opening has ended without a failed job end as SUCCESS (SSM reports a
        window execution's outcome when the window closes)."""
        if self.snapshot is None:
            return
        now = self.clock()
        for execution in self.store.window_executions():
            window = self.snapshot.windows.get(execution["window"])
            if window is None or execution["status"] != "IN_PROGRESS":
                continue
            start = datetime.fromisoformat(execution["opening"].replace("Z", "+00:00"))
            if start + timedelta(hours=window.spec.duration) <= now:
                self._window_execution(
                    execution["window"], execution["opening"], "SUCCESS", "IN_PROGRESS"
                )

    def execute(self, action: Action) -> JobRecord | None:
        """Run one action: claim it (exactly once), run it on the machine, record the result."""
        assert self.snapshot is not None and self.revision is not None
        instance = self.snapshot.instances[action.instance]
        now = self.clock()
        job = self.store.claim_job(
            key=action.key,
            instance=action.instance,
            operation=action.operation,
            window=action.window,
            task=action.task,
            opening=action.opening,
            revision=self.revision,
            payload=asdict(action),
            now=now,
        )
        if job is None:
            return None  # another pass or process already owns this key
        if action.window and action.opening:
            self._window_started(action.window, action.opening)
        log = self.log.bind(
            instance=action.instance, revision=self.revision, job=job.id, operation=action.operation
        )
        log.info("job started", reason=action.reason, window=action.window, pins=len(action.pins))
        self.emit(
            Kind.JOB_DISPATCHED,
            instance=action.instance,
            job=job.id,
            operation=action.operation,
            reason=action.reason,
            window=action.window,
            task=action.task,
            opening=action.opening,
            pins=list(action.pins),
        )
        try:
            transport = self.transport_for(instance)
            if action.operation == INSTALL:
                status, result = self._install(instance, action, transport, job, now)
            else:
                status, result = self._scan(instance, transport, job, now)
        except AgentFailed as exc:
            status, result = "failed", {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # a job must always finish; the loop goes on
            log.exception("job crashed")
            status, result = "failed", {"error": {"code": type(exc).__name__, "message": str(exc)}}
        finished = self.store.finish_job(job.id, status=status, result=result, now=self.clock())
        if action.window and action.opening and status == "failed":
            with self._window_lock:
                executions = self.store.window_executions(action.window)
                known = {e["opening"]: e["status"] for e in executions}
                self._window_execution(
                    action.window, action.opening, "FAILED", known.get(action.opening)
                )
        log.info("job finished", status=status, error=result.get("error"))
        self.emit(
            Kind.JOB_FINISHED,
            instance=action.instance,
            job=job.id,
            operation=action.operation,
            status=status,
            window=action.window,
            error=result.get("error"),
            seconds=(finished.finished_at - finished.created_at).total_seconds()
            if finished.finished_at
            else None,
        )
        if self.on_job_done is not None:
            self.on_job_done(finished)
        return finished

    def _scan(
        self, instance: ManagedInstance, transport: Transport, job: JobRecord, started: datetime
    ) -> tuple[str, dict[str, Any]]:
        inventory = transport.scan(instance_id=instance.metadata.name, refresh=True)
        evaluation = self._record(instance, inventory, job, started, Operation.SCAN)
        return "succeeded", {"summary": evaluation.summary.to_dict()}

    def _install(
        self,
        instance: ManagedInstance,
        action: Action,
        transport: Transport,
        job: JobRecord,
        started: datetime,
    ) -> tuple[str, dict[str, Any]]:
        # Machines of their own may reboot; this host (local) never reboots under the loop. A
        # node's transport drains it first and waits for it to come back.
        allow_reboot = (
            instance.spec.connection.type in ("ssh", "kubernetes")
            and action.reboot_option == "RebootIfNeeded"
        )
        outcome = transport.install(
            list(action.pins),
            blocked=action.blocked,
            reboot_option=action.reboot_option,
            allow_reboot=allow_reboot,
        )
        before = self.store.latest_scan(instance.metadata.name)
        rescanned = transport.scan(instance_id=instance.metadata.name, refresh=False)
        arch = {
            (p["name"], p["version"]): p.get("arch", "")
            for p in (before.evaluation.get("patches", []) if before else [])
        }
        inventory = after_install(rescanned, outcome, arch)
        evaluation = self._record(instance, inventory, job, started, Operation.INSTALL)
        self._report_install(instance.metadata.name, job.id, outcome)
        status = "failed" if install_failed(outcome) else "succeeded"
        return status, {
            "install": {
                k: outcome.get(k)
                for k in ("changed", "patches", "dependencies", "recovery", "reboot")
            },
            "summary": evaluation.summary.to_dict(),
        }

    def _report_install(self, instance: str, job: str, outcome: dict[str, Any]) -> None:
        if outcome.get("changed"):
            self.emit(
                Kind.PATCHES_INSTALLED,
                instance=instance,
                job=job,
                patches=outcome.get("patches") or [],
                dependencies=outcome.get("dependencies") or [],
            )
        reboot = outcome.get("reboot") or {}
        if reboot.get("required"):
            self.emit(Kind.REBOOT, instance=instance, job=job, **reboot)

    def _record(
        self,
        instance: ManagedInstance,
        inventory: Inventory,
        job: JobRecord,
        started: datetime,
        operation: Operation,
    ) -> InstanceEvaluation:
        assert self.snapshot is not None and self.revision is not None
        resolution = resolve(
            self.snapshot, instance.metadata.labels, inventory.facts.operating_system
        )
        if resolution.baseline is None:
            raise AgentFailed("NoBaseline", resolution.baseline_reason)
        group = resolution.group.metadata.name if resolution.group else None
        inventory = inventory.model_copy(update={"operation": operation})
        now = self.clock()
        result = evaluate(resolution.baseline, inventory, now, patch_group=group)
        evaluation = result.to_dict()
        evaluation["pins"] = list(pins_for(result, inventory.facts.arch))
        previous = self.store.latest_scan(instance.metadata.name)
        self.store.record_scan(
            instance=instance.metadata.name,
            operation=str(operation),
            revision=self.revision,
            baseline=resolution.baseline.metadata.name,
            baseline_hash=baseline_digest(resolution.baseline),
            job_id=job.id,
            started_at=started,
            finished_at=now,
            inventory=inventory.model_dump(mode="json", by_alias=True),
            evaluation=evaluation,
        )
        before = (
            previous.evaluation.get("summary", {}).get("complianceStatus") if previous else None
        )
        summary = evaluation["summary"]
        if summary.get("complianceStatus") != before:
            self.emit(
                Kind.COMPLIANCE_CHANGED,
                instance=instance.metadata.name,
                job=job.id,
                status=summary.get("complianceStatus"),
                previous=before,
                group=group,
                baseline=resolution.baseline.metadata.name,
                operation=str(operation),
                summary=summary,
            )
        return result


def _observed_scan(record: ScanRecord) -> ObservedScan | None:
    try:
        os = OperatingSystem(record.inventory["facts"]["operatingSystem"])
    except (KeyError, ValueError, TypeError):
        return None
    summary = record.evaluation.get("summary", {})
    return ObservedScan(
        finished_at=record.finished_at,
        operating_system=os,
        baseline_hash=record.baseline_hash,
        pins=tuple(record.evaluation.get("pins", ())),
        non_compliant=summary.get("complianceStatus") == "NON_COMPLIANT",
    )


def _observed_job(job: JobRecord) -> ObservedJob:
    return ObservedJob(
        key=job.key,
        instance=job.instance,
        operation=job.operation,
        status=job.status,
        created_at=job.created_at,
        window=job.window,
        task=job.task,
        opening=job.opening,
    )


# ---------------------------------------------------------------------------------------------
# Running as a service


def configure_logging(stream: Any = None) -> None:
    """JSON lines on stderr, every line with its time and level (revision, instance and job are
    bound by the loop)."""
    import logging
    import sys

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def serve(
    reconciler: Reconciler,
    *,
    interval: float,
    host: str,
    port: int,
    metrics: LoopMetrics | None = None,
    ready: threading.Event | None = None,
) -> None:
    """``patchctl run``: reconcile every ``interval`` seconds (and at once when a watched
    directory changes), serve /healthz and /metrics, stop gracefully on SIGTERM/SIGINT: running
    jobs finish, nothing new starts."""
    import signal

    metrics = metrics or LoopMetrics(reconciler.store)
    metrics.store = metrics.store or reconciler.store
    if metrics not in reconciler.observers:
        # Jobs, refusals, installs and reboots are counted from the occurrence stream.
        reconciler.observers.append(metrics)
    wake = threading.Event()
    last_pass: list[float] = [0.0]

    def stop(*_: object) -> None:
        reconciler.stopping.set()
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    metrics.refresh()  # what a previous run recorded, before the first pass ends
    server = http_endpoints(host, port, metrics, lambda: _healthy(last_pass[0], interval))
    unwatch = _watch(reconciler.source, wake)
    if ready is not None:
        ready.set()
    reconciler.recover()
    try:
        while not reconciler.stopping.is_set():
            started = time.monotonic()
            summary = reconciler.reconcile(until_idle=True)
            metrics.passes.inc()
            metrics.reconcile_seconds.observe(time.monotonic() - started)
            metrics.refresh()
            if summary.revision is not None:
                metrics.last_success.set_to_current_time()
                last_pass[0] = time.time()
            wake.wait(interval)
            wake.clear()
    finally:
        unwatch()
        server.shutdown()
        server.server_close()
        if not reconciler.wait_for_exports(EXPORT_STOP_WAIT):
            reconciler.log.warning("stopped with a report export still running")
        reconciler.log.info("stopped")


def _healthy(last: float, interval: float) -> bool:
    return last > 0 and time.time() - last < max(3 * interval, 300)


def _watch(source: Source, wake: threading.Event) -> Callable[[], None]:
    watch = getattr(source, "watch", None)
    if watch is None:
        return lambda: None
    stopper: Callable[[], None] = watch(wake.set)
    return stopper


def http_endpoints(
    host: str, port: int, metrics: LoopMetrics, healthy: Callable[[], bool]
) -> ThreadingHTTPServer:
    """/metrics and /healthz on HOST:PORT, served from a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, code, kind = metrics.render(), 200, "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                ok = healthy()
                body, code, kind = (
                    (b"ok\n" if ok else b"no successful reconcile yet\n"),
                    (200 if ok else 503),
                    "text/plain",
                )
            else:
                body, code, kind = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    return server
