"""Stage: loop. What every part of the loop shares: the clock, the revision in force, the
summary of a pass, and the one way to tell observers what happened (:class:`Emitter`).

May not touch the source, the transports or the store: the parts that do get these from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.api.resources import ManagedInstance
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch.base import Transport
from reconciler.report.notify.occurrences import Kind, Observer, Occurrence
from reconciler.report.views.gates import GateStanding
from reconciler.report.views.rollouts import RolloutView
from reconciler.rollout import RolloutDecision

Clock = Callable[[], datetime]
TransportFor = Callable[[ManagedInstance], Transport]
Log = Any
"""A structlog logger (bound or not): structlog types its loggers as Any."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def clock_from(start: datetime) -> Clock:
    """A clock that starts at ``start`` and runs on at the wall clock's pace (``--now``): a
    reboot's timeout still expires and a bake still passes while the loop runs."""
    offset = start - utc_now()
    return lambda: utc_now() + offset


@dataclass
class InForce:
    """The revision in force and its snapshot. Mutable on purpose: each pass's refresh replaces
    them, and every part of the loop reads the same object."""

    snapshot: Snapshot | None = None
    revision: str | None = None
    author: str = ""
    last_refused: str | None = None
    """The refused revision people were last told about (each one is announced once)."""


@dataclass
class PassSummary:
    """What one reconcile run did."""

    revision: str | None = None
    refused: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # "Scan succeeded" -> count
    waits: list[tuple[str, str]] = field(default_factory=list)
    converged: bool = False
    rollouts: tuple[RolloutDecision, ...] = ()
    """Each Rollout's stages as this pass decided them (docs/rollouts.md)."""
    rollout_views: tuple[RolloutView, ...] = ()
    """The same as the observers read them (metrics, the controller's status)."""
    gates: tuple[GateStanding, ...] = ()
    """Each safety gate of each task and stage, and since when it blocks (the metrics)."""

    def count(self, operation: str, status: str) -> None:
        key = f"{operation} {status}"
        self.jobs[key] = self.jobs.get(key, 0) + 1


class Emitter:
    """Tells every observer (audit log, events, metrics) each Occurrence, stamped with the time
    and the revision in force; an observer's failure is logged, never raised."""

    def __init__(
        self, observers: Sequence[Observer], clock: Clock, log: Log, in_force: InForce
    ) -> None:
        self.observers = tuple(observers)
        self.clock, self.log, self.in_force = clock, log, in_force

    def __call__(
        self,
        kind: Kind,
        *,
        instance: str | None = None,
        job: str | None = None,
        revision: str | None = None,
        author: str | None = None,
        **detail: Any,
    ) -> None:
        occurrence = Occurrence(
            kind=kind,
            time=self.clock(),
            revision=revision if revision is not None else self.in_force.revision,
            author=author if author is not None else self.in_force.author,
            instance=instance,
            job=job,
            detail=detail,
        )
        for observer in self.observers:
            try:
                observer(occurrence)
            except Exception:  # an observer's bug must never stop patching: logged, not raised
                self.log.exception("observer failed", observer=repr(observer), kind=str(kind))
