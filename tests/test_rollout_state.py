"""A rollout's recorded state in the store (migration 10) on both backends (a real SQLite file, a
real PostgreSQL database: tests/postgres.py, ``state_store``): what the planner takes after a
restart is what was recorded before it, the history is append-only, and a snapshot edited in the
database is refused, not installed."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.rollout import MachineResult, Outcome, RolloutRecord, decide, freeze
from reconciler.state import StoreUnusable
from tests.postgres import another, raw_sql
from tests.test_rollout import rollout, stage

T0 = datetime(2030, 3, 4, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DEV_PROD = rollout(stage("dev", "48h"), stage("prod"))
SNAPSHOT = freeze({"debian": ["openssl=3.0.2-2", "curl=7.81-1"]}, T0)


def test_a_restart_in_the_middle_of_a_bake_continues_from_the_recorded_state(
    state_store: Any,
) -> None:
    store = state_store
    assert store.rollout_record("web") == RolloutRecord()
    store.record_rollout_cycle("web", SNAPSHOT, now=T0)
    installed = MachineResult(Outcome.INSTALLED, T0 + HOUR)
    store.record_rollout_result("web", "dev-1", installed, now=T0 + HOUR)
    store.record_rollout_result("web", "dev-2", installed, now=T0 + HOUR)
    with another(store) as reopened:  # as the next process opens it
        record = reopened.rollout_record("web")
    assert record.cycle == 1
    assert record.snapshot == SNAPSHOT and record.snapshot.digest == SNAPSHOT.digest
    assert dict(record.results) == {"dev-1": installed, "dev-2": installed}
    assert record.halted is None
    # The planner, given the record read back, measures the bake from the recorded finish.
    members = (("dev-1", "dev-2"), ("prod-1",))
    baking = decide(DEV_PROD, members, record, False, T0 + 32 * HOUR)
    assert [s.reason for s in baking.stages] == [
        "stage dev baked 31 h of 48 h",
        "stage prod waits: stage dev baked 31 h of 48 h",
    ]
    assert decide(DEV_PROD, members, record, False, T0 + 49 * HOUR).installing == {"prod-1"}


def test_a_new_cycle_forgets_the_last_ones_results_and_halt(state_store: Any) -> None:
    store = state_store
    store.record_rollout_cycle("web", SNAPSHOT, now=T0)
    failed = MachineResult(Outcome.HEALTH_CHECK_FAILED, T0 + HOUR)
    store.record_rollout_result("web", "dev-1", failed, now=T0 + HOUR)
    store.record_rollout_halt("web", "halted: 1 of 1 dev machines failed", now=T0 + HOUR)
    assert store.rollout_record("web").halted == "halted: 1 of 1 dev machines failed"
    store.record_rollout_resume("web", now=T0 + 2 * HOUR)
    resumed = store.rollout_record("web")
    assert resumed.halted is None and dict(resumed.results) == {}
    later = freeze({"debian": ["openssl=3.0.2-3"]}, T0 + 9 * HOUR)
    store.record_rollout_cycle("web", later, now=T0 + 9 * HOUR)
    store.record_rollout_cycle("api", SNAPSHOT, now=T0 + 9 * HOUR)
    assert store.rollout_record("web") == RolloutRecord(2, later)
    assert store.rollout_record("api") == RolloutRecord(1, SNAPSHOT)


def test_the_history_is_append_only_and_an_edited_snapshot_is_refused(state_store: Any) -> None:
    store = state_store
    store.record_rollout_cycle("web", SNAPSHOT, now=T0)
    with raw_sql(store) as (conn, refused):
        for statement in (
            "UPDATE rollout_history SET rollout = 'x'",
            "DELETE FROM rollout_history",
        ):
            with pytest.raises(refused, match="append-only"):
                conn.execute(statement)
        # Only by removing the trigger can anyone change a frozen version...
        (document,) = conn.execute("SELECT document FROM rollout_history").fetchone()
        edited = json.loads(document)
        edited["versions"]["debian"] = ["openssl=9.9"]
        _forge(conn, json.dumps(edited))
    # ...and then the store says so instead of handing the planner versions nobody baked.
    with pytest.raises(StoreUnusable, match="does not match"):
        store.rollout_record("web")


def _forge(conn: Any, document: str) -> None:
    """Overwrite the history's documents past its append-only trigger, as a database owner can."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("DROP TRIGGER rollout_history_no_update")
        conn.execute("UPDATE rollout_history SET document = ?", (document,))
        return
    conn.execute("ALTER TABLE rollout_history DISABLE TRIGGER USER")
    conn.execute("UPDATE rollout_history SET document = %s", (document,))
