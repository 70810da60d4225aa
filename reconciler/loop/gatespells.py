"""Stage: loop, step ``gate_spells`` (after ``gates``): how long each safety gate has blocked
each task and rollout stage it guards (docs/guardrails.md), and ``gate.blocked`` once per
blocking spell that outlasts the gate's ``blockedThreshold``.

When a spell began is kept in this process only: after a restart a gate still blocking starts a
new spell (and may be announced again once it outlasts its threshold). Reads the pass's readings;
may not read gates itself, nor touch the store, the source or transports.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.snapshot import Snapshot
from reconciler.loop.common import Clock, Emitter
from reconciler.plan import GateReading
from reconciler.report.notify.occurrences import Kind
from reconciler.report.views.gates import GateStanding, standings


class GateSpells:
    """The blocking spells this process has seen, and which of them it announced."""

    def __init__(self, clock: Clock, emit: Emitter) -> None:
        self.clock, self.emit = clock, emit
        self.current: tuple[GateStanding, ...] = ()
        self.announced: set[tuple[str, str]] = set()
        """(scope, gate) of the spells already announced: once per spell."""

    def follow(
        self, snapshot: Snapshot | None, readings: Mapping[str, GateReading]
    ) -> tuple[GateStanding, ...]:
        """Every gate's standing now; announce each spell that just outlasted its threshold."""
        self.current = standings(snapshot, readings, self.current, self.clock())
        blocking = {standing.key for standing in self.current if standing.blocking}
        self.announced &= blocking  # a spell that ended may be announced again when the next one is
        for standing in self.current:
            if standing.overdue and standing.key not in self.announced:
                self.announced.add(standing.key)
                self.emit(Kind.GATE_BLOCKED, **standing.detail())
        return self.current
