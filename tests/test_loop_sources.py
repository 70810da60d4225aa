"""A baseline's sources through the whole loop (``patchctl reconcile`` on a real Debian root,
the fleet in a real Git repository): the machine's first scan and its install already use the
source, as SSM does, and the root's own apt sources are left as they were."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reconciler.state import StateStore
from tests.aptlab import Pkg, Repo, make_root
from tests.conftest import needs_apt
from tests.fleet import (
    API,
    GROUP,
    at_now,
    documents,
    local_instance_yaml,
    open_window_yaml,
    versions,
)
from tests.git_servers import Upstream

pytestmark = needs_apt

ROOT = Path(__file__).resolve().parent.parent


def _baseline(uri: str) -> str:
    return f"""\
{API}
kind: PatchBaseline
metadata:
  name: debian-sourced
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required, Important, Standard, Optional, Extra]
  sources:
    - name: mirror
      products: [Debian12]
      configuration: "deb [trusted=yes] {uri} mirror-security main"
---
{API}
kind: PatchGroup
metadata:
  name: {GROUP}
spec:
  selector:
    matchLabels: {{fleet: e2e}}
  baselines:
    DEBIAN: debian-sourced
"""


def test_reconcile_scans_and_installs_from_the_baseline_source(tmp_path: Path) -> None:
    own = Repo(tmp_path / "own").add("stable", Pkg("pwtest-src", "1.0-1")).publish()
    mirror = Pkg("pwtest-src", "2.0-1")
    source = Repo(tmp_path / "mirror").add("mirror-security", mirror).publish()
    root = make_root(
        tmp_path / "web-1", own.uri, ["stable"], installed=[Pkg("pwtest-src", "1.0-1")]
    )
    sources_list = (root / "etc/apt/sources.list").read_bytes()
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    upstream.write("fleet.yaml", documents(_baseline(source.uri), open_window_yaml()))
    upstream.write("instances.yaml", local_instance_yaml("web-1", root))
    upstream.commit("fleet")
    state = tmp_path / "state" / "state.db"
    url = f"file://{upstream.bare}"
    args = ["reconcile", "--source", url, "--state", str(state), "-o", "json", *at_now()]
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["jobs"] == {"Scan succeeded": 1, "Install succeeded": 1}
    assert versions(root)["pwtest-src"] == "2.0-1"
    assert (root / "etc/apt/sources.list").read_bytes() == sources_list
    with StateStore(state) as store:
        record = store.latest_scans()["web-1"]
    states = {p["name"]: (p["state"], p["version"]) for p in record.evaluation["patches"]}
    assert states["pwtest-src"] == ("INSTALLED", "2.0-1")
