"""Events: only transitions are announced, in SSM's shapes on EventBridge and as CloudEvents on a
webhook, and a slow or dead endpoint never holds up patching.

EventBridge is moto's server (``ThreadedMotoServer``): an EMULATOR, because no real EventBridge
runs here. A rule on a bus routes our events to an SQS queue, and the tests read them back from
SQS, as a user's rule would. Webhooks are a real HTTP server on loopback (stdlib), and what it
receives is parsed with the CloudEvents SDK. The loop is the real one: Debian systems rooted in
directories (real apt and dpkg), a directory source and the SQLite store.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from moto.server import ThreadedMotoServer

from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.report.notify.events import EventBridgeSink, Retry, WebhookSink, to_event
from reconciler.report.notify.events.delivery import Failure, Sink
from reconciler.report.notify.events.eventbridge import events_client, failed_entries
from reconciler.report.notify.events.shapes import (
    DETAIL_TYPES,
    Event,
    eventbridge_entry,
    structured,
)
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests import awslab
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE,
    BASELINE_YAML,
    GROUP,
    ManualClock,
    at_now,
    documents,
    local_instance_yaml,
    make_fleet,
    open_window_yaml,
    window_yaml,
)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
BEFORE = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
NOON = "cron(0 12 * * ? *)"  # daily at 12:00 UTC for 4 h (window_yaml's default duration)
OPENING = "2026-11-28T12:00:00Z"
IN_WINDOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
AFTER_WINDOW = datetime(2026, 11, 28, 16, 30, tzinfo=UTC)
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
REVISION = "main@sha1:" + "a" * 40
FAST = Retry(attempts=4, base=0.01, cap=0.05)


# --- helpers ---------------------------------------------------------------------------------


def occurrence(kind: Kind, instance: str | None = "web-1", **detail: Any) -> Occurrence:
    return Occurrence(
        kind=kind,
        time=T0,
        revision=REVISION,
        author="Ada <ada@example.invalid>",
        instance=instance,
        job="17",
        detail=detail,
    )


def noncompliant(instance: str = "web-1") -> Occurrence:
    return occurrence(
        Kind.COMPLIANCE_CHANGED,
        instance,
        status="NON_COMPLIANT",
        previous=None,
        group="fleet",
        baseline="debian-security",
        operation="Scan",
        summary={"complianceStatus": "NON_COMPLIANT", "complianceSeverity": "HIGH"},
    )


@dataclass
class Warnings:
    """Records what a sink warns about (its ``log``)."""

    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def warning(self, message: str, **fields: Any) -> None:
        self.lines.append((message, fields))


# --- AWS (moto server) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with awslab.moto_server() as url:
        yield url


@dataclass
class Aws:
    url: str
    events: Any
    sqs: Any

    def bus_to_queue(self, bus: str, name: str = "events") -> str:
        """A bus (unless ``default``) whose rule routes our events to a new SQS queue."""
        if bus != "default":
            self.events.create_event_bus(Name=bus)
        queue = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        pattern = {"source": ["patchwarden"], "detail-type": list(DETAIL_TYPES)}
        self.events.put_rule(Name="patchwarden", EventBusName=bus, EventPattern=json.dumps(pattern))
        self.events.put_targets(
            Rule="patchwarden", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
        )
        return str(queue)

    def received(self, queue: str, expected: int | None = None) -> list[dict[str, Any]]:
        """Every event the queue holds (EventBridge's envelope), in no particular order."""
        events: list[dict[str, Any]] = []
        while True:
            reply = self.sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            messages = reply.get("Messages", [])
            for message in messages:
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            if not messages or (expected is not None and len(events) >= expected):
                return events


@pytest.fixture
def aws(moto_url: str) -> Aws:
    httpx.post(f"{moto_url}/moto-api/reset")
    client = {"region_name": REGION, "endpoint_url": moto_url, **CREDENTIALS}
    return Aws(moto_url, boto3.client("events", **client), boto3.client("sqs", **client))


def eventbridge_sink(aws: Aws, bus: str, **options: Any) -> EventBridgeSink:
    return EventBridgeSink(
        boto3.client("events", region_name=REGION, endpoint_url=aws.url, **CREDENTIALS),
        bus=bus,
        **options,
    )


# --- a webhook receiver on loopback ----------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP endpoint that answers ``failures`` times with ``failure_status``, then 200, and
    keeps every request it accepted."""

    failures: int = 0
    failure_status: int = 503
    requests: list[HTTPMessage] = field(default_factory=list)
    refused: int = 0
    server: ThreadingHTTPServer | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    """Requests are answered once the gate is open (it is, unless a test closes it)."""

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/patchwarden"

    def events(self) -> list[Any]:
        """The CloudEvents received, parsed and validated by the SDK."""
        return [from_http_event(message) for message in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as state:
        yield state


@contextlib.contextmanager
def serving() -> Iterator[Receiver]:
    """A Receiver listening on loopback until the block ends (also tests/test_notifications.py)."""
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.gate.wait(30)
            with lock:
                if state.failures > 0:
                    state.failures -= 1
                    state.refused += 1
                    code = state.failure_status
                else:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    state.requests.append(HTTPMessage(headers=headers, body=body))
                    code = 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=state.server.serve_forever, daemon=True).start()
    yield state
    state.server.shutdown()
    state.server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- 1. the shapes (pure) --------------------------------------------------------------------


def test_only_transitions_become_events() -> None:
    quiet = [
        occurrence(Kind.SNAPSHOT_ACCEPTED, None, previous=None, instances=3),
        occurrence(Kind.JOB_DISPATCHED, operation="Install"),
        occurrence(Kind.JOB_FINISHED, operation="Install", status="succeeded"),
        occurrence(Kind.PATCHES_INSTALLED, patches=["pwtest-lib"]),
        occurrence(Kind.REBOOT, required=True, performed=False),
    ]
    assert [to_event(o) for o in quiet] == [None] * len(quiet)

    loud = {
        "io.patchwarden.compliance.changed": noncompliant(),
        "io.patchwarden.window.execution.changed": occurrence(
            Kind.WINDOW_EXECUTION_CHANGED, None, window="noon", opening=OPENING, status="SUCCESS"
        ),
        "io.patchwarden.job.failed": occurrence(
            Kind.JOB_FINISHED,
            operation="Install",
            status="failed",
            window="noon",
            error={"code": "InstallFailed", "message": "pwtest-fail: postinst failed"},
            seconds=2.5,
        ),
        "io.patchwarden.snapshot.refused": occurrence(
            Kind.SNAPSHOT_REFUSED, None, keeping="dir@sha256:" + "b" * 64, problems=["x: y"]
        ),
    }
    events = {kind: to_event(o) for kind, o in loud.items()}
    assert {kind: e.type if e else None for kind, e in events.items()} == {k: k for k in loud}


def test_event_shapes_follow_ssm_and_carry_provenance() -> None:
    compliance = to_event(noncompliant())
    assert compliance is not None
    assert compliance.detail_type == "Configuration Compliance State Change"
    assert compliance.subject == "web-1"
    assert dict(compliance.detail) | {"summary": None} == {
        "resource-type": "managed-instance",
        "resource-id": "web-1",
        "compliance-type": "Patch",
        "compliance-status": "non_compliant",
        "previous-compliance-status": None,
        "severity": "HIGH",
        "patch-baseline-id": "debian-security",
        "patch-group": "fleet",
        "operation": "Scan",
        "job-id": "17",
        "summary": None,
        "revision": REVISION,
        "author": "Ada <ada@example.invalid>",
    }

    started = to_event(
        occurrence(
            Kind.WINDOW_EXECUTION_CHANGED,
            None,
            window="noon",
            opening=OPENING,
            status="IN_PROGRESS",
        )
    )
    ended = to_event(
        occurrence(
            Kind.WINDOW_EXECUTION_CHANGED,
            None,
            window="noon",
            opening=OPENING,
            status="FAILED",
            previous="IN_PROGRESS",
        )
    )
    assert started is not None and ended is not None
    assert started.detail_type == "Maintenance Window Execution State-change Notification"
    assert "end-time" not in started.detail  # still running
    assert ended.detail["end-time"] == "2026-11-28T12:00:00Z"
    assert ended.detail["window-execution-id"] == started.detail["window-execution-id"]
    assert (ended.detail["window-id"], ended.detail["start-time"]) == ("noon", OPENING)

    failed = to_event(
        occurrence(Kind.JOB_FINISHED, status="failed", operation="Scan", error={"code": "X"})
    )
    assert failed is not None
    assert failed.detail_type == "EC2 Command Invocation Status-change Notification"
    assert (failed.detail["status"], failed.detail["instance-id"]) == ("Failed", "web-1")
    assert (failed.detail["command-id"], failed.detail["error-code"]) == ("17", "X")


@pytest.mark.parametrize("status", ["TIMED_OUT", "CANCELLED", "SKIPPED_OVERLAPPING"])
def test_the_execution_statuses_of_cutoffs_timeouts_and_overlaps_end_the_execution(
    status: str,
) -> None:
    event = to_event(
        occurrence(
            Kind.WINDOW_EXECUTION_CHANGED, None, window="noon", opening=OPENING, status=status
        )
    )
    assert event is not None
    assert event.detail_type == "Maintenance Window Execution State-change Notification"
    assert (event.detail["status"], event.detail["end-time"]) == (status, "2026-11-28T12:00:00Z")


def test_the_same_occurrence_always_gives_the_same_event_id() -> None:
    first, again, other = (
        to_event(noncompliant()),
        to_event(noncompliant()),
        to_event(noncompliant("web-2")),
    )
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id
    entry = eventbridge_entry(first, bus="ops")
    assert (entry["Source"], entry["EventBusName"], entry["Time"]) == ("patchwarden", "ops", T0)
    assert json.loads(entry["Detail"]) == json.loads(json.dumps(first.detail))


def test_a_structured_cloud_event_validates() -> None:
    event = to_event(noncompliant())
    assert event is not None
    message = structured(event)
    assert message.headers["content-type"] == "application/cloudevents+json"
    parsed = from_http_event(message)
    assert parsed.get_attributes() | {"time": None} == {
        "id": event.id,
        "source": "patchwarden",
        "type": "io.patchwarden.compliance.changed",
        "specversion": "1.0",
        "subject": "web-1",
        "datacontenttype": "application/json",
        "time": None,
    }
    assert parsed.get_time() == T0
    assert parsed.get_data() == json.loads(json.dumps(event.detail))


def test_failed_put_events_entries_are_retried_unless_they_cannot_succeed() -> None:
    batch = [to_event(noncompliant(f"web-{i}")) for i in range(3)]
    assert all(batch)
    events: list[Event] = [e for e in batch if e is not None]
    response = {
        "FailedEntryCount": 2,
        "Entries": [
            {"EventId": "1"},
            {"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"},
            {"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."},
        ],
    }
    failures = failed_entries(events, response)
    assert [(f.event, f.retryable) for f in failures] == [(events[1], True), (events[2], False)]
    assert failed_entries(events, {"FailedEntryCount": 0, "Entries": [{"EventId": "1"}] * 3}) == []


def test_backoff_doubles_up_to_its_cap_with_full_jitter() -> None:
    retry = Retry(attempts=8, base=0.5, cap=4.0)
    assert [retry.delay(n, rand=lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert retry.delay(3, rand=lambda: 0.25) == 1.0
    assert retry.delay(3, rand=lambda: 0.0) == 0.0


class _Scripted(Sink):
    """A sink whose endpoint answers from a script (EventBridge's partial failures cannot be
    provoked in moto): each call pops the set of subjects to fail, retryable or not."""

    def __init__(self, script: list[dict[str, bool]], **options: Any) -> None:
        self.script = script
        self.calls: list[list[str | None]] = []
        super().__init__("scripted", **options)

    batch_size = 10

    def deliver(self, batch: Any) -> list[Failure]:
        self.calls.append([e.subject for e in batch])
        fail = self.script.pop(0) if self.script else {}
        return [Failure(e, "no", fail[e.subject]) for e in batch if e.subject in fail]


def test_only_the_failed_entries_of_a_batch_are_retried() -> None:
    sink = _Scripted([{"web-1": True, "web-2": False}], retry=FAST)
    for name in ("web-0", "web-1", "web-2"):
        sink(noncompliant(name))
    assert sink.flush(10)
    sink.close(1)
    assert sink.calls == [["web-0", "web-1", "web-2"], ["web-1"]]
    assert (sink.sent, sink.failed, sink.dropped, sink.retries) == (2, 1, 0, 1)


# --- 2. EventBridge, with the real loop ------------------------------------------------------


@needs_apt
def test_transitions_of_a_real_loop_reach_sqs_through_an_eventbridge_rule(
    tmp_path: Path, apt_repo: Repo, aws: Aws
) -> None:
    queue = aws.bus_to_queue("patching")
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(documents(BASELINE_YAML, window_yaml("noon", NOON)))
    (config / "instances.yaml").write_text(local_instance_yaml("web-1", roots["web-1"]))
    sink = eventbridge_sink(aws, "patching")
    clock = ManualClock(IN_WINDOW)
    with StateStore(tmp_path / "state.db") as store:
        loop = Reconciler(
            DirectorySource(config),
            store,
            lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
            clock=clock,
            observers=[sink],
        )
        # Inside the window: scanned (non-compliant), patched (compliant again).
        assert loop.reconcile().jobs == {"Scan succeeded": 1, "Install succeeded": 1}
        # After the opening has ended, its execution ends as SUCCESS.
        clock.advance_to(AFTER_WINDOW)
        assert loop.reconcile().jobs == {}
        assert sink.flush(20)

        events = aws.received(queue, expected=4)
        assert {e["source"] for e in events} == {"patchwarden"}
        timeline = [
            (
                e["detail-type"],
                e["detail"].get("compliance-status") or e["detail"].get("status"),
                e["detail"].get("operation"),
            )
            for e in events
        ]
        compliance = "Configuration Compliance State Change"
        execution = "Maintenance Window Execution State-change Notification"
        assert sorted(timeline, key=str) == sorted(
            [
                (compliance, "non_compliant", "Scan"),
                (execution, "IN_PROGRESS", None),
                (compliance, "compliant", "Install"),
                (execution, "SUCCESS", None),
            ],
            key=str,
        )
        for event in events:
            assert event["detail"]["revision"] == loop.revision
            assert event["detail"]["author"] == ""  # a directory does not say who wrote it
        patched = next(e for e in events if e["detail"].get("compliance-status") == "compliant")
        assert patched["detail"] | {"summary": None, "job-id": None} == {
            "resource-type": "managed-instance",
            "resource-id": "web-1",
            "compliance-type": "Patch",
            "compliance-status": "compliant",
            "previous-compliance-status": "non_compliant",
            "severity": "UNSPECIFIED",
            "patch-baseline-id": BASELINE,
            "patch-group": GROUP,
            "operation": "Install",
            "summary": None,
            "job-id": None,
            "revision": loop.revision,
            "author": "",
        }
        assert patched["detail"]["summary"]["missingCount"] == 0
        ended = next(e for e in events if e["detail"].get("status") == "SUCCESS")
        assert ended["detail"]["window-id"] == "noon"
        assert ended["detail"]["window-execution-id"] == f"noon/{OPENING}"
        assert ended["detail"]["start-time"] == OPENING

        # Nothing changed: a pass announces nothing.
        clock.advance_to(AFTER_WINDOW + timedelta(minutes=15))
        loop.reconcile()
        assert sink.flush(20)
    sink.close(5)
    assert (sink.sent, sink.failed, sink.dropped) == (4, 0, 0)
    assert aws.received(queue) == []


class InterleavingStore(StateStore):
    """The real store, except that two jobs reading one window's executions wait for each other
    once, so that both read before either writes: the interleaving concurrent jobs of one
    opening meet by chance in production, made certain."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.meet = threading.Barrier(2, timeout=3)

    def window_executions(self, window: str | None = None) -> list[dict[str, Any]]:
        executions = super().window_executions(window)
        if window is not None:
            # Broken when the other job could not get here meanwhile (it waited its turn).
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meet.wait()
        return executions


@needs_apt
def test_concurrent_jobs_of_one_opening_announce_its_start_once(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(documents(BASELINE_YAML, window_yaml("noon", NOON)))
    (config / "instances.yaml").write_text(
        documents(*(local_instance_yaml(name, roots[name]) for name in ("web-1", "web-2")))
    )
    seen: list[Occurrence] = []
    with InterleavingStore(tmp_path / "state.db") as store:
        loop = Reconciler(
            DirectorySource(config),
            store,
            lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
            clock=lambda: IN_WINDOW,
            observers=[seen.append],
        )
        assert loop.reconcile().jobs == {"Scan succeeded": 2, "Install succeeded": 2}
        executions = store.window_executions()
    started = [o.detail["status"] for o in seen if o.kind is Kind.WINDOW_EXECUTION_CHANGED]
    assert started == ["IN_PROGRESS"]
    assert [e["status"] for e in executions] == ["IN_PROGRESS"]


def test_an_endpoint_that_comes_back_gets_the_event(aws: Aws) -> None:
    """EventBridge is down at first (nothing listens on the port), then up: a second moto
    server on that port, sharing the first one's state (bus, rule, queue)."""
    queue = aws.bus_to_queue("patching")
    port = closed_port()
    client = boto3.client(
        "events", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}", **CREDENTIALS
    )
    sink = EventBridgeSink(client, bus="patching", retry=Retry(attempts=500, base=0.01, cap=0.05))
    sink(noncompliant())
    wait_until("a retried PutEvents", lambda: sink.retries >= 1, timeout=20)  # refused
    assert sink.sent == 0
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        assert sink.flush(20)
    finally:
        sink.close(1)
        server.stop()
    assert (sink.sent, sink.failed, sink.dropped) == (1, 0, 0)
    [event] = aws.received(queue, expected=1)
    assert event["detail"]["resource-id"] == "web-1"


def test_the_client_takes_endpoint_and_region_the_standard_ways(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_EVENTBRIDGE": aws.url,
    }.items():
        monkeypatch.setenv(name, value)
    queue = aws.bus_to_queue("default")
    sink = EventBridgeSink(events_client())
    sink(noncompliant())
    sink.close(10)
    assert sink.sent == 1
    assert [e["detail"]["resource-id"] for e in aws.received(queue, expected=1)] == ["web-1"]


# --- 3. webhooks -----------------------------------------------------------------------------


def test_a_webhook_gets_valid_cloud_events_and_a_503_is_retried(receiver: Receiver) -> None:
    receiver.failures = 2
    sink = WebhookSink(receiver.url, headers={"Authorization": "Bearer s3cret"}, retry=FAST)
    sink(noncompliant())
    sink(occurrence(Kind.JOB_FINISHED, status="succeeded"))  # not a transition
    sink.close(10)
    assert (sink.sent, sink.failed, sink.dropped, sink.retries) == (1, 0, 0, 2)
    assert receiver.refused == 2
    [message] = receiver.requests
    assert message.headers["authorization"] == "Bearer s3cret"
    [event] = receiver.events()
    assert event.get_type() == "io.patchwarden.compliance.changed"
    assert (event.get_source(), event.get_subject()) == ("patchwarden", "web-1")
    assert event.get_data()["compliance-status"] == "non_compliant"


def test_delivery_counts_reach_metrics(receiver: Receiver, tmp_path: Path) -> None:
    """What each sink delivered, gave up and dropped is on /metrics, under the sink's name."""
    from prometheus_client.parser import text_string_to_metric_families

    from reconciler.report.notify.metrics import LoopMetrics

    receiver.failures, receiver.failure_status = 1, 400
    sink = WebhookSink(receiver.url, retry=FAST)
    sink(noncompliant("web-1"))  # refused for good: failed
    sink(noncompliant("web-2"))  # delivered
    sink.close(10)
    with StateStore(tmp_path / "state.db") as store:
        metrics = LoopMetrics(store)
        metrics.track_event_sinks([sink])
        text = metrics.render().decode()
    samples = {
        (s.labels["sink"], s.labels["result"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "patchwarden_event_deliveries"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {
        (sink.name, "delivered"): 1.0,
        (sink.name, "failed"): 1.0,
        (sink.name, "dropped"): 0.0,
    }


def test_a_webhook_that_refuses_an_event_is_not_retried(receiver: Receiver) -> None:
    receiver.failures, receiver.failure_status = 1, 400
    warnings = Warnings()
    sink = WebhookSink(receiver.url, retry=FAST, log=warnings)
    sink(noncompliant())
    sink.close(10)
    assert (sink.sent, sink.failed, sink.retries, receiver.refused) == (0, 1, 0, 1)
    assert [(m, f["reason"]) for m, f in warnings.lines] == [("events not delivered", "HTTP 400")]


def test_a_dead_endpoint_does_not_hold_up_the_loop_and_drops_are_counted() -> None:
    warnings = Warnings()
    sink = WebhookSink(
        f"http://127.0.0.1:{closed_port()}/",
        capacity=100,
        retry=FAST,
        log=warnings,
        warn_clock=lambda: 0.0,  # no minute passes: one warning per kind, however many drops
    )
    for i in range(10_000):
        sink(noncompliant(f"web-{i}"))
    # The observer only queued: the queue stayed bounded, and what did not fit was dropped.
    assert sink.queued <= 100
    assert sink.sent == 0
    in_flight = 10_000 - (sink.dropped + sink.failed + sink.queued)
    assert in_flight in (0, 1)
    assert sink.dropped >= 10_000 - 100 - 1 - sink.failed
    sink.close(0.2)
    assert sink.sent == 0
    wait_until(
        "every event dropped or failed", lambda: sink.dropped + sink.failed == 10_000, timeout=20
    )
    dropped = [f for m, f in warnings.lines if m.startswith("event queue full")]
    assert len(dropped) == 1 and dropped[0]["sink"].startswith("webhook:http://127.0.0.1:")


def test_an_endpoint_that_never_answers_holds_one_event_and_no_more() -> None:
    """A black hole (accepts connections, never answers) keeps the worker waiting on one
    request; meanwhile the loop's 10,000 occurrences are queued or dropped, never waited on."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/"
        sink = WebhookSink(url, capacity=50, timeout=60, retry=FAST, log=Warnings())
        sink(noncompliant("first"))
        # The worker took it and is stuck sending it.
        wait_until("the queue taken", lambda: sink.queued == 0, timeout=20)
        for i in range(10_000):
            sink(noncompliant(f"web-{i}"))
        assert (sink.queued, sink.dropped, sink.sent, sink.failed) == (50, 9_950, 0, 0)
        sink.close(0.1)
        assert (sink.queued, sink.dropped) == (0, 10_000)


def test_a_full_queue_drops_its_oldest_events(receiver: Receiver) -> None:
    receiver.gate.clear()  # the receiver holds the first request until the queue has overflowed
    sink = WebhookSink(receiver.url, capacity=3, retry=FAST, log=Warnings())
    sink(noncompliant("web-0"))
    wait_until("web-0 on its way", lambda: sink.queued == 0, timeout=20)
    for i in range(1, 10):
        sink(noncompliant(f"web-{i}"))
    receiver.gate.set()
    sink.close(10)
    assert [e.get_subject() for e in receiver.events()] == ["web-0", "web-7", "web-8", "web-9"]
    assert (sink.sent, sink.dropped, sink.failed) == (4, 6, 0)


# --- 4. a refused snapshot -------------------------------------------------------------------


def test_a_refused_snapshot_is_announced_once_however_many_passes_see_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(BASELINE_YAML)
    sink = WebhookSink(receiver.url, retry=FAST)
    with StateStore(tmp_path / "state.db") as store:
        loop = Reconciler(
            DirectorySource(config),
            store,
            lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
            clock=lambda: IN_WINDOW,
            observers=[sink],
        )
        loop.reconcile()
        good = loop.revision
        (config / "fleet.yaml").write_text(BASELINE_YAML + "---\nkind: [PatchBaseline\n")
        for _ in range(3):
            assert loop.reconcile().refused
        assert sink.flush(10)
    sink.close(5)
    [event] = receiver.events()
    assert event.get_type() == "io.patchwarden.snapshot.refused"
    data = event.get_data()
    assert data["last-good-revision"] == good
    assert data["revision"] == event.get_subject() != good
    assert data["problem-count"] == len(data["problems"]) >= 1
    assert all(p.startswith("fleet.yaml:") for p in data["problems"])


# --- 5. patchctl -----------------------------------------------------------------------------


@needs_apt
def test_patchctl_reconcile_announces_to_eventbridge_and_a_webhook(
    tmp_path: Path, apt_repo: Repo, aws: Aws, receiver: Receiver
) -> None:
    queue = aws.bus_to_queue("patching")
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(documents(BASELINE_YAML, open_window_yaml()))
    (config / "instances.yaml").write_text(local_instance_yaml("web-1", roots["web-1"]))
    env = {
        **os.environ,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PATCHWARDEN_WEBHOOK_TOKEN": "s3cret",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "reconcile",
            "--source",
            str(config),
            "--state",
            str(tmp_path / "state.db"),
            "-o",
            "json",
            "--events-eventbridge",
            "patching",
            "--events-endpoint-url",
            aws.url,
            "--events-webhook",
            receiver.url,
            "--events-webhook-header",
            "X-Team=ops",
            *at_now(),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    expected = {
        ("io.patchwarden.compliance.changed", "non_compliant"),
        ("io.patchwarden.window.execution.changed", "IN_PROGRESS"),
        ("io.patchwarden.compliance.changed", "compliant"),
    }
    received = receiver.events()
    assert {
        (e.get_type(), e.get_data().get("compliance-status") or e.get_data()["status"])
        for e in received
    } == expected
    assert len(received) == 3
    assert {m.headers["authorization"] for m in receiver.requests} == {"Bearer s3cret"}
    assert {m.headers["x-team"] for m in receiver.requests} == {"ops"}
    bridged = aws.received(queue, expected=3)
    assert sorted(e["detail"]["revision"] for e in bridged) == sorted(
        e.get_data()["revision"] for e in received
    )
    assert len(bridged) == 3


def test_an_explicit_authorization_header_wins_over_the_token_in_any_case() -> None:
    from reconciler.cli import webhook_headers

    assert webhook_headers([("X-Team", "ops")], "s3cret") == {
        "X-Team": "ops",
        "Authorization": "Bearer s3cret",
    }
    assert webhook_headers([("authorization", "Basic abc")], "s3cret") == {
        "authorization": "Basic abc"
    }
    assert webhook_headers([], None) == {}


def test_patchctl_refuses_bad_event_options(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    state = str(tmp_path / "state.db")

    def patchctl(
        *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *PATCHCTL,
                "reconcile",
                "--source",
                str(tmp_path / "config"),
                "--state",
                state,
                *extra,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad_url = patchctl("--events-webhook", "ftp://example.invalid/")
    assert bad_url.returncode == 1
    assert "--events-webhook ftp://example.invalid/: give an http:// or https:// URL" in (
        bad_url.stderr
    )
    bad_header = patchctl("--events-webhook-header", "no-equals-sign")
    assert bad_header.returncode == 2
    assert "'no-equals-sign' is not NAME=VALUE" in bad_header.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    no_region = patchctl("--events-eventbridge", "default", env=env)
    assert no_region.returncode == 1
    assert "set AWS_REGION" in no_region.stderr
    assert "Traceback" not in bad_url.stderr + bad_header.stderr + no_region.stderr
    # URLs that do not parse or name no host are refused up front, not an internal error.
    for url in ("http://[::1", "http://"):
        broken = patchctl("--events-webhook", url)
        assert broken.returncode == 1, broken.stderr
        assert (
            broken.stderr == f"patchctl: --events-webhook {url}: give an http:// or https:// URL\n"
        )
    bad_endpoint = patchctl(
        "--events-eventbridge",
        "default",
        "--events-endpoint-url",
        "not-a-url",
        env={**env, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert bad_endpoint.returncode == 1
    assert bad_endpoint.stderr.startswith("patchctl: --events-endpoint-url: Invalid endpoint")
    assert "internal error" not in bad_endpoint.stderr
