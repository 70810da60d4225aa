"""Decision engine, RPM family (Amazon Linux, RHEL, CentOS, Oracle, Rocky, Alma) and SUSE.

One case per documented SSM rule (docs/ssm-semantics.md §1.4-§1.9, §2, §3.1, §3.3):
update notices make a version eligible, approve-after-days counts whole 24 hours from a
UTC timestamp (approve-until-date a whole UTC day) taken from each OS's date source with SSM's
fallbacks, patch ids may be CVE, advisory, Bugzilla or full names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from reconciler.defaults import predefined_baselines
from reconciler.evaluation import evaluate
from tests.factories import NOW, baseline, inventory, rule, states

KERNEL = {"name": "kernel", "version": "5.14.0-427.13.1.el9_4"}


def _update(**fields: object) -> dict[str, object]:
    return {
        "name": "kernel",
        "version": "5.14.0-427.42.1.el9_4",
        "installedVersion": "5.14.0-427.13.1.el9_4",
        "classification": "Security",
        "severity": "Critical",
        "advisoryIds": ["RHSA-2026:1001"],
        "cves": ["CVE-2026-1111"],
        "bugzillaIds": ["2260001"],
        **fields,
    }


def _state(b: object, when: datetime, os: str = "REDHAT_ENTERPRISE_LINUX", **fields: object) -> str:
    result = evaluate(b, inventory(os, [KERNEL], [_update(**fields)]), when)  # type: ignore[arg-type]
    return states(result)["kernel"]


SECURITY_7_DAYS = rule(
    ("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Critical", "Important"]), days=7
)


# AWS's PatchRule text: "If a patch is released at 2025-11-09T18:00:00Z and ApproveAfterDays is
# set to 7, the patch will be approved after 2025-11-16T18:00:00Z".
AWS_RELEASE = "2025-11-09T18:00:00Z"
AWS_APPROVAL = datetime(2025, 11, 16, 18, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (AWS_APPROVAL - SECOND, "INSTALLED_OTHER"),
        (AWS_APPROVAL + SECOND, "MISSING"),
        # The same moments written in UTC+2: the instant counts, not the clock's day.
        (
            datetime(2025, 11, 16, 19, 59, 59, tzinfo=timezone(timedelta(hours=2))),
            "INSTALLED_OTHER",
        ),
        (datetime(2025, 11, 16, 20, 0, 1, tzinfo=timezone(timedelta(hours=2))), "MISSING"),
    ],
)
def test_approve_after_days_counts_whole_24_hours_from_the_release_timestamp(
    now: datetime, expected: str
) -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", SECURITY_7_DAYS)
    assert _state(b, now, issued=AWS_RELEASE) == expected


def test_pending_rule_says_when_it_will_approve_and_which_date_it_used() -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", SECURITY_7_DAYS)
    dates = {"issued": "2026-11-20T08:00:00Z", "updated": "2026-11-25T09:30:00Z"}
    inv = inventory("REDHAT_ENTERPRISE_LINUX", [KERNEL], [_update(**dates)])
    (skipped,) = evaluate(b, inv, NOW).not_approved
    assert skipped.reason == (
        "not approved: approvalRules[0] approves it from 2026-12-02T09:30:00Z "
        "(updated 2026-11-25T09:30:00Z + 7 days)"
    )
    (row,) = evaluate(b, inv, datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)).patches
    assert row.reason.endswith("updated 2026-11-25T09:30:00Z, approved since 2026-12-02T09:30:00Z)")


@pytest.mark.parametrize(
    ("issued", "expected"),
    [
        ("2023-07-07", "MISSING"),
        ("2023-07-07T23:59:59Z", "MISSING"),
        ("2023-07-08T00:00:00Z", "INSTALLED_OTHER"),
        ("2023-07-08", "INSTALLED_OTHER"),
    ],
)
def test_approve_until_date_includes_the_whole_cutoff_day(issued: str, expected: str) -> None:
    # SSM's example: cutoff July 7, 2023 approves everything released that UTC day or before.
    b = baseline(
        "REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["Security"]), until="2023-07-07")
    )
    assert _state(b, NOW, issued=issued) == expected


# Notice released July 1 00:00, updated July 7 12:00: a 7-day rule approves from July 8 00:00
# when the release counts, from July 14 12:00 when the update does.
RELEASED_THEN_UPDATED = {"issued": "2026-07-01T00:00:00Z", "updated": "2026-07-07T12:00:00Z"}
BY_RELEASE = datetime(2026, 7, 14, 11, 59, 59, tzinfo=UTC)  # approved only if the release counts


@pytest.mark.parametrize(
    ("os", "counts_from"),
    [
        ("AMAZON_LINUX_2", "updated"),
        ("AMAZON_LINUX_2023", "updated"),
        ("REDHAT_ENTERPRISE_LINUX", "updated"),
        ("CENTOS", "updated"),
        ("ORACLE_LINUX", "updated"),
        ("ROCKY_LINUX", "updated"),
        ("ALMA_LINUX", "updated"),
        ("SUSE", "updated"),
    ],
)
def test_each_family_counts_from_its_documented_date(os: str, counts_from: str) -> None:
    # Amazon Linux: the notice's updated date; RHEL, CentOS, Oracle, Rocky, Alma and SUSE: the
    # later of released and updated ("7 days after they are released or updated").
    b = baseline(os, SECURITY_7_DAYS)
    assert _state(b, BY_RELEASE, os, **RELEASED_THEN_UPDATED) == "INSTALLED_OTHER"
    later = datetime(2026, 7, 14, 12, 0, 1, tzinfo=UTC)
    assert _state(b, later, os, **RELEASED_THEN_UPDATED) == "MISSING"
    result = evaluate(b, inventory(os, [KERNEL], [_update(**RELEASED_THEN_UPDATED)]), later)
    assert f"; {counts_from} 2026-07-07T12:00:00Z," in result.patches[0].reason


def test_an_update_date_before_the_release_counts_only_on_amazon_linux() -> None:
    # A notice whose updated date is older than its release: the later one (the release) counts
    # on RHEL; Amazon Linux takes the updated date as it is.
    dates = {"issued": "2026-07-07T12:00:00Z", "updated": "2026-07-01T00:00:00Z"}
    rhel = baseline("REDHAT_ENTERPRISE_LINUX", SECURITY_7_DAYS)
    al2 = baseline("AMAZON_LINUX_2", SECURITY_7_DAYS)
    assert _state(rhel, BY_RELEASE, **dates) == "INSTALLED_OTHER"
    assert _state(al2, BY_RELEASE, "AMAZON_LINUX_2", **dates) == "MISSING"


@pytest.mark.parametrize("os", ["AMAZON_LINUX_2", "REDHAT_ENTERPRISE_LINUX", "ORACLE_LINUX"])
def test_a_notice_with_only_a_release_date_counts_from_it(os: str) -> None:
    b = baseline(os, SECURITY_7_DAYS)
    assert _state(b, AWS_APPROVAL - SECOND, os, issued=AWS_RELEASE) == "INSTALLED_OTHER"
    assert _state(b, AWS_APPROVAL + SECOND, os, issued=AWS_RELEASE) == "MISSING"


@pytest.mark.parametrize("os", ["AMAZON_LINUX_2", "REDHAT_ENTERPRISE_LINUX", "CENTOS"])
def test_missing_release_date_falls_back_to_build_time(os: str) -> None:
    b = baseline(os, SECURITY_7_DAYS)
    built = "2026-11-25T10:00:00Z"  # approved from 2026-12-02T10:00:00Z
    approval = datetime(2026, 12, 2, 10, tzinfo=UTC)
    assert _state(b, approval - SECOND, os, buildTime=built) == "INSTALLED_OTHER"
    assert _state(b, approval + SECOND, os, buildTime=built) == "MISSING"
    result = evaluate(b, inventory(os, [KERNEL], [_update(buildTime=built)]), approval)
    assert "; build time 2026-11-25T10:00:00Z, approved since" in result.patches[0].reason


def test_a_notice_date_wins_over_the_build_time() -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", SECURITY_7_DAYS)
    dated = {"issued": AWS_RELEASE, "buildTime": "2025-01-01T00:00:00Z"}
    assert _state(b, AWS_APPROVAL - SECOND, **dated) == "INSTALLED_OTHER"


@pytest.mark.parametrize("os", ["ORACLE_LINUX", "ROCKY_LINUX", "ALMA_LINUX", "AMAZON_LINUX_2"])
def test_no_date_at_all_means_no_delay(os: str) -> None:
    # SSM: without a release date or build time the auto-approval delay is treated as zero.
    assert _state(baseline(os, SECURITY_7_DAYS), NOW, os) == "MISSING"
    result = evaluate(baseline(os, SECURITY_7_DAYS), inventory(os, [KERNEL], [_update()]), NOW)
    assert result.patches[0].reason.endswith("; no release date, so no delay)")


@pytest.mark.parametrize("os", ["ORACLE_LINUX", "ROCKY_LINUX", "ALMA_LINUX", "SUSE"])
def test_build_time_is_not_a_release_date_outside_amazon_linux_rhel_and_centos(os: str) -> None:
    b = baseline(os, SECURITY_7_DAYS)
    assert _state(b, NOW, os, buildTime="2026-11-27T00:00:00Z") == "MISSING"


def test_an_old_inventory_with_dates_only_still_evaluates_from_midnight_utc() -> None:
    # Inventories written before timestamps carry YYYY-MM-DD: the day's midnight UTC counts.
    b = baseline("REDHAT_ENTERPRISE_LINUX", SECURITY_7_DAYS)
    approval = datetime(2026, 12, 2, tzinfo=UTC)
    assert _state(b, approval - SECOND, issued="2026-11-25") == "INSTALLED_OTHER"
    assert _state(b, approval, issued="2026-11-25") == "MISSING"
    old = inventory("REDHAT_ENTERPRISE_LINUX", [KERNEL], [_update(issued="2026-11-25")])
    assert old.updates[0].issued == approval - timedelta(days=7)


def test_update_without_a_notice_needs_enable_non_security() -> None:
    bare = {"classification": None, "severity": None, "advisoryIds": [], "cves": []}
    strict = baseline("REDHAT_ENTERPRISE_LINUX", rule(("PRODUCT", ["*"]), days=0))
    lenient = baseline(
        "REDHAT_ENTERPRISE_LINUX", rule(("PRODUCT", ["*"]), days=0, non_security=True)
    )
    assert _state(strict, NOW, **bare) == "INSTALLED_OTHER"
    assert _state(lenient, NOW, **bare) == "MISSING"


def test_centos_default_approves_non_security_updates_after_seven_days() -> None:
    default = predefined_baselines()["aws-centos-default"]
    bare = {
        "classification": None,
        "severity": None,
        "advisoryIds": [],
        "issued": None,
        "buildTime": "2026-11-10T00:00:00Z",
    }
    assert _state(default, NOW, "CENTOS", **bare) == "MISSING"
    # Before the seven days the update waits, and the installed version (no date: no delay) is
    # itself approved, so the package counts as INSTALLED.
    assert _state(default, datetime(2026, 11, 16, tzinfo=UTC), "CENTOS", **bare) == "INSTALLED"


def test_classification_filter_excludes_packages_without_classification() -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["Security"]), days=0))
    assert _state(b, NOW, classification=None) == "INSTALLED_OTHER"


@pytest.mark.parametrize(
    ("patch_id", "approved"),
    [
        ("CVE-2026-1111", True),
        ("cve-2026-1111", True),
        ("RHSA-2026:1001", True),
        ("2260001", True),  # numbers-only ids are Bugzilla ids
        ("kernel-5.14.0-427.42.1.el9_4.x86_64", True),
        ("kernel-*.x86_64", True),
        ("kernel-5.14.0-427.13.1.el9_4.x86_64", False),  # the installed version, not the update
        ("CVE-2026-9999", False),
        ("RHSA-2026:9999", False),
        ("openssl*", False),
    ],
)
def test_rpm_approved_patch_id_formats(patch_id: str, approved: bool) -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", approvedPatches=[patch_id])
    assert (_state(b, NOW, classification="Bugfix", severity=None) == "MISSING") is approved


def test_rejected_wildcard_blocks_every_matching_package() -> None:
    b = baseline(
        "AMAZON_LINUX_2023",
        rule(("CLASSIFICATION", ["Security"]), days=0),
        rejectedPatches=["kernel-debug*"],
        rejectedPatchesAction="BLOCK",
    )
    inv = inventory(
        "AMAZON_LINUX_2023",
        [
            {"name": "kernel-debug", "version": "6.1.1-1.amzn2023"},
            {"name": "kernel", "version": "6.1.1-1.amzn2023"},
        ],
        [
            _update(
                name="kernel-debug", version="6.1.2-1.amzn2023", installedVersion="6.1.1-1.amzn2023"
            ),
            _update(name="kernel", version="6.1.2-1.amzn2023", installedVersion="6.1.1-1.amzn2023"),
        ],
    )
    assert states(evaluate(b, inv, NOW)) == {
        "kernel": "MISSING",
        "kernel-debug": "INSTALLED_REJECTED",
    }


def test_amazon_linux_2023_treats_medium_and_moderate_as_one_severity() -> None:
    b = baseline(
        "AMAZON_LINUX_2023",
        rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Moderate"]), days=0),
    )
    assert _state(b, NOW, "AMAZON_LINUX_2023", severity="Medium") == "MISSING"
    rhel = baseline(
        "REDHAT_ENTERPRISE_LINUX",
        rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Moderate"]), days=0),
    )
    assert _state(rhel, NOW, severity="Medium") == "INSTALLED_OTHER"


def test_latest_approved_version_wins_in_rpm_order_with_epochs() -> None:
    b = baseline("REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["Security"]), days=0))
    updates = [
        _update(version="5.14.0-503.1.el9"),
        _update(version="1:5.14.0-1.el9"),
        _update(version="5.14.0-427.42.1.el9_4"),
    ]
    (patch,) = evaluate(b, inventory("REDHAT_ENTERPRISE_LINUX", [KERNEL], updates), NOW).patches
    assert patch.version == "1:5.14.0-1.el9"


def test_failed_install_is_failed_and_counts_as_non_compliant() -> None:
    b = baseline(
        "REDHAT_ENTERPRISE_LINUX", rule(("CLASSIFICATION", ["Security"]), days=0, level="HIGH")
    )
    inv = inventory(
        "REDHAT_ENTERPRISE_LINUX",
        [KERNEL],
        [_update()],
        failed=[
            {"name": "kernel", "version": "5.14.0-427.42.1.el9_4", "reason": "scriptlet failed"}
        ],
    )
    result = evaluate(b, inv, NOW)
    assert states(result) == {"kernel": "FAILED"}
    assert "install failed: scriptlet failed" in result.patches[0].reason
    assert (result.summary.failed_count, str(result.summary.compliance_severity)) == (1, "HIGH")


def test_compliance_counts_follow_ssm_definitions() -> None:
    b = baseline(
        "REDHAT_ENTERPRISE_LINUX",
        rule(("CLASSIFICATION", ["Security"]), days=0, level="CRITICAL"),
        rule(("CLASSIFICATION", ["Bugfix"]), days=0, level="MEDIUM"),
    )
    inv = inventory(
        "REDHAT_ENTERPRISE_LINUX",
        [KERNEL, {"name": "bash", "version": "5.1-1.el9"}, {"name": "vim", "version": "9.0-1.el9"}],
        [
            _update(),
            _update(
                name="bash",
                version="5.1-2.el9",
                installedVersion="5.1-1.el9",
                classification="Bugfix",
                advisoryIds=["RHBA-2026:1"],
            ),
        ],
    )
    s = evaluate(b, inv, NOW).summary
    assert (s.missing_count, s.installed_other_count) == (2, 1)
    assert (
        s.critical_non_compliant_count,
        s.security_non_compliant_count,
        s.other_non_compliant_count,
    ) == (1, 1, 1)
    assert str(s.compliance_severity) == "CRITICAL"


def test_suse_patch_name_and_category() -> None:
    b = baseline(
        "SUSE", rule(("CLASSIFICATION", ["Security"]), ("SEVERITY", ["Important"]), days=0)
    )
    by_name = baseline("SUSE", approvedPatches=["SUSE-SLE-Module-Basesystem-15-SP5-2026-4010"])
    inv = inventory(
        "SUSE",
        [
            {"name": "libopenssl3", "version": "3.0.8-1.1"},
            {"name": "systemd", "version": "249-1.1"},
        ],
        [
            {
                "name": "libopenssl3",
                "version": "3.0.8-2.1",
                "installedVersion": "3.0.8-1.1",
                "classification": "Security",
                "severity": "Important",
                "advisoryIds": ["SUSE-SLE-Module-Basesystem-15-SP5-2026-4001"],
                "issued": "2026-11-01",
            },
            {
                "name": "systemd",
                "version": "249-2.1",
                "installedVersion": "249-1.1",
                "classification": "Recommended",
                "severity": "Low",
                "advisoryIds": ["SUSE-SLE-Module-Basesystem-15-SP5-2026-4010"],
                "issued": "2026-11-03",
            },
        ],
    )
    assert states(evaluate(b, inv, NOW)) == {"libopenssl3": "MISSING", "systemd": "INSTALLED_OTHER"}
    assert states(evaluate(by_name, inv, NOW)) == {
        "libopenssl3": "INSTALLED_OTHER",
        "systemd": "MISSING",
    }


@pytest.mark.parametrize(
    ("name", "classification", "severity", "approved"),
    [
        ("aws-redhat-default", "Security", "Critical", True),
        ("aws-redhat-default", "Security", "Moderate", False),
        ("aws-redhat-default", "Bugfix", None, True),
        ("aws-redhat-default", "Enhancement", None, False),
        ("aws-oracle-linux-default", "Security", "Critical", False),
        ("aws-oracle-linux-default", "Security", "Moderate", True),
        ("aws-suse-default", "Security", "Important", True),
        ("aws-suse-default", "Recommended", "Important", False),
    ],
)
def test_predefined_rpm_defaults(
    name: str, classification: str, severity: str | None, approved: bool
) -> None:
    b = predefined_baselines()[name]
    os = str(b.spec.operating_system)
    fields = {"classification": classification, "severity": severity, "issued": "2026-11-01"}
    assert (_state(b, NOW, os, **fields) == "MISSING") is approved
    # ... and nothing is approved before its seven days are up.
    assert _state(b, datetime(2026, 11, 7, tzinfo=UTC), os, **fields) == "INSTALLED_OTHER"
