"""Rollout operator controls through ``patchctl rollout approve|resume|abort`` (issue 15): each
changes the rollout's recorded history on a real SQLite store, prints one line (or JSON) saying
what changed, is audited with who asked and why, and refuses with exit 1 and one line what makes
no sense (an unknown rollout, resuming one that is not halted, approving a stage that needs no
approval or an old snapshot), recording nothing then."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.report.notify import audit
from reconciler.rollout import MachineResult, Outcome, freeze, short_digest
from reconciler.state import StateStore
from tests.test_loop_e2e import patchctl
from tests.test_rollout_validation import GROUPS, ROLLOUT

T0 = datetime(2030, 3, 4, 2, 0, tzinfo=UTC)
SNAPSHOT = freeze({"debian": ["openssl=3.0.2-2"]}, T0)
SHORT = short_digest(SNAPSHOT.digest)
GATED = ROLLOUT.replace(
    "      patchGroups: [prod]\n", "      patchGroups: [prod]\n      requiresApproval: true\n"
)


def seeded(tmp_path: Path, *, halted: bool = False) -> Path:
    state = tmp_path / "state.db"
    with StateStore(state) as store:
        store.record_rollout_cycle("web", SNAPSHOT, now=T0)
        if halted:
            failed = MachineResult(Outcome.HEALTH_CHECK_FAILED, T0 + timedelta(hours=1))
            store.record_rollout_result("web", "dev-1", failed, now=T0 + timedelta(hours=1))
            store.record_rollout_halt("web", "halted: 1 of 1 dev machines failed", now=T0)
    return state


def audited(state: Path) -> list[dict[str, Any]]:
    path = audit.default_path(state)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_resume_continues_a_halted_rollout_and_is_audited(tmp_path: Path) -> None:
    state = seeded(tmp_path, halted=True)
    run = patchctl(
        "rollout", "resume", "web", "--state", str(state), "--reason", "INC-42 fixed",
        "--requested-by", "alice",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == (
        "rollout web: resumed; its failures are tried again "
        "(was halted: 1 of 1 dev machines failed) (by alice)\n"
    )
    with StateStore(state) as store:
        record = store.rollout_record("web")
    assert record.halted is None and dict(record.results) == {}
    (entry,) = audited(state)
    assert entry["kind"] == "rollout.operator" and entry["author"] == "alice"
    assert entry["detail"] == {
        "rollout": "web",
        "action": "resume",
        "cycle": 1,
        "snapshot": SNAPSHOT.digest,
        "by": "alice",
        "osUser": getpass.getuser(),
        "reason": "INC-42 fixed",
        "halted": "halted: 1 of 1 dev machines failed",
    }
    table = patchctl("audit", "--kind", "rollout", "--state", str(state))
    assert "web: resume, cycle 1 (INC-42 fixed)" in table.stdout, table.stdout + table.stderr
    again = patchctl("rollout", "resume", "web", "--state", str(state))
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == "patchctl: rollout web is not halted: nothing to resume\n"
    assert len(audited(state)) == 1


def test_abort_ends_the_cycle_once(tmp_path: Path) -> None:
    state = seeded(tmp_path)
    run = patchctl("rollout", "abort", "web", "--state", str(state), "-o", "json")
    assert run.returncode == 0, run.stderr
    change = json.loads(run.stdout)
    assert (change["action"], change["cycle"], change["snapshot"]) == ("abort", 1, SNAPSHOT.digest)
    assert change["reason"] is None and change["by"] == getpass.getuser()
    with StateStore(state) as store:
        assert store.rollout_record("web").aborted_at is not None
    for verb in ("abort", "resume"):
        refused = patchctl("rollout", verb, "web", "--state", str(state))
        assert refused.returncode == 1
        assert refused.stderr == (
            f"patchctl: rollout web's cycle 1 was aborted: nothing to {verb} until the next "
            "cycle freezes\n"
        )
    assert [e["detail"]["action"] for e in audited(state)] == ["abort"]


def test_an_unknown_rollout_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    state = seeded(tmp_path)
    run = patchctl("rollout", "abort", "api", "--state", str(state))
    assert run.returncode == 1
    assert run.stderr == (
        "patchctl: no rollout api in the state store (rollouts with a cycle: web); nothing to "
        "abort\n"
    )
    reason = patchctl("rollout", "abort", "web", "--state", str(state), "--reason", "a\x1bb")
    assert reason.returncode == 1 and "--reason: contains" in reason.stderr
    assert audited(state) == []


def source(tmp_path: Path, rollout: str) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "groups.yaml").write_text(GROUPS)
    (directory / "rollout.yaml").write_text(rollout)
    return directory


def test_approve_records_an_approval_of_the_current_snapshot_only(tmp_path: Path) -> None:
    state, config = seeded(tmp_path), source(tmp_path, GATED)
    common = ("--source", str(config), "--state", str(state))
    old = patchctl("rollout", "approve", "web", "--stage", "prod", "--snapshot", "0123456", *common)
    assert old.returncode == 1
    assert old.stderr == (
        f"patchctl: rollout web: snapshot 0123456 is not the current one (cycle 1's is {SHORT}); "
        "nothing recorded\n"
    )
    dev = patchctl("rollout", "approve", "web", "--stage", "dev", *common)
    assert dev.stderr == (
        "patchctl: stage dev of rollout web needs no approval (it has no requiresApproval: "
        "true); nothing recorded\n"
    )
    run = patchctl(
        "rollout", "approve", "web", "--stage", "prod", "--snapshot", SHORT, *common,
        "--reason", "CAB-7",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == (
        f"rollout web: stage prod approved for snapshot {SHORT} (by {getpass.getuser()})\n"
    )
    with StateStore(state) as store:
        assert store.rollout_record("web").approvals == {"prod"}
        store.record_rollout_cycle("web", freeze({"debian": ["x=1"]}, T0), now=T0)
        assert store.rollout_record("web").approvals == frozenset()  # a new cycle: ask again
    (entry,) = audited(state)
    assert entry["detail"]["stage"] == "prod" and entry["detail"]["reason"] == "CAB-7"
