"""A baseline's sources (SSM's PatchSource) on real repositories built by the suite: the agent
scans and installs from a repository the root does not know, replaces the root's own for the
run, leaves the root's repository files as they were, skips sources for other products and
refuses a source that would configure more than a repository."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.__main__ import main
from reconciler.api.enums import OperatingSystem
from reconciler.api.resources import PatchSource
from reconciler.dispatch.base import BaselineSource
from reconciler.dispatch.local import LocalTransport
from tests.aptlab import Pkg, Repo, dpkg_state, make_root
from tests.conftest import needs_apt
from tests.rpmlab import (
    Rpm,
    build_rpms,
    build_suse_repos,
    make_repo,
    make_suse_root,
    rpm_q,
    seed_rpm_root,
)

needs_zypper = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("zypper", "rpmbuild", "createrepo_c")),
    reason="needs zypper, rpmbuild and createrepo_c",
)
needs_dnf = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpm", "rpmbuild", "dnf", "createrepo_c")),
    reason="needs rpm, rpmbuild, dnf and createrepo_c",
)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``base`` (what the root has and knows) and ``extra`` (a newer version, unknown to it)."""
    work = tmp_path_factory.mktemp("sources")
    built = build_rpms(work / "build", [Rpm("demo-src", "1.0"), Rpm("demo-src", "2.0")])
    old, new = built[Rpm("demo-src", "1.0")], built[Rpm("demo-src", "2.0")]
    return {
        "base": f"file://{make_repo(work / 'base', [old])}",
        "extra": f"file://{make_repo(work / 'extra', [new])}",
    }


@pytest.fixture
def root(repos: dict[str, str], tmp_path: Path) -> Path:
    return seed_rpm_root(tmp_path / "root", "rhel9", {"base": repos["base"]}, ["demo-src"])


def _sources(configuration: str, products: tuple[str, ...] = ("RedhatEnterpriseLinux9.4",)) -> str:
    items = [{"name": "extra-repo", "products": list(products), "configuration": configuration}]
    return "--sources=" + base64.b64encode(json.dumps(items).encode()).decode()


def _extra(repos: dict[str, str]) -> str:
    return f"[main]\nname=Extra\nbaseurl={repos['extra']}\nenabled=1\ngpgcheck=0\n"


def _agent(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    status = main(list(argv))
    return status, json.loads(capsys.readouterr().out)


def _repo_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted((root / "etc").rglob("*")) if p.is_file()}


@needs_dnf
def test_a_source_for_the_product_is_scanned_and_installed_and_root_files_stay(
    root: Path, repos: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _repo_files(root)
    _, plain = _agent(capsys, "scan", f"--root={root}")
    assert [u["name"] for u in plain["updates"]] == []  # the root's own repo has no update
    source = _sources(_extra(repos))
    status, scanned = _agent(capsys, "scan", f"--root={root}", source)
    assert status == 0
    assert [(u["name"], u["version"]) for u in scanned["updates"]] == [("demo-src", "2.0-1")]
    status, result = _agent(capsys, "install", f"--root={root}", "--pin=demo-src=2.0-1", source)
    assert (status, result["changed"]) == (0, True)
    assert rpm_q(root, "demo-src") == {"demo-src": "2.0-1"}
    assert _repo_files(root) == before  # the root's dnf.conf and .repo files, byte for byte


@needs_dnf
def test_a_source_for_another_product_is_not_used(
    root: Path, repos: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = _sources(_extra(repos), products=("AmazonLinux2023",))
    status, scanned = _agent(capsys, "scan", f"--root={root}", source)
    assert (status, scanned["updates"]) == (0, [])


@needs_dnf
@pytest.mark.parametrize(
    "extra_line",
    ["pluginpath=/tmp/evil", "sslclientkey=/etc/shadow", "gpgkey=file:///etc/shadow"],
)
def test_a_source_that_configures_more_than_a_repository_is_refused(
    root: Path, repos: dict[str, str], capsys: pytest.CaptureFixture[str], extra_line: str
) -> None:
    status, document = _agent(
        capsys, "scan", f"--root={root}", _sources(_extra(repos) + extra_line + "\n")
    )
    key = extra_line.split("=")[0]
    assert status == 1
    assert document["error"]["message"].startswith(f"baseline source 'extra-repo' sets {key}=")


@needs_dnf
def test_the_local_transport_carries_the_baseline_sources_to_the_agent(
    root: Path, repos: dict[str, str]
) -> None:
    # The configuration is multi-line text: it reaches the agent as one base64 word.
    source = PatchSource(
        name="extra-repo", products=["*"], configuration=_extra(repos).replace("[main]", "[x]")
    )
    rhel = BaselineSource(OperatingSystem.REDHAT_ENTERPRISE_LINUX, source)
    inventory = LocalTransport(str(root)).scan(sources=[rhel])
    assert [(u.name, u.version) for u in inventory.updates] == [("demo-src", "2.0-1")]
    # The Rocky Linux baseline's source for every product is not this RHEL machine's.
    rocky = BaselineSource(OperatingSystem.ROCKY_LINUX, source)
    assert LocalTransport(str(root)).scan(sources=[rocky]).updates == ()


# -- apt ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apt_repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repo, Repo]:
    work = tmp_path_factory.mktemp("aptsources")
    base = Repo(work / "base").add("stable", Pkg("pwtest-src", "1.0-1")).publish()
    extra = Repo(work / "extra").add("extra", Pkg("pwtest-src", "2.0-1")).publish()
    return base, extra


@pytest.fixture
def apt_root(apt_repos: tuple[Repo, Repo], tmp_path: Path) -> Path:
    installed = [Pkg("pwtest-src", "1.0-1")]
    return make_root(tmp_path / "deb", apt_repos[0].uri, ["stable"], installed=installed)


@needs_apt
def test_an_apt_source_is_scanned_and_installed_and_root_files_stay(
    apt_root: Path, apt_repos: tuple[Repo, Repo], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _repo_files(apt_root)
    source = _sources(f"deb [trusted=yes] {apt_repos[1].uri} extra main", products=("Debian12",))
    _, plain = _agent(capsys, "scan", f"--root={apt_root}")
    assert plain["updates"] == []
    status, scanned = _agent(capsys, "scan", f"--root={apt_root}", source)
    assert [(u["name"], u["version"]) for u in scanned["updates"]] == [("pwtest-src", "2.0-1")]
    pin = "--pin=pwtest-src=2.0-1"
    status, result = _agent(
        capsys, "install", f"--root={apt_root}", pin, "--trust-root-scripts", source
    )
    assert (status, result["changed"]) == (0, True)
    assert dpkg_state(apt_root)["pwtest-src"][0] == "2.0-1"
    assert _repo_files(apt_root) == before


@needs_apt
@pytest.mark.parametrize(
    ("configuration", "named"),
    [
        ("deb [trusted=yes] ../../../bin/sh extra main", "../../../bin/sh"),
        ("deb [trusted=yes dpkg-hook=x] file:/srv extra main", "dpkg-hook"),
        ("Types: deb\nURIs: file:/srv\nSuites: extra\nAPT-Hook: x\n", "APT-Hook"),
        ('Dpkg::Pre-Invoke {"touch /tmp/x";};', "sets Dpkg"),
    ],
)
def test_a_hostile_apt_source_is_refused(
    apt_root: Path, capsys: pytest.CaptureFixture[str], configuration: str, named: str
) -> None:
    status, document = _agent(capsys, "scan", f"--root={apt_root}", _sources(configuration, ("*",)))
    assert status == 1
    message = document["error"]["message"]
    assert message.startswith("baseline source 'extra-repo' ") and named in message


# -- zypper ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suse_repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_suse_repos(tmp_path_factory.mktemp("susesources"))


@needs_zypper
def test_a_zypper_source_is_scanned_and_installed_and_root_files_stay(
    suse_repos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_suse_root(tmp_path / "root", suse_repos, ["demo-lib-1.0-1"], with_updates=False)
    before = _repo_files(root)
    _, plain = _agent(capsys, "scan", f"--root={root}")
    assert plain["updates"] == []
    configuration = f"[main]\nname=Updates\nbaseurl=file://{suse_repos / 'updates'}\ngpgcheck=0\n"
    source = _sources(configuration, products=(plain["facts"]["product"],))
    status, scanned = _agent(capsys, "scan", f"--root={root}", source)
    assert "demo-lib" in {u["name"] for u in scanned["updates"]}, scanned
    status, result = _agent(capsys, "install", f"--root={root}", "--pin=demo-lib=1.0-2", source)
    assert (status, result["changed"]) == (0, True), result
    assert rpm_q(root, "demo-lib") == {"demo-lib": "1.0-2"}
    assert _repo_files(root) == before


@needs_dnf
def test_patchctl_scan_with_a_baseline_file_uses_its_sources(
    root: Path, repos: dict[str, str], tmp_path: Path
) -> None:
    spec = {
        "operatingSystem": "REDHAT_ENTERPRISE_LINUX",
        "approvalRules": [
            {
                "patchFilterGroup": {"patchFilters": []},
                "enableNonSecurity": True,
                "approveAfterDays": 0,
            }
        ],
        "sources": [{"name": "extra-repo", "products": ["*"], "configuration": _extra(repos)}],
    }
    document = {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchBaseline",
        "metadata": {"name": "b"},
        "spec": spec,
    }
    (tmp_path / "b.yaml").write_text(json.dumps(document))
    args = [f"--root={root}", "--instance=rhel-1", f"--baseline={tmp_path / 'b.yaml'}"]
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", "scan", *args, "-o", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    evaluation = json.loads(run.stdout)
    states = {(p["name"], p["version"]): p["state"] for p in evaluation["patches"]}
    assert states[("demo-src", "2.0-1")] == "MISSING"
