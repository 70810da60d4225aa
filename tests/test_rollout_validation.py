"""The Rollout kind at validation (issue 15, groundwork): its fields are checked like any other
kind's, and since the loop does not apply rollouts yet, a valid Rollout is refused too, on its
``kind`` line, instead of being accepted and ignored."""

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


NOT_YET = (
    "rollout.yaml:2: kind: Rollout is not applied yet (progressive rollouts are in progress, "
    "see docs/rollouts.md); remove this document"
)


def test_a_valid_rollout_is_refused_as_not_applied_yet() -> None:
    assert problems(ROLLOUT) == [NOT_YET]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      maxFailedPercent: 10\n",
            "      maxFailedPercent: 10\n      requiresApproval: true\n",
            "rollout.yaml:11: spec.stages[0].requiresApproval: manual approval is not "
            "implemented yet; remove it (or set it to false)",
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
