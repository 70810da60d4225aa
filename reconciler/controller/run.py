"""Stage: controller. ``patchctl controller``: the reconcile loop with a Kubernetes namespace as
its source and the custom resources' status as its report, behind a leader Lease.

:class:`ControllerReconciler` is the loop's :class:`~reconciler.loop.Reconciler` with steps
around the loop's own (:data:`~reconciler.loop.STEPS`): before them, node operations left
half-done are resumed and Nodes mirrored into ManagedInstances; after them, the status of every
object is written (once per pass, only what changed). Its dependencies (the status writer, the
mirror, whether this replica leads) come through its constructor.

:func:`run` waits for the Lease (answering ``/healthz`` as a standby meanwhile), then runs the
loop's :class:`~reconciler.loop.Service` (watch wakes, interval, ``/metrics``, SIGTERM) while
renewing the Lease; losing the Lease stops new jobs at once, fences node work (no further cordon,
drain, node Job or uncordon: the node transports share the elector's ``may_act``) and makes
:func:`run` return non-zero so the Pod restarts as a follower.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, Unpack

from reconciler.controller.events import EventSink
from reconciler.controller.leader import LeaderElector
from reconciler.controller.nodes import NodeMirror
from reconciler.controller.status import Seen, statuses
from reconciler.kube import API_FAILURES
from reconciler.kube.rest import Kube
from reconciler.loop import (
    STEPS,
    PassContext,
    PassSummary,
    Reconciler,
    Service,
    TransportFor,
    http_endpoints,
)
from reconciler.loop.passes import gate_readings, gates
from reconciler.loop.reconciler import LoopOptions
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.views.enrolment import status_document
from reconciler.sources.kubernetes import KubernetesSource
from reconciler.state import StateBackend
from reconciler.state.kubernetes import StatusWriter, Written

EXIT_OK, EXIT_LOST_LEASE = 0, 1
REPORT_RUNS_READ = 100
"""Attempts read per report each pass to find its newest successful export."""


class ControllerReconciler(Reconciler):
    """The reconcile loop on a :class:`KubernetesSource`, its pass with three steps more:
    resume node operations and mirror Nodes before it, write status after it."""

    source: KubernetesSource

    def __init__(
        self,
        source: KubernetesSource,
        store: StateBackend,
        transport_for: TransportFor,
        *,
        writer: StatusWriter,
        mirror: NodeMirror | None = None,
        leading: Callable[[], bool] = lambda: True,
        resume: Callable[[], object] | None = None,
        gate_api: Kube | None = None,
        **options: Unpack[LoopOptions],
    ) -> None:
        """``resume`` finishes node operations left half-done (``resume_nodes``); it runs at the
        start of every pass, when no job of this process is in flight, so a node that came back
        late from a reboot is uncordoned without waiting for a restart. ``leading`` says whether
        this replica holds the leader Lease (only a leader changes Nodes and writes status);
        ``gate_api``: the API its Kubernetes safety gates are read from (docs/guardrails.md)."""
        self.writer, self.mirror, self.leading = writer, mirror, leading
        self.resume = resume
        self.written: dict[str, int] = {}
        """How the last pass's status updates went, by :class:`Written` value."""
        self.gate_api = gate_api
        # The loop's own gates step reads no Kubernetes gate (it has no API): this one does.
        own = tuple(self._read_gates if step is gates else step for step in STEPS)
        steps = (self._resume_nodes, self._mirror_nodes, *own, self._write_status)
        super().__init__(source, store, transport_for, steps=steps, **options)

    def _resume_nodes(self, context: PassContext) -> None:
        if self.resume is None or not self.leading():
            return
        try:
            self.resume()
        except Exception:  # an API failure or a bug: logged loudly; the other machines go on
            self.log.exception("resuming interrupted node operations failed")

    def _read_gates(self, context: PassContext) -> None:
        snapshot = context.parts.in_force.snapshot
        context.parts.observation.readings = gate_readings(snapshot, self.gate_api)

    def _mirror_nodes(self, context: PassContext) -> None:
        if self.mirror is None or not self.leading():
            return
        try:
            self.mirror.sync()
        except API_FAILURES as exc:  # the API is away: the next pass retries
            self.log.warning("mirroring nodes failed", error=str(exc))

    def _write_status(self, context: PassContext) -> None:
        if self.leading() and not self.stopping.is_set():
            self.write_status(context.summary)

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
            sources={s.source: status_document(s) for s in self.enrolment.statuses()},
            rollouts={view.rollout: view for view in summary.rollout_views},
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
    metrics: LoopMetrics,
    events: EventSink | None = None,
    resume: Callable[[], object] = lambda: None,
    on_leading: Callable[[], object] = lambda: None,
) -> int:
    """Wait for the Lease, then reconcile until SIGTERM (exit 0, Lease released) or until the
    Lease is lost (exit 1: no new job starts; running node jobs stop at their next step, the
    fence of ``elector.may_act``). ``metrics`` observes the reconciler's occurrences;
    ``reconciler`` was built with ``leading=elector.may_act`` (a :class:`ControllerReconciler`)
    so that only the leader writes. ``on_leading`` runs once
    the Lease is won, before anything else: a store shared by the replicas takes its writer
    lock there; if it raises, the Lease is released for another replica."""
    if not _standby(elector, host, port, metrics):
        return EXIT_OK
    try:
        on_leading()
    except BaseException:
        elector.release()
        raise
    service = Service(reconciler, metrics, interval=interval, host=host, port=port)
    elector.keep(on_lost=service.stop)  # no new job once the Lease is lost; wake the loop now
    try:
        try:
            resume()
        except Exception:  # an API failure or a bug: logged loudly; the other machines go on
            reconciler.log.exception("resuming interrupted node operations failed")
        service.run()
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
    server = http_endpoints(host, port, metrics, lambda: None)
    try:
        return elector.acquire(stop)
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
