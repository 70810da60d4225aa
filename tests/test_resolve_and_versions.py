"""Which group and baseline apply (SSM §4), and version ordering for "the latest approved wins"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.enums import Family, OperatingSystem
from reconciler.api.snapshot import build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.evaluation import resolve
from reconciler.evaluation.versions import (
    comparator,
    dpkg_compare,
    dpkg_key,
    rpm_compare,
    rpmvercmp,
    sort_key,
)

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


# Versions built from the pieces the comparators treat specially (separators, '~', '^', leading
# zeros, letters against digits, epochs, revisions), so that close calls come up often.
_PIECES = st.sampled_from(["0", "00", "1", "01", "2", "10", "9", "a", "b", "Z", "rc", ".", "+"])
_DPKG_TAIL = st.sampled_from(["~", "-", ":", "~~"])


def _joined(pieces: st.SearchStrategy[str], size: int) -> st.SearchStrategy[str]:
    return st.lists(pieces, min_size=1, max_size=size).map("".join)


@st.composite
def _dpkg_versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "0:", "1:", "2:"]))
    upstream = draw(_joined(st.one_of(_PIECES, _DPKG_TAIL), 6))
    if not upstream[0].isdigit():
        upstream = "1" + upstream  # python-debian wants an upstream version starting with a digit
    revision = draw(st.sampled_from(["", "-"]))
    if revision:
        revision += draw(_joined(st.one_of(_PIECES, st.just("~")), 4))
    version = f"{epoch}{upstream}{revision}"
    if ":" in upstream and not epoch:
        version = "0:" + version
    return version


_RPM_VERSIONS = st.tuples(
    st.sampled_from(["", "0:", "1:", "12:"]),
    _joined(st.one_of(_PIECES, st.sampled_from(["~", "^", "_"])), 6),
    st.sampled_from(["", "-"]),
    _joined(st.one_of(_PIECES, st.sampled_from(["~", "^", "el9"])), 4),
).map(lambda p: f"{p[0]}{p[1]}{p[2]}{p[3] if p[2] else ''}")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data())
@pytest.mark.parametrize("family", [Family.APT, Family.RPM])
def test_sort_key_orders_like_the_comparator(family: Family, data: st.DataObject) -> None:
    """Sorting by a version's key (computed once per version, as the fleet tables do) gives the
    comparator's order: every pair compares the same both ways. Each example checks every pair
    of up to 10 versions (several thousand pairs in all, in seconds)."""
    versions = _dpkg_versions() if family is Family.APT else _RPM_VERSIONS
    drawn = data.draw(st.lists(versions, min_size=2, max_size=10))
    compare, key = comparator(family), sort_key(family)
    for a in drawn:
        for b in drawn:
            ka, kb = key(a), key(b)
            assert ((ka > kb) - (ka < kb)) == compare(a, b), (a, b)


def test_dpkg_key_refuses_what_the_comparator_refuses() -> None:
    with pytest.raises(ValueError, match="Invalid version"):
        dpkg_compare("1.0 beta", "1.0")
    with pytest.raises(ValueError, match="Invalid version"):
        dpkg_key("1.0 beta")
