"""Patch now and a halted rollout (docs/guardrails.md, "Rollout halts"): as for an emergency run,
``patchctl patch-now`` refuses, with nothing recorded, a request whose installs would go on
machines of a halted rollout, naming the rollout and what to do, unless ``--override-halt
REASON`` (kept with the request, audited as ``rollout.halt.overridden``; the rollout stays
halted); and the loop installs nothing there for a request without the override, also when
the rollout halts after the request, until the rollout is resumed.

Real SQLite store, real apt and dpkg on directory roots (local transport), real patchctl
processes for the request; the loop runs in-process on an injected clock where time matters.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from reconciler.api.oneoff import EmergencyFix, OneOffOpening, OneOffTargets
from reconciler.report.notify.audit import read, table_rows
from reconciler.rollout import freeze
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import ManualClock, make_fleet, versions
from tests.test_emergency import HALT
from tests.test_emergency_rails import ROLLOUT
from tests.test_loop_e2e import AFTER, BEFORE, UNPATCHED, patchctl
from tests.test_patch_now import NOW, loop, one_off, write_config


def halted_config(tmp_path: Path, apt_repo: Repo, names: list[str]) -> tuple[Path, dict[str, Path]]:
    """The fleet of tests/test_patch_now.py (its window closed) with rollout rings over it."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, names, BEFORE)
    config = write_config(tmp_path / "config", roots)
    (config / "rollout.yaml").write_text(ROLLOUT)
    return config, roots


def halt(store: StateStore) -> None:
    """Rollout rings froze a cycle and halted in it (as its stage's failures would halt it)."""
    store.record_rollout_cycle("rings", freeze({"other": ["x=1"]}, NOW), now=NOW)
    store.record_rollout_halt("rings", HALT, now=NOW)


def request(store: StateStore, instance: str, override_halt: str | None = None) -> OneOffOpening:
    """What ``patchctl patch-now --instance INSTANCE [--override-halt REASON]`` records at NOW."""
    opening = one_off(OneOffTargets(instances=[instance]), NOW)
    opening = opening.model_copy(update={"override_halt": override_halt})
    store.record_one_off(opening, now=NOW)
    return opening


@needs_apt
def test_patch_now_refuses_a_halted_rollouts_machines_unless_the_halt_is_overridden_and_audited(
    tmp_path: Path, apt_repo: Repo
) -> None:
    config, roots = halted_config(tmp_path, apt_repo, ["web-1", "web-2"])
    state, audit = tmp_path / "state.db", tmp_path / "audit.jsonl"
    common = ("--source", str(config), "--state", str(state), "--audit-log", str(audit))
    needless = patchctl("patch-now", "--group", "fleet", "--override-halt", "x", *common)
    assert (needless.returncode, needless.stderr) == (
        1,
        "patchctl: patch-now: --override-halt: no rollout of the targets is halted; nothing "
        "recorded\n",
    )
    with StateStore(state) as store:
        halt(store)

    refused = patchctl("patch-now", "--group", "fleet", *common)

    assert (refused.returncode, refused.stderr) == (
        1,
        f"patchctl: patch-now: rollout rings is halted ({HALT}): web-1, web-2; give "
        "--override-halt REASON to patch anyway; nothing recorded\n",
    )
    scan = patchctl("patch-now", "--group", "fleet", "--operation", "Scan", "--override-halt", "x",
                    *common)  # fmt: skip
    assert scan.stderr == (
        "patchctl: patch-now: --override-halt: a Scan installs nothing and a halt stops only "
        "installs; nothing recorded\n"
    )
    assert "pn-" not in patchctl("patch-now", "--list", "--state", str(state)).stdout

    asked = patchctl(
        "patch-now", "--instance", "web-1", "--override-halt", "INC-9: exploited",
        "--requested-by", "alice", *common, "-o", "json",
    )  # fmt: skip

    assert asked.returncode == 0, asked.stderr
    opening = json.loads(asked.stdout)
    assert opening["overrideHalt"] == "INC-9: exploited"
    [override] = [e for e in read(audit)[0] if e["kind"] == "rollout.halt.overridden"]
    assert override["author"] == "alice"
    assert override["detail"] == {
        "id": opening["id"],
        "run": "patch-now",
        "instances": ["web-1"],
        "osUser": opening["osUser"],
        "rollouts": [f"rollout rings is halted ({HALT}): web-1"],
        "reason": "INC-9: exploited",
    }
    [row] = table_rows([override])
    assert row["what"] == (
        f"patch-now {opening['id']} on web-1 asked by alice (OS user {opening['osUser']}) "
        f"although rollout rings is halted ({HALT}): web-1; reason: INC-9: exploited"
    )
    done = patchctl("reconcile", "--source", str(config), "--state", str(state))
    assert done.returncode == 0, done.stderr
    assert versions(roots["web-1"]) == AFTER
    assert versions(roots["web-2"]) == UNPATCHED  # not asked for; its rollout is halted
    with StateStore(state) as store:
        assert store.rollout_record("rings").halted == HALT  # the rollout itself stays halted
    # A scan installs nothing, so a halt does not refuse it.
    scanned = patchctl("patch-now", "--group", "fleet", "--operation", "Scan", *common)
    assert scanned.returncode == 0, scanned.stderr


@needs_apt
def test_a_request_made_before_the_halt_waits_until_it_is_resumed_unless_it_overrides_it(
    tmp_path: Path, apt_repo: Repo
) -> None:
    config, roots = halted_config(tmp_path, apt_repo, ["web-1", "web-2"])
    with StateStore(tmp_path / "state.db") as store:
        waits = request(store, "web-1")  # accepted: nothing was halted yet
        request(store, "web-2", override_halt="INC-9")
        halt(store)
        reconciler = loop(config, store, ManualClock(NOW))
        reconciler.reconcile()
        plan = reconciler.plan()
        assert (versions(roots["web-1"]), versions(roots["web-2"])) == (UNPATCHED, AFTER)
        assert store.rollout_record("rings").halted == HALT  # the override leaves it halted
        assert plan is not None
        (wait,) = [w for w in plan.waits if w.instance == "web-1"]
        assert wait.reason == (
            f"patch now {waits.id}: rollout rings is halted ({HALT}): waits until it is "
            "resumed; ask again with --override-halt REASON to patch its machines anyway"
        )
        store.record_rollout_resume("rings", now=NOW)
        reconciler.reconcile()
    assert versions(roots["web-1"]) == AFTER


def test_an_emergency_run_recorded_with_the_override_on_its_fix_still_loads(
    tmp_path: Path,
) -> None:
    """Emergency runs recorded before patch-now took --override-halt kept the reason on their
    fix (``emergency.overrideHalt``); a store holding one still lists it, override and all (an
    unknown field would make every listing fail)."""
    fix = EmergencyFix(
        cve="CVE-2026-1234", frozen_at=NOW, versions={"base": ["pwtest-lib=1.0-2"]}, digest="d"
    )
    opening = one_off(OneOffTargets(instances=["web-1"]), NOW).model_copy(
        update={"id": "em-earlier", "emergency": fix}
    )
    earlier = opening.to_wire()
    earlier["emergency"] = {**earlier["emergency"], "overrideHalt": "INC-9: exploited"}  # type: ignore[dict-item]
    with StateStore(tmp_path / "state.db") as store:
        store.record_one_off(opening.model_copy(update={"id": "em-seed"}), now=NOW)
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute(
            "INSERT INTO one_off_openings SELECT 'em-earlier', ?, status, created_at, expires_at,"
            " updated_at FROM one_off_openings WHERE id = 'em-seed'",
            (json.dumps(earlier),),
        )
    with StateStore(tmp_path / "state.db") as store:
        record = store.one_off("em-earlier")
    assert record is not None
    assert (record.opening.override_halt, record.opening.emergency) == ("INC-9: exploited", fix)
    both = {**earlier, "overrideHalt": "INC-9"}
    with pytest.raises(ValidationError, match="overrideHalt"):
        OneOffOpening.model_validate(both)
