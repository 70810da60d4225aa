"""Holds, issue 20 item 3 (docs/guardrails.md): an update that needs a held package at a newer
version is left out, like SSM's BLOCK leaves out a rejected package's dependants, and reported
HELD naming the hold; the other pins install. Real apt and dpkg on a directory root
(tests/aptlab.py): pwtest-tool 2.1-1 depends on pwtest-lib (>= 1.0-2)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from reconciler.agent.__main__ import install as agent_install
from reconciler.state import StateStore
from tests import fleet
from tests.aptlab import Repo, dpkg_state, hold
from tests.conftest import INSTALLED, needs_apt
from tests.test_holds_loop import reconcile_held

pytestmark = needs_apt
install = functools.partial(agent_install, trust_root_scripts=True)
PINS = ["pwtest-tool=2.1-1", "pwtest-other=1.1-1"]


def outcomes(result: dict[str, object]) -> dict[str, tuple[object, object]]:
    return {p["name"]: (p["result"], p.get("message")) for p in result["patches"]}  # type: ignore[attr-defined,index]


def test_an_update_needing_a_package_held_on_the_machine_is_held_and_the_others_install(
    system_root: Path,
) -> None:
    hold(system_root, "pwtest-lib")
    result = install(str(system_root), PINS, [], False, "NoReboot", False, 5)
    assert outcomes(result) == {
        "pwtest-tool": (
            "HELD",
            "needs pwtest-lib, held on the machine (apt-mark hold pwtest-lib): not installed",
        ),
        "pwtest-other": ("INSTALLED", None),
    }
    state = dpkg_state(system_root)
    assert state["pwtest-lib"] == ("1.0-1", "hold ok installed")
    assert state["pwtest-tool"][0] == "2.0-1"
    assert state["pwtest-other"][0] == "1.1-1"


def test_an_update_needing_a_declared_hold_is_held_never_pulled_in_as_a_dependency(
    system_root: Path,
) -> None:
    simulated = install(
        str(system_root), ["pwtest-tool=2.1-1"], [], True, "NoReboot", False, 5, holds=["pwtest-l*"]
    )
    assert outcomes(simulated) == {
        "pwtest-tool": (
            "HELD",
            "needs pwtest-lib, held by the patch group or instance ('pwtest-l*'): not installed",
        )
    }
    result = install(str(system_root), PINS, [], False, "NoReboot", False, 5, holds=["pwtest-l*"])
    assert [p["result"] for p in result["patches"]] == ["HELD", "INSTALLED"]  # type: ignore[index]
    assert dpkg_state(system_root)["pwtest-lib"][0] == "1.0-1"  # apt would have upgraded it
    assert dpkg_state(system_root)["pwtest-other"][0] == "1.1-1"


@pytest.mark.slow
def test_reconcile_sends_the_groups_holds_so_a_dependant_update_is_held(
    tmp_path: Path, apt_repo: Repo
) -> None:
    """The group holds pwtest-lib; pwtest-tool's update needs it: neither is installed, the
    job succeeds and its result says why (the agent learns the group's holds with the pins)."""
    installed = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
    root, state, summary = reconcile_held(tmp_path, apt_repo, installed, "[pwtest-lib]")
    assert summary["jobs"] == {"Scan succeeded": 1, "Install succeeded": 1}
    versions = fleet.versions(root)
    assert (versions["pwtest-lib"], versions["pwtest-tool"]) == ("1.0-1", "2.0-1")
    with StateStore(state) as store:
        job = next(j for j in store.jobs(instance="web-1") if j.operation == "Install")
    patches = {p["name"]: p for p in job.result["install"]["patches"]}
    assert patches["pwtest-tool"]["result"] == "HELD"
    assert patches["pwtest-tool"]["message"] == (
        "needs pwtest-lib, held by the patch group or instance ('pwtest-lib'): not installed"
    )
