"""Stage: state — the observed state: what each machine had and what was done to it, in one
SQLite file (scan/install history, jobs and their idempotency keys, window executions, source
revisions). See ``docs/state.md`` for the schema.

An I/O edge, like ``sources`` and ``dispatch``: the SQLite store owns its file and touches
nothing else; ``state.kubernetes`` writes the same observed state into the custom resources'
``/status`` (the only module here that talks to the network). It decides nothing; callers pass
``now``.

One process writes and dispatches from a store at a time: ``state.lock`` is that lock's interface
(:class:`WriterLock`) and SQLite's implementation (:class:`FileLock`, ``flock`` on
``<state>.lock``); readers take none.

Callers type a store as :class:`StateBackend` (``state.backend``), the interface every backend
implements; only ``reconciler/cli.py`` chooses :class:`StateStore` (SQLite).
"""

from reconciler.state.backend import StateBackend
from reconciler.state.lock import FileLock, Holder, WriterLock, lock_path
from reconciler.state.oneoffs import OneOffRecord
from reconciler.state.records import (
    InstanceRecord,
    JobError,
    JobNotRunning,
    JobPhase,
    JobRecord,
    JobResult,
    PatchStateRecord,
    ReportRunRecord,
    RevisionRecord,
    ScanRecord,
    StateError,
    StoredEvaluation,
    StoredPatch,
    StoredSummary,
    StoreLocked,
    StoreUnusable,
    StoreWriteFailed,
    UnknownJob,
    WindowExecution,
    WriterLost,
)
from reconciler.state.schema import LATEST as SCHEMA_VERSION
from reconciler.state.store import StateStore

__all__ = [
    "SCHEMA_VERSION",
    "FileLock",
    "Holder",
    "InstanceRecord",
    "JobError",
    "JobNotRunning",
    "JobPhase",
    "JobRecord",
    "JobResult",
    "OneOffRecord",
    "PatchStateRecord",
    "ReportRunRecord",
    "RevisionRecord",
    "ScanRecord",
    "StateBackend",
    "StateError",
    "StateStore",
    "StoreLocked",
    "StoreUnusable",
    "StoreWriteFailed",
    "StoredEvaluation",
    "StoredPatch",
    "StoredSummary",
    "UnknownJob",
    "WindowExecution",
    "WriterLock",
    "WriterLost",
    "lock_path",
]
