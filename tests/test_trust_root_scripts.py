"""A shell-less Debian root may not run code on the controller unless the operator says so.

dpkg runs a root's maintainer scripts chrooted through the root's own /bin/sh; a root without one
(as the labs build them, tests/aptlab.py) would have them run on this host as root
(``--force-script-chrootless``). The attack: a repository offers an update whose postinst writes
a file on the host. Without the operator's opt-in (``patchctl install --trust-root-scripts`` or
PATCHWARDEN_TRUST_ROOT_SCRIPTS=1, which conftest.py sets for the rest of the suite) the install
is refused before anything changes; with it, the scripts run chrootless, as documented.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.api.resources import LocalConnection
from reconciler.dispatch import LocalTransport, transport_for
from reconciler.state import StateStore
from tests.aptlab import Pkg, Repo, dpkg_state, make_root
from tests.conftest import needs_apt
from tests.fleet import BASELINE_YAML, at_now, documents, local_instance_yaml, open_window_yaml

pytestmark = needs_apt

TRUST = "PATCHWARDEN_TRUST_ROOT_SCRIPTS"
OLD = Pkg("pwtest-hostile", "1.0-1")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """Where the hostile postinst writes, outside the root: its existence means code ran here."""
    return tmp_path / "host" / "ran-on-the-host"


@pytest.fixture
def hostile_root(tmp_path: Path, marker: Path) -> Path:
    """A shell-less root whose security repository offers an update with a host-writing postinst."""
    marker.parent.mkdir()
    update = Pkg(
        "pwtest-hostile",
        "1.0-2",
        scripts={"postinst": f'echo "DPKG_ROOT=$DPKG_ROOT" > {marker}'},
    )
    repo = Repo(tmp_path / "repo")
    repo.add("stable", OLD, origin="Debian", label="Debian", codename="bookworm")
    repo.add(
        "stable-security",
        update,
        origin="Debian",
        label="Debian-Security",
        codename="bookworm-security",
    )
    repo.publish()
    root = make_root(tmp_path / "root", repo.uri, ["stable", "stable-security"], installed=[OLD])
    assert not (root / "bin/sh").exists()
    return root


def patchctl(*args: str, trusted: bool = False) -> subprocess.CompletedProcess[str]:
    """patchctl as an operator runs it: without the suite's opt-in unless ``trusted``."""
    env = {k: v for k, v in os.environ.items() if k != TRUST}
    if trusted:
        env[TRUST] = "1"
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_install_into_a_shell_less_root_is_refused_without_the_operators_trust(
    hostile_root: Path, marker: Path
) -> None:
    status = (hostile_root / "var/lib/dpkg/status").read_text()
    run = patchctl("install", "--root", str(hostile_root), "-o", "json")
    assert run.returncode == 1
    assert run.stderr.startswith(f"patchctl: the agent failed: UntrustedRoot: {hostile_root}: ")
    assert len(run.stderr.splitlines()) == 1 and "--trust-root-scripts" in run.stderr
    assert not marker.exists()
    assert (hostile_root / "var/lib/dpkg/status").read_text() == status
    assert dpkg_state(hostile_root)["pwtest-hostile"][0] == "1.0-1"


def test_with_trust_root_scripts_the_install_runs_its_scripts_chrootless(
    hostile_root: Path, marker: Path
) -> None:
    run = patchctl("install", "--root", str(hostile_root), "--trust-root-scripts", "-o", "json")
    assert run.returncode == 0, run.stderr
    assert dpkg_state(hostile_root)["pwtest-hostile"] == ("1.0-2", "install ok installed")
    # The documented trusted behaviour: the script ran on this host, told where the root is.
    assert marker.read_text() == f"DPKG_ROOT={hostile_root}\n"


def test_the_environment_variable_is_the_operators_opt_in(hostile_root: Path, marker: Path) -> None:
    run = patchctl("install", "--root", str(hostile_root), "-o", "json", trusted=True)
    assert run.returncode == 0, run.stderr
    assert marker.exists()


def test_an_unclear_opt_in_is_refused_not_guessed(hostile_root: Path) -> None:
    env = {**os.environ, TRUST: "yes"}
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", "install", "--root", str(hostile_root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr == (
        "patchctl: PATCHWARDEN_TRUST_ROOT_SCRIPTS='yes': expected 1 (trust directory roots' "
        "maintainer scripts) or 0; unset it to keep them refused\n"
    )


def test_a_reconcile_without_the_opt_in_fails_the_install_job_and_installs_nothing(
    hostile_root: Path, marker: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "fleet.yaml").write_text(documents(BASELINE_YAML, open_window_yaml()))
    (source / "instances.yaml").write_text(local_instance_yaml("web-1", hostile_root))
    state = tmp_path / "state.db"
    run = patchctl(
        "reconcile", "--source", str(source), "--state", str(state), "-o", "json", *at_now()
    )
    assert run.returncode == 0, run.stderr
    with StateStore(state) as store:
        jobs = {job.operation: job for job in store.jobs()}
    assert jobs["Scan"].status == "succeeded"
    install = jobs["Install"]
    assert install.status == "failed" and install.result is not None
    error = install.result["error"]
    assert error["code"] == "UntrustedRoot" and str(hostile_root) in error["message"]
    assert not marker.exists()
    assert dpkg_state(hostile_root)["pwtest-hostile"][0] == "1.0-1"


def test_transports_carry_the_operators_word_to_the_agent() -> None:
    local = transport_for(LocalConnection(type="local", root="/srv/r"), trust_root_scripts=True)
    assert local == LocalTransport("/srv/r", trust_root_scripts=True)
    assert transport_for(LocalConnection(type="local", root="/srv/r")) == LocalTransport("/srv/r")
