"""Stage: evaluation. The counts of one instance: SSM's Summary of its patch rows.

:func:`summarize` counts rows one by one. The engine counts faster with the packed form: each
row's share of the counts is one int (:func:`weight`), cached with the row, and an instance's
Summary is :func:`unpack` of their sum. Both give the same Summary.

Pure: no I/O. Imports only ``reconciler.api`` and the engine's result types; knows nothing of
baselines, inventories or decisions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from reconciler.api.enums import (
    COMPLIANCE_LEVEL_ORDER,
    ComplianceLevel,
    ComplianceStatus,
    PatchState,
)
from reconciler.evaluation.results import NON_COMPLIANT_STATES, PatchResult, Summary


def summarize(rows: Iterable[PatchResult], *, asu_non_compliant: bool = False) -> Summary:
    """SSM's counts for one instance's patch results."""
    states: Counter[PatchState] = Counter()
    critical = security = other = 0
    worst: int | None = None
    for row in rows:
        states[row.state] += 1
        violation = row.state in NON_COMPLIANT_STATES or (
            asu_non_compliant and row.state is PatchState.AVAILABLE_SECURITY_UPDATE
        )
        if not violation:
            continue
        level = COMPLIANCE_LEVEL_ORDER.index(row.compliance_level)
        worst = level if worst is None else min(worst, level)
        is_critical = row.compliance_level is ComplianceLevel.CRITICAL
        critical += is_critical
        security += row.security
        other += not (is_critical or row.security)
    return _summary(states, critical, security, other, worst)


def _summary(
    states: Mapping[PatchState, int], critical: int, security: int, other: int, worst: int | None
) -> Summary:
    """The Summary of these counts: rows per state (all states, or a Counter), violations that
    are critical, security or other, and the index in COMPLIANCE_LEVEL_ORDER of the worst."""
    return Summary(
        installed_count=states[PatchState.INSTALLED],
        installed_other_count=states[PatchState.INSTALLED_OTHER],
        installed_pending_reboot_count=states[PatchState.INSTALLED_PENDING_REBOOT],
        installed_rejected_count=states[PatchState.INSTALLED_REJECTED],
        missing_count=states[PatchState.MISSING],
        failed_count=states[PatchState.FAILED],
        not_applicable_count=states[PatchState.NOT_APPLICABLE],
        # Every NOT_APPLICABLE patch has a row, so none goes unreported (Summary's docstring).
        unreported_not_applicable_count=0,
        available_security_update_count=states[PatchState.AVAILABLE_SECURITY_UPDATE],
        critical_non_compliant_count=critical,
        security_non_compliant_count=security,
        other_non_compliant_count=other,
        compliance_status=ComplianceStatus.NON_COMPLIANT
        if worst is not None
        else ComplianceStatus.COMPLIANT,
        compliance_severity=COMPLIANCE_LEVEL_ORDER[worst] if worst is not None else None,
    )


# Counts, packed. Each row's share of its instance's Summary is one int (its weight) made of
# 15-bit fields, one count each, so that an instance's counts are a sum() of cached ints rather
# than a loop over its rows. INSTALLED_OTHER, the commonest state, has no field (it is the rows
# left over) and weighs 0; the fields an installed row needs come first, so that the installed
# rows' weights sum in a machine word, sum()'s fast path. An instance with FIELD_LIMIT rows or
# more is counted by summarize() instead.
_BITS = 15
FIELD_LIMIT = 1 << _BITS
_STATE_FIELD: dict[PatchState, int | None] = {
    PatchState.INSTALLED: 0,
    PatchState.INSTALLED_REJECTED: 1,
    PatchState.INSTALLED_OTHER: None,
    PatchState.INSTALLED_PENDING_REBOOT: 4,
    PatchState.MISSING: 5,
    PatchState.FAILED: 6,
    PatchState.NOT_APPLICABLE: 7,
    PatchState.AVAILABLE_SECURITY_UPDATE: 8,
}
_SECURITY_FIELD = 2  # violations that are security updates
_LEVEL_FIELD: dict[ComplianceLevel, int] = {  # violations per compliance level
    ComplianceLevel.UNSPECIFIED: 3,  # (the level of every INSTALLED_REJECTED row)
    ComplianceLevel.CRITICAL: 9,
    ComplianceLevel.HIGH: 10,
    ComplianceLevel.MEDIUM: 11,
    ComplianceLevel.LOW: 12,
    ComplianceLevel.INFORMATIONAL: 13,
}
_CRITICAL_SECURITY_FIELD = 14  # violations both CRITICAL and security (counted once as "other")
_FIELDS = 15


def weight(row: PatchResult | None, asu_non_compliant: bool) -> int:
    """``row``'s share of the counts (0 for no row): 1 in each field it counts in."""
    if row is None:
        return 0
    return weight_of(row.state, row.compliance_level, row.security, asu_non_compliant)


def weight_of(
    state: PatchState, level: ComplianceLevel, security: bool, asu_non_compliant: bool
) -> int:
    """The weight of a row with this state, compliance level and security flag (the only fields
    counted): the decision tables (:mod:`reconciler.evaluation.tables`) weigh rows they never
    build."""
    fields = [_STATE_FIELD[state]]
    if state in NON_COMPLIANT_STATES or (
        asu_non_compliant and state is PatchState.AVAILABLE_SECURITY_UPDATE
    ):
        fields.append(_LEVEL_FIELD[level])
        if security:
            fields.append(_SECURITY_FIELD)
            if level is ComplianceLevel.CRITICAL:
                fields.append(_CRITICAL_SECURITY_FIELD)
    packed = sum(1 << (field * _BITS) for field in fields if field is not None)
    return _WEIGHTS.setdefault(packed, packed)


# One int object per distinct weight (a few dozen): summing an instance's weights then reads a
# few hot objects rather than one object per cached entry scattered over the heap.
_WEIGHTS: dict[int, int] = {}


def unpack(packed: int, rows: int) -> Summary:
    """The Summary of ``rows`` rows (fewer than FIELD_LIMIT) whose weights sum to ``packed``;
    the same as summarize() over those rows."""
    return from_fields(fields(packed), rows)


def fields(packed: int) -> list[int]:
    """The counts in ``packed`` (a weight, or a sum of fewer than FIELD_LIMIT), one per field:
    the fields of a sum are the sums of the fields, so the decision tables add them up for
    many instances at once as a matrix product."""
    return [(packed >> (field * _BITS)) & (FIELD_LIMIT - 1) for field in range(_FIELDS)]


def from_fields(count: Sequence[int], rows: int) -> Summary:
    """The Summary of ``rows`` rows (fewer than FIELD_LIMIT) whose weights' fields() sum to
    ``count``."""
    states = {state: count[f] for state, f in _STATE_FIELD.items() if f is not None}
    by_level = [count[_LEVEL_FIELD[level]] for level in COMPLIANCE_LEVEL_ORDER]
    worst = next((index for index, n in enumerate(by_level) if n), None)
    critical = count[_LEVEL_FIELD[ComplianceLevel.CRITICAL]]
    security = count[_SECURITY_FIELD]
    other = sum(by_level) - critical - security + count[_CRITICAL_SECURITY_FIELD]
    states[PatchState.INSTALLED_OTHER] = rows - sum(states.values())  # the rows left over
    return _summary(states, critical, security, other, worst)
