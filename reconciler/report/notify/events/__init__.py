"""Stage: report — notifications. Events: only transitions (an instance becomes non-compliant or
compliant again, a window execution starts or ends, a job fails, a snapshot is refused), to
EventBridge and to CloudEvents webhooks, queued so that a slow or dead endpoint never holds up
patching.

``shapes`` maps occurrences to events (pure), ``delivery`` queues and retries, ``eventbridge``
and ``webhook`` talk to the endpoints. See docs/events.md. Imports nothing outside ``report``.
"""

from reconciler.report.notify.events.delivery import Failure, Retry, Sink
from reconciler.report.notify.events.eventbridge import EventBridgeSink, events_client
from reconciler.report.notify.events.shapes import SOURCE, Event, to_event
from reconciler.report.notify.events.webhook import WebhookSink

__all__ = [
    "SOURCE",
    "Event",
    "EventBridgeSink",
    "Failure",
    "Retry",
    "Sink",
    "WebhookSink",
    "events_client",
    "to_event",
]
