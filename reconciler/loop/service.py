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
from typing import TextIO

import structlog

from reconciler.loop.endpoints import EndpointServer
from reconciler.loop.reconciler import Reconciler
from reconciler.report.notify.metrics import LoopMetrics

EXPORT_STOP_WAIT = 30.0
"""Seconds the service waits, on stop, for exports still running."""


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
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


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

    def stop(self, *_: object) -> None:
        """Stop after the running jobs (a signal handler, a lost leader lease)."""
        self.reconciler.stopping.set()
        self.wake.set()

    def healthy(self) -> bool:
        return self.last_pass > 0 and time.time() - self.last_pass < max(3 * self.interval, 300)

    def run(self, ready: threading.Event | None = None) -> None:
        reconciler = self.reconciler
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        self.metrics.refresh()  # what a previous run recorded, before the first pass ends
        server = http_endpoints(self.host, self.port, self.metrics, self.healthy)
        unwatch = reconciler.source.watch(self.wake.set)
        if ready is not None:
            ready.set()
        reconciler.recover()
        try:
            while not reconciler.stopping.is_set():
                self._pass()
                self.wake.wait(self.interval)
                self.wake.clear()
        finally:
            unwatch()
            server.shutdown()
            server.server_close()
            if not reconciler.wait_for_exports(EXPORT_STOP_WAIT):
                reconciler.log.warning("stopped with a report export still running")
            reconciler.log.info("stopped")

    def _pass(self) -> None:
        metrics = self.metrics
        started = time.monotonic()
        summary = self.reconciler.reconcile(until_idle=True)
        metrics.passes.inc()
        metrics.reconcile_seconds.observe(time.monotonic() - started)
        metrics.refresh()
        if summary.revision is not None:
            metrics.last_success.set_to_current_time()
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
    host: str, port: int, metrics: LoopMetrics, healthy: Callable[[], bool]
) -> EndpointServer:
    """/metrics and /healthz on HOST:PORT, served from daemon threads (bounded, with timeouts:
    :mod:`~reconciler.loop.endpoints`); ``shutdown()`` stops it. Raises
    :class:`~reconciler.loop.endpoints.ListenError` when HOST:PORT cannot be served."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, code, kind = metrics.render(), 200, "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                ok = healthy()
                body, code, kind = (
                    (b"ok\n" if ok else b"no successful reconcile yet\n"),
                    (200 if ok else 503),
                    "text/plain",
                )
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
