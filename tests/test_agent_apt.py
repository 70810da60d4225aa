"""The agent on real apt and dpkg: scan and install on system roots built by the test suite.

Every root is a fresh directory; the repository is a real one (tests/aptlab.py) served over
file: (and loopback HTTP for network faults). Nothing here touches the host's packages or apt
configuration: all test packages are named pwtest-*, and one test checks the host's dpkg log.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.agent.__main__ import install as agent_install
from reconciler.agent.__main__ import scan
from reconciler.agent.apt import parse_pin
from reconciler.agent.errors import (
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RepositoryError,
)
from reconciler.api.inventory import Inventory
from reconciler.evaluation import evaluate
from reconciler.evaluation.pins import pins_for
from tests.aptlab import HttpRepo, Pkg, Repo, dpkg_state, hold, make_root, plant_hooks, seed
from tests.conftest import INSTALLED, needs_apt
from tests.factories import NOW, baseline, rule, states

pytestmark = needs_apt

# The lab roots have no /bin/sh, so their maintainer scripts run on this host: the operator's
# --trust-root-scripts (tests/test_trust_root_scripts.py tests the refusal without it).
install = functools.partial(agent_install, trust_root_scripts=True)


def _updates(document: dict) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    return {(u["name"], u["version"]): u for u in document["updates"]}


def test_scan_reports_facts_installed_and_every_upgradable_candidate(system_root: Path) -> None:
    document = scan(str(system_root), "node-1", refresh=True)
    facts = document["facts"]
    assert (facts["operatingSystem"], facts["osVersion"], facts["codename"], facts["product"]) == (
        "DEBIAN",
        "12",
        "bookworm",
        "Debian12",
    )
    assert facts["rebootRequired"] is False and "kernel" not in facts  # a root runs no kernel
    assert {p["name"] for p in document["installed"]} == {p.name for p in INSTALLED}
    updates = _updates(document)
    lib = updates[("pwtest-lib", "1.0-2")]
    assert (
        lib["installedVersion"] == "1.0-1" and lib["security"] is True and lib["candidate"] is True
    )
    assert (lib["priority"], lib["section"], lib["sourcePackage"]) == (
        "important",
        "libs",
        "pwtest-src",
    )
    assert lib["origins"] == [
        {
            "origin": "Debian",
            "label": "Debian-Security",
            "suite": "stable-security",
            "codename": "bookworm-security",
            "component": "main",
        }
    ]
    assert updates[("pwtest-tool", "2.1-1")]["requires"] == ["pwtest-lib"]
    assert updates[("pwtest-other", "1.1-1")]["security"] is False
    # A security version shadowed by a newer non-security candidate is reported too.
    assert updates[("pwtest-shadow", "1.1-1")]["candidate"] is True
    assert updates[("pwtest-shadow", "1.1-1")]["security"] is False
    assert updates[("pwtest-shadow", "1.0-2")]["candidate"] is False
    assert updates[("pwtest-shadow", "1.0-2")]["security"] is True


def test_scan_respects_apt_pinning(system_root: Path) -> None:
    seed(system_root, [Pkg("pwtest-pinned", "1.0-1")])
    prefs = system_root / "etc/apt/preferences.d/hold-pinned"
    prefs.parent.mkdir(parents=True, exist_ok=True)
    prefs.write_text("Package: pwtest-pinned\nPin: version 1.0-1\nPin-Priority: 1001\n")
    document = scan(str(system_root), "node-1", refresh=True)
    assert not [u for u in document["updates"] if u["name"] == "pwtest-pinned"]


def test_apt_mark_holds_are_reported_held_never_pinned_nor_failed(system_root: Path) -> None:
    hold(system_root, "pwtest-lib")
    document = scan(str(system_root), "node-1", refresh=True)
    assert document["held"] == [{"name": "pwtest-lib", "tool": "apt-mark"}]
    machine = Inventory.model_validate(document)
    result = evaluate(
        baseline("DEBIAN", rule(("PRIORITY", ["*"]), non_security=True)), machine, NOW
    )
    assert [(h.name, h.version) for h in result.held] == [("pwtest-lib", "1.0-2")]
    assert "apt-mark hold on the machine" in result.held[0].reason
    assert not [pin for pin in pins_for(result, "amd64") if pin.startswith("pwtest-lib")]
    # the installed version stays, judged by the baseline; the held update is not MISSING
    assert states(result)["pwtest-lib"] == "INSTALLED"


def test_a_pin_of_a_package_held_on_the_machine_is_held_not_failed(system_root: Path) -> None:
    # A hold made after the scan the pins came from: apt would refuse the pin.
    hold(system_root, "pwtest-lib")
    pins = ["pwtest-lib=1.0-2", "pwtest-other=1.1-1"]
    result = install(str(system_root), pins, [], False, "NoReboot", False, 5)
    outcomes = {p["name"]: p for p in result["patches"]}
    assert outcomes["pwtest-lib"]["result"] == "HELD"
    assert "apt-mark hold pwtest-lib" in outcomes["pwtest-lib"]["message"]
    assert outcomes["pwtest-other"]["result"] == "INSTALLED"
    assert dpkg_state(system_root)["pwtest-lib"] == ("1.0-1", "hold ok installed")
    alone = install(str(system_root), ["pwtest-lib=1.0-2"], [], False, "NoReboot", False, 5)
    assert [p["result"] for p in alone["patches"]] == ["HELD"] and alone["changed"] is False


def test_scan_without_refresh_uses_existing_lists(system_root: Path) -> None:
    assert scan(str(system_root), "n", refresh=True)["updates"]
    assert scan(str(system_root), "n", refresh=False)["updates"]


def test_a_roots_apt_configuration_runs_nothing_on_the_host(
    system_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever is root inside a root must not run commands on the host through apt's or dpkg's
    hooks; the root's sources and preferences still count."""
    marker = tmp_path / "ran-on-the-host"
    plant_hooks(system_root, marker)
    prefs = system_root / "etc/apt/preferences.d/hold-other"
    prefs.parent.mkdir(parents=True, exist_ok=True)
    prefs.write_text("Package: pwtest-other\nPin: version 1.0-1\nPin-Priority: 1001\n")
    document = scan(str(system_root), "node-1", refresh=True)
    assert ("pwtest-lib", "1.0-2") in _updates(document)
    assert "pwtest-other" not in {u["name"] for u in document["updates"]}
    result = install(str(system_root), ["pwtest-lib=1.0-2"], [], False, "NoReboot", False, 5)
    assert result["patches"][0]["result"] == "INSTALLED"
    assert not marker.exists(), marker.read_text()
    assert (
        "apt.conf.d/99hostile (a root's apt configuration is never read" in capsys.readouterr().err
    )


def test_a_download_method_outside_apts_methods_is_refused(tmp_path: Path, apt_repo: Repo) -> None:
    """apt runs /usr/lib/apt/methods/<scheme>, path and all: a root's sources line with a
    scheme of ../../x would run any program on the host."""
    marker = tmp_path / "ran-on-the-host"
    program = tmp_path / "method"
    program.write_text(f"#!/bin/sh\necho method >> {marker}\n")
    program.chmod(0o755)
    root = make_root(tmp_path / "r", apt_repo.uri, ["stable"], installed=INSTALLED)
    hostile = "../" * 8 + str(program).lstrip("/") + ":/x"
    with (root / "etc/apt/sources.list").open("a") as handle:
        handle.write(f"deb [trusted=yes] {hostile} stable main\n")
    with pytest.raises(RepositoryError) as caught:
        scan(str(root), "r", refresh=True)
    assert not marker.exists(), marker.read_text()
    assert f"{root}/etc/apt/sources.list:2" in caught.value.message


def test_unreachable_repository_fails_the_scan_naming_it(tmp_path: Path, apt_repo: Repo) -> None:
    server = HttpRepo(apt_repo.root)
    uri = server.uri
    server.stop()  # a dead port: connection refused
    root = make_root(tmp_path / "r", uri, ["stable", "stable-security"], installed=INSTALLED)
    with pytest.raises(RepositoryError) as caught:
        scan(str(root), "r", refresh=True)
    assert uri in caught.value.message
    assert caught.value.details["repositories"][0]["repository"].startswith(uri)


def test_unsigned_repository_fails_the_scan(tmp_path: Path, apt_repo: Repo) -> None:
    root = make_root(tmp_path / "r", apt_repo.uri, ["stable"], trusted=False, installed=INSTALLED)
    with pytest.raises(RepositoryError) as caught:
        scan(str(root), "r", refresh=True)
    assert "is not signed" in caught.value.message


def test_scan_over_loopback_http(tmp_path: Path, apt_http: HttpRepo) -> None:
    root = make_root(
        tmp_path / "r", apt_http.uri, ["stable", "stable-security"], installed=INSTALLED
    )
    updates = _updates(scan(str(root), "r", refresh=True))
    assert updates[("pwtest-lib", "1.0-2")]["origins"][0]["site"] == "127.0.0.1"


def test_install_exact_pins_reports_dependencies_and_changed(system_root: Path) -> None:
    result = install(str(system_root), ["pwtest-tool=2.1-1"], [], False, "NoReboot", False, 5)
    assert result["changed"] is True
    assert result["patches"] == [
        {
            "name": "pwtest-tool",
            "arch": "",
            "version": "2.1-1",
            "result": "INSTALLED",
            "changed": True,
        }
    ]
    assert result["dependencies"] == [{"name": "pwtest-lib", "version": "1.0-2", "from": "1.0-1"}]
    state = dpkg_state(system_root)
    assert state["pwtest-tool"] == ("2.1-1", "install ok installed")
    assert state["pwtest-lib"] == ("1.0-2", "install ok installed")
    assert state["pwtest-other"][0] == "1.0-1"  # nothing else was upgraded
    again = install(str(system_root), ["pwtest-tool=2.1-1"], [], False, "NoReboot", False, 5)
    assert again["changed"] is False and again["patches"][0]["result"] == "UNCHANGED"


def test_simulate_changes_nothing(system_root: Path) -> None:
    before = (system_root / "var/lib/dpkg/status").read_text()
    result = install(str(system_root), ["pwtest-lib=1.0-2"], [], True, "RebootIfNeeded", False, 5)
    assert result["simulate"] is True and result["changed"] is False
    assert result["patches"][0]["result"] == "WOULD_INSTALL"
    assert (system_root / "var/lib/dpkg/status").read_text() == before


def test_blocked_dependency_is_refused_before_anything_is_installed(system_root: Path) -> None:
    before = (system_root / "var/lib/dpkg/status").read_text()
    with pytest.raises(InstallRefused) as caught:
        install(
            str(system_root),
            ["pwtest-inetd=1.0-2"],
            ["pwtest-telnet*"],
            False,
            "NoReboot",
            False,
            5,
        )
    assert (
        "pwtest-telnetd (a pin depends on it): rejected with BLOCK by 'pwtest-telnet*'"
        in caught.value.message
    )
    assert (system_root / "var/lib/dpkg/status").read_text() == before


@pytest.mark.parametrize(
    "pin",
    [
        "pwtest-lib=1.0-2;reboot",
        "Pwtest-lib=1.0-2",
        "pwtest-lib",
        "pwtest-lib=$(id)",
        "-o=1.0",
        "pwtest-lib=1.0-2 pwtest-other=1.1-1",
    ],
)
def test_invalid_pins_are_refused_before_any_command_runs(system_root: Path, pin: str) -> None:
    with pytest.raises(InvalidPin):
        install(str(system_root), [pin], [], False, "NoReboot", False, 5)
    assert not (system_root / "var/log/apt/history.log").exists()  # apt never installed anything


def test_valid_pins_parse() -> None:
    assert parse_pin("libssl3:amd64=3.0.2-0ubuntu1.18") == ("libssl3", "amd64", "3.0.2-0ubuntu1.18")
    assert parse_pin("g++-12=1:12.2.0-14~deb12u1") == ("g++-12", "", "1:12.2.0-14~deb12u1")


def test_unknown_version_is_refused_by_the_simulation(system_root: Path) -> None:
    with pytest.raises(InstallRefused, match=r"Version '9\.9-9' for 'pwtest-lib' was not found"):
        install(str(system_root), ["pwtest-lib=9.9-9"], [], False, "NoReboot", False, 5)


def test_dpkg_lock_held_by_another_process_fails_naming_the_holder(system_root: Path) -> None:
    scan(str(system_root), "n", refresh=True)
    lock = system_root / "var/lib/dpkg/lock-frontend"
    with open(lock, "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        with pytest.raises(PackageManagerBusy) as caught:
            install(str(system_root), ["pwtest-lib=1.0-2"], [], False, "NoReboot", False, 1)
    assert caught.value.details["pid"] == os.getpid()
    assert f"held by process {os.getpid()}" in caught.value.message
    assert dpkg_state(system_root)["pwtest-lib"][0] == "1.0-1"


def test_failing_maintainer_script_fails_that_patch_and_reports_the_rest(system_root: Path) -> None:
    result = install(
        str(system_root), ["pwtest-fail=1.0-2", "pwtest-lib=1.0-2"], [], False, "NoReboot", False, 5
    )
    outcomes = {p["name"]: p for p in result["patches"]}
    assert outcomes["pwtest-lib"]["result"] == "INSTALLED"
    assert outcomes["pwtest-fail"]["result"] == "FAILED"
    assert "pwtest-fail" in outcomes["pwtest-fail"]["message"]
    assert (
        "post-installation script subprocess returned error exit status 1"
        in outcomes["pwtest-fail"]["message"]
    )


def test_half_configured_package_is_recovered_before_installing(system_root: Path) -> None:
    seed(system_root, [Pkg("pwtest-pinned", "1.0-1")], status="install ok half-configured")
    result = install(str(system_root), ["pwtest-lib=1.0-2"], [], False, "NoReboot", False, 5)
    assert result["recovery"][0]["action"] == "dpkg --configure -a"
    assert dpkg_state(system_root)["pwtest-pinned"] == ("1.0-1", "install ok installed")
    assert result["patches"][0]["result"] == "INSTALLED"


def test_half_installed_package_needs_and_gets_a_reinstall(system_root: Path) -> None:
    # A dpkg killed while unpacking leaves "reinstreq half-installed"; dpkg --configure -a alone
    # does not repair it (shared/testbeds/apt.md §4).
    scan(str(system_root), "n", refresh=True)
    seed(system_root, [Pkg("pwtest-pinned", "1.0-1")], status="install reinstreq half-installed")
    result = install(str(system_root), ["pwtest-lib=1.0-2"], [], False, "NoReboot", False, 5)
    actions = [a["action"] for a in result["recovery"]]
    assert actions == ["dpkg --configure -a", "apt-get install --reinstall"]
    assert result["recovery"][1]["packages"] == ["pwtest-pinned=1.0-1"]
    assert dpkg_state(system_root)["pwtest-pinned"] == ("1.0-1", "install ok installed")


def test_reboot_is_recorded_never_executed_in_a_root(system_root: Path) -> None:
    result = install(
        str(system_root), ["pwtest-kernel=1.0-2"], [], False, "RebootIfNeeded", True, 5
    )
    assert result["reboot"]["required"] is True and result["reboot"]["performed"] is False
    assert (
        "directory root: reboot recorded, not executed (pwtest-kernel)"
        == result["reboot"]["reason"]
    )
    facts = scan(str(system_root), "n", refresh=False)["facts"]
    assert facts["rebootRequired"] is True and facts["rebootRequiredPackages"] == ["pwtest-kernel"]


def test_no_reboot_option_never_reboots(system_root: Path) -> None:
    result = install(str(system_root), ["pwtest-kernel=1.0-2"], [], False, "NoReboot", False, 5)
    assert result["reboot"] == {"required": True, "performed": False}


def test_agent_module_prints_json_errors_not_tracebacks(system_root: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.agent",
            "install",
            "--root",
            str(system_root),
            "--pin",
            "bad pin",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert json.loads(run.stdout)["error"]["code"] == "InvalidPin"
    assert "Traceback" not in run.stderr


def test_host_dpkg_log_never_mentions_test_packages() -> None:
    # Runs after the tests above in this module: a root must write nothing outside itself.
    log = Path("/var/log/dpkg.log")
    if log.exists():
        assert "pwtest-" not in log.read_text(errors="replace")


def _inst_lines(text: str) -> dict[str, str]:
    """`apt-get -s` upgrades: name -> the origins text apt prints (Label:Version/Archive)."""
    out = {}
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if line.startswith("Inst ") and len(parts) > 3 and parts[2].startswith("["):
            out[parts[1].split(":")[0]] = parts[3]
    return out


@pytest.mark.slow
def test_host_security_classification_matches_apt_on_the_real_archive(tmp_path: Path) -> None:
    """Oracle: with private lists, the host's updates we call security are exactly those whose
    candidate apt takes from a -security suite. The host's own lists are never written."""
    host_lists = sorted(p.name for p in Path("/var/lib/apt/lists").glob("*"))
    state = tmp_path / "state"
    try:
        document = scan("/", "host", refresh=True, private_state=str(state))
    except RepositoryError as exc:  # the archive is a package registry CI reaches; say so if not
        pytest.skip(f"the Debian archive is not reachable here: {exc.message}")
    ours = {u["name"] for u in document["updates"] if u["security"] and u["candidate"]}
    env = {**os.environ, "APT_CONFIG": str(state / "apt.conf"), "LC_ALL": "C.UTF-8"}
    simulated = subprocess.run(
        ["/usr/bin/apt-get", "-s", "dist-upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout
    theirs = {
        name
        for name, origins in _inst_lines(simulated).items()
        if "-security" in origins or "Debian-Security" in origins
    }
    upgradable = {u["name"] for u in document["updates"] if u["candidate"]}
    if not theirs:
        pytest.skip("the host has no pending security update: nothing to compare")
    assert ours == theirs & upgradable
    assert sorted(p.name for p in Path("/var/lib/apt/lists").glob("*")) == host_lists


def test_zipapp_scans_a_root_with_nothing_but_the_standard_library(
    tmp_path: Path, system_root: Path
) -> None:
    pyz = tmp_path / "agent.pyz"
    subprocess.run(
        [sys.executable, "scripts/build-agent", str(pyz)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    # -I -S: no site-packages, so nothing but the standard library is importable.
    run = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "scan", "--root", str(system_root), "--no-refresh"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    from reconciler.api.inventory import Inventory

    inventory = Inventory.model_validate_json(run.stdout)
    assert inventory.facts.operating_system == "DEBIAN" and inventory.updates
