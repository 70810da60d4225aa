"""The SUSE backend (zypper) with real zypper and rpm, in per-test roots (tests/rpmlab.py).

The repositories hold SUSE patches of every category and severity; one of them suggests a reboot
(zypper treats it as interactive) and one ships a package whose %post fails.
"""

from __future__ import annotations

import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.agent import __main__ as agent
from reconciler.agent.errors import (
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RepositoryError,
)
from reconciler.api.inventory import Inventory
from reconciler.evaluation import evaluate
from reconciler.evaluation.pins import pins_for
from tests.factories import NOW, baseline, rule, states
from tests.rpmlab import (
    SUSE_PACKAGES,
    SUSE_PREFIX,
    build_suse_repos,
    make_suse_root,
    needs,
    plant_hooks,
    rpm_q,
    zypper,
    zypper_lock,
)

pytestmark = needs("zypper", "rpmbuild", "createrepo_c")

OLD = [f"{name}-{old}" for name, old, _ in SUSE_PACKAGES if name != "demo-bad"]


@pytest.fixture(scope="session")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_suse_repos(tmp_path_factory.mktemp("suse-repos"))


@pytest.fixture
def root(tmp_path: Path, repos: Path) -> Path:
    return make_suse_root(tmp_path / "root", repos, OLD)


def _install(root: Path, *pins: str, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "blocked": [],
        "simulate": False,
        "reboot_option": "RebootIfNeeded",
        "allow_reboot": False,
        "lock_timeout": 5,
    }
    args.update(kw)
    return agent.install(str(root), list(pins), **args)  # type: ignore[arg-type]


def _by_name(result: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(p["name"]): p for p in result["patches"]}  # type: ignore[attr-defined]


def test_scan_reports_installed_and_patch_metadata(root: Path) -> None:
    doc = agent.scan(str(root), "i-suse", refresh=True)
    inv = Inventory.model_validate(doc)
    assert inv.facts.operating_system == "SUSE"
    assert inv.facts.effective_product() == "Suse15.5"
    assert {p.name: p.version for p in inv.installed} == {
        name: old for name, old, _ in SUSE_PACKAGES if name != "demo-bad"
    }
    updates = {u.name: u for u in inv.updates}
    assert set(updates) == {
        "demo-lib",
        "demo-tool",
        "demo-util",
        "demo-net",
        "demo-web",
        "demo-doc",
        "demo-feat",
    }
    lib = updates["demo-lib"]
    assert (lib.version, lib.installed_version, lib.arch) == ("1.0-2", "1.0-1", "noarch")
    assert lib.advisory_ids == (SUSE_PREFIX + "1",)
    # zypper's patch issue time arrives whole (SUSE_PATCHES: 2024-01-15 09:30:00 UTC).
    assert (lib.classification, lib.severity, lib.issued) == (
        "Security",
        "Critical",
        datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
    )
    assert lib.cves == ("CVE-2024-1001",) and lib.reboot_suggested and lib.security
    assert updates["demo-net"].cves == ("CVE-2024-1002", "CVE-2024-1003")
    assert updates["demo-tool"].version == "1.1-1"
    assert {u.name: u.classification for u in inv.updates if u.classification != "Security"} == {
        "demo-util": "Recommended",
        "demo-tool": "Optional",
        "demo-feat": "Feature",
    }
    assert updates["demo-doc"].severity == "Low"
    assert updates["demo-web"].repository == "demo-updates"


def test_engine_states_on_scanned_inventory(root: Path) -> None:
    inv = Inventory.model_validate(agent.scan(str(root), "i-suse", refresh=True))
    security = baseline(
        "SUSE",
        rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Critical", "Important"]), days=0),
    )
    got = states(evaluate(security, inv, NOW))
    assert {n for n, s in got.items() if s == "MISSING"} == {"demo-lib", "demo-net"}
    assert got["demo-util"] == "INSTALLED_OTHER"
    by_patch = baseline("SUSE", approvedPatches=[SUSE_PREFIX + "5"])
    got = states(evaluate(by_patch, inv, NOW))
    assert {n for n, s in got.items() if s == "MISSING"} == {"demo-util"}
    by_name = baseline("SUSE", approvedPatches=["demo-feat-1.0-2.noarch.rpm"])
    assert {n for n, s in states(evaluate(by_name, inv, NOW)).items() if s == "MISSING"} == {
        "demo-feat"
    }


def test_approve_after_days_counts_from_the_patch_issue_time(root: Path) -> None:
    # SUSE-...-1 (demo-lib) was issued 2024-01-15 09:30:00 UTC: a 7-day rule approves it from
    # 2024-01-22 09:30:00 UTC, to the second, not from the start of that day.
    inv = Inventory.model_validate(agent.scan(str(root), "i-suse", refresh=True))
    seven = baseline("SUSE", rule(("CLASSIFICATION", ["Security"]), days=7))
    approval = datetime(2024, 1, 22, 9, 30, tzinfo=UTC)
    second = timedelta(seconds=1)
    assert states(evaluate(seven, inv, approval - second))["demo-lib"] == "INSTALLED_OTHER"
    assert states(evaluate(seven, inv, approval + second))["demo-lib"] == "MISSING"
    installed = {p.name: p for p in inv.installed}
    assert installed["demo-lib"].build_time is not None  # rpm's BUILDTIME


def _listed_patches(root: Path, *args: str) -> set[str]:
    """Patch names from zypper's own table (text mode: the XML mode ignores --severity)."""
    done = zypper(root, "--no-refresh", "list-patches", *args)
    assert done.returncode == 0, done.stderr
    names = set()
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and re.match(r"^SUSE-", cells[1]):
            names.add(cells[1])
    return names


@pytest.mark.parametrize("severity", ["Critical", "Important", "Moderate", "Low"])
def test_oracle_security_severity_matches_zypper(root: Path, severity: str) -> None:
    inv = Inventory.model_validate(agent.scan(str(root), "i-suse", refresh=True))
    b = baseline("SUSE", rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", [severity]), days=0))
    missing = {n for n, s in states(evaluate(b, inv, NOW)).items() if s == "MISSING"}
    ours = {a for u in inv.updates if u.name in missing for a in u.advisory_ids}
    theirs = _listed_patches(root, "--category", "security", "--severity", severity.lower())
    assert theirs, "the oracle lists nothing: the test repository is wrong"
    assert ours == theirs


def test_install_exact_versions(root: Path) -> None:
    result = _install(root, "demo-net=1.0-2", "demo-web:noarch=1.0-2", "demo-doc=1.0-1")
    got = _by_name(result)
    assert [got[n]["result"] for n in ("demo-net", "demo-web", "demo-doc")] == [
        "INSTALLED",
        "INSTALLED",
        "UNCHANGED",
    ]
    assert result["changed"] is True
    assert set(result["includedPatches"]) == {SUSE_PREFIX + "2", SUSE_PREFIX + "3"}  # type: ignore[call-overload]
    assert rpm_q(root, "demo-net", "demo-web", "demo-doc") == {
        "demo-net": "1.0-2",
        "demo-web": "1.0-2",
        "demo-doc": "1.0-1",
    }
    assert result["reboot"] == {"required": False, "performed": False}
    assert SUSE_PREFIX + "2" not in _listed_patches(root)  # the patch is applied now
    # the next scan no longer offers them
    names = {u["name"] for u in agent.scan(str(root), None, refresh=False)["updates"]}  # type: ignore[attr-defined]
    assert "demo-net" not in names and "demo-lib" in names


def test_a_roots_configuration_runs_no_code_on_the_host(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An .rpmmacros where the agent used to put rpm's HOME, or a libzypp commit plugin in the
    root, would run as root on the host."""
    marker = tmp_path / "ran-on-the-host"
    plant_hooks(root, marker)
    # libzypp runs this command for a package's update message; zypper --root would read it.
    (root / "etc/zypp/zypp.conf").write_text(
        f"[main]\nsolver.onlyRequires = true\nupdate.messages.notify = single | echo >> {marker}\n"
    )
    assert "demo-net" in {u["name"] for u in agent.scan(str(root), None, refresh=True)["updates"]}  # type: ignore[attr-defined]
    assert _by_name(_install(root, "demo-net=1.0-2"))["demo-net"]["result"] == "INSTALLED"
    assert not marker.exists(), marker.read_text()
    assert "zypp.conf: update.messages.notify (a root may not" in capsys.readouterr().err


def test_simulate_changes_nothing(root: Path) -> None:
    result = _install(root, "demo-lib=1.0-2", "demo-tool=1.1-1", simulate=True)
    assert {n: p["result"] for n, p in _by_name(result).items()} == {
        "demo-lib": "WOULD_INSTALL",
        "demo-tool": "WOULD_INSTALL",
    }
    assert result["changed"] is False
    assert result["reboot"]["wouldBeRequired"] is True  # type: ignore[index]
    assert rpm_q(root, "demo-lib", "demo-tool") == {"demo-lib": "1.0-1", "demo-tool": "1.0-1"}


def test_reboot_suggested_patch_is_installed_and_reboot_recorded(root: Path) -> None:
    result = _install(root, "demo-lib=1.0-2")
    assert _by_name(result)["demo-lib"]["result"] == "INSTALLED"
    assert result["includedPatches"] == [SUSE_PREFIX + "1"]
    assert result["exitCode"] == 102
    reboot = result["reboot"]
    assert reboot["required"] is True and reboot["recorded"] is True  # type: ignore[index]
    assert reboot["performed"] is False  # type: ignore[index]
    assert (root / "run/reboot-needed").exists()
    assert SUSE_PREFIX + "1" not in _listed_patches(root)
    assert agent.scan(str(root), None, refresh=False)["facts"]["rebootRequired"] is True  # type: ignore[index]


def test_invalid_pins_are_refused_before_anything_runs(tmp_path: Path) -> None:
    nowhere = tmp_path / "untouched"
    for pin in ("demo-lib=1.0", "demo lib=1.0-1", "demo-lib;rm=1.0-1", "-x=1-1", "demo-lib"):
        with pytest.raises(InvalidPin):
            from reconciler.agent import suse

            suse.install(str(nowhere), [pin], [], False, "NoReboot", False, 5)
    assert not nowhere.exists()


def test_unknown_version_and_blocked_package_are_refused(root: Path) -> None:
    with pytest.raises(InstallRefused, match=r"9\.9-1"):
        _install(root, "demo-lib=9.9-1")
    with pytest.raises(InstallRefused, match="BLOCK"):
        _install(root, "demo-net=1.0-2", blocked=["demo-n*"])
    assert rpm_q(root, "demo-net", "demo-lib") == {"demo-net": "1.0-1", "demo-lib": "1.0-1"}


def test_unreachable_repository_fails_the_scan(root: Path, tmp_path: Path) -> None:
    done = zypper(root, "ar", "-G", f"file://{tmp_path / 'gone'}", "gone-repo")
    assert done.returncode == 0
    with pytest.raises(RepositoryError, match="gone-repo") as caught:
        agent.scan(str(root), None, refresh=True)
    assert caught.value.details["repositories"] == ["gone-repo"]


def test_failing_post_is_rolled_back_and_the_rest_is_kept(tmp_path: Path, repos: Path) -> None:
    # rpm keeps a package whose %post failed (zypper exits 107); zypper has no history undo, so
    # the agent installs the previous version again by exact version.
    r = make_suse_root(
        tmp_path / "root", repos, ["demo-bad-1.0-1", "demo-util-1.0-1"], with_shell=True
    )
    result = _install(r, "demo-bad=1.0-2", "demo-util=1.0-2", reboot_option="NoReboot")
    got = _by_name(result)
    bad = got["demo-bad"]
    assert bad["result"] == "FAILED"
    assert "%post(demo-bad-1.0-2.noarch) scriptlet failed" in str(bad["message"])
    assert (bad["rolledBack"], bad["rollback"], bad["stateAfter"]) == (
        True,
        "restored demo-bad 1.0-1",
        "1.0-1",
    )
    assert got["demo-util"]["result"] == "INSTALLED"
    assert result["exitCode"] == 107  # ZYPPER_EXIT_INF_RPM_SCRIPT_FAILED
    assert rpm_q(r, "demo-bad", "demo-util") == {"demo-bad": "1.0-1", "demo-util": "1.0-2"}
    # The rescan shows the security patch needed again: MISSING, not INSTALLED.
    inv = Inventory.model_validate(agent.scan(str(r), None, refresh=False))
    sec = baseline("SUSE", rule(("CLASSIFICATION", ["Security"]), days=0))
    assert states(evaluate(sec, inv, NOW))["demo-bad"] == "MISSING"


def test_rollback_impossible_when_the_old_version_is_gone_says_why(
    tmp_path: Path, repos: Path
) -> None:
    r = make_suse_root(tmp_path / "root", repos, ["demo-bad-1.0-1"], with_shell=True)
    assert zypper(r, "rr", "demo-base").returncode == 0  # only the updates are offered now
    bad = _by_name(_install(r, "demo-bad=1.0-2", reboot_option="NoReboot"))["demo-bad"]
    assert (bad["result"], bad["rolledBack"], bad["stateAfter"]) == ("FAILED", False, "1.0-2")
    assert str(bad["rollback"]) == (
        "could not roll back demo-bad: demo-bad 1.0-1 is in no enabled repository any more "
        "(zypper: No provider of 'demo-bad.noarch=1.0-1' found); it is left at 1.0-2; repair it "
        "by hand"
    ), bad["rollback"]
    assert rpm_q(r, "demo-bad") == {"demo-bad": "1.0-2"}


def test_held_lock_waits_then_fails(root: Path) -> None:
    holder = subprocess.Popen(["sleep", "30"])
    try:
        (root / "run").mkdir(exist_ok=True)
        (root / "run/zypp.pid").write_text(str(holder.pid))
        started = time.monotonic()
        with pytest.raises(PackageManagerBusy, match="locked") as caught:
            _install(root, "demo-net=1.0-2", lock_timeout=1)
        assert 0.9 <= time.monotonic() - started < 20
        assert "sleep" in str(caught.value.details["holder"])
    finally:
        holder.kill()
        holder.wait()
    assert rpm_q(root, "demo-net") == {"demo-net": "1.0-1"}


def test_zypper_locks_are_reported_held_and_never_pinned(root: Path) -> None:
    zypper_lock(root, "demo-util")
    doc = agent.scan(str(root), "i-suse", refresh=True)
    assert doc["held"] == [{"name": "demo-util", "tool": "zypper-locks"}]
    result = evaluate(
        baseline("SUSE", rule(("CLASSIFICATION", ["*"]), days=0, non_security=True)),
        Inventory.model_validate(doc),
        NOW,
    )
    assert "demo-util" not in {p.name for p in result.patches if str(p.state) == "MISSING"}
    assert "demo-util" not in {pin.partition("=")[0] for pin in pins_for(result, "x86_64")}
