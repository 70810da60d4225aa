"""Stage: loop. The reconcile loop: level-based, an ordered tuple of small steps per pass.

Each pass re-reads desired state (the source) and observed state (the store) and runs, in order
(:mod:`~reconciler.loop.passes`): ``refresh`` (a new revision is accepted whole or refused whole;
the last good one stays in force, :mod:`~reconciler.loop.desired`), ``plan`` (pure, over
:mod:`~reconciler.loop.observed`), ``dispatch`` (jobs claimed by idempotency key, run concurrently
on transports, :mod:`~reconciler.loop.jobs`), ``record`` (every result with its provenance, window
executions in :mod:`~reconciler.loop.executions`), ``reports`` (scheduled ComplianceReports due
now, exported and recorded, :mod:`~reconciler.loop.exports`). Nothing is edge-triggered: a restart
simply re-reads both states; jobs a crash left "running" are marked abandoned and their machines
rescanned, so a snapshot is never installed twice and no result is lost. Running it as a service
(timer, watch, signals, /healthz and /metrics) is :mod:`~reconciler.loop.service`.

The loop is where I/O meets the pure stages; it decides nothing itself. It may import every
stage below it, never ``controller`` or ``cli``.
"""

from reconciler.loop.common import Clock, InForce, PassSummary, TransportFor, clock_from, utc_now
from reconciler.loop.passes import STEPS, PassContext, Step
from reconciler.loop.reconciler import EXPORT_GRACE, Reconciler
from reconciler.loop.service import Service, configure_logging, http_endpoints, serve

__all__ = [
    "EXPORT_GRACE",
    "STEPS",
    "Clock",
    "InForce",
    "PassContext",
    "PassSummary",
    "Reconciler",
    "Service",
    "Step",
    "TransportFor",
    "clock_from",
    "configure_logging",
    "http_endpoints",
    "serve",
    "utc_now",
]
