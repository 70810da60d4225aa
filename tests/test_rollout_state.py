"""A rollout's recorded state in the store (migration 10) on a real SQLite file: what the planner
takes after a restart is what was recorded before it, the history is append-only, and a snapshot
edited in the file is refused, not installed."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.rollout import MachineResult, Outcome, RolloutRecord, decide, freeze
from reconciler.state import StateStore, StoreUnusable
from tests.test_rollout import rollout, stage

T0 = datetime(2030, 3, 4, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DEV_PROD = rollout(stage("dev", "48h"), stage("prod"))
SNAPSHOT = freeze({"debian": ["openssl=3.0.2-2", "curl=7.81-1"]}, T0)


def test_a_restart_in_the_middle_of_a_bake_continues_from_the_recorded_state(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        assert store.rollout_record("web") == RolloutRecord()
        store.record_rollout_cycle("web", SNAPSHOT, now=T0)
        installed = MachineResult(Outcome.INSTALLED, T0 + HOUR)
        store.record_rollout_result("web", "dev-1", installed, now=T0 + HOUR)
        store.record_rollout_result("web", "dev-2", installed, now=T0 + HOUR)
    with StateStore(path) as reopened:
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


def test_a_new_cycle_forgets_the_last_ones_results_and_halt(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
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


def test_the_history_is_append_only_and_an_edited_snapshot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        store.record_rollout_cycle("web", SNAPSHOT, now=T0)
    with sqlite3.connect(path) as conn:
        for statement in (
            "UPDATE rollout_history SET rollout = 'x'",
            "DELETE FROM rollout_history",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        # Only by rebuilding the table can anyone change a frozen version...
        (document,) = conn.execute("SELECT document FROM rollout_history").fetchone()
        edited = json.loads(document)
        edited["versions"]["debian"] = ["openssl=9.9"]
        conn.execute("DROP TRIGGER rollout_history_no_update")
        conn.execute("UPDATE rollout_history SET document = ?", (json.dumps(edited),))
    # ...and then the store says so instead of handing the planner versions nobody baked.
    with StateStore(path) as store, pytest.raises(StoreUnusable, match="does not match"):
        store.rollout_record("web")
