"""Holds through the reconcile loop on real Debian roots (issue 20 item 3): a package a
PatchGroup holds is never installed by `patchctl reconcile`, the rest is, and the store's
evaluation lists the held update as HELD (docs/guardrails.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.state import StateStore
from tests import fleet
from tests.aptlab import Pkg, Repo
from tests.conftest import INSTALLED, needs_apt
from tests.test_cli_evaluate import patchctl

WITH_KERNEL = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-kernel")]


def reconcile_held(
    tmp_path: Path, apt_repo: Repo, installed: list[Pkg], holds: str
) -> tuple[Path, Path, dict[str, Any]]:
    """web-1 with ``installed``, its group holding ``holds``, through `patchctl reconcile` in an
    open window: its root, the state database and the run's JSON summary."""
    roots = fleet.make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], installed)
    held = fleet.BASELINE_YAML.replace("  baselines:\n", f"  holds: {holds}\n  baselines:\n", 1)
    source = tmp_path / "source"
    source.mkdir()
    (source / "fleet.yaml").write_text(fleet.documents(held, fleet.open_window_yaml()))
    (source / "instances.yaml").write_text(fleet.local_instance_yaml("web-1", roots["web-1"]))
    state = tmp_path / "state.db"
    argv = ["reconcile", "--source", str(source), "--state", str(state), *fleet.at_now()]
    run = patchctl(*argv, "-o", "json")
    assert run.returncode == 0, run.stderr
    return roots["web-1"], state, json.loads(run.stdout)


@needs_apt
@pytest.mark.slow
def test_reconcile_never_installs_what_the_group_holds(tmp_path: Path, apt_repo: Repo) -> None:
    root, state, summary = reconcile_held(tmp_path, apt_repo, WITH_KERNEL, "[pwtest-kern*]")
    roots = {"web-1": root}
    # The run's summary counts what the hold kept off, as `patchctl compliance` does.
    assert [(r["instance"], r["heldCount"]) for r in summary["instances"]] == [("web-1", 1)]
    argv = ["reconcile", "--source", str(tmp_path / "source"), "--state", str(state)]
    table = patchctl(*argv, *fleet.at_now()).stdout.splitlines()
    header = next(line for line in table if line.startswith("┃"))
    row = next(line for line in table if line.startswith("│ web-1"))
    cells = dict(zip(header.split("┃")[1:-1], row.split("│")[1:-1], strict=True))
    assert {k.strip(): v.strip() for k, v in cells.items()}["Held"] == "1"
    assert fleet.versions(roots["web-1"]) == {"pwtest-lib": "1.0-2", "pwtest-kernel": "1.0-1"}
    with StateStore(state) as store:
        record = store.latest_scan("web-1")
    assert record is not None
    [entry] = record.evaluation["held"]
    assert (entry["name"], entry["state"]) == ("pwtest-kernel", "HELD")
    assert "(patch group 'fleet')" in entry["reason"]
    assert record.held == ("pwtest-kernel",)
