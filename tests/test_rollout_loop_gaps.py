"""Gaps of the rollout loop found while putting it on the SSH test fleet
(tests/test_fleet_rollout.py), held here on real apt roots (tests/test_rollout_loop.py's three
stages, a clock the test sets):

- the loop first meets its machines inside the first stage's window: the freeze waits for the
  first stage's scans, and once they are in, the same pass freezes and installs (a single
  ``patchctl reconcile`` does the stage's work instead of stopping at "freezing the approved
  versions");
- a newer version of a library the snapshot holds is released mid-cycle: a later stage installs
  the library's frozen version, not the newer one pulled in as a dependency of the snapshot's
  other updates, nor is a machine counted on the snapshot because only the newer version is
  missing there;
- a stage's failures go beyond its maxFailedPercent: the halt stops the stage's other machines
  in the same pass, not after all of them installed;
- a later stage runs another baseline and its machine was not scanned yet when the first
  stage's window opened: the freeze waits for it, so that baseline's versions are frozen too;
- a long first-stage window is still open when the cycle completes: the next cycle waits for
  the window's next opening.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.rollout import Verdict
from reconciler.sources.directory import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Pkg, make_root
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    API,
    BASELINE,
    BASELINE_YAML,
    ManualClock,
    documents,
    local_instance_yaml,
    versions,
    window_yaml,
)
from tests.test_rollout_loop import BEFORE, DAY1, PATCHED, Fleet, at, run

pytestmark = needs_apt

NEWER_LIB = Pkg("pwtest-lib", "1.0-3", priority="important", section="libs", source="pwtest-src")


def test_one_pass_in_the_first_stages_window_scans_freezes_and_installs_that_stage(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()

    verdicts = run(reconciler, fleet.clock, at(1, 12))  # never scanned, dev's window open

    assert verdicts == {"dev": Verdict.INSTALL, "staging": Verdict.WAITING, "prod": Verdict.WAITING}
    assert fleet.patched() == {"dev": True, "staging": False, "prod": False}
    with reconciler.store as store:
        record = store.rollout_record("web")
    assert record.cycle == 1 and record.snapshot is not None
    assert record.snapshot.frozen_at == at(1, 12)


def test_a_dependency_released_mid_cycle_stays_at_its_frozen_version_in_later_stages(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # frozen: lib 1.0-2 and tool 2.1-1; dev installs
    fleet.release(NEWER_LIB)  # tool 2.1-1 needs lib >= 1.0-2: apt's candidate is now 1.0-3

    run(reconciler, fleet.clock, at(2, 12, 30))  # staging rescans (stale), then installs

    assert {k: fleet.versions("staging")[k] for k in PATCHED} == PATCHED
    assert {k: fleet.versions("dev")[k] for k in PATCHED} == PATCHED
    assert fleet.versions("prod")["pwtest-lib"] == "1.0-1"


def test_a_machine_missing_only_the_newer_library_installs_the_frozen_one(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    staging = fleet.roots["staging"]  # the library alone: no other update of the snapshot
    shutil.rmtree(staging)
    lib = [p for p in INSTALLED if p.name == "pwtest-lib"]
    make_root(staging, fleet.repo.uri, ["stable", "stable-security"], installed=lib)
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # frozen: lib 1.0-2 and tool 2.1-1; dev installs
    fleet.release(NEWER_LIB)
    run(reconciler, fleet.clock, at(2, 9))  # dev baking; staging's rescan misses lib 1.0-3 only

    verdicts = run(reconciler, fleet.clock, at(2, 12, 30))

    assert verdicts["staging"] is Verdict.INSTALL
    assert fleet.versions("staging")["pwtest-lib"] == "1.0-2"


def group_yaml(ring: str) -> str:
    return (
        f"{API}\nkind: PatchGroup\nmetadata:\n  name: {ring}\nspec:\n"
        f"  selector:\n    matchLabels: {{ring: {ring}}}\n  baselines:\n    DEBIAN: debian-security\n"
    )


def test_a_halt_stops_the_stage_in_the_same_pass(tmp_path: Path) -> None:
    """dev's three machines install one at a time and each fails its health check: the first
    failure is beyond maxFailedPercent 0, so the two others must not install in that pass."""
    (tmp_path / "first").mkdir()
    repo = Fleet(tmp_path / "first").repo
    roots = {
        name: make_root(tmp_path / name, repo.uri, ["stable", "stable-security"], installed=BEFORE)
        for name in ("dev-1", "dev-2", "dev-3", "prod-1")
    }
    failing = "      healthChecks: [{name: app, command: {argv: [/bin/false]}}]\n"
    config = tmp_path / "config"
    config.mkdir()
    stages = "".join(f"    - {{name: {s}, patchGroups: [{s}]}}\n" for s in ("dev", "prod"))
    (config / "fleet.yaml").write_text(
        documents(
            BASELINE_YAML.split("---\n")[0],
            *(group_yaml(stage) for stage in ("dev", "prod")),
            window_yaml("dev-noon", "cron(0 12 * * ? *)", group="dev", max_concurrency="1",
                        task_fields=failing),
            *(local_instance_yaml(n, r).replace("{fleet: e2e}", f"{{ring: {n[:-2]}}}")
              for n, r in roots.items()),
            f"{API}\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  stages:\n{stages}",
        )
    )  # fmt: skip
    clock = ManualClock(at(1, 12))
    reconciler = Reconciler(
        DirectorySource(config),
        StateStore(tmp_path / "state.db"),
        lambda i: transport_for(i.spec.connection, trust_root_scripts=True, trust_local_hooks=True),
        clock=clock,
        wait=lambda seconds: None,
    )

    summary = reconciler.reconcile()

    assert summary.jobs == {"Scan succeeded": 4, "Install failed": 1}
    (decision,) = summary.rollouts
    assert decision.stages[0].verdict is Verdict.HALTED
    patched = [n for n in roots if versions(roots[n])["pwtest-lib"] == PATCHED["pwtest-lib"]]
    assert len(patched) == 1


PROD_GROUP = "  name: prod\nspec:\n  selector:\n    matchLabels: {ring: prod}\n  baselines:\n"
# The fleets' baseline with other approval rules: Important updates only (the library).
IMPORTANT_ONLY = (
    BASELINE_YAML.split("---\n")[0]
    .replace(f"name: {BASELINE}", "name: debian-important")
    .replace("[Required, Important, Standard, Optional, Extra]", "[Important]")
)


def test_the_freeze_waits_for_a_later_stage_on_another_baseline_and_freezes_it_too(
    tmp_path: Path,
) -> None:
    """prod runs a baseline that approves Important updates only (the library, not the tool),
    and its machine cannot be scanned when dev's window opens."""
    fleet = Fleet(tmp_path)
    config = fleet.config / "fleet.yaml"
    text = config.read_text().replace(
        PROD_GROUP + f"    DEBIAN: {BASELINE}", PROD_GROUP + "    DEBIAN: debian-important"
    )
    config.write_text(documents(text, IMPORTANT_ONLY))
    away = tmp_path / "prod-away"
    fleet.roots["prod"].rename(away)  # unreachable: its scan fails
    reconciler = fleet.loop()

    fleet.clock.advance_to(at(1, 12))
    summary = reconciler.reconcile()
    (decision,) = summary.rollouts
    assert {s.reason for s in decision.stages} == {
        "freeze waits: 1 machine of stage prod not scanned yet"
    }
    assert fleet.versions("dev")["pwtest-lib"] == "1.0-1"  # nothing installed

    away.rename(fleet.roots["prod"])
    run(reconciler, fleet.clock, at(1, 12, 45))  # prod scanned: frozen, dev installs
    with StateStore(fleet.state) as store:  # another reader: the loop's stays open
        record = store.rollout_record("web")
    assert record.snapshot is not None
    assert set(record.snapshot.versions) == {BASELINE, "debian-important"}
    assert record.snapshot.versions["debian-important"] == {"pwtest-lib=1.0-2"}
    run(reconciler, fleet.clock, at(2, 13, 0))  # dev baked 1 d: staging installs
    run(reconciler, fleet.clock, at(3, 13, 30))  # staging baked 1 d: prod installs

    assert {k: fleet.versions("staging")[k] for k in PATCHED} == PATCHED
    assert {k: fleet.versions("prod")[k] for k in PATCHED} == {
        "pwtest-lib": "1.0-2",
        "pwtest-tool": "2.0-1",
    }


def test_a_cycle_completed_inside_a_long_window_waits_for_its_next_opening(
    tmp_path: Path,
) -> None:
    """Every stage's window is open 20 h a day and no stage bakes: the cycle completes early in
    the afternoon while dev's window stays open until the next morning; the next cycle freezes
    at the next opening (12:00 the next day), not at the next pass."""
    fleet = Fleet(tmp_path)
    config = fleet.config / "fleet.yaml"
    config.write_text(
        config.read_text()
        .replace("  duration: 4\n  cutoff: 1\n", "  duration: 20\n  cutoff: 1\n")
        .replace("bakeTime: 1d", "bakeTime: 0m")
    )
    reconciler = fleet.loop()
    run(reconciler, fleet.clock, DAY1)
    run(reconciler, fleet.clock, at(1, 12))  # frozen; dev installs
    run(reconciler, fleet.clock, at(1, 13))  # staging installs
    run(reconciler, fleet.clock, at(1, 14))  # prod installs: the cycle is done
    assert fleet.patched() == {"dev": True, "staging": True, "prod": True}

    fleet.clock.advance_to(at(1, 20))  # dev's window is still open
    summary = reconciler.reconcile()
    (decision,) = summary.rollouts
    assert {(s.verdict, s.reason) for s in decision.stages} == {
        (Verdict.BAKED, "cycle 1 done; the next freezes when stage dev's window next opens")
    }
    with StateStore(fleet.state) as store:  # another reader: the loop's stays open
        assert store.rollout_record("web").cycle == 1

    run(reconciler, fleet.clock, at(2, 12))  # the next opening
    with StateStore(fleet.state) as store:  # another reader: the loop's stays open
        assert store.rollout_record("web").cycle == 2
