"""Shared fixtures: a real apt repository built once per session, fresh system roots per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.apt import Apt
from tests.aptlab import HttpRepo, Pkg, Repo, make_root
from tests.kubeapi import kube_api  # noqa: F401  (session fixture: the real kube-apiserver)
from tests.kubenode import kube_node  # noqa: F401  (session fixture: a real node)
from tests.postgres import (  # noqa: F401  (a real PostgreSQL 15; state stores on both backends)
    postgres_server,
    postgres_url,
    state_store,
    tls_postgres_server,
)
from tests.promlab import alertmanager, prometheus  # noqa: F401  (real Prometheus, Alertmanager)

# The labs' roots have no /bin/sh (tests/aptlab.py), so dpkg runs their maintainer scripts on
# this host, which patchctl refuses unless the operator trusts the roots. The suite builds them
# itself: it trusts them once here, at import, so every patchctl subprocess inherits it; tests
# that build transports directly pass trust_root_scripts=True, and the tests of the refusal
# remove the variable.
os.environ["PATCHWARDEN_TRUST_ROOT_SCRIPTS"] = "1"

# `make test` runs the suite on every core (pytest-xdist, --dist loadfile): each test file runs on
# one worker, so a module's fixtures (a fleet, a built image, a server) are built once. The files
# that use the one real node this machine can run (its address, bridge, iptables chains and kernel
# settings are fixed: tests/kubenode.py) are one unit, so they run on one worker, one at a time.
# (xdist's own --dist loadgroup cannot do this on pytest 9.2: pytest-dev/pytest-xdist#1386.)
ONE_PER_MACHINE = frozenset({"kube_node"})
ONE_PER_MACHINE_FILES = frozenset({"tests/test_kubenode.py", "tests/test_node_e2e.py"})


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneNodePerMachine(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "the real node" if path in ONE_PER_MACHINE_FILES else path

    return OneNodePerMachine(config, log)


# The longest units first (minutes each, from a run's --durations), so no worker is left with one
# of them at the end while the other idles; the rest in file order (make test: no reordering).
LONGEST_FIRST = (
    *sorted(ONE_PER_MACHINE_FILES, reverse=True),
    "tests/test_image.py",
    "tests/test_controller.py",
    "tests/test_engine_summary.py",
    "tests/test_emergency.py",
    "tests/test_fleet_e2e.py",
    "tests/test_audit.py",
    "tests/test_diff_tables.py",
    "tests/test_docs.py",
    "tests/test_fleet_rollout.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (:data:`LONGEST_FIRST`). A test file that uses the real node
    must be in ONE_PER_MACHINE_FILES, or two workers would each start a node: the run stops at
    collection, saying so."""
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        uses = ONE_PER_MACHINE.intersection(getattr(item, "fixturenames", ()))
        if uses and path not in ONE_PER_MACHINE_FILES:
            raise pytest.UsageError(
                f"{path} uses {', '.join(sorted(uses))}: add it to ONE_PER_MACHINE_FILES in"
                " tests/conftest.py (one node per machine: its tests run on one worker)"
            )


HAVE_APT = all(shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg", "dpkg-query"))
needs_apt = pytest.mark.skipif(not HAVE_APT, reason="apt and dpkg are not installed")

# Every test package is called pwtest-*, so a leak onto the host would be easy to find.
REBOOT = (
    'mkdir -p "$DPKG_ROOT/run"; touch "$DPKG_ROOT/run/reboot-required"; '
    'echo pwtest-kernel >> "$DPKG_ROOT/run/reboot-required.pkgs"'
)
STABLE = [
    Pkg("pwtest-lib", "1.0-1", priority="important", section="libs"),
    Pkg("pwtest-tool", "2.0-1", section="utils", depends="pwtest-lib (>= 1.0-1)"),
    Pkg("pwtest-other", "1.0-1"),
    Pkg("pwtest-other", "1.1-1"),
    Pkg("pwtest-shadow", "1.0-1", section="net"),
    Pkg("pwtest-shadow", "1.1-1", section="net"),
    Pkg("pwtest-fail", "1.0-1"),
    Pkg("pwtest-kernel", "1.0-1", section="kernel"),
    Pkg("pwtest-telnetd", "1.0-1", section="net"),
    Pkg("pwtest-inetd", "1.0-1", section="net"),
    Pkg("pwtest-pinned", "1.0-1"),
]
SECURITY = [
    Pkg("pwtest-lib", "1.0-2", priority="important", section="libs", source="pwtest-src"),
    Pkg("pwtest-tool", "2.1-1", section="utils", depends="pwtest-lib (>= 1.0-2)"),
    Pkg("pwtest-shadow", "1.0-2", section="net"),
    Pkg(
        "pwtest-fail",
        "1.0-2",
        scripts={"postinst": "echo 'pwtest-fail: configuration failed' >&2; exit 1"},
    ),
    Pkg("pwtest-kernel", "1.0-2", section="kernel", scripts={"postinst": REBOOT}),
    Pkg("pwtest-inetd", "1.0-2", section="net", depends="pwtest-telnetd"),
    Pkg("pwtest-pinned", "1.0-2"),
]
INSTALLED = [
    Pkg("pwtest-lib", "1.0-1", priority="important", section="libs"),
    Pkg("pwtest-tool", "2.0-1", section="utils"),
    Pkg("pwtest-other", "1.0-1"),
    Pkg("pwtest-shadow", "1.0-1", section="net"),
    Pkg("pwtest-fail", "1.0-1"),
    Pkg("pwtest-kernel", "1.0-1", section="kernel"),
    Pkg("pwtest-inetd", "1.0-1", section="net"),
]


@pytest.fixture(scope="session")
def apt_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """stable + stable-security suites, labelled like Debian's, published once."""
    root = tmp_path_factory.mktemp("repo")
    root.chmod(0o755)
    repo = Repo(root)
    repo.add("stable", *STABLE, origin="Debian", label="Debian", codename="bookworm")
    repo.add(
        "stable-security",
        *SECURITY,
        origin="Debian",
        label="Debian-Security",
        codename="bookworm-security",
    )
    return repo.publish()


@pytest.fixture(scope="session")
def apt_http(apt_repo: Repo):  # type: ignore[no-untyped-def]
    server = HttpRepo(apt_repo.root)
    yield server
    server.stop()


@pytest.fixture
def system_root(tmp_path: Path, apt_repo: Repo) -> Path:
    """A fresh Debian 12 root with the usual packages installed and package lists refreshed."""
    root = make_root(
        tmp_path / "node-1", apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED
    )
    Apt(str(root)).refresh()
    return root
