"""Which group and baseline apply (SSM §4), and version ordering for "the latest approved wins"."""

from __future__ import annotations

import pytest

from reconciler.api.enums import OperatingSystem
from reconciler.api.snapshot import build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.evaluation import resolve
from reconciler.evaluation.versions import dpkg_compare, rpm_compare, rpmvercmp

SNAPSHOT = b"""
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: ubuntu-web}
spec:
  operatingSystem: UBUNTU
  approvalRules: [{patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required]}]}}]
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: my-debian-default}
spec:
  operatingSystem: DEBIAN
  defaultBaseline: true
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  baselines: {UBUNTU: ubuntu-web}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: db}
spec:
  baselines: {UBUNTU: aws-ubuntu-default}
"""


@pytest.fixture(scope="module")
def snapshot():  # type: ignore[no-untyped-def]
    return build_snapshot([("fleet.yaml", SNAPSHOT)], predefined_baselines())


@pytest.mark.parametrize(
    ("labels", "os", "group", "baseline", "reason"),
    [
        (
            {"role": "web"},
            "UBUNTU",
            "web",
            "ubuntu-web",
            "patch group 'web' names 'ubuntu-web' for UBUNTU",
        ),
        (
            {"patchwarden.io/patch-group": "db"},
            "UBUNTU",
            "db",
            "aws-ubuntu-default",
            "names 'aws-ubuntu-default'",
        ),
        (
            {},
            "UBUNTU",
            None,
            "aws-ubuntu-default",
            "no patch group: the predefined default baseline",
        ),
        (
            {"role": "web"},
            "REDHAT_ENTERPRISE_LINUX",
            "web",
            "aws-redhat-default",
            "names no baseline for REDHAT",
        ),
        ({}, "DEBIAN", None, "my-debian-default", "the user default baseline for DEBIAN"),
    ],
)
def test_effective_group_and_baseline(snapshot, labels, os, group, baseline, reason) -> None:  # type: ignore[no-untyped-def]
    resolution = resolve(snapshot, labels, OperatingSystem(os))
    assert (resolution.group.metadata.name if resolution.group else None) == group
    assert resolution.baseline is not None and resolution.baseline.metadata.name == baseline
    assert reason in resolution.baseline_reason


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.1", -1),
        ("1.10", "1.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0^git1", "1.0", 1),
        ("1.0^git1", "1.0.1", -1),
        ("1.0a", "1.0", 1),
        ("1.0", "1.0.a", -1),
        ("2.0", "2a", 1),  # numbers are newer than letters
        ("1.001", "1.1", 0),
    ],
)
def test_rpmvercmp_matches_rpm(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected
    assert rpmvercmp(b, a) == -expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1:1.0-1", "2.0-1", 1),
        ("0:1.0-1", "1.0-1", 0),
        ("1.0-2.el9", "1.0-10.el9", -1),
        ("5.14.0-427.42.1.el9_4", "5.14.0-427.13.1.el9_4", 1),
    ],
)
def test_rpm_evr_comparison(a: str, b: str, expected: int) -> None:
    assert rpm_compare(a, b) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0-1", "1.0-1~deb12u1", 1),
        ("3.0.2-0ubuntu1.18", "3.0.2-0ubuntu1.9", 1),
        ("1:1.0", "2.0", 1),
        ("2.36-9+deb12u9", "2.36-9+deb12u10", -1),
    ],
)
def test_dpkg_comparison(a: str, b: str, expected: int) -> None:
    assert dpkg_compare(a, b) == expected
