"""Stage: report — notifications. Events to Amazon EventBridge (or anything speaking its API) with
boto3's ``PutEvents``: up to 10 entries per call, and the entries a call reports as failed
(``FailedEntryCount``) retried on their own. Region, credentials and endpoint come the standard AWS
ways (``AWS_DEFAULT_REGION`` or ``AWS_REGION``, a profile, ``AWS_ENDPOINT_URL_EVENTBRIDGE``...)
unless given here. Decides nothing about what an event says (that is ``shapes``); touches no other
AWS service."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from botocore.config import Config

from reconciler.report.notify.events.delivery import Failure, Sink
from reconciler.report.notify.events.shapes import SOURCE, Event, eventbridge_entry

MAX_ENTRIES = 10
"""PutEvents takes at most 10 entries per call."""

# Entry errors that another attempt cannot fix; anything else (InternalFailure, throttling,
# codes we do not know) is retried within the sink's bounded attempts.
PERMANENT_ERRORS = frozenset(
    {
        "InvalidArgument",
        "MalformedDetail",
        "ValidationException",
        "AccessDeniedException",
        "NotAuthorizedForSourceException",
        "NotAuthorizedForDetailTypeException",
    }
)


def events_client(*, endpoint_url: str | None = None, timeout: float = 10.0) -> Any:
    """A boto3 EventBridge client."""
    return sink_client("events", endpoint_url=endpoint_url, timeout=timeout)


def sink_client(service: str, *, endpoint_url: str | None = None, timeout: float = 10.0) -> Any:
    """A boto3 client for a sink, from the standard AWS configuration. botocore's own retries
    are off: the sink retries, with its own bounded backoff, and must not multiply them."""
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    session = boto3.session.Session()
    # botocore reads AWS_DEFAULT_REGION; the other AWS SDKs (and Lambda, ECS) set AWS_REGION.
    region = session.region_name or os.environ.get("AWS_REGION") or None
    make: Any = session.client  # its stubs take each service's name as a literal, not a str
    return make(service, region_name=region, endpoint_url=endpoint_url, config=config)


def failed_entries(batch: Sequence[Event], response: Mapping[str, Any]) -> list[Failure]:
    """The events of ``batch`` that a PutEvents ``response`` reports as failed (its ``Entries``
    are in request order)."""
    if not response.get("FailedEntryCount"):
        return []
    failures = []
    for event, result in zip(batch, response.get("Entries", []), strict=False):
        code = result.get("ErrorCode")
        if code:
            reason = f"{code}: {result.get('ErrorMessage', '')}"
            failures.append(Failure(event, reason, retryable=code not in PERMANENT_ERRORS))
    return failures


class EventBridgeSink(Sink):
    """An Observer sending transitions to an event bus (``default`` unless named)."""

    batch_size = MAX_ENTRIES

    def __init__(
        self, client: Any, *, bus: str = "default", source: str = SOURCE, **options: Any
    ) -> None:
        self.client, self.bus, self.source = client, bus, source
        super().__init__(f"eventbridge:{bus}", **options)

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        entries = [eventbridge_entry(e, bus=self.bus, source=self.source) for e in batch]
        response = self.client.put_events(Entries=entries)
        return failed_entries(batch, response)

    def _close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
