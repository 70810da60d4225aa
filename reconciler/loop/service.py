"""Stage: loop, run as a service (``patchctl run``, the controller): logging setup, the pass
timer woken by the source's watch, SIGTERM/SIGINT handling, and the /healthz and /metrics server.

Runs passes of a :class:`~reconciler.loop.Reconciler`; may not run a step itself nor touch the
store other than through the metrics.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, TextIO

import structlog

from reconciler.loop.endpoints import EndpointServer
from reconciler.loop.reconciler import Reconciler
from reconciler.redaction import redacted
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.state import StoreWriteFailed

EXPORT_STOP_WAIT = 30.0
"""Seconds the service waits, on stop, for exports still running."""

STORE_RETRY_FIRST = 1.0
"""Seconds before the first retry after a state store write failed; doubled on each failure
that follows, up to the pass interval."""


def store_backoff(failures: int, interval: float) -> float:
    """Seconds to wait after the ``failures``-th state store failure in a row (1, 2, ...)."""
    return min(interval, STORE_RETRY_FIRST * 2.0 ** min(failures - 1, 30))


def configure_logging(stream: TextIO | None = None) -> None:
    """JSON lines on stderr, every line with its time and level (revision, instance and job are
    bound by the loop)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            _redacted_line,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _redacted_line(_logger: object, _method: str, line: Any) -> str:
    """The rendered line (after the JSON renderer: a str, though structlog types it as the
    event dict) without URL credentials, whichever field or exception carried them."""
    return redacted(str(line))


class Service:
    """Reconcile every ``interval`` seconds (and at once when the source's watch says it
    changed), serve /healthz and /metrics, and stop gracefully: running jobs finish, nothing
    new starts. ``metrics`` must be one of the reconciler's observers (jobs, refusals, installs
    and reboots are counted from the occurrence stream)."""

    def __init__(
        self,
        reconciler: Reconciler,
        metrics: LoopMetrics,
        *,
        interval: float,
        host: str,
        port: int,
    ) -> None:
        if metrics not in reconciler.observers:
            raise ValueError("the service's metrics must observe the reconciler's occurrences")
        self.reconciler, self.metrics = reconciler, metrics
        self.interval, self.host, self.port = interval, host, port
        self.wake = threading.Event()
        self.last_pass = 0.0
        """time.time() of the last pass that had a revision in force (0: none yet)."""
        self.store_failure: str | None = None
        """Why the state store could not be written, until a pass succeeds again."""
        self.store_failures = 0
        """State store failures in a row (the back-off grows with them)."""
        self.recovering = True
        """Jobs may be left running in the store by a crash or a failed write: abandon them
        before the next pass (this process runs none between passes; the writer lock says no
        other process does)."""

    def stop(self, *_: object) -> None:
        """Stop after the running jobs (a signal handler, a lost leader lease)."""
        self.reconciler.stopping.set()
        self.wake.set()

    def healthy(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the service is not healthy (what /healthz says with its 503), or None."""
        if self.store_failure is not None:
            return f"the state store cannot be written: {self.store_failure}"
        if self.last_pass > 0 and time.time() - self.last_pass < max(3 * self.interval, 300):
            return None
        return "no successful reconcile yet"

    def run(self, ready: threading.Event | None = None) -> None:
        reconciler = self.reconciler
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        self.metrics.refresh()  # what a previous run recorded, before the first pass ends
        server = http_endpoints(self.host, self.port, self.metrics, self.problem)
        unwatch = reconciler.source.watch(self.wake.set)
        if ready is not None:
            ready.set()
        try:
            while not reconciler.stopping.is_set():
                self.wake.wait(self._attempt())
                self.wake.clear()
        finally:
            unwatch()
            server.shutdown()
            server.server_close()
            if not reconciler.wait_for_exports(EXPORT_STOP_WAIT):
                reconciler.log.warning("stopped with a report export still running")
            reconciler.log.info("stopped")

    def _attempt(self) -> float:
        """One pass, after recovering the jobs a crash (or a failed write) left running; the
        seconds to wait before the next. A state store that cannot be written (a full disk)
        ends the pass, never the service: logged, counted, unhealthy, retried with back-off."""
        try:
            if self.recovering:
                self.reconciler.recover()
                self.recovering = False
            self._pass()
        except StoreWriteFailed as exc:
            self.recovering = True
            self.store_failures += 1
            self.store_failure = str(exc)
            self.metrics.store_errors.inc()
            self.metrics.store_writable.set(0)
            retry = store_backoff(self.store_failures, self.interval)
            self.reconciler.log.error("state store write failed", error=str(exc), retry_in=retry)
            return retry
        self.store_failures, self.store_failure = 0, None
        self.metrics.store_writable.set(1)
        return self.interval

    def _pass(self) -> None:
        metrics = self.metrics
        started = time.monotonic()
        summary = self.reconciler.reconcile(until_idle=True)
        metrics.passes.inc()
        metrics.reconcile_seconds.observe(time.monotonic() - started)
        # The instances in force, not only those with a scan: a controller's Nodes are mirrored
        # and in force passes before their scan Jobs report (and an SSH machine may not answer).
        metrics.refresh(self.reconciler.snapshot)
        metrics.observe_rollouts(summary.rollout_views)
        metrics.observe_gates(summary.gates)
        if summary.revision is not None:
            # The loop's clock, not the host's: under --now the gauge tells the time the pass
            # decided at, as its records do.
            metrics.last_success.set(self.reconciler.clock().timestamp())
            self.last_pass = time.time()


def serve(
    reconciler: Reconciler,
    *,
    interval: float,
    host: str,
    port: int,
    metrics: LoopMetrics,
    ready: threading.Event | None = None,
) -> None:
    """``patchctl run``: the :class:`Service` until SIGTERM or SIGINT."""
    Service(reconciler, metrics, interval=interval, host=host, port=port).run(ready)


def http_endpoints(
    host: str, port: int, metrics: LoopMetrics, problem: Callable[[], str | None]
) -> EndpointServer:
    """/metrics and /healthz on HOST:PORT, served from daemon threads (bounded, with timeouts:
    :mod:`~reconciler.loop.endpoints`); ``shutdown()`` stops it. /healthz is 200 while
    ``problem()`` is None, else 503 with the problem. Raises
    :class:`~reconciler.loop.endpoints.ListenError` when HOST:PORT cannot be served."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, code, kind = metrics.render(), 200, "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                why = problem()
                body = b"ok\n" if why is None else f"{why}\n".encode()
                code, kind = (200 if why is None else 503), "text/plain"
            else:
                body, code, kind = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return EndpointServer(host, port, Handler).start()
