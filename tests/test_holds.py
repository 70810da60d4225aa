"""Package holds (issue 20 item 3): what PatchGroups and ManagedInstances hold, and what the
machine's own package manager holds, is never pinned for install and is reported as held, not
missing (docs/guardrails.md): the engine and the planner's pins with injected times, then
`patchctl explain` and `validate` on a copy of examples/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from reconciler.api.inventory import Inventory, MachineHold
from reconciler.api.resources import ManagedInstance, PatchGroup
from reconciler.evaluation import declared_holds, evaluate
from reconciler.evaluation.pins import override_pins, pins_for
from reconciler.evaluation.summary import evaluate_summary
from tests.factories import NOW, baseline, inventory, rule, states
from tests.test_cli_evaluate import NOW as EXAMPLE_NOW
from tests.test_cli_evaluate import ROOT, patchctl

ALL = baseline("DEBIAN", rule(("PRIORITY", ["*"]), non_security=True))


def _group(*holds: str) -> PatchGroup:
    return PatchGroup.model_validate(
        {
            "apiVersion": "patchwarden.io/v1alpha1",
            "kind": "PatchGroup",
            "metadata": {"name": "web"},
            "spec": {"holds": list(holds)},
        }
    )


def _instance(*holds: str) -> ManagedInstance:
    return ManagedInstance.model_validate(
        {
            "apiVersion": "patchwarden.io/v1alpha1",
            "kind": "ManagedInstance",
            "metadata": {"name": "web-1"},
            "spec": {"connection": {"type": "local"}, "holds": list(holds)},
        }
    )


def _machine() -> Inventory:
    return inventory(
        "DEBIAN",
        installed=[
            {"name": "postgresql-15", "version": "15.1-1"},
            {"name": "openssl", "version": "3.0.1-1"},
            {"name": "curl", "version": "7.88-1"},
        ],
        updates=[
            {"name": "postgresql-15", "version": "15.5-1", "installedVersion": "15.1-1"},
            {"name": "openssl", "version": "3.0.2-1", "installedVersion": "3.0.1-1"},
            {"name": "curl", "version": "7.88-2", "installedVersion": "7.88-1"},
        ],
    )


def test_a_group_hold_is_reported_held_not_missing_and_never_pinned() -> None:
    holds = declared_holds(_group("postgresql-*"), None)
    result = evaluate(ALL, _machine(), NOW, holds=holds)
    assert states(result) == {
        "postgresql-15": "INSTALLED",
        "openssl": "MISSING",
        "curl": "MISSING",
    }
    [held] = result.held
    assert (held.name, held.version, held.installed_version) == (
        "postgresql-15",
        "15.5-1",
        "15.1-1",
    )
    assert "'postgresql-*' (patch group 'web')" in held.reason
    assert pins_for(result, "amd64") == ("openssl=3.0.2-1", "curl=7.88-2")
    document = result.to_dict()
    assert document["held"][0]["state"] == "HELD"
    assert document["summary"]["missingCount"] == 2
    # the counting fast path agrees with the rows
    assert evaluate_summary(ALL, _machine(), NOW, holds=holds) == result.summary


def test_instance_holds_add_to_the_groups() -> None:
    holds = declared_holds(_group("postgresql-*"), _instance("curl"))
    result = evaluate(ALL, _machine(), NOW, holds=holds)
    assert {h.name for h in result.held} == {"postgresql-15", "curl"}
    assert "managed instance 'web-1'" in next(h.reason for h in result.held if h.name == "curl")
    assert pins_for(result, "amd64") == ("openssl=3.0.2-1",)


def test_a_machine_hold_is_held_whatever_the_resources_say() -> None:
    held_here = (MachineHold(name="openssl", tool="apt-mark"),)
    machine = _machine().model_copy(update={"held": held_here})
    result = evaluate(ALL, machine, NOW)
    [held] = result.held
    assert held.name == "openssl" and "apt-mark hold on the machine" in held.reason
    assert "openssl=3.0.2-1" not in pins_for(result, "amd64")
    assert result.summary.failed_count == 0 and result.summary.missing_count == 2


def test_a_hold_wins_over_an_install_override_list() -> None:
    machine = _machine()
    holds = declared_holds(_group("openssl"), None)
    assert override_pins(["openssl", "curl"], machine, holds) == ("curl=7.88-2",)


def test_held_packages_count_as_compliant_like_rejected_allow_as_dependency() -> None:
    only_pg = _machine().model_copy(
        update={"updates": _machine().updates[:1], "installed": _machine().installed[:1]}
    )
    result = evaluate(ALL, only_pg, NOW, holds=declared_holds(_group("postgresql-15"), None))
    assert str(result.summary.compliance_status) == "COMPLIANT"


@pytest.mark.parametrize("pattern", ["", "post gres", "a,b", "-rf", "x" * 129])
def test_a_bad_hold_pattern_is_refused(pattern: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _group(pattern)
    assert "holds" in str(caught.value)


def _examples_holding(tmp_path: Path, holds: str) -> Path:
    """A copy of examples/ whose web group has ``holds: HOLDS`` (YAML flow text)."""
    source = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", source)
    groups = source / "groups.yaml"
    text = groups.read_text().replace(
        "  baselines:\n    UBUNTU", f"  holds: {holds}\n  baselines:\n    UBUNTU", 1
    )
    groups.write_text(text)
    return source


def test_explain_shows_the_hold_and_evaluate_keeps_the_held_update_out_of_missing(
    tmp_path: Path,
) -> None:
    source = _examples_holding(tmp_path, "[openssl]")
    args = (
        "--source",
        str(source),
        "--inventory",
        str(source / "inventories"),
        "--now",
        EXAMPLE_NOW,
    )
    run = patchctl("explain", "web-1", "openssl", *args, "-o", "json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    # the installed version stays and is judged by the baseline; the update is not MISSING
    assert [(p["version"], p["state"]) for p in data["patches"]] == [
        ("3.0.2-0ubuntu1.15", "INSTALLED")
    ]
    [held] = data["held"]
    assert held["state"] == "HELD" and "'openssl' (patch group 'web')" in held["reason"]
    table = patchctl("explain", "web-1", "openssl", *args)
    assert "Held: never installed" in table.stdout and "patch group 'web'" in table.stdout


def test_a_bad_hold_in_a_file_names_file_line_and_field(tmp_path: Path) -> None:
    source = _examples_holding(tmp_path, "['open ssl']")
    run = patchctl("validate", str(source))
    assert run.returncode != 0
    assert run.stderr.startswith(
        "groups.yaml:12: spec.holds[0]: 'open ssl' is not a package-name pattern: use letters,"
    ), run.stderr
