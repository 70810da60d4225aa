"""Small builders for baselines and inventories, so each test states only what it is about.

They go through the same validation as users' files (``PatchBaseline.model_validate`` on the wire
shape, then the OS-specific checks), so a test can never build a baseline a user could not write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.api.checks import baseline_issues
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def rule(
    *filters: tuple[str, list[str]],
    days: int | None = None,
    until: str | None = None,
    level: str | None = None,
    non_security: bool = False,
) -> dict[str, Any]:
    """An approval rule on the wire: ``rule(("CLASSIFICATION", ["Security"]), days=7)``."""
    out: dict[str, Any] = {
        "patchFilterGroup": {"patchFilters": [{"key": k, "values": v} for k, v in filters]}
    }
    if days is not None:
        out["approveAfterDays"] = days
    if until is not None:
        out["approveUntilDate"] = until
    if level is not None:
        out["complianceLevel"] = level
    if non_security:
        out["enableNonSecurity"] = True
    return out


def baseline(os: str, *rules: dict[str, Any], name: str = "test", **spec: Any) -> PatchBaseline:
    """A validated PatchBaseline; extra camelCase spec fields as keyword arguments."""
    document = {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchBaseline",
        "metadata": {"name": name},
        "spec": {"operatingSystem": os, "approvalRules": list(rules), **spec},
    }
    result = PatchBaseline.model_validate(document)
    issues = baseline_issues(result.spec)
    assert not issues, f"test baseline is invalid: {issues}"
    return result


_FACTS = {
    "UBUNTU": {"osId": "ubuntu", "osVersion": "22.04", "codename": "jammy", "arch": "amd64"},
    "DEBIAN": {"osId": "debian", "osVersion": "12", "codename": "bookworm", "arch": "amd64"},
    "AMAZON_LINUX_2": {"osId": "amzn", "osVersion": "2", "arch": "x86_64"},
    "AMAZON_LINUX_2023": {"osId": "amzn", "osVersion": "2023", "arch": "x86_64"},
    "REDHAT_ENTERPRISE_LINUX": {"osId": "rhel", "osVersion": "9.4", "arch": "x86_64"},
    "CENTOS": {"osId": "centos", "osVersion": "9", "arch": "x86_64"},
    "ORACLE_LINUX": {"osId": "ol", "osVersion": "9.4", "arch": "x86_64"},
    "ROCKY_LINUX": {"osId": "rocky", "osVersion": "9.4", "arch": "x86_64"},
    "ALMA_LINUX": {"osId": "almalinux", "osVersion": "9.4", "arch": "x86_64"},
    "SUSE": {"osId": "sles", "osVersion": "15.5", "arch": "x86_64"},
    "WINDOWS": {
        "osId": "windows",
        "osVersion": "2022",
        "arch": "x86_64",
        "product": "WindowsServer2022",
    },
    "MACOS": {"osId": "macos", "osVersion": "14.5", "arch": "arm64"},
}


def inventory(
    os: str,
    installed: list[dict[str, Any]] | None = None,
    updates: list[dict[str, Any]] | None = None,
    *,
    failed: list[dict[str, Any]] | None = None,
    operation: str = "Scan",
    no_reboot_install: dict[str, Any] | None = None,
    **facts: Any,
) -> Inventory:
    """An inventory for ``os``; package dicts in camelCase, arch defaults to the machine's."""
    base = dict(_FACTS[os])
    arch = base["arch"]
    return Inventory.model_validate(
        {
            "noRebootInstall": no_reboot_install,
            "instanceId": "i-test",
            "collectedAt": "2026-11-28T06:00:00Z",
            "operation": operation,
            "facts": {**base, "operatingSystem": os, **facts},
            "installed": [{"arch": arch, **p} for p in installed or []],
            "updates": [{"arch": arch, **u} for u in updates or []],
            "failed": [{"arch": arch, **f} for f in failed or []],
        }
    )


def states(result: Any) -> dict[str, str]:
    """name -> state of an InstanceEvaluation's patches."""
    return {p.name: str(p.state) for p in result.patches}
