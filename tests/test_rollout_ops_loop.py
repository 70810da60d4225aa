"""Operator controls as the loop honours them (issue 15, docs/rollouts.md "Resume and abort"),
on the three real apt roots of tests/test_rollout_loop.py with a clock the test moves: an abort
ends the cycle until the first stage's window opens again, and a commit that changes the
Rollout's resumeToken resumes a halted rollout (recorded), once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reconciler.rollout import Verdict
from reconciler.state import StateStore
from tests.conftest import needs_apt
from tests.test_rollout_loop import DAY1, STAGES, Fleet, at, fleet_yaml, run

pytestmark = needs_apt

FAILING = "      healthChecks: [{name: app, command: {argv: [/bin/false]}}]\n"
PASSING = "      healthChecks: [{name: app, command: {argv: [/bin/true]}}]\n"


def events(fleet: Fleet) -> list[str]:
    with sqlite3.connect(fleet.state) as conn:
        return [e for (e,) in conn.execute("SELECT event FROM rollout_history ORDER BY id")]


def test_an_abort_holds_every_stage_until_the_first_stage_window_opens_again(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # frozen; dev installs
    with StateStore(fleet.state) as store:
        store.record_rollout_abort("web", now=at(1, 13), by={"by": "alice"})
    # Still in the window the abort happened in: nothing freezes again, nothing installs.
    assert set(run(reconciler, fleet.clock, at(1, 14)).values()) == {Verdict.WAITING}
    # Dev baked a day by now, but its cycle was aborted: staging takes nothing from it...
    run(reconciler, fleet.clock, at(2, 12, 30))
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}
    with StateStore(fleet.state) as store:
        assert store.rollout_record("web").cycle == 2  # ...dev's next opening froze anew
    run(reconciler, fleet.clock, at(3, 12, 31))  # dev baked cycle 2's snapshot for a day
    assert fleet.patched() == {"dev": True, "staging": True, "prod": False}


def test_a_commit_changing_the_resume_token_resumes_a_halted_rollout_once(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, dev_task_fields=FAILING)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # dev installs; its health check fails: halted
    assert set(run(reconciler, fleet.clock, at(1, 13)).values()) == {Verdict.HALTED}
    assert set(run(reconciler, fleet.clock, at(2, 12, 30)).values()) == {Verdict.HALTED}
    # The operator judged the check's failure harmless: a commit sets a resumeToken.
    token = fleet_yaml(fleet.roots, FAILING).replace(
        "  stages:\n", "  resumeToken: INC-1\n  stages:\n"
    )
    (fleet.config / "fleet.yaml").write_text(token)
    # Resumed, recorded once; the failure that halted it is not folded again, so dev (on the
    # snapshot by its scan) bakes and staging, then prod, install.
    verdicts = run(reconciler, fleet.clock, at(2, 13))
    assert Verdict.HALTED not in verdicts.values(), verdicts
    assert events(fleet).count("Resumed") == 1
    run(reconciler, fleet.clock, at(3, 14))
    assert fleet.patched() == {"dev": True, "staging": True, "prod": False}
    run(reconciler, fleet.clock, at(4, 14))
    assert events(fleet).count("Resumed") == 1  # the same token resumes nothing more
    assert fleet.patched() == dict.fromkeys(STAGES, True)
