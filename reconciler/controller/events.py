"""Stage: controller. Kubernetes Events for the loop's transitions, on the object they concern.

:class:`EventSink` is an observer of the loop's occurrence stream (:mod:`reconciler.report.
occurrences`). Only transitions become Events (``Occurrence.transition``: compliance changed, a
snapshot refused, a job failed, a window execution changed), so a steady fleet posts nothing; the
rest is for the audit log and metrics. Posting never blocks the loop: occurrences go into a bounded
queue that a background thread drains; when the API is slow and the queue is full, the newest are
dropped and counted (an Event is a notification, the status and the store hold the truth).

What each becomes (core/v1 Event, ``reason`` in CamelCase, type Normal or Warning):

- ``compliance.changed`` on the ManagedInstance: ``Compliant`` (Normal) or ``NonCompliant``
  (Warning);
- ``snapshot.refused`` on each object a problem names: ``SnapshotRefused`` (Warning);
- ``job.finished`` with status failed, on the ManagedInstance: ``ScanFailed`` or ``InstallFailed``
  (Warning);
- ``window.execution`` on the MaintenanceWindow: ``ExecutionInProgress``, ``ExecutionSucceeded``
  (Normal) or ``ExecutionFailed`` (Warning);
- ``rollout.*`` on the Rollout: ``CycleStarted``, ``Promoted`` (a stage started installing),
  ``StageBaked``, ``Resumed``, ``CycleCompleted`` (Normal) or ``Halted`` (Warning);
- ``gate.blocked`` on the MaintenanceWindow of the task, or the Rollout of the stage, the gate
  guards: ``GateBlocked`` (Warning);
- ``emergency.requested`` and ``emergency.status`` on each ManagedInstance the run targets (at
  most ``MAX_OBJECTS``): ``EmergencyRequested``, ``EmergencyInProgress``, ``EmergencySucceeded``
  (Normal), ``EmergencyFailed``, ``EmergencyCancelled``, ``EmergencyExpired`` (Warning). A run
  is requested by ``patchctl emergency``, whose own process emits ``emergency.requested``: the
  controller posts the statuses its loop changes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog

from reconciler.api.oneoff import OneOffStatus
from reconciler.api.resources import API_VERSION
from reconciler.api.times import utc_stamp
from reconciler.kube import ApiClient, Kube
from reconciler.report.notify.occurrences import ROLLOUT_KINDS, Kind, Occurrence

log = structlog.get_logger("patchwarden")

COMPONENT = "patchwarden-controller"
MAX_MESSAGE = 1024  # the API refuses longer Event messages
MAX_OBJECTS = 20  # a refusal with problems in many objects posts at most this many Events


@dataclass(frozen=True)
class Notice:
    """One Event to post."""

    kind: str
    name: str
    type: str
    reason: str
    message: str


def notices(
    occurrence: Occurrence, object_of: Callable[[str], tuple[str, str] | None]
) -> Iterator[Notice]:
    """The Events one occurrence becomes (none unless it is a transition). ``object_of`` maps a
    problem's file to the (kind, name) rendered into it."""
    if not occurrence.transition:
        return
    detail = occurrence.detail
    at = f" (revision {occurrence.revision})" if occurrence.revision else ""
    if occurrence.kind is Kind.COMPLIANCE_CHANGED and occurrence.instance:
        status = detail.get("status")
        summary = detail.get("summary") or {}
        bad = status == "NON_COMPLIANT"
        yield Notice(
            "ManagedInstance",
            occurrence.instance,
            "Warning" if bad else "Normal",
            "NonCompliant" if bad else "Compliant",
            f"{detail.get('previous') or 'not scanned'} -> {status} after "
            f"{detail.get('operation')} under baseline {detail.get('baseline')}: "
            f"{summary.get('missingCount', 0)} missing, "
            f"{summary.get('failedCount', 0)} failed{at}",
        )
    elif occurrence.kind is Kind.JOB_FINISHED and occurrence.instance:
        error = detail.get("error") or {}
        operation = detail.get("operation") or "Job"
        yield Notice(
            "ManagedInstance",
            occurrence.instance,
            "Warning",
            f"{operation}Failed",
            f"{operation} job {occurrence.job} failed: {error.get('code')}: "
            f"{error.get('message')}{at}",
        )
    elif occurrence.kind is Kind.WINDOW_EXECUTION_CHANGED and detail.get("window"):
        yield _execution(detail, at)
    elif occurrence.kind is Kind.SNAPSHOT_REFUSED:
        yield from _refusal(occurrence, object_of)
    elif occurrence.kind is Kind.INSTANCE_SOURCE_FAILED and detail.get("source"):
        yield _refresh_failed(detail, at)
    elif occurrence.kind in ROLLOUT_KINDS and detail.get("rollout"):
        yield _rollout(occurrence.kind, detail, at)
    elif occurrence.kind is Kind.GATE_BLOCKED:
        yield from _gate_blocked(detail, at)
    elif occurrence.kind in (Kind.EMERGENCY_REQUESTED, Kind.EMERGENCY_CHANGED):
        yield from _emergency(occurrence, at)


def _execution(detail: Mapping[str, Any], at: str) -> Notice:
    status = str(detail.get("status"))
    reason = {
        "IN_PROGRESS": "ExecutionInProgress",
        "SUCCESS": "ExecutionSucceeded",
        "FAILED": "ExecutionFailed",
        "TIMED_OUT": "ExecutionTimedOut",
        "CANCELLED": "ExecutionCancelled",
        "SKIPPED_OVERLAPPING": "ExecutionSkipped",
    }.get(status, "ExecutionChanged")
    # A timed-out or cancelled execution left work undone or running past the window.
    warning = status in ("FAILED", "TIMED_OUT", "CANCELLED")
    return Notice(
        "MaintenanceWindow",
        str(detail["window"]),
        "Warning" if warning else "Normal",
        reason,
        f"execution of the opening {detail.get('opening')}: "
        f"{detail.get('previous') or 'none'} -> {status}{at}",
    )


_GUARDED = {"window": "MaintenanceWindow", "rollout": "Rollout"}
"""A gate's scope ("task patch of window noon", "stage prod of rollout web", as
``report.views.gates.guarded`` names it) ends with the kind and name of the object it guards."""


def _gate_blocked(detail: Mapping[str, Any], at: str) -> Iterator[Notice]:
    scope = str(detail.get("scope") or "")
    kind, _, name = scope.rpartition(" of ")[2].partition(" ")
    if kind not in _GUARDED or not name:
        return
    yield Notice(
        _GUARDED[kind],
        name,
        "Warning",
        "GateBlocked",
        f"gate {detail.get('gate')} has blocked {scope} since {detail.get('since')} "
        f"({detail.get('blockedSeconds')} s): {detail.get('reason')}{at}",
    )


_EMERGENCY_REASONS: dict[str, tuple[str, str]] = {
    OneOffStatus.IN_PROGRESS: ("EmergencyInProgress", "Normal"),
    OneOffStatus.SUCCESS: ("EmergencySucceeded", "Normal"),
    OneOffStatus.FAILED: ("EmergencyFailed", "Warning"),
    OneOffStatus.CANCELLED: ("EmergencyCancelled", "Warning"),
    OneOffStatus.EXPIRED: ("EmergencyExpired", "Warning"),
}


def _emergency(occurrence: Occurrence, at: str) -> Iterator[Notice]:
    """An emergency CVE run, on each machine it targets: requested (by whom, for which CVE,
    which snapshot), then each status the loop gives it with its reason."""
    detail = occurrence.detail
    run = f"emergency run {detail.get('id')} for {detail.get('cve')}"
    if occurrence.kind is Kind.EMERGENCY_REQUESTED:
        reason, kind = "EmergencyRequested", "Normal"
        by = f" by {occurrence.author}" if occurrence.author else ""
        message = f"{run} requested{by}: {detail.get('reason')}; snapshot {detail.get('digest')}"
    else:
        status = str(detail.get("status"))
        reason, kind = _EMERGENCY_REASONS.get(status, ("EmergencyChanged", "Normal"))
        message = f"{run}: {status}: {detail.get('reason')}"
    for instance in sorted(str(i) for i in detail.get("instances") or ())[:MAX_OBJECTS]:
        yield Notice("ManagedInstance", instance, kind, reason, message + at)


_ROLLOUT_REASONS = {
    Kind.ROLLOUT_CYCLE_STARTED: "CycleStarted",
    Kind.ROLLOUT_STAGE_INSTALLING: "Promoted",
    Kind.ROLLOUT_STAGE_BAKED: "StageBaked",
    Kind.ROLLOUT_HALTED: "Halted",
    Kind.ROLLOUT_RESUMED: "Resumed",
    Kind.ROLLOUT_CYCLE_COMPLETED: "CycleCompleted",
}


def _rollout(kind: Kind, detail: Mapping[str, Any], at: str) -> Notice:
    """A rollout's step on its Rollout: the planner's reason, the cycle and its snapshot."""
    cycle = f"cycle {detail.get('cycle')}, snapshot {detail.get('digest')}"
    if kind is Kind.ROLLOUT_CYCLE_STARTED:
        message = f"{cycle} frozen at {detail.get('frozenAt')}"
    elif kind is Kind.ROLLOUT_RESUMED:
        message = f"resumed ({cycle}); it was {detail.get('previousReason')}"
    elif kind is Kind.ROLLOUT_CYCLE_COMPLETED:
        message = f"every stage baked the snapshot ({cycle})"
    else:
        message = f"{detail.get('reason')} ({cycle})"
    warning = kind is Kind.ROLLOUT_HALTED
    return Notice(
        "Rollout",
        str(detail["rollout"]),
        "Warning" if warning else "Normal",
        _ROLLOUT_REASONS[kind],
        message + at,
    )


def _refresh_failed(detail: Mapping[str, Any], at: str) -> Notice:
    """An InstanceSource whose list could not be read again (its last good list stays)."""
    kept = detail.get("keptFrom")
    keeping = f"keeping the list of {kept}" if kept else "nothing listed yet"
    return Notice(
        "InstanceSource",
        str(detail["source"]),
        "Warning",
        "RefreshFailed",
        f"{detail.get('error')}; {keeping} ({detail.get('hosts')} machine(s)){at}",
    )


def _refusal(
    occurrence: Occurrence, object_of: Callable[[str], tuple[str, str] | None]
) -> Iterator[Notice]:
    problems = [str(p) for p in occurrence.detail.get("problems") or []]
    by_object: dict[tuple[str, str], list[str]] = {}
    for problem in problems:
        key = object_of(problem.partition(":")[0])
        if key is not None:
            by_object.setdefault(key, []).append(problem)
    keeping = occurrence.detail.get("keeping")
    tail = f"; keeping {keeping}" if keeping else "; nothing is in force yet"
    for (kind, name), own in sorted(by_object.items())[:MAX_OBJECTS]:
        yield Notice(kind, name, "Warning", "SnapshotRefused", "; ".join(own) + tail)


class EventSink:
    """An occurrence observer posting Events from a background thread."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        *,
        uid_of: Callable[[str, str], str | None],
        object_of: Callable[[str], tuple[str, str] | None],
        capacity: int = 1000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = Kube(api)
        self.namespace = namespace
        self.uid_of, self.object_of, self.clock = uid_of, object_of, clock
        self.queue: queue.Queue[Notice | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.posted = 0
        self._thread = threading.Thread(target=self._drain, name="events", daemon=True)
        self._thread.start()

    def __call__(self, occurrence: Occurrence) -> None:
        """The observer: enqueue, never wait."""
        for notice in notices(occurrence, self.object_of):
            try:
                self.queue.put_nowait(notice)
            except queue.Full:
                self.dropped += 1
                log.warning("event queue full; dropped", reason=notice.reason, name=notice.name)

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued (for at most ``timeout`` seconds), then stop."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout=timeout)

    def _drain(self) -> None:
        while (notice := self.queue.get()) is not None:
            try:
                self._post(notice)
                self.posted += 1
            except Exception as exc:  # an Event is best effort: the status holds the truth
                log.warning(
                    "could not post event", reason=notice.reason, name=notice.name, error=str(exc)
                )

    def _post(self, notice: Notice) -> None:
        now = utc_stamp(self.clock())
        involved: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": notice.kind,
            "name": notice.name,
            "namespace": self.namespace,
        }
        uid = self.uid_of(notice.kind, notice.name)
        if uid:
            involved["uid"] = uid
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # As client-go names them: the object and the time in hex nanoseconds, so
                # names sort in the order the events were posted.
                "name": f"{notice.name}.{time.time_ns():x}",
                "namespace": self.namespace,
            },
            "involvedObject": involved,
            "reason": notice.reason,
            "message": notice.message[:MAX_MESSAGE],
            "type": notice.type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.kube.create(f"/api/v1/namespaces/{quote(self.namespace)}/events", body)
