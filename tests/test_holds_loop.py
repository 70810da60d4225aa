"""Holds through the reconcile loop on real Debian roots (issue 20 item 3): a package a
PatchGroup holds is never installed by `patchctl reconcile`, the rest is, and the store's
evaluation lists the held update as HELD (docs/guardrails.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.state import StateStore
from tests import fleet
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.test_cli_evaluate import patchctl

WITH_KERNEL = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-kernel")]


@needs_apt
@pytest.mark.slow
def test_reconcile_never_installs_what_the_group_holds(tmp_path: Path, apt_repo: Repo) -> None:
    roots = fleet.make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], WITH_KERNEL)
    held = fleet.BASELINE_YAML.replace(
        "  baselines:\n", "  holds: [pwtest-kern*]\n  baselines:\n", 1
    )
    source = tmp_path / "source"
    source.mkdir()
    (source / "fleet.yaml").write_text(fleet.documents(held, fleet.open_window_yaml()))
    (source / "instances.yaml").write_text(fleet.local_instance_yaml("web-1", roots["web-1"]))
    state = tmp_path / "state.db"
    run = patchctl("reconcile", "--source", str(source), "--state", str(state), "-o", "json")
    assert run.returncode == 0, run.stderr
    assert fleet.versions(roots["web-1"]) == {"pwtest-lib": "1.0-2", "pwtest-kernel": "1.0-1"}
    with StateStore(state) as store:
        record = store.latest_scan("web-1")
    assert record is not None
    [entry] = record.evaluation["held"]
    assert (entry["name"], entry["state"]) == ("pwtest-kernel", "HELD")
    assert "(patch group 'fleet')" in entry["reason"]
    assert record.held == ("pwtest-kernel",)
