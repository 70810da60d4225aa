"""A baseline's sources (SSM's PatchSource) on real repositories built by the suite: the agent
scans and installs from a repository the root does not know, replaces the root's own for the
run, leaves the root's repository files as they were, skips sources for other products and
refuses a source that would configure more than a repository."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.__main__ import main
from reconciler.api.resources import PatchSource
from reconciler.dispatch.local import LocalTransport
from tests.rpmlab import Rpm, build_rpms, make_repo, rpm_q, seed_rpm_root

pytestmark = pytest.mark.skipif(
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


def test_a_source_for_another_product_is_not_used(
    root: Path, repos: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = _sources(_extra(repos), products=("AmazonLinux2023",))
    status, scanned = _agent(capsys, "scan", f"--root={root}", source)
    assert (status, scanned["updates"]) == (0, [])


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


def test_the_local_transport_carries_the_baseline_sources_to_the_agent(
    root: Path, repos: dict[str, str]
) -> None:
    # The configuration is multi-line text: it reaches the agent as one base64 word.
    source = PatchSource(
        name="extra-repo", products=["*"], configuration=_extra(repos).replace("[main]", "[x]")
    )
    inventory = LocalTransport(str(root)).scan(sources=[source])
    assert [(u.name, u.version) for u in inventory.updates] == [("demo-src", "2.0-1")]
    assert LocalTransport(str(root)).scan().updates == ()
