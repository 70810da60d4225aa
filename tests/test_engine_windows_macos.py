"""Decision engine, Windows and macOS semantics (their agents come later; the rules live here now).

Windows: KB and bulletin ids, MSRC severity, 1970-01-01 for a missing date, NOT_APPLICABLE for
updates that do not apply, AVAILABLE_SECURITY_UPDATE per availableSecurityUpdatesComplianceStatus
(reference §1.2, §3.3, §7.1). macOS: CLASSIFICATION is the package manager (§1.4).
"""

from __future__ import annotations

import pytest

from reconciler.defaults import predefined_baselines
from reconciler.evaluation import evaluate
from tests.factories import NOW, baseline, inventory, rule, states

WINDOWS_RULE = rule(
    ("PRODUCT", ["WindowsServer2022"]),
    ("CLASSIFICATION", ["SecurityUpdates", "CriticalUpdates"]),
    ("MSRC_SEVERITY", ["Critical", "Important"]),
    days=7,
    level="CRITICAL",
)


def _kb(kb: str, **fields: object) -> dict[str, object]:
    return {
        "name": kb,
        "kbId": kb,
        "version": "1",
        "product": "WindowsServer2022",
        "productFamily": "Windows",
        "classification": "SecurityUpdates",
        "severity": "Critical",
        "issued": "2026-11-01",
        **fields,
    }


def test_windows_rule_approves_by_product_classification_and_msrc_severity() -> None:
    b = baseline("WINDOWS", WINDOWS_RULE)
    inv = inventory(
        "WINDOWS",
        [_kb("KB1000001")],
        [
            _kb("KB1000002"),
            _kb("KB1000003", severity="Low"),
            _kb("KB1000004", product="WindowsServer2019"),
        ],
    )
    result = evaluate(b, inv, NOW)
    assert states(result) == {"KB1000001": "INSTALLED", "KB1000002": "MISSING"}
    assert str(result.summary.compliance_severity) == "CRITICAL"


def test_windows_patch_set_and_product_family_select_application_updates() -> None:
    # SSM's PATCH_SET tells OS updates from Microsoft application updates; an update that
    # reports no patch set is an OS update, as SSM's default PATCH_SET value says.
    b = baseline(
        "WINDOWS", rule(("PATCH_SET", ["APPLICATION"]), ("PRODUCT_FAMILY", ["Office"]), days=0)
    )
    office = {"product": "Office 2016", "productFamily": "Office", "classification": "Updates"}
    inv = inventory(
        "WINDOWS",
        [],
        [
            _kb("KB2000001", patchSet="APPLICATION", **office),
            _kb("KB2000002", **office),
            _kb("KB2000003", patchSet="APPLICATION", productFamily="Windows"),
        ],
    )
    assert states(evaluate(b, inv, NOW)) == {"KB2000001": "MISSING"}


def test_windows_missing_release_date_is_1970_so_any_delay_has_passed() -> None:
    b = baseline("WINDOWS", WINDOWS_RULE)
    assert states(evaluate(b, inventory("WINDOWS", [], [_kb("KB1000002", issued=None)]), NOW)) == {
        "KB1000002": "MISSING"
    }


@pytest.mark.parametrize("patch_id", ["KB1000002", "kb1000002", "MS17-010"])
def test_windows_approved_patches_take_kb_and_bulletin_ids(patch_id: str) -> None:
    b = baseline("WINDOWS", approvedPatches=[patch_id])
    kb = _kb("KB1000002", classification="Updates", advisoryIds=["MS17-010"])
    assert states(evaluate(b, inventory("WINDOWS", [], [kb]), NOW)) == {"KB1000002": "MISSING"}


def test_windows_update_that_does_not_apply_is_not_applicable() -> None:
    b = baseline("WINDOWS", WINDOWS_RULE)
    result = evaluate(b, inventory("WINDOWS", [], [_kb("KB1000002", applicable=False)]), NOW)
    assert states(result) == {"KB1000002": "NOT_APPLICABLE"}
    assert result.summary.not_applicable_count == 1


@pytest.mark.parametrize(
    ("status", "compliance"), [("NON_COMPLIANT", "NON_COMPLIANT"), ("COMPLIANT", "COMPLIANT")]
)
def test_available_security_update_follows_the_baseline_setting(
    status: str, compliance: str
) -> None:
    b = baseline("WINDOWS", WINDOWS_RULE, availableSecurityUpdatesComplianceStatus=status)
    waiting = _kb("KB1000009", issued="2026-11-26")  # approved on 2026-12-03
    result = evaluate(b, inventory("WINDOWS", [], [waiting]), NOW)
    assert states(result) == {"KB1000009": "AVAILABLE_SECURITY_UPDATE"}
    assert result.summary.available_security_update_count == 1
    assert str(result.summary.compliance_status) == compliance


def test_without_the_setting_an_unapproved_security_update_is_not_reported() -> None:
    b = baseline("WINDOWS", WINDOWS_RULE)
    result = evaluate(b, inventory("WINDOWS", [], [_kb("KB1000009", issued="2026-11-26")]), NOW)
    assert states(result) == {}
    assert result.not_approved[0].name == "KB1000009"


def test_windows_predefined_default() -> None:
    default = predefined_baselines()["aws-windows-default"]
    inv = inventory("WINDOWS", [], [_kb("KB1"), _kb("KB2", classification="Drivers")])
    assert states(evaluate(default, inv, NOW)) == {"KB1": "MISSING"}


def test_macos_classification_is_the_package_manager() -> None:
    b = baseline("MACOS", rule(("CLASSIFICATION", ["brew"]), days=0))
    inv = inventory(
        "MACOS",
        [
            {"name": "git", "version": "2.45.0", "classification": "brew"},
            {
                "name": "XProtectPlistConfigData",
                "version": "2180",
                "classification": "softwareupdate",
            },
        ],
        [
            {
                "name": "git",
                "version": "2.47.1",
                "installedVersion": "2.45.0",
                "classification": "brew",
            },
            {
                "name": "XProtectPlistConfigData",
                "version": "2190",
                "installedVersion": "2180",
                "classification": "softwareupdate",
            },
        ],
    )
    assert states(evaluate(b, inv, NOW)) == {
        "git": "MISSING",
        "XProtectPlistConfigData": "INSTALLED_OTHER",
    }
    default = predefined_baselines()["aws-macos-default"]
    assert states(evaluate(default, inv, NOW)) == {
        "git": "MISSING",
        "XProtectPlistConfigData": "MISSING",
    }


# Microsoft's CriticalUpdates fix critical bugs that are not security bugs
# (https://learn.microsoft.com/en-us/troubleshoot/windows-client/installing-updates-features-roles/standard-terminology-software-updates);
# SSM's SecurityNonCompliantCount counts the patches a notice calls Security
# (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_InstancePatchState.html).
@pytest.mark.parametrize(
    ("classification", "security", "other"),
    [("SecurityUpdates", 1, 0), ("CriticalUpdates", 0, 1), ("Updates", 0, 1)],
)
def test_only_security_updates_count_as_security_violations(
    classification: str, security: int, other: int
) -> None:
    b = baseline(
        "WINDOWS",
        rule(("CLASSIFICATION", [classification]), days=7, level="HIGH"),
    )
    missing = _kb("KB1000002", classification=classification)
    summary = evaluate(b, inventory("WINDOWS", [], [missing]), NOW).summary
    assert (summary.missing_count, summary.critical_non_compliant_count) == (1, 0)
    assert (summary.security_non_compliant_count, summary.other_non_compliant_count) == (
        security,
        other,
    )


@pytest.mark.parametrize(
    ("classification", "reported"), [("SecurityUpdates", 1), ("CriticalUpdates", 0)]
)
def test_an_unapproved_critical_update_is_not_an_available_security_update(
    classification: str, reported: int
) -> None:
    b = baseline("WINDOWS", WINDOWS_RULE, availableSecurityUpdatesComplianceStatus="NON_COMPLIANT")
    waiting = _kb("KB1000009", classification=classification, issued="2026-11-26")
    result = evaluate(b, inventory("WINDOWS", [], [waiting]), NOW)
    assert result.summary.available_security_update_count == reported
    assert str(result.summary.compliance_status) == ("NON_COMPLIANT" if reported else "COMPLIANT")
    assert [n.name for n in result.not_approved] == ["KB1000009"]


def test_every_not_applicable_patch_is_named_so_none_is_unreported() -> None:
    b = baseline("WINDOWS", WINDOWS_RULE)
    updates = [_kb(f"KB100000{n}", applicable=False) for n in range(3)]
    result = evaluate(b, inventory("WINDOWS", [], updates), NOW)
    assert result.summary.not_applicable_count == len(result.patches) == 3
    assert result.summary.to_dict()["unreportedNotApplicableCount"] == 0
