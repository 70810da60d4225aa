"""``Decider.verdicts`` (bulk deciding, reconciler/evaluation/verdicts.py) gives ``decide``'s verdict.

The fleet tables decide every distinct package version through ``Decider.verdicts``, which asks
each filter and id list once per distinct value of the fields it reads and compares release times
in numpy; ``Decider.decide`` stays the reference. A hypothesis property over generated baselines
(global filters, rules on every filter key the generators vary, dates, sources, FirstSeen, id
lists of every kind) and package versions (RPM, SUSE, Amazon Linux, apt with shadowed versions)
checks every verdict; ``PROPERTY_FIELDS`` is checked against the properties the filters read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.enums import PatchFilterKey
from reconciler.api.inventory import AvailableUpdate, InstalledPackage, PackageFacts
from reconciler.evaluation import Decider
from reconciler.evaluation.matching import PROPERTY_FIELDS, properties
from reconciler.evaluation.verdicts import LEVELS
from tests.test_engine_properties import NAMES, NOW, _baseline, apt_cases, cases, moments

LINUX_OSES = ["REDHAT_ENTERPRISE_LINUX", "AMAZON_LINUX_2023", "SUSE", "UBUNTU", "DEBIAN"]
PRODUCTS = ["RedhatEnterpriseLinux9.4", "AmazonLinux2023", "Ubuntu22.04", "*"]


def _filters(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Filters on keys whose values the generated versions vary."""
    pool = {
        "PRODUCT": PRODUCTS,
        "CLASSIFICATION": ["Security", "Bugfix", "*"],
        "SEVERITY": ["Critical", "Moderate", "Medium", "Low"],
        "PRIORITY": ["required", "optional", "*"],
        "SECTION": ["libs", "net"],
        "REPOSITORY": ["main", "updates"],
    }
    keys = draw(st.lists(st.sampled_from(sorted(pool)), unique=True, max_size=2))
    return [
        {"key": k, "values": draw(st.lists(st.sampled_from(pool[k]), min_size=1, unique=True))}
        for k in keys
    ]


@st.composite
def baselines(draw: st.DrawFn, os: str) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = {
            "patchFilterGroup": {"patchFilters": _filters(draw)},
            "enableNonSecurity": draw(st.booleans()),
            "complianceLevel": draw(st.sampled_from(["CRITICAL", "HIGH", "LOW", "UNSPECIFIED"])),
        }
        when = draw(st.sampled_from(["days", "until", "none"]))
        if when == "days":
            rule["approveAfterDays"] = draw(st.integers(0, 30))
        elif when == "until":
            rule["approveUntilDate"] = (NOW - timedelta(days=draw(st.integers(0, 60)))).date()
        rules.append(rule)
    ids = [*NAMES, "ker*", "CVE-2026-1", "RHBA-2026:2", "1.2-3.el9"]
    spec: dict[str, Any] = {
        "operatingSystem": os,
        "approvalRules": rules,
        "approvedPatches": draw(st.lists(st.sampled_from(ids), max_size=3, unique=True)),
        "rejectedPatches": draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)),
        "rejectedPatchesAction": draw(st.sampled_from(["ALLOW_AS_DEPENDENCY", "BLOCK"])),
        "approvedPatchesEnableNonSecurity": draw(st.booleans()),
        "approvedPatchesComplianceLevel": draw(st.sampled_from(["HIGH", "MEDIUM"])),
    }
    if draw(st.booleans()):
        spec["globalFilters"] = {
            "patchFilters": _filters(draw) or [{"key": "PRODUCT", "values": ["*"]}]
        }
    if draw(st.booleans()):
        products = draw(st.lists(st.sampled_from(PRODUCTS), min_size=1, unique=True))
        spec["sources"] = [{"name": "mirror", "products": products, "configuration": "x"}]
    if os in ("UBUNTU", "DEBIAN") and draw(st.booleans()):
        spec["approveAfterDaysFrom"] = "FirstSeen"
    return spec


@st.composite
def versions(draw: st.DrawFn) -> dict[str, Any]:
    """One package version's facts, updates and installed packages alike."""
    # whole days before NOW meet approve-after-days at its boundary; None often, so that
    # build times and missing dates are reached
    whole_days = st.integers(0, 40).map(lambda d: NOW - timedelta(days=d))
    maybe = st.sampled_from([None, None]) | whole_days | moments
    return {
        "name": draw(st.sampled_from(NAMES)),
        "arch": draw(st.sampled_from(["x86_64", "noarch"])),
        "version": draw(st.sampled_from(["1.2-3.el9", "2:1.0-1", "1.0", "3.1-2"])),
        "repository": draw(st.sampled_from(["main", "updates", None])),
        "security": draw(st.booleans()),
        "priority": draw(st.sampled_from(["required", "optional", None])),
        "section": draw(st.sampled_from(["libs", "net", None])),
        "classification": draw(st.sampled_from(["Security", "Bugfix", "Enhancement", None])),
        "severity": draw(st.sampled_from(["Critical", "Moderate", "Medium", "Low", None])),
        "advisoryIds": draw(st.lists(st.sampled_from(["RHSA-2026:1", "RHBA-2026:2"]), max_size=1)),
        "cves": draw(st.lists(st.sampled_from(["CVE-2026-1", "CVE-2026-2"]), max_size=2)),
        "issued": draw(maybe),
        "updated": draw(maybe),
        "buildTime": draw(maybe),
        "firstSeen": draw(maybe),
        "candidate": draw(st.booleans()),
        "installedVersion": "0.9-1",
    }


def _objects(facts: list[dict[str, Any]], kinds: list[bool]) -> list[PackageFacts]:
    made: list[PackageFacts] = []
    for fields, update in zip(facts, kinds, strict=False):
        if update:
            made.append(AvailableUpdate.model_validate(fields))
        else:
            rest = {k: v for k, v in fields.items() if k not in ("candidate", "installedVersion")}
            made.append(InstalledPackage.model_validate(rest))
    return made


def _assert_agree(decider: Decider, pkgs: list[PackageFacts]) -> None:
    got = decider.verdicts(pkgs)
    for position, pkg in enumerate(pkgs):
        expected = decider.decide(pkg)
        assert bool(got.approved[position]) == expected.approved, (pkg, expected)
        assert bool(got.rejected[position]) == expected.rejected, (pkg, expected)
        assert LEVELS[got.level[position]] is expected.compliance_level, (pkg, expected)
        assert bool(got.security[position]) == expected.security, (pkg, expected)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.sampled_from(LINUX_OSES).flatmap(lambda os: st.tuples(st.just(os), baselines(os))),
    st.lists(versions(), min_size=1, max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
    st.sampled_from(PRODUCTS[:-1]),
    st.integers(-40, 40),
)
def test_bulk_verdicts_equal_decide(
    os_spec: tuple[str, dict[str, Any]],
    facts: list[dict[str, Any]],
    kinds: list[bool],
    product: str,
    days: int,
) -> None:
    _, spec = os_spec
    decider = Decider(_baseline(spec), product, NOW + timedelta(days=days))
    _assert_agree(decider, _objects(facts, kinds))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.one_of(cases().map(lambda c: c[:2]), apt_cases().map(lambda c: c[:2])))
def test_bulk_verdicts_equal_decide_on_the_engine_generators(case: tuple[Any, Any]) -> None:
    baseline, inventory = case
    decider = Decider(baseline, inventory.facts.effective_product(), NOW)
    _assert_agree(decider, [*inventory.updates, *inventory.installed])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(versions(), versions(), st.sampled_from(list(PatchFilterKey)))
def test_property_fields_name_everything_a_filter_key_reads(
    one: dict[str, Any], other: dict[str, Any], key: PatchFilterKey
) -> None:
    """Two versions equal on a key's PROPERTY_FIELDS have the same properties for that key."""
    first, second = _objects([one, other], [True, True])
    same = second.model_copy(update={f: getattr(first, f) for f in PROPERTY_FIELDS[key]})
    for os in ("AMAZON_LINUX_2023", "UBUNTU"):
        assert properties(key, first, "P", os) == properties(key, same, "P", os)  # type: ignore[arg-type]


def test_release_days_are_utc_days() -> None:
    """approveUntilDate compares the release's UTC day: a notice issued late on the last day is
    approved, one issued just after midnight UTC the next day is not."""
    spec = {
        "operatingSystem": "REDHAT_ENTERPRISE_LINUX",
        "approvalRules": [
            {
                "patchFilterGroup": {"patchFilters": [{"key": "CLASSIFICATION", "values": ["*"]}]},
                "approveUntilDate": "2026-10-31",
                "enableNonSecurity": True,
            }
        ],
    }
    decider = Decider(_baseline(spec), "RedhatEnterpriseLinux9.4", NOW)
    last = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)
    pkgs = [
        InstalledPackage(name="a", version="1-1", issued=moment)
        for moment in (last, last + timedelta(seconds=1))
    ]
    assert decider.verdicts(pkgs).approved.tolist() == [True, False]
    _assert_agree(decider, list(pkgs))


def test_dates_that_are_not_release_dates() -> None:
    """Every way approve-after-days treats a missing or stand-in date, on a grid: FirstSeen with
    and without a first scan, a build time under a baseline with sources (it does not count for
    a security-only rule), no date at all; each at, before and after the rule's boundary."""
    for os, extra, product in (
        ("UBUNTU", {"approveAfterDaysFrom": "FirstSeen"}, "Ubuntu22.04"),
        ("REDHAT_ENTERPRISE_LINUX", {}, "RedhatEnterpriseLinux9.4"),
        (
            "REDHAT_ENTERPRISE_LINUX",
            {"sources": [{"name": "mirror", "products": ["*"], "configuration": "x"}]},
            "RedhatEnterpriseLinux9.4",
        ),
    ):
        for non_security in (False, True):
            rule = {
                "patchFilterGroup": {"patchFilters": []},
                "approveAfterDays": 7,
                "enableNonSecurity": non_security,
            }
            spec = {"operatingSystem": os, "approvalRules": [rule], **extra}
            decider = Decider(_baseline(spec), product, NOW)
            pkgs: list[PackageFacts] = [
                InstalledPackage(name="a", version="1-1", security=True, **{field: moment})
                for field in ("issued", "build_time", "first_seen")
                for moment in (None, *(NOW - timedelta(days=7, seconds=s) for s in (-1, 0, 1)))
            ]
            assert decider.verdicts(pkgs).approved.any()
            _assert_agree(decider, pkgs)


def test_a_name_holding_a_newline_is_matched_form_by_form() -> None:
    """The id lists search a version's name forms joined by newlines; a name holding one would
    let an id match part of it, so such a version is matched form by form, as decide does."""
    spec = {"operatingSystem": "REDHAT_ENTERPRISE_LINUX", "rejectedPatches": ["kernel"]}
    decider = Decider(_baseline(spec), "RedhatEnterpriseLinux9.4", NOW)
    pkgs: list[PackageFacts] = [
        InstalledPackage(name=name, arch="x86_64", version="1-1")
        for name in ("x\nkernel", "kernel")
    ]
    assert decider.verdicts(pkgs).rejected.tolist() == [False, True]
    _assert_agree(decider, pkgs)
