"""Stage: controller. ``patchctl controller``: the reconcile loop with a Kubernetes namespace as
its source and the custom resources' status as its report, behind a leader Lease.

:class:`ControllerReconciler` is the loop's :class:`~reconciler.loop.Reconciler` with two steps
around each pass: before it, Nodes are mirrored into ManagedInstances; after it, the status of
every object is written (once per pass, only what changed). :func:`run` waits for the Lease
(answering ``/healthz`` as a standby meanwhile), then runs the loop's :func:`~reconciler.loop.serve`
(watch wakes, interval, ``/metrics``, SIGTERM) while renewing the Lease; losing the Lease stops new
jobs at once and makes :func:`run` return non-zero so the Pod restarts as a follower.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.controller.events import EventSink
from reconciler.controller.leader import LeaderElector
from reconciler.controller.nodes import NodeMirror
from reconciler.controller.status import Seen, statuses
from reconciler.kube import API_FAILURES
from reconciler.loop import PassSummary, Reconciler, http_endpoints, serve
from reconciler.report.notify.metrics import DeliveryCounts, LoopMetrics
from reconciler.sources.kubernetes import KubernetesSource
from reconciler.state.kubernetes import StatusWriter, Written

EXIT_OK, EXIT_LOST_LEASE = 0, 1
REPORT_RUNS_READ = 100
"""Attempts read per report each pass to find its newest successful export."""


class ControllerReconciler(Reconciler):
    """The reconcile loop on a :class:`KubernetesSource`, writing status after each pass."""

    source: KubernetesSource

    def __init__(
        self,
        source: KubernetesSource,
        *args: Any,
        writer: StatusWriter,
        mirror: NodeMirror | None = None,
        leading: Callable[[], bool] = lambda: True,
        resume: Callable[[], object] | None = None,
        **kwargs: Any,
    ) -> None:
        """``resume`` finishes node operations left half-done (``resume_nodes``); it runs at the
        start of every pass, when no job of this process is in flight, so a node that came back
        late from a reboot is uncordoned without waiting for a restart."""
        super().__init__(source, *args, **kwargs)
        self.writer, self.mirror, self.leading = writer, mirror, leading
        self.resume = resume
        self.written: dict[str, int] = {}
        """How the last pass's status updates went, by :class:`Written` value."""

    def reconcile(self, *, until_idle: bool = True, max_jobs: int | None = None) -> PassSummary:
        if self.resume is not None and self.leading():
            try:
                self.resume()
            except Exception:  # logged loudly; patching the other machines goes on
                self.log.exception("resuming interrupted node operations failed")
        if self.mirror is not None and self.leading():
            try:
                self.mirror.sync()
            except API_FAILURES as exc:
                self.log.warning("mirroring nodes failed", error=str(exc))
        summary = super().reconcile(until_idle=until_idle, max_jobs=max_jobs)
        if self.leading() and not self.stopping.is_set():
            self.write_status(summary)
        return summary

    def seen(self, summary: PassSummary) -> Seen:
        """What this pass saw, for the status."""
        source = self.source
        applied = frozenset(
            key for key, content in source.current.items() if source.accepted.get(key) == content
        )
        latest = self.store.latest_jobs()
        executions: dict[str, dict[str, Any]] = {}
        for execution in self.store.window_executions():  # oldest first
            executions[execution["window"]] = {
                "opening": execution["opening"],
                "status": execution["status"],
            }
        # Per report: the newest attempts are enough for the newest run and the newest success
        # (a failure repeated every pass is recorded once, see StateStore.record_report_run).
        reports = [name for kind, name in source.listing if kind == "ComplianceReport"]
        runs = {name: self.store.report_runs(name, limit=REPORT_RUNS_READ) for name in reports}
        return Seen(
            now=self.clock(),
            listing=dict(source.listing),
            snapshot=self.snapshot,
            revision=self.revision,
            applied=applied,
            problems=list(source.problems),
            scans=self.store.latest_scans(),
            jobs=latest,
            executions=executions,
            waits=dict(summary.waits),
            report_runs=runs,
        )

    def write_status(self, summary: PassSummary) -> dict[str, int]:
        """Write every object's status (only what changed); API errors are logged, the next
        pass tries again."""
        counts: dict[str, int] = {}
        seen = self.seen(summary)
        for (kind, name), status in statuses(seen).items():
            info = seen.listing[(kind, name)]
            try:
                outcome = str(
                    self.writer.write(
                        kind,
                        name,
                        status,
                        current=info.status,
                        resource_version=info.resource_version,
                    )
                )
            except API_FAILURES as exc:
                # One object refused (403 of an older chart's RBAC, 422 of its schema) must not
                # cost every object after it its status.
                self.log.warning("writing status failed", kind=kind, name=name, error=str(exc))
                outcome = "failed"
            counts[outcome] = counts.get(outcome, 0) + 1
        if counts.get(Written.WRITTEN):
            self.log.info("status written", **counts)
        self.written = counts
        return counts


def run(
    reconciler: Reconciler,
    elector: LeaderElector,
    *,
    interval: float,
    host: str,
    port: int,
    events: EventSink | None = None,
    resume: Callable[[], object] = lambda: None,
    sinks: Sequence[DeliveryCounts] = (),
) -> int:
    """Wait for the Lease, then reconcile until SIGTERM (exit 0, Lease released) or until the
    Lease is lost (exit 1: no new job starts; running ones finish)."""
    metrics = LoopMetrics(reconciler.store)
    metrics.track_event_sinks(sinks)
    if not _standby(elector, host, port, metrics):
        return EXIT_OK

    def lost() -> None:
        reconciler.stopping.set()
        poke = getattr(reconciler.source, "poke", None)
        if poke is not None:
            poke()  # wake serve() now rather than after the interval

    if isinstance(reconciler, ControllerReconciler):
        reconciler.leading = elector.leading.is_set
    elector.keep(on_lost=lost)
    try:
        try:
            resume()
        except Exception:  # logged loudly; patching the other machines goes on
            reconciler.log.exception("resuming interrupted node operations failed")
        serve(reconciler, interval=interval, host=host, port=port, metrics=metrics)
    finally:
        if not elector.lost.is_set():
            elector.release()
        if events is not None:
            events.close()
    if elector.lost.is_set():
        reconciler.log.error("lost the leader lease; exiting so that this replica restarts")
        return EXIT_LOST_LEASE
    return EXIT_OK


def _standby(elector: LeaderElector, host: str, port: int, metrics: LoopMetrics) -> bool:
    """Wait for the Lease; a standby is healthy (its /healthz says 200) and stops on SIGTERM."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    server = http_endpoints(host, port, metrics, lambda: True)
    try:
        return elector.acquire(stop)
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
