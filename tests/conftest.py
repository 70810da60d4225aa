"""Shared fixtures: a real apt repository built once per session, fresh system roots per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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

# `make test` runs the suite on every core (pytest-xdist, --dist loadgroup). Each test file is one
# group, so a module's fixtures (a fleet, a built image, a server) are built once; the tests that
# use the one real node this machine can run (its address, bridge, iptables chains and kernel
# settings are fixed: tests/kubenode.py) are one group, so they run on one worker, one at a time.
ONE_PER_MACHINE = frozenset({"kube_node"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = ONE_PER_MACHINE.intersection(getattr(item, "fixturenames", ()))
        group = "kube-node" if uses else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


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
