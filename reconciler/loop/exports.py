"""Stage: loop, step ``reports``. Scheduled ComplianceReports due now are exported on one
background thread and each attempt recorded; an unreachable destination costs its timeouts
there, never a pass.

Reads the store's scans and report runs, writes report runs, publishes files; may not touch the
source, transports, jobs or scans.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

from reconciler.api.enums import ReportRunStatus
from reconciler.api.resources import ComplianceReport
from reconciler.api.snapshot import Snapshot
from reconciler.errors import PermanentError, TemporaryError
from reconciler.loop.common import Clock, InForce, Log
from reconciler.loop.failures import export_error
from reconciler.report.publish import publish
from reconciler.report.publish.scheduled import report_files, reports_due, scope_instances
from reconciler.report.views import export
from reconciler.report.views.rollouts import RolloutView
from reconciler.state import StateBackend, StoreWriteFailed

EXPORTER_IDLE = 60.0
"""Seconds the export thread waits for work before it ends (a new one starts when needed)."""


def default_report_dir(store_path: Path) -> Path:
    """Where scheduled reports may be written when the operator says nothing: ``reports/``
    beside the state database (the audit log's place too)."""
    return store_path.parent / "reports"


class ReportExporter:
    """The loop's one export thread and what is queued on it."""

    def __init__(
        self,
        store: StateBackend,
        clock: Clock,
        log: Log,
        s3_endpoint_url: str | None = None,
        report_dir: Path | None = None,
    ) -> None:
        """``s3_endpoint_url``: where reports to s3:// go when not the configured endpoint;
        ``report_dir``: the directory every directory destination must be in (default:
        :func:`default_report_dir` of the store)."""
        self.store, self.clock, self.log = store, clock, log
        self.s3_endpoint_url = s3_endpoint_url
        self.rollouts: tuple[RolloutView, ...] = ()
        """The latest pass's rollout views (the ``rollouts`` step sets them): the dashboard's
        rollout panel and the JSON report's ``rollouts``."""
        self.report_dir = report_dir or default_report_dir(Path(store.path))
        self._queue: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._exporting: set[str] = set()  # reports queued or being exported
        self._done = threading.Condition()

    def start(self, in_force: InForce) -> None:
        """Start exporting each report due now (an opening of its schedule not exported yet,
        see ``report.publish.scheduled``) and return without waiting. A report whose export is
        still queued or running is not started again; each attempt is recorded, a failure
        retried on the next pass; it never stops the loop. ``wait`` waits for them (a one-shot
        run, a stop, a test)."""
        snapshot, revision = in_force.snapshot, in_force.revision
        if snapshot is None or not snapshot.reports:
            return
        # Read what is in flight before what the store says was exported: an export leaves the
        # in-flight set only after recording its run, so a report is either seen busy here or
        # seen exported below, never neither (which would export an opening twice).
        with self._done:
            busy = set(self._exporting)
        now = self.clock()
        for due in reports_due(snapshot.reports, self.store.last_exported_openings(), now):
            name = due.report.metadata.name
            if name in busy:
                self.log.info("report export still running", report=name, opening=due.opening)
                continue
            with self._done:
                self._exporting.add(name)
            job = partial(self._export, due.report, due.opening, now, snapshot, revision)
            self._queue.put((name, job))
            self._start_thread()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no export is queued or running, at most ``timeout`` seconds (None: no
        limit); True when none is left."""
        with self._done:
            return self._done.wait_for(lambda: not self._exporting, timeout)

    def _start_thread(self) -> None:
        with self._done:
            if self._thread is None:
                # A daemon: a process that stops waits for exports a bounded time (wait), never
                # for a destination that does not answer.
                self._thread = threading.Thread(
                    target=self._work, name="report-export", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                name, job = self._queue.get(timeout=EXPORTER_IDLE)
            except queue.Empty:  # idle: end the thread unless an export is about to be queued
                with self._done:
                    # A report is marked before it is queued: nothing marked, nothing coming;
                    # the next start() starts a new thread.
                    if not self._exporting:
                        self._thread = None
                        return
                continue
            try:
                job()
            except StoreWriteFailed as exc:  # the file system is full: the next pass retries
                self.log.warning("report export not recorded", report=name, error=str(exc))
            except Exception:  # a bug, or recording failed (store closed?): the next pass retries
                self.log.exception("report export crashed", report=name)
            finally:
                with self._done:
                    self._exporting.discard(name)
                    self._done.notify_all()

    def _export(
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
            data = replace(export.read_input(self.store, spec.format), rollouts=self.rollouts)
            scope = scope_instances(snapshot, spec.scope)
            files = export.build_report(data, spec.format, now=now, instances=scope)
            locations = publish(
                report_files(name, files),
                spec.destination,
                endpoint_url=self.s3_endpoint_url,
                report_dir=self.report_dir,
            )
        except (TemporaryError, PermanentError) as exc:  # destination down, report unbuildable:
            error = export_error(exc)  # recorded FAILED, retried on the next pass
        except Exception as exc:  # a bug: a report must never stop patching
            self.log.exception("report export crashed", report=name)
            error = export_error(exc)
        self._record(report, opening, now, revision, locations, error)

    def _record(
        self,
        report: ComplianceReport,
        opening: str,
        now: datetime,
        revision: str | None,
        locations: list[str],
        error: str | None,
    ) -> None:
        name, spec = report.metadata.name, report.spec
        self.store.record_report_run(
            report=name,
            opening=opening,
            destination=spec.destination,
            format=spec.format,
            revision=revision,
            status=ReportRunStatus.FAILED if error else ReportRunStatus.SUCCESS,
            locations=locations,
            error=error,
            started_at=now,
            finished_at=self.clock(),
        )
        if error:
            self.log.warning("report export failed", report=name, opening=opening, error=error)
        else:
            self.log.info("report exported", report=name, opening=opening, locations=locations)
