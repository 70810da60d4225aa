"""Properties of the decision engine that must hold for every baseline and inventory (hypothesis).

- deterministic: the same input gives the same output;
- a rejected id always wins: a rejected package is never approved, whatever else says so;
- adding an approval rule never un-approves a patch;
- the counts add up to the number of patches reported.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.enums import PatchState
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import evaluate

OSES = ["REDHAT_ENTERPRISE_LINUX", "AMAZON_LINUX_2023", "SUSE"]
NAMES = ["kernel", "openssl", "bash", "curl", "glibc", "vim", "tzdata", "sudo"]
CLASSIFICATIONS = ["Security", "Bugfix", "Enhancement", "Recommended", None]
SEVERITIES = ["Critical", "Important", "Moderate", "Low", None]
APPROVED_STATES = {
    PatchState.MISSING,
    PatchState.FAILED,
    PatchState.INSTALLED,
    PatchState.INSTALLED_PENDING_REBOOT,
    PatchState.NOT_APPLICABLE,
}

days = st.integers(min_value=0, max_value=400).map(
    lambda d: (date(2026, 11, 28) - timedelta(days=d)).isoformat()
)
# Timestamps (notices and build times carry the time of day), around NOW to the second, so
# approve-after-days is exercised at its boundaries as well as the date-only form.
moments = st.integers(min_value=0, max_value=400 * 86400).map(
    lambda s: (datetime(2026, 11, 28, 12, tzinfo=UTC) - timedelta(seconds=s)).isoformat()
)


@st.composite
def packages(draw: st.DrawFn, *, update: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": draw(st.sampled_from(NAMES)),
        "arch": "x86_64",
        "version": f"{draw(st.integers(1, 5))}.{draw(st.integers(0, 9))}-{draw(st.integers(1, 9))}.el9",
        "classification": draw(st.sampled_from(CLASSIFICATIONS)),
        "severity": draw(st.sampled_from(SEVERITIES)),
        "advisoryIds": draw(
            st.lists(st.sampled_from(["RHSA-2026:1", "RHBA-2026:2", "RHEA-2026:3"]), max_size=1)
        ),
        "cves": draw(st.lists(st.sampled_from(["CVE-2026-1", "CVE-2026-2"]), max_size=2)),
        "issued": draw(st.none() | days | moments),
        "updated": draw(st.none() | days | moments),
        "buildTime": draw(st.none() | moments),
    }
    if update:
        out["installedVersion"] = draw(st.none() | st.just("1.0-1.el9"))
        out["requires"] = draw(st.lists(st.sampled_from(NAMES), max_size=2))
    return out


@st.composite
def inventories(draw: st.DrawFn, os: str) -> Inventory:
    return Inventory.model_validate(
        {
            "instanceId": "i-prop",
            "collectedAt": "2026-11-28T00:00:00Z",
            "operation": draw(st.sampled_from(["Scan", "Install"])),
            "facts": {
                "osId": "x",
                "osVersion": "9",
                "operatingSystem": os,
                "arch": "x86_64",
                "rebootRequired": draw(st.booleans()),
                "rebootRequiredPackages": draw(st.lists(st.sampled_from(NAMES), max_size=2)),
            },
            "installed": draw(
                st.lists(packages(update=False), max_size=6, unique_by=lambda p: p["name"])
            ),
            "updates": draw(st.lists(packages(update=True), max_size=10)),
        }
    )


def _values(key: str) -> st.SearchStrategy[list[str]]:
    pool = (
        ["Security", "Bugfix", "Enhancement", "*"]
        if key == "CLASSIFICATION"
        else ["Critical", "Important", "Moderate", "Low", "*"]
    )
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(["CLASSIFICATION", "SEVERITY"]), unique=True, max_size=2))
    out: dict[str, Any] = {
        "patchFilterGroup": {
            "patchFilters": [{"key": k, "values": draw(_values(k))} for k in keys]
        },
        "enableNonSecurity": draw(st.booleans()),
        "complianceLevel": draw(st.sampled_from(["CRITICAL", "HIGH", "LOW", "UNSPECIFIED"])),
    }
    if draw(st.booleans()):
        out["approveAfterDays"] = draw(st.integers(0, 30))
    else:
        out["approveUntilDate"] = draw(days)
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[PatchBaseline, Inventory, dict[str, Any]]:
    os = draw(st.sampled_from(OSES))
    spec: dict[str, Any] = {
        "operatingSystem": os,
        "approvalRules": draw(st.lists(rules(), max_size=3)),
        "approvedPatches": draw(
            st.lists(st.sampled_from([*NAMES, "CVE-2026-1", "RHBA-2026:2"]), max_size=2)
        ),
        "rejectedPatches": draw(st.lists(st.sampled_from(NAMES), max_size=2)),
        "rejectedPatchesAction": draw(st.sampled_from(["ALLOW_AS_DEPENDENCY", "BLOCK"])),
        "approvedPatchesEnableNonSecurity": draw(st.booleans()),
    }
    return _baseline(spec), draw(inventories(os)), spec


def _baseline(spec: dict[str, Any]) -> PatchBaseline:
    return PatchBaseline.model_validate(
        {
            "apiVersion": "patchwarden.io/v1alpha1",
            "kind": "PatchBaseline",
            "metadata": {"name": "p"},
            "spec": spec,
        }
    )


NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases())
def test_evaluation_is_deterministic(case: tuple[PatchBaseline, Inventory, dict[str, Any]]) -> None:
    baseline, inventory, _ = case
    assert evaluate(baseline, inventory, NOW) == evaluate(baseline, inventory, NOW)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases())
def test_counts_add_up_to_the_patches_reported(
    case: tuple[PatchBaseline, Inventory, dict[str, Any]],
) -> None:
    baseline, inventory, _ = case
    result = evaluate(baseline, inventory, NOW)
    assert result.summary.total == len(result.patches)
    non_compliant = result.summary.missing_count + result.summary.failed_count
    non_compliant += (
        result.summary.installed_rejected_count + result.summary.installed_pending_reboot_count
    )
    assert (str(result.summary.compliance_status) == "NON_COMPLIANT") == (non_compliant > 0)
    # every patch is reported once: one row per (name, arch)
    keys = [(p.name, p.arch) for p in result.patches]
    assert len(keys) == len(set(keys))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases(), st.sampled_from(NAMES))
def test_a_rejected_id_always_wins(
    case: tuple[PatchBaseline, Inventory, dict[str, Any]], name: str
) -> None:
    _, inventory, spec = case
    rejected = _baseline(
        {**spec, "rejectedPatches": [name], "approvedPatches": [*spec["approvedPatches"], name]}
    )
    for patch in evaluate(rejected, inventory, NOW).patches:
        if patch.name == name:
            assert patch.state not in APPROVED_STATES, patch


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases(), rules())
def test_adding_a_rule_never_unapproves(
    case: tuple[PatchBaseline, Inventory, dict[str, Any]], extra: dict[str, Any]
) -> None:
    baseline, inventory, spec = case
    if len(spec["approvalRules"]) >= 10:
        return
    wider = _baseline({**spec, "approvalRules": [*spec["approvalRules"], extra]})
    before = {
        (p.name, p.arch): p
        for p in evaluate(baseline, inventory, NOW).patches
        if p.state in APPROVED_STATES
    }
    after = {
        (p.name, p.arch): p
        for p in evaluate(wider, inventory, NOW).patches
        if p.state in APPROVED_STATES
    }
    assert set(before) <= set(after)


# -- apt: the candidate rule -------------------------------------------------------------------


@st.composite
def apt_cases(draw: st.DrawFn) -> tuple[PatchBaseline, Inventory, dict[str, Any]]:
    """Ubuntu inventories whose updates come from the security pocket or not and are apt's
    candidate or not (the agent's ``candidate: false``), under security-only or wider baselines."""
    spec: dict[str, Any] = {
        "operatingSystem": "UBUNTU",
        "approvalRules": [
            {
                "patchFilterGroup": {"patchFilters": [{"key": "PRIORITY", "values": ["*"]}]},
                "enableNonSecurity": non_security,
            }
            for non_security in draw(st.lists(st.booleans(), max_size=2))
        ],
        "approvedPatches": draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)),
        "approvedPatchesEnableNonSecurity": draw(st.booleans()),
    }
    version = st.integers(2, 9).map(lambda n: f"1.{n}-1")
    flags = {"security": st.booleans(), "priority": st.just("optional")}
    installed = [
        {"name": name, "version": "1.0-1", **{k: draw(v) for k, v in flags.items()}}
        for name in draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True))
    ]
    offered = draw(st.sets(st.tuples(st.sampled_from(NAMES), version), max_size=8))
    updates = [
        {
            "name": name,
            "version": number,
            "installedVersion": "1.0-1",
            "candidate": draw(st.booleans()),
            **{k: draw(v) for k, v in flags.items()},
        }
        for name, number in sorted(offered)
    ]
    inventory = Inventory.model_validate(
        {
            "instanceId": "i-apt",
            "collectedAt": "2026-11-28T00:00:00Z",
            "facts": {
                "osId": "ubuntu",
                "osVersion": "24.04",
                "operatingSystem": "UBUNTU",
                "arch": "amd64",
            },
            "installed": installed,
            "updates": updates,
        }
    )
    return _baseline(spec), inventory, spec


@settings(max_examples=300, deadline=None, derandomize=True)
@given(apt_cases())
def test_apt_security_only_never_approves_a_version_that_is_not_the_candidate(
    case: tuple[PatchBaseline, Inventory, dict[str, Any]],
) -> None:
    """AWS: on Debian and Ubuntu the implicit rule approves a package only when its candidate
    version is from a security repository; non-security updates need enableNonSecurity."""
    baseline, inventory, spec = case
    wider = spec["approvedPatchesEnableNonSecurity"] or any(
        r["enableNonSecurity"] for r in spec["approvalRules"]
    )
    offered = {(u.name, u.version): u for u in inventory.updates}
    for patch in evaluate(baseline, inventory, NOW).patches:
        update = offered.get((patch.name, patch.version))
        if update is not None and patch.state in APPROVED_STATES and not wider:
            assert update.security and update.candidate, patch
