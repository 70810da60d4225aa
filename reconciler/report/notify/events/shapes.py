"""Stage: report — notifications. What an event looks like: pure functions from an ``Occurrence`` to
an ``Event`` and from an ``Event`` to an EventBridge ``PutEvents`` entry or a CloudEvent. No I/O, no
clock: the same occurrence always gives the same event (its id too), so a retried delivery is
recognisable.

Only transitions become events (``Occurrence.transition``). Where SSM emits an EventBridge event
for the same change, the ``detail-type`` and the ``detail`` keys are SSM's (reference
ssm-patch-manager.md §8.1, "EventBridge (source aws.ssm)"); every ``detail`` also carries our
provenance: the revision in force and its author.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from reconciler.report.notify.occurrences import ROLLOUT_KINDS, Kind, Occurrence

SOURCE = "patchwarden"
"""EventBridge ``Source`` and CloudEvents ``source`` (SSM's is ``aws.ssm``; EventBridge refuses
custom sources starting with ``aws.``)."""

COMPLIANCE = "Configuration Compliance State Change"
WINDOW_EXECUTION = "Maintenance Window Execution State-change Notification"
COMMAND_INVOCATION = "EC2 Command Invocation Status-change Notification"
SNAPSHOT_REFUSED = "Snapshot Refused Notification"
"""SSM has no counterpart (its configuration is not versioned); named in SSM's manner."""

INSTANCE_SOURCE_FAILED = "Instance Source Refresh Failed Notification"
"""Enrolment (docs/enrolment.md); SSM has no counterpart. Named in SSM's manner."""

ROLLOUT = "Rollout State-change Notification"
"""Progressive rollouts (docs/rollouts.md); SSM has no counterpart. ``detail.state`` says which
step: the CloudEvents type's last part."""

GATE_BLOCKED = "Gate Blocked Notification"
"""A safety gate blocked a task or stage longer than its threshold (docs/guardrails.md); SSM has
no counterpart. Named in SSM's manner."""

EMERGENCY = "Emergency CVE Run State-change Notification"
"""Emergency CVE runs (docs/guardrails.md); SSM has no counterpart. ``detail.state`` is
``requested`` or ``status`` (then ``detail.status`` says which)."""

CALENDAR_OVERRIDDEN = "Change Calendar Override Notification"
"""A run started although a change calendar guarding it was closed (docs/guardrails.md); SSM
has no counterpart. Named in SSM's manner."""

HALT_OVERRIDDEN = "Rollout Halt Override Notification"
"""A run (patch now or emergency) started on machines of a halted rollout (docs/guardrails.md);
SSM has no counterpart. Named in SSM's manner."""

DETAIL_TYPES = (
    COMPLIANCE,
    WINDOW_EXECUTION,
    COMMAND_INVOCATION,
    SNAPSHOT_REFUSED,
    INSTANCE_SOURCE_FAILED,
    ROLLOUT,
    GATE_BLOCKED,
    EMERGENCY,
    CALENDAR_OVERRIDDEN,
    HALT_OVERRIDDEN,
)

_ENDED = frozenset({"SUCCESS", "FAILED", "TIMED_OUT", "CANCELLED", "SKIPPED_OVERLAPPING"})
# Event ids are name-based UUIDs (v5) under this namespace: stable across retries and restarts.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://patchwarden.io/events")


@dataclass(frozen=True)
class Event:
    """One event, independent of where it is sent."""

    id: str
    type: str
    """CloudEvents type, e.g. ``io.patchwarden.compliance.changed``."""
    detail_type: str
    """EventBridge ``detail-type``, SSM's name where SSM has one."""
    subject: str | None
    """What the event is about: an instance, a window, a revision."""
    time: datetime
    detail: Mapping[str, Any]
    """JSON-ready; EventBridge's ``detail`` and the CloudEvent's ``data``."""


def to_event(occurrence: Occurrence) -> Event | None:
    """The event for a transition; None for everything else (it is audited, not announced)."""
    if not occurrence.transition:
        return None
    shape = _SHAPES.get(occurrence.kind)
    if shape is None:
        return None
    kind, detail_type, subject, detail = shape(occurrence)
    provenance = {"revision": occurrence.revision, "author": occurrence.author}
    return Event(
        id=event_id(occurrence),
        type=f"io.patchwarden.{kind}",
        detail_type=detail_type,
        subject=subject,
        time=occurrence.time,
        detail={**detail, **provenance},
    )


def event_id(occurrence: Occurrence) -> str:
    canonical = json.dumps(occurrence.to_dict(), sort_keys=True, default=str)
    return str(uuid.uuid5(_NAMESPACE, canonical))


def eventbridge_entry(event: Event, *, bus: str, source: str = SOURCE) -> dict[str, Any]:
    """A ``PutEvents`` request entry. ``Resources`` stays empty: our resources have no ARNs, and
    the instance is in ``detail.resource-id`` as in SSM's event."""
    return {
        "Time": event.time,
        "Source": source,
        "Resources": [],
        "DetailType": event.detail_type,
        "Detail": json.dumps(event.detail, sort_keys=True, default=str),
        "EventBusName": bus,
    }


def cloud_event(event: Event, *, source: str = SOURCE) -> CloudEvent:
    """CloudEvents 1.0: the same id, time and data as every other sink gets."""
    attributes: dict[str, Any] = {
        "id": event.id,
        "source": source,
        "type": event.type,
        "specversion": "1.0",
        "time": event.time,
        "datacontenttype": "application/json",
    }
    if event.subject:
        attributes["subject"] = event.subject
    data = json.loads(json.dumps(event.detail, default=str))
    return CloudEvent(attributes, data)


def structured(event: Event, *, source: str = SOURCE) -> HTTPMessage:
    """The HTTP request of a structured-mode CloudEvent: ``application/cloudevents+json``."""
    return to_structured_event(cloud_event(event, source=source))


# --- one shape per kind ----------------------------------------------------------------------

Shape = tuple[str, str, str | None, dict[str, Any]]


def _compliance(o: Occurrence) -> Shape:
    summary = o.detail.get("summary") or {}
    return (
        "compliance.changed",
        COMPLIANCE,
        o.instance,
        {
            "resource-type": "managed-instance",
            "resource-id": o.instance,
            "compliance-type": "Patch",
            "compliance-status": _status(o.detail.get("status")),
            "previous-compliance-status": _status(o.detail.get("previous")),
            "severity": summary.get("complianceSeverity") or "UNSPECIFIED",
            "patch-baseline-id": o.detail.get("baseline"),
            "patch-group": o.detail.get("group"),
            "operation": o.detail.get("operation"),
            "job-id": o.job,
            "summary": dict(summary),
        },
    )


def _status(value: Any) -> str | None:
    """SSM writes the compliance status in lower case in its events."""
    return str(value).lower() if value else None


def _window_execution(o: Occurrence) -> Shape:
    window, opening = o.detail.get("window"), o.detail.get("opening")
    status = o.detail.get("status")
    detail = {
        "window-id": window,
        "window-execution-id": f"{window}/{opening}",
        "status": status,
        "previous-status": o.detail.get("previous"),
        "start-time": opening,
    }
    if status in _ENDED:
        detail["end-time"] = _iso(o.time)
    return "window.execution.changed", WINDOW_EXECUTION, window, detail


def _job_failed(o: Occurrence) -> Shape:
    error = o.detail.get("error") or {}
    return (
        "job.failed",
        COMMAND_INVOCATION,
        o.instance,
        {
            "command-id": o.job,
            "instance-id": o.instance,
            "status": "Failed",
            "operation": o.detail.get("operation"),
            "window-id": o.detail.get("window"),
            "error-code": error.get("code"),
            "error-message": error.get("message"),
            "duration-seconds": o.detail.get("seconds"),
        },
    )


def _snapshot_refused(o: Occurrence) -> Shape:
    problems = [str(p) for p in o.detail.get("problems") or ()]
    return (
        "snapshot.refused",
        SNAPSHOT_REFUSED,
        o.revision,
        {
            "last-good-revision": o.detail.get("keeping"),
            "problem-count": len(problems),
            "problems": problems,
        },
    )


def _instance_source_failed(o: Occurrence) -> Shape:
    return (
        "instancesource.failed",
        INSTANCE_SOURCE_FAILED,
        str(o.detail.get("source")),
        {
            "source": o.detail.get("source"),
            "source-kind": o.detail.get("sourceKind"),
            "error": o.detail.get("error"),
            "kept-from": o.detail.get("keptFrom"),
            "machines": o.detail.get("hosts"),
        },
    )


def _overridden(o: Occurrence) -> Shape:
    """A rail a person overrode (a closed change calendar, a rollout's halt): the run's id."""
    detail = {_kebab(key): value for key, value in o.detail.items()}
    kind = CALENDAR_OVERRIDDEN if o.kind is Kind.CALENDAR_OVERRIDDEN else HALT_OVERRIDDEN
    return str(o.kind), kind, str(o.detail.get("id")), detail


def _rollout(o: Occurrence) -> Shape:
    """Every rollout kind: one detail-type, the step in ``state`` (``cycle.started``,
    ``stage.installing``, ``stage.baked``, ``halted``, ``resumed``, ``cycle.completed``)."""
    detail = {_kebab(key): value for key, value in o.detail.items()}
    state = str(o.kind).removeprefix("rollout.")
    return str(o.kind), ROLLOUT, str(o.detail.get("rollout")), {"state": state, **detail}


def _gate_blocked(o: Occurrence) -> Shape:
    """Subject: the gate and whose it is ("quiet of task patch of window noon")."""
    detail = {_kebab(key): value for key, value in o.detail.items()}
    subject = f"{o.detail.get('gate')} of {o.detail.get('scope')}"
    return str(o.kind), GATE_BLOCKED, subject, detail


def _emergency(o: Occurrence) -> Shape:
    """A run requested or changing status: its id, CVE, and what changed (the whole request
    document stays in the audit log)."""
    detail = {_kebab(key): value for key, value in o.detail.items() if key != "document"}
    state = str(o.kind).removeprefix("emergency.")
    return str(o.kind), EMERGENCY, str(o.detail.get("id")), {"state": state, **detail}


def _kebab(key: str) -> str:
    """``frozenAt`` -> ``frozen-at``: SSM's manner in an event's detail."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in key)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


_SHAPES = {
    Kind.COMPLIANCE_CHANGED: _compliance,
    Kind.WINDOW_EXECUTION_CHANGED: _window_execution,
    Kind.JOB_FINISHED: _job_failed,
    Kind.SNAPSHOT_REFUSED: _snapshot_refused,
    Kind.INSTANCE_SOURCE_FAILED: _instance_source_failed,
    **dict.fromkeys(ROLLOUT_KINDS, _rollout),
    Kind.GATE_BLOCKED: _gate_blocked,
    Kind.EMERGENCY_REQUESTED: _emergency,
    Kind.EMERGENCY_CHANGED: _emergency,
    Kind.CALENDAR_OVERRIDDEN: _overridden,
    Kind.HALT_OVERRIDDEN: _overridden,
}
