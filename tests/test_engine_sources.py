"""SSM's rule for a baseline's sources (alternative repositories): with approveAfterDays, a
patch they give no release date is not approved unless the rule enables non-security updates
(docs/ssm-semantics.md "Sources"); a source for another product changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import Decider, evaluate
from tests.factories import NOW, baseline, inventory, rule, states

KERNEL = {"name": "kernel", "version": "5.14.0-427.13.1.el9_4"}
UPDATE = {
    "name": "kernel",
    "version": "5.14.0-427.42.1.el9_4",
    "installedVersion": "5.14.0-427.13.1.el9_4",
    "classification": "Security",
    "severity": "Critical",
    "advisoryIds": ["RHSA-2026:1001"],
}
REPO = "[main]\nname=Mirror\nbaseurl=https://mirror.example/rhel9\n"


def _source(*products: str) -> dict[str, Any]:
    return {"name": "mirror", "products": list(products), "configuration": REPO}


def _baseline(products: tuple[str, ...], non_security: bool = False) -> PatchBaseline:
    return baseline(
        "REDHAT_ENTERPRISE_LINUX",
        rule(("CLASSIFICATION", ["Security"]), days=7, non_security=non_security),
        sources=[_source(*products)],
    )


def _evaluate(products: tuple[str, ...], non_security: bool = False, **dates: str) -> Any:
    machine = inventory("REDHAT_ENTERPRISE_LINUX", [KERNEL], [{**UPDATE, **dates}])
    return evaluate(_baseline(products, non_security), machine, NOW)


def test_an_undated_patch_from_the_sources_is_not_approved_after_days() -> None:
    for dates in ({}, {"buildTime": "2020-01-01T00:00:00Z"}):  # build time is no release date
        result = _evaluate(("RedhatEnterpriseLinux9.4",), **dates)
        assert states(result)["kernel"] == "INSTALLED_OTHER"
        machine = inventory("REDHAT_ENTERPRISE_LINUX", [KERNEL], [{**UPDATE, **dates}])
        decider = Decider(
            _baseline(("RedhatEnterpriseLinux9.4",)), machine.facts.effective_product(), NOW
        )
        reason = decider.decide(machine.updates[0]).reason
        assert "the baseline's sources give it no release date" in reason


def test_enable_non_security_or_a_release_date_approves_it() -> None:
    assert states(_evaluate(("*",), non_security=True))["kernel"] == "MISSING"
    issued = datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    assert states(_evaluate(("*",), issued=issued))["kernel"] == "MISSING"


def test_a_source_for_another_product_changes_nothing() -> None:
    assert states(_evaluate(("AmazonLinux2023",)))["kernel"] == "MISSING"
