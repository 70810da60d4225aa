"""Stage: report — notifications. Notices to people: Slack incoming webhooks and Microsoft Teams
workflow webhooks (JSON POSTs with httpx) and mail over SMTP (the standard library's ``smtplib``
and ``email``, STARTTLS and login optional). Each is a ``delivery.Sink``: the same bounded queue,
background thread, bounded retries with backoff and counters as every event sink, so a slow or
dead receiver never holds up patching.

A sink sends the kinds it was given (``messages.DEFAULT_KINDS`` unless told), transitions only.
A webhook URL is a secret whole (whoever holds it may post to the channel): the sink's name, its
warnings and httpx's own log lines show it as ``redaction.secret_url`` does. Decides nothing
about what a notice says (that is ``messages``).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import httpx

from reconciler.redaction import secret_url
from reconciler.report.notify.chat.messages import (
    DEFAULT_KINDS,
    Message,
    message,
    plain_text,
    slack,
    teams,
)
from reconciler.report.notify.events.delivery import Failure, Sink
from reconciler.report.notify.events.shapes import Event, event_id
from reconciler.report.notify.events.webhook import post_each
from reconciler.report.notify.occurrences import Kind, Occurrence


@dataclass(frozen=True)
class Notice(Event):
    """An event carrying the notice people read."""

    message: Message


def notice(occurrence: Occurrence) -> Notice:
    """The notice for ``occurrence``; its id is its event's, stable across retries."""
    return Notice(
        id=event_id(occurrence),
        type=f"io.patchwarden.{occurrence.kind}",
        detail_type="notice",
        subject=occurrence.instance,
        time=occurrence.time,
        detail={"kind": str(occurrence.kind)},
        message=message(occurrence),
    )


class ChatSink(Sink):
    """A sink of notices for the kinds in ``kinds``."""

    def __init__(self, name: str, *, kinds: Iterable[Kind] = DEFAULT_KINDS, **options: Any) -> None:
        self.kinds = frozenset(kinds)
        super().__init__(name, **options)

    def event_for(self, occurrence: Occurrence) -> Event | None:
        if occurrence.kind not in self.kinds or not occurrence.transition:
            return None
        return notice(occurrence)


def _message(event: Event) -> Message:
    if not isinstance(event, Notice):  # only ChatSink.event_for fills a chat sink's queue
        raise TypeError(f"{event.type} queued without its notice")
    return event.message


# --- webhooks ----------------------------------------------------------------------------------


class _Hidden(logging.Filter):
    """Rewrites httpx's "HTTP Request: POST <url>" log lines (seen with PATCHWARDEN_DEBUG) so
    the secret URL never reaches a log."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.urls = {url, str(httpx.URL(url))}
        self.shown = secret_url(url)

    def hide(self, text: str) -> str:
        for url in self.urls:
            text = text.replace(url, self.shown)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        hidden = self.hide(text)
        if hidden != text:
            record.msg, record.args = hidden, ()
        return True


class _PostingSink(ChatSink):
    """POSTs each notice as the JSON ``render`` makes of it; 2xx is delivered, 408, 425, 429,
    5xx and transport errors are retried, any other answer is final (as for event webhooks)."""

    label = ""
    render: Callable[[Message], dict[str, Any]]

    def __init__(self, url: str, *, timeout: float = 5.0, **options: Any) -> None:
        self.url = url
        self.client = httpx.Client(timeout=timeout, follow_redirects=False)
        self._hidden = _Hidden(url)
        logging.getLogger("httpx").addFilter(self._hidden)
        super().__init__(f"{self.label}:{secret_url(url)}", **options)

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        return post_each(batch, self._post)

    def _post(self, event: Event) -> httpx.Response:
        try:
            return self.client.post(self.url, json=type(self).render(_message(event)))
        except httpx.HTTPError as exc:  # retried by the sink, its reason logged: no URL in it
            raise httpx.TransportError(self._hidden.hide(f"{type(exc).__name__}: {exc}")) from None

    def _close(self) -> None:
        self.client.close()
        logging.getLogger("httpx").removeFilter(self._hidden)


class SlackSink(_PostingSink):
    """Notices to a Slack incoming webhook, as mrkdwn text."""

    label = "slack"
    render = staticmethod(slack)


class TeamsSink(_PostingSink):
    """Notices to a Microsoft Teams workflow webhook, as an Adaptive Card."""

    label = "teams"
    render = staticmethod(teams)


# --- mail ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Smtp:
    """Where and how mail is sent."""

    host: str
    sender: str
    port: int = 25
    starttls: bool = False
    login: tuple[str, str] | None = None
    """User name and password (patchctl refuses them without STARTTLS but to this host)."""
    timeout: float = 10.0
    context: ssl.SSLContext | None = None
    """STARTTLS's certificate checks; None: the system's CAs, the host name checked."""


class EmailSink(ChatSink):
    """Notices as plain-text mail to ``recipients``, one message each."""

    def __init__(self, smtp: Smtp, recipients: Sequence[str], **options: Any) -> None:
        self.smtp, self.recipients = smtp, tuple(recipients)
        super().__init__(f"email:{smtp.host}:{smtp.port}", **options)

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        try:
            with self._connect() as client:
                return [f for event in batch if (f := self._send(client, event)) is not None]
        except smtplib.SMTPResponseException as exc:  # a greeting, STARTTLS or login refused
            return [_refused(event, exc.smtp_code, exc.smtp_error) for event in batch]
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS: asking again will not help
            return [Failure(event, f"SMTP: {exc}", retryable=False) for event in batch]

    def _connect(self) -> smtplib.SMTP:
        smtp = self.smtp
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        try:
            if smtp.starttls:
                client.starttls(context=smtp.context or ssl.create_default_context())
            if smtp.login is not None:
                client.login(*smtp.login)
        except BaseException:
            client.close()
            raise
        return client

    def _send(self, client: smtplib.SMTP, event: Event) -> Failure | None:
        try:
            refused = client.send_message(self.mail(event))
        except smtplib.SMTPRecipientsRefused as exc:
            code, said = min(exc.recipients.values())
            return _refused(event, code, said)
        except smtplib.SMTPResponseException as exc:
            return _refused(event, exc.smtp_code, exc.smtp_error)
        if refused:  # some recipients got it: a retry would mail them twice
            return Failure(event, f"SMTP refused {', '.join(sorted(refused))}", retryable=False)
        return None

    def mail(self, event: Event) -> EmailMessage:
        notice = _message(event)
        mail = EmailMessage()
        mail["Subject"] = f"[patchwarden] {notice.title}"
        mail["From"] = self.smtp.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = format_datetime(event.time)
        # The event's id: a retried message is recognisably the same one.
        mail["Message-ID"] = f"<{event.id}@patchwarden>"
        mail["X-Patchwarden-Kind"] = str(event.detail.get("kind"))
        mail.set_content(plain_text(notice))
        return mail


def _refused(event: Event, code: int, said: bytes | str) -> Failure:
    """SMTP's 4xx is "try again later", 5xx "no"."""
    text = said.decode(errors="replace") if isinstance(said, bytes) else said
    return Failure(event, f"SMTP {code} {text}".strip(), retryable=code < 500)
