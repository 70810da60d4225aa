"""The agent on real rpm and dnf (and the yum path): scan and install on installroots built by the
test suite (tests/rpmlab.py). The repositories carry an updateinfo.xml with security notices of
every severity, a bugfix and an enhancement; nothing touches the host's rpm database (every
command gets a private HOME with ``%_dbpath /var/lib/rpm``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent import dnf as dnf_module
from reconciler.agent import rpm as rpm_backend
from reconciler.agent.__main__ import install, scan
from reconciler.agent.dnf import parse_check_update, parse_pin, parse_transaction
from reconciler.agent.errors import (
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RepositoryError,
)
from reconciler.agent.rpmvercmp import compare_evr
from reconciler.api.inventory import Inventory
from reconciler.evaluation import evaluate
from reconciler.evaluation.pins import pins_for
from tests.factories import NOW, baseline, rule, states
from tests.rpmlab import (
    Notice,
    Rpm,
    base_and_updates,
    build_rpms,
    dnf_argv,
    dnf_versionlock,
    needs,
    plant_hooks,
    rpm_env,
    rpm_q,
    seed_rpm_root,
)

pytestmark = needs("rpm", "rpmbuild", "dnf", "createrepo_c", "modifyrepo_c")

NAMES = [
    "demo-lib", "demo-net", "demo-web", "demo-doc", "demo-util", "demo-tool", "demo-plain",
    "demo-shadow", "glibc",
]  # fmt: skip
SCRIPTED = ["demo-bad", "demo-pre", "demo-ptx"]  # installed only in roots with a /bin/sh
OLD = (
    [Rpm(n, "1.0") for n in NAMES[:-1]]
    + [Rpm("glibc", "2.34", "1")]
    + [Rpm(n, "1.0") for n in SCRIPTED]
)
NEW = {
    "demo-lib": Rpm("demo-lib", "1.0", "2"),
    "demo-net": Rpm("demo-net", "1.0", "2"),
    "demo-web": Rpm("demo-web", "1.0", "2"),
    "demo-doc": Rpm("demo-doc", "1.0", "2"),
    "demo-util": Rpm("demo-util", "1.0", "2"),
    "demo-tool": Rpm("demo-tool", "1.1", "1", requires="demo-lib >= 1.0-2"),
    "glibc": Rpm("glibc", "2.34", "2"),
    "demo-plain": Rpm("demo-plain", "1.0", "2"),  # an update no notice references
    "demo-shadow": Rpm("demo-shadow", "1.0", "2"),  # a security fix, shadowed by SHADOWING
    "demo-bad": Rpm("demo-bad", "1.0", "2", post="echo failing on purpose >&2; exit 3"),
    "demo-pre": Rpm("demo-pre", "1.0", "2", pre="echo pre fails on purpose >&2; exit 4"),
    "demo-ptx": Rpm("demo-ptx", "1.0", "2", posttrans="echo posttrans fails >&2; exit 5"),
}
SHADOWING = Rpm("demo-shadow", "1.0", "3")  # newer than the security fix, in no notice
SHELL = Rpm("busybox-sh", "1.0", provides="/bin/sh")
NOTICES = [
    Notice("DEMO-2024-0001", "security", (NEW["demo-lib"],), "Critical",
           issued="2024-01-15 08:30:00", updated="2024-02-01 17:45:12",
           cves=("CVE-2024-1001",), bugs=("1001",), reboot=True),
    Notice("DEMO-2024-0002", "security", (NEW["demo-net"],), "Important", issued="2024-01-20",
           cves=("CVE-2024-1002", "CVE-2024-1003")),  # a day alone: midnight UTC
    Notice("DEMO-2024-0003", "security", (NEW["demo-web"],), "Moderate"),
    Notice("DEMO-2024-0004", "security", (NEW["demo-doc"],), "Low", bugs=("1004",)),
    Notice("DEMO-2024-0005", "bugfix", (NEW["demo-util"],)),
    Notice("DEMO-2024-0006", "enhancement", (NEW["demo-tool"],)),
    Notice("DEMO-2024-0007", "security", (NEW["glibc"],), "Important", reboot=True),
    Notice("DEMO-2024-0008", "security", (NEW["demo-shadow"],), "Moderate",
           cves=("CVE-2024-1008",)),
]  # fmt: skip
SEVERITIES = ["Critical", "Important", "Moderate", "Low"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("rpmrepos")
    built = build_rpms(work / "build", [*OLD, *NEW.values(), SHADOWING, SHELL])
    base = [built[r] for r in [*OLD, SHELL]]
    return base_and_updates(work, base, [built[r] for r in [*NEW.values(), SHADOWING]], NOTICES)


def _root(path: Path, os_release: str, repos: dict[str, str], with_shell: bool = False) -> Path:
    """A root with the old versions installed (from base only), then both repos configured."""
    names = [*NAMES, *SCRIPTED, "busybox-sh"] if with_shell else NAMES
    return seed_rpm_root(path, os_release, repos, names, shell=with_shell)


@pytest.fixture(scope="module")
def rhel(repos: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RHEL 9 root shared by read-only tests."""
    return _root(tmp_path_factory.mktemp("rhel") / "root", "rhel9", repos)


@pytest.fixture(scope="module")
def al2023(repos: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _root(tmp_path_factory.mktemp("al2023") / "root", "al2023", repos)


@pytest.fixture
def fresh(repos: dict[str, str], tmp_path: Path) -> Path:
    """A RHEL 9 root of this test's own, for installs."""
    return _root(tmp_path / "root", "rhel9", repos)


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> the candidate update (shadowed security versions left out)."""
    return {u["name"]: u for u in document["updates"] if u.get("candidate", True)}


def test_scan_reports_installed_and_updates_with_notice_data(rhel: Path) -> None:
    document = scan(str(rhel), "rhel-1", refresh=True)
    Inventory.model_validate(document)  # the document is what the engine accepts
    facts = document["facts"]
    assert (facts["operatingSystem"], facts["osVersion"], facts["product"]) == (
        "REDHAT_ENTERPRISE_LINUX",
        "9.4",
        "RedhatEnterpriseLinux9.4",
    )
    installed = {p["name"]: p for p in document["installed"]}
    assert set(installed) == set(NAMES)
    assert installed["demo-lib"]["version"] == "1.0-1"
    assert installed["demo-lib"]["buildTime"] and installed["demo-lib"]["installedTime"]
    updates = _by_name(document)
    assert set(updates) == set(NAMES)
    lib = updates["demo-lib"]
    assert {k: lib[k] for k in (
        "arch", "version", "installedVersion", "repository", "classification", "severity",
        "advisoryIds", "cves", "bugzillaIds", "issued", "updated", "rebootSuggested", "security",
    )} == {
        "arch": "noarch", "version": "1.0-2", "installedVersion": "1.0-1", "repository": "updates",
        "classification": "Security", "severity": "Critical", "advisoryIds": ["DEMO-2024-0001"],
        "cves": ["CVE-2024-1001"], "bugzillaIds": ["1001"], "issued": "2024-01-15T08:30:00Z",
        "updated": "2024-02-01T17:45:12Z", "rebootSuggested": True, "security": True,
    }  # fmt: skip
    assert lib["buildTime"].endswith("Z")
    assert updates["demo-net"]["cves"] == ["CVE-2024-1002", "CVE-2024-1003"]
    assert updates["demo-net"]["issued"] == "2024-01-20T00:00:00Z"
    assert updates["demo-doc"]["bugzillaIds"] == ["1004"]
    assert updates["demo-util"]["classification"] == "Bugfix"
    assert updates["demo-tool"]["classification"] == "Enhancement"
    assert updates["demo-tool"]["requires"] == ["demo-lib"]
    assert "severity" not in updates["demo-util"] or updates["demo-util"]["severity"] is None
    plain = updates["demo-plain"]
    assert plain["security"] is False and plain["buildTime"]
    assert "classification" not in plain and "issued" not in plain and "advisoryIds" not in plain
    # dnf's cache is inside the root (rpm's HOME is the agent's own, outside it: see
    # test_a_roots_configuration_runs_no_code_on_the_host).
    assert (rhel / "var/cache/dnf").is_dir()


def test_engine_gives_ssm_states_on_the_scanned_inventory(rhel: Path) -> None:
    inv = Inventory.model_validate(scan(str(rhel), "rhel-1", refresh=False))
    b = baseline(
        "REDHAT_ENTERPRISE_LINUX",
        rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Critical", "Important"]), days=7),
    )
    result = states(evaluate(b, inv, datetime(2026, 11, 28, tzinfo=UTC)))
    assert result["demo-lib"] == "MISSING"
    assert result["demo-net"] == "MISSING"
    assert result["glibc"] == "MISSING"
    assert all(result.get(n) in (None, "INSTALLED_OTHER") for n in ("demo-web", "demo-util"))


def _oracle(root: Path, severity: str) -> set[str]:
    """What dnf itself lists for security notices of one severity. (dnf 4 ORs its filters:
    ``--security --sec-severity X`` lists every security notice, so ``--sec-severity`` alone is
    the "security AND severity X" query; every notice with a severity here is a security one.)"""
    out = subprocess.run(
        [*dnf_argv(root), "-q", "-C", "updateinfo", "list", "--sec-severity", severity],
        check=True, capture_output=True, text=True,
        env=rpm_env(root / "var/lib/patchwarden/home"),
    ).stdout  # fmt: skip
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3:
            names.add(fields[2].rsplit(".", 1)[0].rsplit("-", 2)[0])
    return names


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("system", ["rhel", "al2023"])
def test_oracle_security_severity_baseline_matches_dnf(
    system: str, severity: str, request: pytest.FixtureRequest
) -> None:
    root: Path = request.getfixturevalue(system)
    inv = Inventory.model_validate(scan(str(root), system, refresh=False))
    os_name = inv.facts.operating_system.value
    b = baseline(os_name, rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", [severity]), days=0))
    result = evaluate(b, inv, datetime(2026, 11, 28, tzinfo=UTC))
    approved = {p.name for p in result.patches if str(p.state) == "MISSING"}
    expected = _oracle(root, severity)
    assert expected, "the oracle must list something for every severity"
    assert approved == expected


def test_notice_timestamps_reach_the_inventory_and_count_to_the_second(
    rhel: Path, al2023: Path
) -> None:
    # DEMO-2024-0001 was issued 2024-01-15 08:30:00 and updated 2024-02-01 17:45:12 (UTC). Amazon
    # Linux counts from the updated date, RHEL from the later of the two: the same here, so a
    # 7-day rule approves it from 2024-02-08 17:45:12 on both, not from the start of the day.
    approval = datetime(2024, 2, 8, 17, 45, 12, tzinfo=UTC)
    second = timedelta(seconds=1)
    seven = rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Critical"]), days=7)
    for root, os_name in ((rhel, "REDHAT_ENTERPRISE_LINUX"), (al2023, "AMAZON_LINUX_2023")):
        inv = Inventory.model_validate(scan(str(root), "x", refresh=False))
        lib = next(u for u in inv.updates if u.name == "demo-lib")
        assert (lib.issued, lib.updated) == (
            datetime(2024, 1, 15, 8, 30, tzinfo=UTC),
            datetime(2024, 2, 1, 17, 45, 12, tzinfo=UTC),
        )
        assert lib.build_time is not None
        b = baseline(os_name, seven)
        assert states(evaluate(b, inv, approval - second))["demo-lib"] == "INSTALLED_OTHER"
        assert states(evaluate(b, inv, approval + second))["demo-lib"] == "MISSING"


def test_update_without_a_notice_counts_from_its_build_time(rhel: Path) -> None:
    inv = Inventory.model_validate(scan(str(rhel), "x", refresh=False))
    plain = next(u for u in inv.updates if u.name == "demo-plain")
    assert plain.build_time is not None and plain.issued is None
    b = baseline("REDHAT_ENTERPRISE_LINUX", rule(("PRODUCT", ["*"]), days=7, non_security=True))
    approval = plain.build_time + timedelta(days=7)
    second = timedelta(seconds=1)
    # A second early the update waits (the installed 1.0-1, built moments before, may already
    # count as approved and INSTALLED); a second late it is MISSING.
    waiting = evaluate(b, inv, approval - second)
    assert "demo-plain" in {n.name for n in waiting.not_approved}
    assert states(waiting)["demo-plain"] != "MISSING"
    assert states(evaluate(b, inv, approval + second))["demo-plain"] == "MISSING"
    (row,) = (p for p in evaluate(b, inv, approval).patches if p.name == "demo-plain")
    assert "; build time " in row.reason


def test_security_version_shadowed_by_a_newer_candidate_is_reported(fresh: Path) -> None:
    # check-update offers demo-shadow 1.0-3 (no notice); the security fix 1.0-2 sits between it
    # and the installed 1.0-1. As on apt, both are reported so a security baseline can act.
    scan_one = scan(str(fresh), "x", refresh=True)
    shadow = {u["version"]: u for u in scan_one["updates"] if u["name"] == "demo-shadow"}
    assert set(shadow) == {"1.0-2", "1.0-3"}
    assert shadow["1.0-3"].get("candidate", True) and shadow["1.0-3"]["security"] is False
    assert {k: shadow["1.0-2"][k] for k in (
        "candidate", "classification", "severity", "advisoryIds", "cves", "installedVersion",
        "repository", "security",
    )} == {
        "candidate": False, "classification": "Security", "severity": "Moderate",
        "advisoryIds": ["DEMO-2024-0008"], "cves": ["CVE-2024-1008"], "installedVersion": "1.0-1",
        "repository": "updates", "security": True,
    }  # fmt: skip
    assert shadow["1.0-2"]["buildTime"]
    # A security baseline approves the notice's version, not the newer candidate; it installs.
    inv = Inventory.model_validate(scan_one)
    b = baseline("REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["Security"]), days=0))
    verdict = next(
        p for p in evaluate(b, inv, datetime(2026, 11, 28, tzinfo=UTC)).patches
        if p.name == "demo-shadow"
    )  # fmt: skip
    assert (verdict.version, str(verdict.state)) == ("1.0-2", "MISSING")
    result = install(str(fresh), ["demo-shadow:noarch=1.0-2"], [], False, "NoReboot", False, 30)
    assert result["patches"][0]["result"] == "INSTALLED"
    assert rpm_q(fresh, "demo-shadow") == {"demo-shadow": "1.0-2"}
    after = [
        u for u in scan(str(fresh), "x", refresh=False)["updates"] if u["name"] == "demo-shadow"
    ]
    assert [(u["version"], u.get("candidate", True)) for u in after] == [("1.0-3", True)]


def test_a_shadowed_version_no_repository_offers_is_not_reported(fresh: Path) -> None:
    # The notice still names demo-shadow 1.0-2, but only 1.0-3 is offered: nothing to approve.
    mirror = fresh.parent / "updates-without-the-fix"
    repo = (fresh / "etc/yum.repos.d/updates.repo").read_text()
    source = Path(repo.split("baseurl=file://", 1)[1].split("\n", 1)[0])
    shutil.copytree(source, mirror)
    (mirror / "demo-shadow-1.0-2.noarch.rpm").unlink()
    subprocess.run(
        ["createrepo_c", "-q", "--update", "--keep-all-metadata", str(mirror)],
        check=True, capture_output=True,
    )  # fmt: skip
    (fresh / "etc/yum.repos.d/updates.repo").write_text(repo.replace(str(source), str(mirror)))
    updates = scan(str(fresh), "x", refresh=True)["updates"]
    assert [u["version"] for u in updates if u["name"] == "demo-shadow"] == ["1.0-3"]


def test_agent_version_order_is_rpms() -> None:
    """The agent's own rpm version comparison (it imports nothing from reconciler) agrees with
    the engine's on rpm's tricky cases."""
    from reconciler.evaluation.versions import rpm_compare

    pairs = [
        ("1.0-1", "1.0-2"), ("1.0-10", "1.0-9"), ("1.0~rc1-1", "1.0-1"), ("1.0^git1-1", "1.0-1"),
        ("1.0^git1-1", "1.0.1-1"), ("1:1.0-1", "2.0-1"), ("1.0a-1", "1.0-1"), ("1.0-1.el9", "1.0-1"),
        ("2.34-2", "2.34-100"), ("1.0-1", "1.0-1"), ("1.01-1", "1.1-1"), ("a-1", "1-1"),
    ]  # fmt: skip
    for a, b in pairs:
        assert compare_evr(a, b) == rpm_compare(a, b), (a, b)
        assert compare_evr(b, a) == rpm_compare(b, a), (b, a)


def test_install_exact_pins_and_record_reboot_in_a_root(fresh: Path) -> None:
    result = install(
        str(fresh),
        ["demo-net:noarch=1.0-2", "glibc:noarch=2.34-2", "demo-doc:noarch=1.0-1"],
        [], False, "RebootIfNeeded", False, 30,
    )  # fmt: skip
    by = {p["name"]: p for p in result["patches"]}
    assert (by["demo-net"]["result"], by["glibc"]["result"], by["demo-doc"]["result"]) == (
        "INSTALLED", "INSTALLED", "UNCHANGED",
    )  # fmt: skip
    assert result["changed"] is True
    assert rpm_q(fresh, "demo-net", "glibc", "demo-lib") == {
        "demo-net": "1.0-2", "glibc": "2.34-2", "demo-lib": "1.0-1",
    }  # fmt: skip
    reboot = result["reboot"]
    assert (reboot["required"], reboot["performed"], reboot["recorded"]) == (True, False, True)
    assert "glibc" in reboot["reason"]
    # What changed, as dnf's own history recorded it.
    altered = {(c["action"], c["package"]) for c in result["history"]["altered"]}
    assert {
        ("Upgrade", "demo-net-1.0-2.noarch"),
        ("Upgraded", "demo-net-1.0-1.noarch"),
        ("Upgrade", "glibc-2.34-2.noarch"),
    } <= altered
    assert result["history"]["returnCode"] == "Success"
    # A rescan sees the new versions and no longer offers them.
    after = _by_name(scan(str(fresh), "x", refresh=False))
    assert "demo-net" not in after and "glibc" not in after


def test_a_roots_configuration_runs_no_code_on_the_host(
    fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin on the root's dnf.conf pluginpath, or an .rpmmacros where the agent used to put
    rpm's HOME, would run as root on the host; the root's repositories and excludes still count."""
    marker = tmp_path / "ran-on-the-host"
    plant_hooks(fresh, marker)
    conf = fresh / "etc/dnf/dnf.conf"
    conf.write_text(conf.read_text() + "exclude=demo-web\n")
    updates = _by_name(scan(str(fresh), "x", refresh=True))
    assert "demo-lib" in updates and "demo-web" not in updates
    result = install(str(fresh), ["demo-net:noarch=1.0-2"], [], False, "NoReboot", False, 30)
    assert [p["result"] for p in result["patches"]] == ["INSTALLED"]
    assert not marker.exists(), marker.read_text()
    # The agent says what it ignored (its stderr; the scan goes on).
    assert f"ignored from {conf}: pluginconfpath, pluginpath, plugins" in capsys.readouterr().err


def test_simulate_changes_nothing(fresh: Path) -> None:
    before = rpm_q(fresh, *NAMES)
    result = install(str(fresh), ["demo-tool:noarch=1.1-1"], [], True, "NoReboot", False, 30)
    assert [p["result"] for p in result["patches"]] == ["WOULD_INSTALL"]
    assert result["dependencies"] == [
        {"name": "demo-lib", "arch": "noarch", "version": "1.0-2", "action": "upgrade"}
    ]
    assert result["changed"] is False
    assert rpm_q(fresh, *NAMES) == before


@pytest.mark.parametrize(
    "pin",
    ["demo-lib=1.0", "demo-lib=1.0-2; rm -rf /", "demo-lib", "-y=1.0-2", "demo lib=1.0-2",
     "demo-lib:no arch=1.0-2", "demo-lib=--x-2"],
)  # fmt: skip
def test_invalid_nevra_is_refused_before_any_command(
    pin: str, rhel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_commands(*args: object, **kwargs: object) -> None:
        raise AssertionError("a command ran for an invalid pin")

    monkeypatch.setattr(dnf_module, "run", no_commands)
    with pytest.raises(InvalidPin):
        install(str(rhel), ["demo-net=1.0-2", pin], [], False, "NoReboot", False, 30)


def test_pins_become_nevras() -> None:
    assert parse_pin("demo-lib:noarch=1:1.0-2") == ("demo-lib", "noarch", "1:1.0-2")
    assert dnf_module.nevra(parse_pin("demo-lib:noarch=1:1.0-2")) == "demo-lib-1:1.0-2.noarch"
    assert dnf_module.nevra(parse_pin("kernel=5.14.0-427.el9")) == "kernel-5.14.0-427.el9"


@pytest.mark.parametrize(
    "pattern",
    # every name form a rejectedPatches entry may take (docs/decision-engine.md), not just names
    [
        "demo-l*",
        "demo-lib.noarch",
        "DEMO-LIB",
        "demo-lib-1.0-2",
        "demo-lib.noarch:0:*",
        "0:demo-lib-1.0-2.noarch",
    ],
)
def test_blocked_dependency_is_refused_before_install(fresh: Path, pattern: str) -> None:
    with pytest.raises(InstallRefused, match=r"demo-lib.*BLOCK"):
        install(str(fresh), ["demo-tool:noarch=1.1-1"], [pattern], False, "NoReboot", False, 30)
    assert rpm_q(fresh, "demo-tool", "demo-lib") == {"demo-tool": "1.0-1", "demo-lib": "1.0-1"}


def test_unknown_version_is_refused(fresh: Path) -> None:
    with pytest.raises(InstallRefused, match=r"demo-net-9\.9-9"):
        install(str(fresh), ["demo-net:noarch=9.9-9"], [], False, "NoReboot", False, 30)


def test_failing_post_is_rolled_back_and_the_rest_is_kept(
    repos: dict[str, str], tmp_path: Path
) -> None:
    # rpm keeps a package whose %post failed installed and dnf exits 0: the agent must notice,
    # report FAILED, and put the previous version back (the Debian backend does the same).
    root = _root(tmp_path / "root", "rhel9", repos, with_shell=True)
    result = install(
        str(root), ["demo-bad:noarch=1.0-2", "demo-net:noarch=1.0-2"], [], False, "NoReboot",
        False, 30,
    )  # fmt: skip
    by = {p["name"]: p for p in result["patches"]}
    assert by["demo-net"]["result"] == "INSTALLED"
    bad = by["demo-bad"]
    assert bad["result"] == "FAILED"
    assert "%post(demo-bad-1.0-2.noarch) scriptlet failed" in bad["message"]
    assert (bad["rolledBack"], bad["rollback"], bad["stateAfter"]) == (
        True, "restored demo-bad 1.0-1", "1.0-1",
    )  # fmt: skip
    assert rpm_q(root, "demo-bad", "demo-net") == {"demo-bad": "1.0-1", "demo-net": "1.0-2"}
    # The rescan offers the update again: an approved patch is MISSING, not INSTALLED.
    inv = Inventory.model_validate(scan(str(root), "x", refresh=False))
    every = baseline("REDHAT_ENTERPRISE_LINUX", rule(("PRODUCT", ["*"]), days=0, non_security=True))
    # Judged on the day the packages were built (no notice: the build time is their release
    # date), whatever the calendar says when the test runs.
    built = next(u.build_time for u in inv.updates if u.name == "demo-bad")
    assert built is not None
    after = states(evaluate(every, inv, built))
    # demo-net awaits a boot: this Install ran with NoReboot (SSM's rule; a root never boots).
    assert (after["demo-bad"], after["demo-net"]) == ("MISSING", "INSTALLED_PENDING_REBOOT")


def test_failing_pre_keeps_the_old_version_and_posttrans_is_rolled_back(
    repos: dict[str, str], tmp_path: Path
) -> None:
    # A failed %pre: rpm installs nothing of that package and the transaction fails (exit 1),
    # but the rest of it is done, including a package whose %posttrans then fails.
    root = _root(tmp_path / "root", "rhel9", repos, with_shell=True)
    result = install(
        str(root), ["demo-pre:noarch=1.0-2", "demo-ptx:noarch=1.0-2", "demo-net:noarch=1.0-2"],
        [], False, "NoReboot", False, 30,
    )  # fmt: skip
    by = {p["name"]: p for p in result["patches"]}
    pre, ptx = by["demo-pre"], by["demo-ptx"]
    assert (pre["result"], pre["rolledBack"], pre["stateAfter"]) == ("FAILED", False, "1.0-1")
    assert "%prein(demo-pre-1.0-2.noarch) scriptlet failed" in pre["message"]
    assert pre["rollback"] == "nothing to roll back: rpm did not change demo-pre (1.0-1)"
    assert (ptx["result"], ptx["rolledBack"], ptx["stateAfter"]) == ("FAILED", True, "1.0-1")
    assert "%posttrans(demo-ptx-1.0-2.noarch) scriptlet failed" in ptx["message"]
    assert by["demo-net"]["result"] == "INSTALLED"
    assert rpm_q(root, "demo-pre", "demo-ptx", "demo-net") == {
        "demo-pre": "1.0-1", "demo-ptx": "1.0-1", "demo-net": "1.0-2",
    }  # fmt: skip
    assert result["changed"] is True  # demo-net


def test_rollback_impossible_when_the_old_version_is_gone_says_why(
    repos: dict[str, str], tmp_path: Path
) -> None:
    root = _root(tmp_path / "root", "rhel9", repos, with_shell=True)
    (root / "etc/yum.repos.d/base.repo").unlink()  # only the updates are offered now
    result = install(str(root), ["demo-bad:noarch=1.0-2"], [], False, "NoReboot", False, 30)
    bad = result["patches"][0]
    assert (bad["result"], bad["rolledBack"], bad["stateAfter"]) == ("FAILED", False, "1.0-2")
    assert bad["rollback"] == (
        "could not roll back demo-bad: demo-bad 1.0-1 is in no enabled repository any more "
        "(they offer 1.0-2), so there is nothing to downgrade to; it is left at 1.0-2; repair "
        "it by hand"
    )
    assert rpm_q(root, "demo-bad") == {"demo-bad": "1.0-2"}


def test_held_rpm_lock_fails_naming_the_holder(fresh: Path) -> None:
    lock = fresh / "var/lib/rpm/.rpm.lock"
    with open(lock, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        with pytest.raises(PackageManagerBusy) as caught:
            install(str(fresh), ["demo-net:noarch=1.0-2"], [], False, "NoReboot", False, 1)
    assert caught.value.details["pid"] == os.getpid()
    assert rpm_q(fresh, "demo-net") == {"demo-net": "1.0-1"}


def test_unreachable_repository_fails_the_scan_naming_it(fresh: Path) -> None:
    (fresh / "etc/yum.repos.d/gone.repo").write_text(
        "[gone]\nname=gone\nbaseurl=file:///nonexistent/patchwarden/repo\nenabled=1\n"
        "gpgcheck=0\nmetadata_expire=0\n"
    )
    with pytest.raises(RepositoryError, match="gone") as caught:
        scan(str(fresh), "x", refresh=True)
    assert caught.value.details["repository"] == "gone"


def test_yum_path_through_a_yum_name_for_dnf(
    repos: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _root(tmp_path / "root", "al2", repos, with_shell=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "yum").symlink_to(shutil.which("dnf") or "/usr/bin/dnf")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    seen: list[list[str]] = []
    real_run = dnf_module.run

    def recording(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(dnf_module, "run", recording)
    assert rpm_backend.tool_for(str(root)) == "yum"
    document = scan(str(root), "al2", refresh=True)
    assert document["facts"]["operatingSystem"] == "AMAZON_LINUX_2"
    updates = _by_name(document)
    assert updates["demo-lib"]["advisoryIds"] == ["DEMO-2024-0001"]
    assert updates["demo-lib"]["severity"] == "Critical"
    result = install(
        str(root), ["demo-lib:noarch=1.0-2", "demo-bad:noarch=1.0-2"], [], False, "NoReboot",
        False, 30,
    )  # fmt: skip
    lib, bad = result["patches"]
    assert lib["result"] == "INSTALLED"
    assert (bad["result"], bad["rolledBack"]) == ("FAILED", True)  # rolled back with yum's commands
    assert rpm_q(root, "demo-lib", "demo-bad") == {"demo-lib": "1.0-2", "demo-bad": "1.0-1"}
    tools = [a for a in seen if not a[0].endswith("rpm")]
    assert any("downgrade" in argv for argv in tools)
    assert tools and all(a[0] == str(bin_dir / "yum") for a in tools)
    # Only what yum 3 accepts: no dnf-only commands or flags.
    dnf_only = {"repoquery", "--json", "--refresh", "upgrade-minimal", "--advisory", "--nobest"}
    assert not dnf_only & {word for argv in tools for word in argv}


def test_parsers_handle_wrapped_and_obsoleting_output() -> None:
    text = (
        "a-very-long-package-name-that-wraps.x86_64\n"
        "                     1:2.0-3.el9             appstream\n"
        "short.noarch   1.0-2   updates\n"
        "Obsoleting Packages\n"
        "new.noarch  1.0-1  updates\n"
    )
    assert parse_check_update(text) == [
        ("a-very-long-package-name-that-wraps", "x86_64", "1:2.0-3.el9", "appstream"),
        ("short", "noarch", "1.0-2", "updates"),
    ]
    table = (
        "Upgrading:\n demo-lib   noarch   1.0-2   updates   6.0 k\n"
        "Removing:\n old-thing  noarch   1.0-1   @System   0\n"
        "\nTransaction Summary\n"
    )
    assert [(p["name"], p["action"]) for p in parse_transaction(table)] == [
        ("demo-lib", "upgrade"),
        ("old-thing", "remove"),
    ]


def test_dnf_versionlocks_are_reported_held_and_never_pinned(fresh: Path) -> None:
    # A `!` line excludes one version only: demo-net stays free
    dnf_versionlock(
        fresh, "# Added lock on Mon Dec  7", "demo-lib-0:1.0-1.*", "!demo-net-0:1.0-2.*"
    )
    document = scan(str(fresh), "rhel-1", refresh=True)
    assert document["held"] == [{"name": "demo-lib", "tool": "dnf-versionlock"}]
    result = evaluate(
        baseline(
            "REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["*"]), days=0, non_security=True)
        ),
        Inventory.model_validate(document),
        NOW,
    )
    assert [h.name for h in result.held] == ["demo-lib"]
    assert "dnf versionlock on the machine" in result.held[0].reason
    assert not [pin for pin in pins_for(result, "x86_64") if pin.startswith("demo-lib")]
    # a pin made before the lock is reported HELD by the install, never FAILED
    outcome = install(str(fresh), ["demo-lib:noarch=1.0-2"], [], False, "NoReboot", False, 30)
    assert [p["result"] for p in outcome["patches"]] == ["HELD"]
    assert "dnf versionlock demo-lib" in outcome["patches"][0]["message"]
