"""Stage: state. Progressive rollouts' recorded state as the store keeps it (table
``rollout_history``, migration 10): one row per change, and the :class:`RolloutRecord` the
planner takes, folded from the rows since the rollout's latest cycle start.

Touches only the connection it is given, in the store's SQL dialect (SQLite or PostgreSQL, the
same statements: ``state.dialect``); decides nothing (the planner in :mod:`reconciler.rollout`
decides, the loop records); imports only ``reconciler.rollout``, ``state.records`` and
``state.dialect``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from reconciler.rollout import MachineResult, Outcome, RolloutRecord, RolloutSnapshot
from reconciler.state.dialect import Connection, Dialect
from reconciler.state.records import StoreUnusable, from_json, from_text, to_json, to_text


class RolloutEvent(StrEnum):
    CYCLE_STARTED = "CycleStarted"
    MACHINE_RESULT = "MachineResult"
    HALTED = "Halted"
    RESUMED = "Resumed"
    APPROVED = "Approved"
    """A stage with requiresApproval was approved for the cycle's snapshot (not folded yet)."""
    ABORTED = "Aborted"
    """The cycle was ended by hand (not folded yet)."""


def append(
    conn: Connection,
    dialect: Dialect,
    rollout: str,
    event: RolloutEvent,
    document: dict[str, Any],
    now: datetime,
) -> None:
    dialect.run(
        conn,
        "INSERT INTO rollout_history (rollout, event, document, at) VALUES (?, ?, ?, ?)",
        (rollout, str(event), to_json(document), to_text(now)),
    )


def snapshot_document(snapshot: RolloutSnapshot) -> dict[str, Any]:
    return {
        "frozenAt": to_text(snapshot.frozen_at),
        "digest": snapshot.digest,
        "versions": {name: sorted(pins) for name, pins in sorted(snapshot.versions.items())},
    }


def result_document(instance: str, result: MachineResult) -> dict[str, Any]:
    return {
        "instance": instance,
        "outcome": str(result.outcome),
        "finishedAt": to_text(result.finished_at),
    }


def record_of(conn: Connection, dialect: Dialect, rollout: str) -> RolloutRecord:
    """The rollout's state: its cycle count, and the rows since its latest cycle start."""
    (cycles,) = dialect.run(
        conn,
        "SELECT COUNT(*) FROM rollout_history WHERE rollout = ? AND event = 'CycleStarted'",
        (rollout,),
    ).fetchone()
    rows = dialect.run(
        conn,
        "SELECT event, document FROM rollout_history WHERE rollout = ? AND id >= COALESCE("
        " (SELECT MAX(id) FROM rollout_history WHERE rollout = ? AND event = 'CycleStarted'), 0)"
        " ORDER BY id",
        (rollout, rollout),
    ).fetchall()
    record = RolloutRecord(cycle=max(0, cycles - 1))
    for event, text in rows:
        record = _fold(record, rollout, RolloutEvent(event), from_json(text))
    return record


def _fold(
    record: RolloutRecord, rollout: str, event: RolloutEvent, document: dict[str, Any]
) -> RolloutRecord:
    if event is RolloutEvent.CYCLE_STARTED:
        return record.start_cycle(_snapshot(rollout, document))
    if event is RolloutEvent.MACHINE_RESULT:
        result = MachineResult(Outcome(document["outcome"]), from_text(document["finishedAt"]))
        return record.with_result(document["instance"], result)
    if event is RolloutEvent.HALTED:
        return record.halt(document["reason"])
    return record.resume()


def _snapshot(rollout: str, document: dict[str, Any]) -> RolloutSnapshot:
    versions = {name: frozenset(pins) for name, pins in document["versions"].items()}
    snapshot = RolloutSnapshot(from_text(document["frozenAt"]), MappingProxyType(versions))
    if snapshot.digest != document["digest"]:
        # Content-addressed: a snapshot edited in the file is not the one the stages baked.
        raise StoreUnusable(
            f"rollout {rollout}'s snapshot {document['digest']} does not match its versions "
            f"(digest {snapshot.digest}): the state file was edited; restore it from a backup"
        )
    return snapshot
