"""Holds on dnf and zypper machines (docs/guardrails.md, "Dependants of held packages"): an
update that needs a held package at a newer version is left out HELD, with the message apt's
gives, and the other pins install; never FAILED, and the held package is never upgraded as a
dependency. Real dnf, zypper and rpm on directory roots (tests/rpmlab.py): demo-tool 1.1-1
requires demo-lib >= 1.0-2, and demo-app 1.0-2 requires the capability libdemo.so.2, which only
demo-libx 2.0-1 provides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.agent.__main__ import install as agent_install
from tests.rpmlab import (
    Rpm,
    base_and_updates,
    build_rpms,
    dnf_versionlock,
    needs,
    rpm_q,
    seed_rpm_root,
    zypper_lock,
)

pytestmark = needs("rpm", "rpmbuild", "dnf", "zypper", "createrepo_c")

NAMES = ["demo-lib", "demo-tool", "demo-util", "demo-app", "demo-libx"]
OLD = [
    Rpm("demo-lib", "1.0"),
    Rpm("demo-tool", "1.0"),
    Rpm("demo-util", "1.0"),
    Rpm("demo-app", "1.0", requires="libdemo.so.1"),
    Rpm("demo-libx", "1.0", provides="libdemo.so.1"),
]
NEW = [
    Rpm("demo-lib", "1.0", "2"),
    Rpm("demo-tool", "1.1", "1", requires="demo-lib >= 1.0-2"),
    Rpm("demo-util", "1.0", "2"),
    Rpm("demo-app", "1.0", "2", requires="libdemo.so.2"),
    Rpm("demo-libx", "2.0", "1", provides="libdemo.so.2"),
]
PINS = ["demo-tool=1.1-1", "demo-util=1.0-2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    work = tmp_path_factory.mktemp("held-rpms")
    rpms = build_rpms(work / "build", [*OLD, *NEW])
    return {"old": [rpms[r] for r in OLD], "new": [rpms[r] for r in NEW]}


def versionlock(root: Path, name: str) -> str:
    """Lock ``name`` at its installed version; the hold as the agent's messages name it."""
    dnf_versionlock(root, f"{name}-0:1.0-1.*")
    return f"dnf versionlock {name}"


def zypper_locks(root: Path, name: str) -> str:
    zypper_lock(root, name)
    return f"zypper lock {name}"


# the root's os-release, and how its administrator locks a package
MACHINES = {"dnf": ("rhel9", versionlock), "zypper": ("sles15sp5", zypper_locks)}


@pytest.fixture(params=sorted(MACHINES))
def machine(
    request: pytest.FixtureRequest, built: dict[str, list[Path]], tmp_path: Path
) -> tuple[Path, Callable[[Path, str], str]]:
    """A root of each package manager with the old versions installed (by dnf, as a RHEL root:
    rpm's database is the same for zypper), and how it locks."""
    os_release, lock = MACHINES[request.param]
    repos = base_and_updates(tmp_path / "repos", built["old"], built["new"], [])
    root = seed_rpm_root(tmp_path / "root", os_release, repos, NAMES, seed_release="rhel9")
    return root, lock


def install(root: Path, pins: list[str], **kw: object) -> dict[str, tuple[object, object]]:
    result = agent_install(str(root), pins, [], False, "NoReboot", False, 30, **kw)  # type: ignore[arg-type]
    return {p["name"]: (p["result"], p.get("message")) for p in result["patches"]}  # type: ignore[attr-defined,index]


def test_an_update_needing_a_package_locked_on_the_machine_is_held_and_the_others_install(
    machine: tuple[Path, Callable[[Path, str], str]],
) -> None:
    root, lock = machine
    hold = lock(root, "demo-lib")
    assert install(root, PINS) == {
        "demo-tool": ("HELD", f"needs demo-lib, held on the machine ({hold}): not installed"),
        "demo-util": ("INSTALLED", None),
    }
    # dnf runs without its plugins and zypper stopped at the lock's problem: before, dnf
    # upgraded the locked demo-lib as a dependency and zypper installed nothing
    assert rpm_q(root, "demo-lib", "demo-tool", "demo-util") == {
        "demo-lib": "1.0-1",
        "demo-tool": "1.0-1",
        "demo-util": "1.0-2",
    }


def test_a_declared_hold_is_never_pulled_in_even_through_a_capability(
    machine: tuple[Path, Callable[[Path, str], str]],
) -> None:
    root, _ = machine
    pins = ["demo-app=1.0-2", *PINS]
    simulated = agent_install(str(root), pins, [], True, "NoReboot", False, 30, holds=["demo-lib*"])
    assert [(p["name"], p["result"]) for p in simulated["patches"]] == [  # type: ignore[index]
        ("demo-app", "HELD"),
        ("demo-tool", "HELD"),
        ("demo-util", "WOULD_INSTALL"),
    ]
    declared = "held by the patch group or instance ('demo-lib*'): not installed"
    assert install(root, pins, holds=["demo-lib*"]) == {
        "demo-app": ("HELD", f"needs demo-libx, {declared}"),
        "demo-tool": ("HELD", f"needs demo-lib, {declared}"),
        "demo-util": ("INSTALLED", None),
    }
    assert rpm_q(root, "demo-lib", "demo-libx", "demo-app", "demo-util") == {
        "demo-lib": "1.0-1",
        "demo-libx": "1.0-1",
        "demo-app": "1.0-1",
        "demo-util": "1.0-2",
    }


def test_without_a_matching_hold_the_dependency_still_comes_along(
    machine: tuple[Path, Callable[[Path, str], str]],
) -> None:
    root, _ = machine
    assert install(root, ["demo-tool=1.1-1"], holds=["other-*"]) == {
        "demo-tool": ("INSTALLED", None)
    }
    assert rpm_q(root, "demo-lib")["demo-lib"] == "1.0-2"
