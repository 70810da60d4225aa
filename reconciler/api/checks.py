"""Stage: api. Checks of one PatchBaseline that depend on its operating system's vocabulary.

The pydantic models check shape and SSM's numeric limits; these checks add what SSM validates per
operating system: which filter keys and values exist, which fields are Linux- or Windows-only,
whether a rule needs a date, and the approved/rejected id formats (reference §1.4-§1.6; the
package-name forms are :mod:`reconciler.api.names`'s). Each problem names the path inside the
document, so the caller can attach ``file:line``. Pure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence

from reconciler.api.enums import (
    APT_SYSTEMS,
    LINUX_SYSTEMS,
    VALID_FILTERS,
    ApproveAfterDaysFrom,
    Family,
    OperatingSystem,
    family_of,
)
from reconciler.api.names import accepted_forms, fits_a_form
from reconciler.api.resources import PatchBaselineSpec, PatchFilterGroup, PatchRule

Path = tuple[str | int, ...]
Issue = tuple[Path, str]

CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$", re.IGNORECASE)
BUGZILLA_ID = re.compile(r"^\d+$")
# RHSA-2024:1234, ALAS-2018-123, ALAS2023-2024-123, ELSA-2024-1234, RLSA-2024:1234, FEDORA-2024-abc
ADVISORY_ID = re.compile(r"^[A-Z][A-Z0-9]*-\d{4}[:-][0-9A-Za-z]+$")
WINDOWS_ID = re.compile(r"^(KB\d+|MS\d{2}-\d{3})$", re.IGNORECASE)


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' when a choice is close to ``value``, else ''."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def baseline_issues(spec: PatchBaselineSpec) -> list[Issue]:
    """Every OS-specific problem of a baseline spec, with its path under ``spec``."""
    issues: list[Issue] = []
    os = spec.operating_system
    if spec.global_filters is not None:
        issues += _filter_issues(os, spec.global_filters, ("spec", "globalFilters"))
    for index, rule in enumerate(spec.approval_rules):
        path: Path = ("spec", "approvalRules", index)
        issues += _filter_issues(os, rule.patch_filter_group, (*path, "patchFilterGroup"))
        issues += _date_issues(spec, rule, path)
        if rule.enable_non_security and os not in LINUX_SYSTEMS:
            issues.append(((*path, "enableNonSecurity"), f"applies to Linux only, not {os}"))
    if spec.approve_after_days_from is not None and os not in APT_SYSTEMS:
        issues.append(
            (
                ("spec", "approveAfterDaysFrom"),
                f"applies to DEBIAN, UBUNTU and RASPBIAN only, not {os}; {os} rules count "
                "approveAfterDays from the release date",
            )
        )
    if spec.approved_patches_enable_non_security and os not in LINUX_SYSTEMS:
        issues.append(
            (("spec", "approvedPatchesEnableNonSecurity"), f"applies to Linux only, not {os}")
        )
    if spec.sources and os not in LINUX_SYSTEMS:
        issues.append((("spec", "sources"), f"alternative sources apply to Linux only, not {os}"))
    if (
        spec.available_security_updates_compliance_status is not None
        and os is not OperatingSystem.WINDOWS
    ):
        issues.append(
            (("spec", "availableSecurityUpdatesComplianceStatus"), "applies to WINDOWS only")
        )
    issues += _id_issues(os, spec.approved_patches, "approvedPatches", rejected=False)
    issues += _id_issues(os, spec.rejected_patches, "rejectedPatches", rejected=True)
    return issues


def _date_issues(spec: PatchBaselineSpec, rule: PatchRule, path: Path) -> list[Issue]:
    """SSM: apt packages carry no release dates, so Debian-family rules take no date, and every
    other rule takes exactly one. Patchwarden's ``approveAfterDaysFrom: FirstSeen`` lets
    Debian-family rules give approveAfterDays (docs/decision-engine.md)."""
    os = spec.operating_system
    after, until = rule.approve_after_days is not None, rule.approve_until_date is not None
    if os in APT_SYSTEMS:
        first_seen = spec.approve_after_days_from is ApproveAfterDaysFrom.FIRST_SEEN
        if until or (after and not first_seen):
            field = "approveUntilDate" if until else "approveAfterDays"
            hint = "" if until else ", or set spec.approveAfterDaysFrom: FirstSeen"
            return [
                (
                    (*path, field),
                    f"{os} packages carry no release dates; remove {field}{hint} "
                    "(Debian-family rules approve immediately)",
                )
            ]
        return []
    if not after and not until:
        return [(path, "give approveAfterDays or approveUntilDate")]
    if after and until:
        return [(path, "give approveAfterDays or approveUntilDate, not both")]
    return []


def _filter_issues(os: OperatingSystem, group: PatchFilterGroup, path: Path) -> Iterator[Issue]:
    valid = VALID_FILTERS[os]
    seen: set[str] = set()
    for index, patch_filter in enumerate(group.patch_filters):
        here: Path = (*path, "patchFilters", index)
        key = patch_filter.key
        if key not in valid:
            names = [str(k) for k in valid]
            yield (
                (*here, "key"),
                f"{key} is not a filter key for {os}; use one of {', '.join(names)}"
                + did_you_mean(str(key), names),
            )
            continue
        if key in seen:
            yield ((*here, "key"), f"{key} appears twice in this filter group; merge the values")
        seen.add(key)
        allowed = valid[key]
        if allowed is None:
            continue
        lowered = {a.lower() for a in allowed}
        for vindex, value in enumerate(patch_filter.values):
            if value != "*" and value.lower() not in lowered:
                yield (
                    (*here, "values", vindex),
                    f"{value!r} is not a {key} value for {os}; use one of "
                    f"{', '.join(allowed)} or '*'" + did_you_mean(value, allowed),
                )


def _id_issues(
    os: OperatingSystem, ids: Sequence[str], field: str, *, rejected: bool
) -> Iterator[Issue]:
    family = family_of(os)
    for index, patch_id in enumerate(ids):
        problem = _id_problem(os, family, patch_id, rejected=rejected)
        if problem is not None:
            yield (("spec", field, index), problem)


def _id_problem(
    os: OperatingSystem, family: Family, patch_id: str, *, rejected: bool
) -> str | None:
    """Why ``patch_id`` is not an entry SSM accepts on ``os``, or None when it is: an entry in no
    documented form would match nothing, and an option-like one must never reach a command line."""
    if family is Family.WINDOWS:
        if WINDOWS_ID.fullmatch(patch_id):
            return None
        return f"{patch_id!r}: Windows patch ids are KB ids (KB5034439) or bulletin ids (MS17-010)"
    stars = patch_id.count("*")
    if family is Family.MACOS and stars:
        return f"{patch_id!r}: wildcards are not supported on MACOS; give full names"
    if stars > 1:
        return f"{patch_id!r}: at most one '*' wildcard is allowed"
    notice = _is_notice_id(patch_id)
    if family is Family.RPM and notice:
        if not rejected:
            return None
        return (
            f"{patch_id!r}: rejectedPatches takes package names on {os}; CVE, advisory and "
            "Bugzilla ids are accepted in approvedPatches only"
        )
    if family in (Family.APT, Family.MACOS) and notice:
        return f"{patch_id!r}: {os} patch ids are package names, not CVE or advisory ids"
    if family is Family.SUSE and CVE_ID.match(patch_id):
        return f"{patch_id!r}: {os} patch ids are package or patch names, not CVE ids"
    if fits_a_form(patch_id, family):
        return None
    return f"{patch_id!r} is in none of the forms {os} accepts; give " + accepted_forms(
        family, rejected=rejected
    )


def _is_notice_id(patch_id: str) -> bool:
    return bool(
        CVE_ID.match(patch_id) or BUGZILLA_ID.match(patch_id) or ADVISORY_ID.match(patch_id)
    )
