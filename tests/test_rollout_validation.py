"""The Rollout kind at validation (issue 15): its fields are checked like any other kind's, and a
valid Rollout is accepted (the loop steers installs by it, docs/rollouts.md)."""

from __future__ import annotations

import pytest

from reconciler.api.snapshot import SnapshotInvalid, build_snapshot

GROUPS = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata:
  name: dev
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata:
  name: prod
"""

ROLLOUT = """\
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata:
  name: web
spec:
  stages:
    - name: dev
      patchGroups: [dev]
      bakeTime: 48h
      maxFailedPercent: 10
    - name: prod
      patchGroups: [prod]
"""


def problems(rollout: str) -> list[str]:
    files = [("groups.yaml", GROUPS.encode()), ("rollout.yaml", rollout.encode())]
    with pytest.raises(SnapshotInvalid) as caught:
        build_snapshot(files, predefined={})
    return [str(p) for p in caught.value.problems]


def test_a_valid_rollout_is_accepted() -> None:
    # Refused as "not applied yet" until the loop steered installs by it (issue 15).
    files = [("groups.yaml", GROUPS.encode()), ("rollout.yaml", ROLLOUT.encode())]
    snapshot = build_snapshot(files, predefined={})
    assert [stage.name for stage in snapshot.rollouts["web"].spec.stages] == ["dev", "prod"]
    # Manual approval too: the planner waits for it (docs/rollouts.md "Manual approval").
    gated = "      patchGroups: [prod]\n      requiresApproval: true\n"
    gated += "      approvedSnapshot: 3f9c1a2\n"
    files = [
        ("groups.yaml", GROUPS.encode()),
        ("rollout.yaml", ROLLOUT.replace("      patchGroups: [prod]\n", gated).encode()),
    ]
    prod = build_snapshot(files, predefined={}).rollouts["web"].spec.stages[1]
    assert prod.requires_approval and prod.approved_snapshot == "3f9c1a2"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      maxFailedPercent: 10\n",
            "      maxFailedPercent: 10\n      approvedSnapshot: 3f9c1a2\n",
            "rollout.yaml:11: spec.stages[0].approvedSnapshot: only a stage with "
            "requiresApproval: true takes an approval",
        ),
        (
            "      maxFailedPercent: 10\n",
            "      maxFailedPercent: 10\n      requiresApproval: true\n"
            "      approvedSnapshot: 3f9c\n",
            "rollout.yaml:12: spec.stages[0].approvedSnapshot: '3f9c' is not valid: give a "
            "snapshot's digest (sha256:…) or its first 7+ hex digits",
        ),
        (
            "  stages:\n",
            "  resumeToken: 'two words'\n  stages:\n",
            "rollout.yaml:6: spec.resumeToken: 'two words' is not valid: give 1 to 64 letters, "
            "digits, '.', '_', ':' or '-'",
        ),
        (
            "bakeTime: 48h",
            "bakeTime: 48 hours",
            "rollout.yaml:9: spec.stages[0].bakeTime: '48 hours' is not valid: "
            'give minutes, hours or days: "30m", "48h", "2d"',
        ),
        (
            "bakeTime: 48h",
            "bakeTime: 91d",
            "rollout.yaml:9: spec.stages[0].bakeTime: at most 90 days (90d)",
        ),
        (
            "patchGroups: [prod]",
            "patchGroups: [prd]",
            "rollout.yaml:12: spec.stages[1].patchGroups[0]: no PatchGroup named 'prd' "
            "(did you mean 'prod'?)",
        ),
        (
            "    - name: prod\n",
            "    - name: dev\n",
            "rollout.yaml:6: spec.stages: stage names must be unique; repeated: dev",
        ),
    ],
)
def test_a_wrong_field_is_named_with_its_line(old: str, new: str, expected: str) -> None:
    found = problems(ROLLOUT.replace(old, new))
    assert expected in found, found


def test_an_instance_two_stages_select_is_named() -> None:
    instance = """\
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata:
  name: web-1
  labels: {patchwarden.io/patch-group: dev}
spec:
  connection: {type: local}
"""
    found = problems(ROLLOUT.replace("patchGroups: [prod]", "patchGroups: [prod, dev]") + instance)
    assert (
        "rollout.yaml:11: spec.stages[1].name: instance 'web-1' is selected by stages dev, prod; "
        "a machine belongs to one stage: change the stages' patch groups or selectors"
    ) in found, found


INSTANCES = """\
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata:
  name: prod-1
  labels: {patchwarden.io/patch-group: prod}
spec:
  connection: {type: local}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata:
  name: db
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata:
  name: db-1
  labels: {patchwarden.io/patch-group: db}
spec:
  connection: {type: local}
"""


def window(group: str, override: str) -> str:
    return f"""\
---
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata:
  name: {group}-noon
spec:
  schedule: cron(0 12 * * ? *)
  duration: 4
  cutoff: 1
  targets:
    patchGroups: [{group}]
  tasks:
    - name: install
      operation: Install
      {override}
"""


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("installOverrideList: [curl]", "installOverrideList"),
        ("baselineOverride: b", "baselineOverride"),
    ],
)
def test_an_install_override_on_a_rollout_stage_is_refused(override: str, field: str) -> None:
    """Not confined to the frozen snapshot, so refused rather than accepted and ignored; the
    same task on machines in no rollout stage stays valid."""
    baseline = (
        "---\napiVersion: patchwarden.io/v1alpha1\nkind: PatchBaseline\nmetadata:\n  name: b\n"
        "spec:\n  operatingSystem: DEBIAN\n"
    )
    found = problems(ROLLOUT + INSTANCES + baseline + window("prod", override))
    assert found == [
        f"rollout.yaml:55: spec.tasks[0].{field}: targets instance 'prod-1' of Rollout 'web' "
        "(stage prod), whose stages install only the snapshot frozen from their baselines; "
        f"remove {field}, or move the task to a window that targets no rollout stage"
    ], found
    files = [
        ("groups.yaml", GROUPS.encode()),
        ("rollout.yaml", (ROLLOUT + INSTANCES + baseline + window("db", override)).encode()),
    ]
    assert build_snapshot(files, predefined={}).windows["db-noon"].spec.tasks[0]
