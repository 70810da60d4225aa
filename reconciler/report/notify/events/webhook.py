"""Stage: report — notifications. Events to a webhook as CloudEvents 1.0 over HTTP, structured mode
(one ``application/cloudevents+json`` POST per event), with httpx. A 2xx answer is delivered; 408,
425, 429, 5xx and transport errors (refused, timed out) are retried with backoff; any other answer
is final (the receiver said no). Decides nothing about what an event says (that is ``shapes``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from reconciler.redaction import redacted
from reconciler.report.notify.events.delivery import Failure, Sink
from reconciler.report.notify.events.shapes import SOURCE, Event, structured

RETRYABLE_STATUS = frozenset({408, 425, 429})


def post_each(batch: Sequence[Event], post: Callable[[Event], httpx.Response]) -> list[Failure]:
    """``post`` each event of ``batch``; the ones the receiver did not take."""
    failures = []
    for event in batch:
        failure = http_failure(event, post(event))
        if failure is not None:
            failures.append(failure)
    return failures


def http_failure(event: Event, response: httpx.Response) -> Failure | None:
    """None for a 2xx answer; else the failure, retryable for 408, 425, 429 and 5xx."""
    if response.is_success:
        return None
    status = response.status_code
    retryable = status in RETRYABLE_STATUS or status >= 500
    return Failure(event, f"HTTP {status}", retryable=retryable)


class WebhookSink(Sink):
    """An Observer POSTing transitions to ``url``; ``headers`` (e.g. ``Authorization``) are sent
    with every request; ``timeout`` bounds each attempt."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        source: str = SOURCE,
        **options: Any,
    ) -> None:
        self.url, self.source = url, source
        self.client = httpx.Client(
            headers=dict(headers or {}), timeout=timeout, follow_redirects=False
        )
        super().__init__(f"webhook:{redacted(url)}", **options)

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        return post_each(batch, self._post)

    def _post(self, event: Event) -> httpx.Response:
        message = structured(event, source=self.source)
        return self.client.post(self.url, content=message.body, headers=message.headers)

    def _close(self) -> None:
        self.client.close()
