"""Stage: report — notifications. Events: only transitions (an instance becomes non-compliant or
compliant again, a window execution starts or ends, a job fails, a snapshot is refused), to
EventBridge, to CloudEvents webhooks and (compliance only, as findings) to Security Hub, queued so
that a slow or dead endpoint never holds up patching.

``shapes`` maps occurrences to events (pure), ``delivery`` queues and retries, ``eventbridge``,
``webhook`` and ``securityhub`` talk to the endpoints. See docs/events.md. Imports nothing outside
``report``.
"""

from reconciler.report.notify.events.delivery import Failure, Retry, Sink
from reconciler.report.notify.events.eventbridge import EventBridgeSink, events_client
from reconciler.report.notify.events.securityhub import SecurityHubSink, securityhub_clients
from reconciler.report.notify.events.shapes import SOURCE, Event, to_event
from reconciler.report.notify.events.webhook import WebhookSink

__all__ = [
    "SOURCE",
    "Event",
    "EventBridgeSink",
    "Failure",
    "Retry",
    "SecurityHubSink",
    "Sink",
    "WebhookSink",
    "events_client",
    "securityhub_clients",
    "to_event",
]
