"""Decision engine, Debian family (UBUNTU, DEBIAN, RASPBIAN): one case per documented SSM rule.

Facts from docs/ssm-semantics.md §1.4-§1.9, §2 and §3.1: security means "the
candidate comes from the security pocket", filters are PRIORITY/SECTION/PRODUCT, patch ids are
package names, there are no release dates.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconciler.api.inventory import with_first_seen
from reconciler.api.resources import PatchBaseline
from reconciler.defaults import predefined_baselines
from reconciler.evaluation import DecisionCache, evaluate
from tests.factories import NOW, baseline, inventory, rule, states

ALL_PRIORITIES = ["Required", "Important", "Standard", "Optional", "Extra"]


def _ssl(
    version: str = "3.0.2-0ubuntu1.18", *, security: bool = True, **extra: object
) -> dict[str, object]:
    return {
        "name": "openssl",
        "version": version,
        "installedVersion": "3.0.2-0ubuntu1.15",
        "security": security,
        "priority": "optional",
        "section": "utils",
        **extra,
    }


INSTALLED_SSL = {"name": "openssl", "version": "3.0.2-0ubuntu1.15", "priority": "optional"}


def test_predefined_ubuntu_default_approves_security_pocket_immediately() -> None:
    default = predefined_baselines()["aws-ubuntu-default"]
    result = evaluate(default, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)
    (patch,) = result.patches
    assert (patch.name, str(patch.state), patch.version) == (
        "openssl",
        "MISSING",
        "3.0.2-0ubuntu1.18",
    )
    assert str(patch.compliance_level) == "UNSPECIFIED"  # predefined baselines never set a level
    assert str(result.summary.compliance_status) == "NON_COMPLIANT"


def test_non_security_update_is_not_approved_without_enable_non_security() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl(security=False)]), NOW)
    assert states(result) == {"openssl": "INSTALLED_OTHER"}
    assert "not from the security repository" in result.not_approved[0].reason
    assert str(result.summary.compliance_status) == "COMPLIANT"


def test_enable_non_security_approves_updates_from_other_repositories() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES), non_security=True))
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl(security=False)]), NOW)
    assert states(result) == {"openssl": "MISSING"}


def test_priority_filter_excludes_other_priorities() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ["Required", "Important"])))
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)
    assert states(result) == {"openssl": "INSTALLED_OTHER"}
    assert result.not_approved[0].reason == "not approved: no approval rule matches"


def test_filter_values_match_case_insensitively_and_star_matches_all() -> None:
    upper = baseline("UBUNTU", rule(("PRIORITY", ["OPTIONAL"])))
    star = baseline("UBUNTU", rule(("SECTION", ["*"])))
    inv = inventory("UBUNTU", [INSTALLED_SSL], [_ssl()])
    assert states(evaluate(upper, inv, NOW)) == {"openssl": "MISSING"}
    assert states(evaluate(star, inv, NOW)) == {"openssl": "MISSING"}


def test_filters_within_a_rule_are_anded_and_rules_are_ored() -> None:
    both = baseline("UBUNTU", rule(("PRIORITY", ["Optional"]), ("SECTION", ["libs"])))
    either = baseline("UBUNTU", rule(("SECTION", ["libs"])), rule(("PRIORITY", ["Optional"])))
    inv = inventory("UBUNTU", [INSTALLED_SSL], [_ssl()])  # section utils
    assert states(evaluate(both, inv, NOW)) == {"openssl": "INSTALLED_OTHER"}
    result = evaluate(either, inv, NOW)
    assert states(result) == {"openssl": "MISSING"}
    assert result.patches[0].reason.startswith("approved by approvalRules[1]")


def test_product_filter_matches_the_machine_product() -> None:
    jammy = baseline("UBUNTU", rule(("PRODUCT", ["Ubuntu22.04"])))
    noble = baseline("UBUNTU", rule(("PRODUCT", ["Ubuntu24.04"])))
    inv = inventory("UBUNTU", [INSTALLED_SSL], [_ssl()])
    assert states(evaluate(jammy, inv, NOW)) == {"openssl": "MISSING"}
    assert states(evaluate(noble, inv, NOW)) == {"openssl": "INSTALLED_OTHER"}


def test_global_filters_exclude_before_rules() -> None:
    b = baseline(
        "UBUNTU",
        rule(("PRIORITY", ALL_PRIORITIES)),
        globalFilters={"patchFilters": [{"key": "SECTION", "values": ["kernel"]}]},
    )
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)
    assert states(result) == {"openssl": "INSTALLED_OTHER"}
    assert "excluded by globalFilters (SECTION=kernel)" in result.not_approved[0].reason


def test_approved_patches_take_names_and_cover_every_version() -> None:
    b = baseline("UBUNTU", approvedPatches=["openssl"], approvedPatchesComplianceLevel="HIGH")
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)
    (patch,) = result.patches
    assert (str(patch.state), str(patch.compliance_level)) == ("MISSING", "HIGH")
    assert patch.reason == "approved by approvedPatches entry 'openssl'"


def test_approved_patches_need_enable_non_security_for_non_security_updates() -> None:
    inv = inventory("UBUNTU", [INSTALLED_SSL], [_ssl(security=False)])
    strict = baseline("UBUNTU", approvedPatches=["openssl"])
    lenient = baseline("UBUNTU", approvedPatches=["openssl"], approvedPatchesEnableNonSecurity=True)
    assert states(evaluate(strict, inv, NOW)) == {"openssl": "INSTALLED_OTHER"}
    assert states(evaluate(lenient, inv, NOW)) == {"openssl": "MISSING"}


def test_approved_patches_apply_even_when_global_filters_discard_the_patch() -> None:
    b = baseline(
        "UBUNTU",
        approvedPatches=["openssl"],
        globalFilters={"patchFilters": [{"key": "SECTION", "values": ["kernel"]}]},
    )
    assert states(evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)) == {
        "openssl": "MISSING"
    }


def test_rejected_wins_over_approved() -> None:
    b = baseline(
        "UBUNTU",
        rule(("PRIORITY", ALL_PRIORITIES)),
        approvedPatches=["openssl"],
        rejectedPatches=["openssl"],
    )
    result = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], [_ssl()]), NOW)
    assert states(result) == {"openssl": "INSTALLED_OTHER"}  # ALLOW_AS_DEPENDENCY by default
    assert "rejected by rejectedPatches entry 'openssl'" in result.patches[0].reason


def test_installed_rejected_package_is_other_with_allow_as_dependency_and_rejected_with_block() -> (
    None
):
    telnetd = {"name": "telnetd", "version": "0.17-44", "priority": "optional"}
    allow = baseline("UBUNTU", rejectedPatches=["telnetd"])
    block = baseline("UBUNTU", rejectedPatches=["telnetd"], rejectedPatchesAction="BLOCK")
    inv = inventory("UBUNTU", [telnetd])
    assert states(evaluate(allow, inv, NOW)) == {"telnetd": "INSTALLED_OTHER"}
    result = evaluate(block, inv, NOW)
    assert states(result) == {"telnetd": "INSTALLED_REJECTED"}
    assert result.summary.installed_rejected_count == 1
    assert str(result.summary.compliance_status) == "NON_COMPLIANT"


def test_update_needing_a_blocked_package_is_missing_on_scan_and_failed_on_install() -> None:
    b = baseline(
        "UBUNTU",
        rule(("PRIORITY", ALL_PRIORITIES)),
        rejectedPatches=["telnetd"],
        rejectedPatchesAction="BLOCK",
    )
    inetd = {
        "name": "openbsd-inetd",
        "version": "0.2-5ubuntu0.1",
        "installedVersion": "0.2-5",
        "security": True,
        "priority": "optional",
        "requires": ["telnetd"],
    }
    installed = [{"name": "openbsd-inetd", "version": "0.2-5"}]
    scan = evaluate(b, inventory("UBUNTU", installed, [inetd]), NOW)
    assert states(scan) == {"openbsd-inetd": "MISSING"}
    assert not scan.patches[0].installable
    assert "needs telnetd, rejected with BLOCK" in scan.patches[0].reason
    install = evaluate(b, inventory("UBUNTU", installed, [inetd], operation="Install"), NOW)
    assert states(install) == {"openbsd-inetd": "FAILED"}


def test_allow_as_dependency_does_not_block_updates_that_need_the_rejected_package() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)), rejectedPatches=["telnetd"])
    inetd = {
        "name": "openbsd-inetd",
        "version": "0.2-5ubuntu0.1",
        "installedVersion": "0.2-5",
        "security": True,
        "priority": "optional",
        "requires": ["telnetd"],
    }
    result = evaluate(
        b, inventory("UBUNTU", [{"name": "openbsd-inetd", "version": "0.2-5"}], [inetd]), NOW
    )
    assert result.patches[0].installable


def test_latest_approved_version_wins_in_dpkg_order() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    updates = [_ssl("3.0.2-0ubuntu1.18~esm1"), _ssl("3.0.2-0ubuntu1.18"), _ssl("3.0.2-0ubuntu1.9")]
    (patch,) = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], updates), NOW).patches
    assert patch.version == "3.0.2-0ubuntu1.18"  # '~' sorts before the plain version, 1.9 < 1.18


# AWS's implicit rule for Debian and Ubuntu: the *candidate* version must come from a security
# repository (https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-installing-patches.html).
# The agent reports a security version that a newer non-security candidate shadows with
# candidate: false (docs/agent.md, Scan step 4); the implicit rule does not approve it.
SHADOWED = _ssl("3.0.2-0ubuntu1.18", candidate=False)
CANDIDATE = _ssl("3.0.2-0ubuntu1.19", security=False)
SHADOW_REASON = "a newer non-security version is the candidate"


@pytest.mark.parametrize(
    ("spec", "state", "version", "reason"),
    [
        # security only: neither version passes, the installed one stays
        (
            {"approvalRules": [rule(("PRIORITY", ALL_PRIORITIES))]},
            "INSTALLED_OTHER",
            "3.0.2-0ubuntu1.15",
            f"approvalRules[0] matches but {SHADOW_REASON} and enableNonSecurity is false",
        ),
        (
            {"approvedPatches": ["openssl"]},
            "INSTALLED_OTHER",
            "3.0.2-0ubuntu1.15",
            f"listed in approvedPatches ('openssl') but {SHADOW_REASON}; "
            "set approvedPatchesEnableNonSecurity to allow it",
        ),
        # non-security allowed: the candidate is approved and, being the latest, wins
        (
            {"approvalRules": [rule(("PRIORITY", ALL_PRIORITIES), non_security=True)]},
            "MISSING",
            "3.0.2-0ubuntu1.19",
            None,
        ),
        (
            {"approvedPatches": ["openssl"], "approvedPatchesEnableNonSecurity": True},
            "MISSING",
            "3.0.2-0ubuntu1.19",
            None,
        ),
    ],
)
def test_security_version_shadowed_by_a_newer_non_security_candidate(
    spec: dict[str, object], state: str, version: str, reason: str | None
) -> None:
    result = evaluate(
        baseline("UBUNTU", **spec), inventory("UBUNTU", [INSTALLED_SSL], [SHADOWED, CANDIDATE]), NOW
    )
    (patch,) = result.patches
    assert (str(patch.state), patch.version) == (state, version)
    skipped = {n.version: n.reason for n in result.not_approved}
    if reason is None:
        assert skipped == {}  # a chosen package is not listed again
    else:
        assert skipped["3.0.2-0ubuntu1.18"] == f"not approved: {reason}"
        assert str(result.summary.compliance_status) == "COMPLIANT"


def test_a_security_version_that_is_the_candidate_is_approved() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    updates = [_ssl("3.0.2-0ubuntu1.18", candidate=True)]
    (patch,) = evaluate(b, inventory("UBUNTU", [INSTALLED_SSL], updates), NOW).patches
    assert (str(patch.state), patch.version) == ("MISSING", "3.0.2-0ubuntu1.18")


def test_a_shadowed_decision_does_not_stick_to_the_same_version_installed_elsewhere() -> None:
    # Decisions are cached per package version across a fleet: the version installed on one
    # machine is judged as installed (from the security pocket), not as the shadowed update
    # another machine reports.
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    cache = DecisionCache()
    shadowed = inventory("UBUNTU", [INSTALLED_SSL], [SHADOWED, CANDIDATE])
    assert states(evaluate(b, shadowed, NOW, cache=cache)) == {"openssl": "INSTALLED_OTHER"}
    patched = {**INSTALLED_SSL, "version": "3.0.2-0ubuntu1.18", "security": True}
    assert states(evaluate(b, inventory("UBUNTU", [patched], [CANDIDATE]), NOW, cache=cache)) == {
        "openssl": "INSTALLED"
    }


def test_approved_update_for_a_package_that_is_not_installed_is_not_applicable() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    new = {"name": "libnew1", "version": "1.0-1", "security": True, "priority": "optional"}
    result = evaluate(b, inventory("UBUNTU", [], [new]), NOW)
    assert states(result) == {"libnew1": "NOT_APPLICABLE"}
    assert str(result.summary.compliance_status) == "COMPLIANT"


def test_installed_approved_package_awaiting_reboot_is_pending_reboot() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    kernel = {
        "name": "linux-image-6.8.0-50-generic",
        "version": "6.8.0-50.51",
        "security": True,
        "priority": "optional",
    }
    pending = inventory(
        "UBUNTU",
        [kernel],
        rebootRequired=True,
        rebootRequiredPackages=["linux-image-6.8.0-50-generic"],
    )
    rebooted = inventory("UBUNTU", [kernel])
    assert states(evaluate(b, pending, NOW)) == {kernel["name"]: "INSTALLED_PENDING_REBOOT"}
    assert states(evaluate(b, rebooted, NOW)) == {kernel["name"]: "INSTALLED"}
    summary = evaluate(b, pending, NOW).summary
    assert (summary.installed_pending_reboot_count, str(summary.compliance_status)) == (
        1,
        "NON_COMPLIANT",
    )


def test_package_installed_after_last_boot_is_pending_reboot_when_a_reboot_is_required() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    libc = {
        "name": "libc6",
        "version": "2.35-0ubuntu3.8",
        "security": True,
        "priority": "required",
        "installedTime": "2026-11-27T02:00:00Z",
    }
    older = {**libc, "name": "zlib1g", "installedTime": "2026-10-01T00:00:00Z"}
    inv = inventory(
        "UBUNTU",
        [libc, older],
        rebootRequired=True,
        bootTime=datetime(2026, 11, 1, tzinfo=UTC).isoformat(),
    )
    assert states(evaluate(b, inv, NOW)) == {
        "libc6": "INSTALLED_PENDING_REBOOT",
        "zlib1g": "INSTALLED",
    }


def test_patches_of_a_noreboot_install_are_pending_reboot_until_the_machine_boots() -> None:
    """SSM (AWS-RunPatchBaseline, RebootOption): with NoReboot, the patches the Install installed
    are INSTALLED_PENDING_REBOOT until the machine reboots, whatever the machine says about
    needing a reboot; LastNoRebootInstallOperationTime is reported."""
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    libc = {"name": "libc6", "version": "2.35-0ubuntu3.8", "security": True, "priority": "required"}
    zlib = {**libc, "name": "zlib1g", "version": "1:1.2.11.dfsg-2ubuntu9.2"}
    curl = {"name": "curl", "version": "7.81.0-1ubuntu1.16", "priority": "optional"}  # not approved
    record = {
        "time": "2026-11-27T02:00:00Z",
        "patches": [{"name": n["name"], "version": n["version"]} for n in (libc, curl)],
    }

    def booted(at: str) -> dict[str, str]:
        inv = inventory("UBUNTU", [libc, zlib, curl], bootTime=at, no_reboot_install=record)
        return states(evaluate(b, inv, NOW))

    before = booted("2026-11-01T00:00:00Z")
    # curl stays INSTALLED_OTHER: the baseline does not approve it, so no reboot makes it a patch.
    assert before == {
        "libc6": "INSTALLED_PENDING_REBOOT",
        "zlib1g": "INSTALLED",
        "curl": "INSTALLED_OTHER",
    }
    assert booted("2026-11-27T02:05:00Z")["libc6"] == "INSTALLED"
    never_booted = inventory("UBUNTU", [libc, zlib, curl], no_reboot_install=record)
    result = evaluate(b, never_booted, NOW)
    assert states(result)["libc6"] == "INSTALLED_PENDING_REBOOT"
    assert "installed by an Install with NoReboot at 2026-11-27T02:00:00+00:00" in next(
        p.reason for p in result.patches if p.name == "libc6"
    )
    assert result.summary.installed_pending_reboot_count == 1
    assert str(result.summary.compliance_status) == "NON_COMPLIANT"
    assert result.to_dict()["lastNoRebootInstallOperationTime"] == "2026-11-27T02:00:00+00:00"


def test_another_version_than_the_noreboot_install_put_there_is_not_pending() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    libc = {"name": "libc6", "version": "2.35-0ubuntu3.9", "security": True, "priority": "required"}
    record = {
        "time": "2026-11-27T02:00:00Z",
        "patches": [{"name": "libc6", "version": "2.35-0ubuntu3.8"}],
    }
    inv = inventory("UBUNTU", [libc], no_reboot_install=record)
    assert states(evaluate(b, inv, NOW)) == {"libc6": "INSTALLED"}
    assert (
        "lastNoRebootInstallOperationTime"
        not in evaluate(b, inventory("UBUNTU", [libc]), NOW).to_dict()
    )


def test_cves_are_reported_on_every_state() -> None:
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    inv = inventory("UBUNTU", [{**INSTALLED_SSL, "security": True, "cves": ["CVE-2026-0001"]}])
    assert evaluate(b, inv, NOW).patches[0].cves == ("CVE-2026-0001",)


def test_debian_predefined_default_treats_debian_security_as_security() -> None:
    default = predefined_baselines()["aws-debian-default"]
    inv = inventory(
        "DEBIAN",
        [{"name": "libc6", "version": "2.36-9+deb12u8"}],
        [
            {
                "name": "libc6",
                "version": "2.36-9+deb12u9",
                "installedVersion": "2.36-9+deb12u8",
                "security": True,
                "priority": "required",
                "origins": [
                    {
                        "origin": "Debian",
                        "label": "Debian-Security",
                        "codename": "bookworm-security",
                    }
                ],
            }
        ],
    )
    assert states(evaluate(default, inv, NOW)) == {"libc6": "MISSING"}


def test_approved_version_dpkg_left_half_configured_is_failed_not_installed() -> None:
    # The agent lists such a package as installed (it is on disk) and in `failed` (it does not
    # work); the engine must not call the machine compliant.
    b = baseline("UBUNTU", rule(("PRIORITY", ALL_PRIORITIES)))
    broken = {
        "name": "openssl",
        "version": "3.0.2-0ubuntu1.18",
        "security": True,
        "priority": "optional",
    }
    inv = inventory(
        "UBUNTU",
        [broken],
        failed=[
            {
                "name": "openssl",
                "version": "3.0.2-0ubuntu1.18",
                "reason": "dpkg left the package half-configured",
            }
        ],
    )
    result = evaluate(b, inv, NOW)
    assert states(result) == {"openssl": "FAILED"}
    assert "not working: dpkg left the package half-configured" in result.patches[0].reason
    assert (result.summary.failed_count, str(result.summary.compliance_status)) == (
        1,
        "NON_COMPLIANT",
    )


# -- Patchwarden extension: approveAfterDays counted from the first scan that saw the version ----

SEEN = "2026-11-20T09:30:15Z"
SEEN_AT = datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)


def _first_seen_baseline(days: int = 7) -> PatchBaseline:
    return baseline(
        "DEBIAN", rule(("PRIORITY", ALL_PRIORITIES), days=days), approveAfterDaysFrom="FirstSeen"
    )


@pytest.mark.parametrize(
    ("now", "state"),
    [
        (datetime(2026, 11, 27, 9, 30, 14, tzinfo=UTC), "INSTALLED_OTHER"),  # 1 s before 7 x 24 h
        (datetime(2026, 11, 27, 9, 30, 15, tzinfo=UTC), "MISSING"),  # exactly 7 x 24 h
    ],
)
def test_first_seen_opt_in_approves_at_first_seen_plus_days_to_the_second(
    now: datetime, state: str
) -> None:
    inv = inventory("DEBIAN", [INSTALLED_SSL], [_ssl(firstSeen=SEEN)])
    result = evaluate(_first_seen_baseline(), inv, now)
    assert states(result) == {"openssl": state}
    reasons = [p.reason for p in result.patches] + [n.reason for n in result.not_approved]
    assert any(f"first seen {SEEN}" in (r or "") for r in reasons)
    if state == "INSTALLED_OTHER":
        assert result.not_approved[0].reason == (
            "not approved: approvalRules[0] approves it from 2026-11-27T09:30:15Z "
            f"(first seen {SEEN} + 7 days)"
        )


def test_first_seen_opt_in_without_a_recorded_time_does_not_approve_and_says_why() -> None:
    inv = inventory("DEBIAN", [INSTALLED_SSL], [_ssl()])
    result = evaluate(_first_seen_baseline(), inv, NOW)
    assert states(result) == {"openssl": "INSTALLED_OTHER"}
    assert result.not_approved[0].reason == (
        "not approved: approvalRules[0] approves it 7 days after it is first seen; "
        "no scan has recorded this version yet"
    )


def test_without_the_opt_in_a_first_seen_time_changes_nothing() -> None:
    # SSM's rule: Debian-family rules take no date and approve at once, whatever was recorded.
    b = baseline("DEBIAN", rule(("PRIORITY", ALL_PRIORITIES)))
    inv = inventory("DEBIAN", [INSTALLED_SSL], [_ssl(firstSeen=SEEN)])
    assert states(evaluate(b, inv, SEEN_AT)) == {"openssl": "MISSING"}


def test_store_times_merge_into_the_inventory_as_the_earliest_over_the_archives() -> None:
    origins = [
        {"origin": "Debian", "suite": "bookworm-security"},
        {"origin": "Debian", "suite": "bookworm"},
    ]
    inv = inventory("DEBIAN", [INSTALLED_SSL], [_ssl(arch="amd64", origins=origins)])
    key = ("openssl", "amd64", "3.0.2-0ubuntu1.18", "Debian/bookworm-security")
    other = ("openssl", "amd64", "3.0.2-0ubuntu1.18", "Debian/bookworm")
    merged = with_first_seen(inv, {key: SEEN_AT, other: NOW})
    assert merged.updates[0].first_seen == SEEN_AT
    assert merged.installed[0].first_seen is None  # no origins: nothing recorded for it
    assert states(evaluate(_first_seen_baseline(), merged, NOW)) == {"openssl": "MISSING"}
