"""Stage: evaluation. The decision engine: (baseline, inventory, now) -> per-patch states + counts.

SSM's order on the machine (reference §1.9): global filters, then approval rules (with the implicit
"security repositories only" rule unless enableNonSecurity), then approvedPatches, then
rejectedPatches (rejection always wins); when several versions of a package are approved the latest
wins. A decision depends on the baseline and the package version, not on the instance, so a
:class:`Decider` caches decisions and is shared across a fleet (:class:`DecisionCache`).

Pure: no I/O, and the clock is an argument. May import ``reconciler.api`` only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from reconciler.api.enums import (
    COMPLIANCE_LEVEL_ORDER,
    LINUX_SYSTEMS,
    ComplianceLevel,
    ComplianceStatus,
    Family,
    OperatingSystem,
    Operation,
    PatchState,
    RejectedPatchesAction,
    family_of,
)
from reconciler.api.inventory import (
    AvailableUpdate,
    Facts,
    InstalledPackage,
    Inventory,
    PackageFacts,
)
from reconciler.api.resources import PatchBaseline, PatchFilterGroup
from reconciler.evaluation.matching import (
    FilterMatcher,
    IdMatcher,
    compile_filter,
    compile_id,
    properties,
    release_day,
    utc_day,
)
from reconciler.evaluation.results import (
    NON_COMPLIANT_STATES,
    Approval,
    InstanceEvaluation,
    NotApproved,
    PatchResult,
    Summary,
)
from reconciler.evaluation.versions import comparator

_SECURITY_CLASSIFICATIONS = frozenset({"security", "securityupdates", "criticalupdates"})


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    filters: tuple[FilterMatcher, ...]
    approve_after_days: int | None
    approve_until_date: date | None
    compliance_level: ComplianceLevel
    enable_non_security: bool


class Decider:
    """One baseline compiled for one product and one UTC day, with a cache of its decisions."""

    def __init__(self, baseline: PatchBaseline, product: str, today: date) -> None:
        spec = baseline.spec
        self.baseline = baseline
        self.os = spec.operating_system
        self.family = family_of(self.os)
        self.product = product
        self.today = today
        self.block = spec.rejected_patches_action is RejectedPatchesAction.BLOCK
        self._linux = self.os in LINUX_SYSTEMS
        self._global = _compile_group(spec.global_filters, self.os)
        self._rules = tuple(
            _Rule(
                index,
                _compile_group(rule.patch_filter_group, self.os),
                rule.approve_after_days,
                rule.approve_until_date,
                rule.compliance_level,
                rule.enable_non_security,
            )
            for index, rule in enumerate(spec.approval_rules)
        )
        self._approved = tuple(compile_id(i, self.family) for i in spec.approved_patches)
        self._rejected = tuple(compile_id(i, self.family) for i in spec.rejected_patches)
        self._approved_level = spec.approved_patches_compliance_level
        self._approved_non_security = spec.approved_patches_enable_non_security
        self._cache: dict[PackageFacts, Approval] = {}
        self._blocked_names: dict[str, str | None] = {}

    # -- one package version ------------------------------------------------------------------

    def decide(self, pkg: PackageFacts) -> Approval:
        """Whether the baseline approves this package version, and why (cached)."""
        found = self._cache.get(pkg)
        if found is None:
            found = self._cache[pkg] = self._decide(pkg)
        return found

    def _decide(self, pkg: PackageFacts) -> Approval:
        security = self._is_security_advisory(pkg)
        eligible = self._security_eligible(pkg)
        rejected_by = _first(self._rejected, pkg, self.family)
        if rejected_by is not None:
            action = "BLOCK" if self.block else "ALLOW_AS_DEPENDENCY"
            return Approval(
                False,
                True,
                ComplianceLevel.UNSPECIFIED,
                f"rejected by rejectedPatches entry {rejected_by.text!r} ({action})",
                security,
            )
        why_not = "no approval rule matches"
        excluded = self._failed_filter(self._global, pkg)
        if excluded is not None:
            why_not = f"excluded by globalFilters ({excluded.text})"
        else:
            for rule in self._rules:
                verdict = self._rule_verdict(rule, pkg, eligible)
                if verdict is None:
                    continue
                approved, text = verdict
                if approved:
                    return Approval(True, False, rule.compliance_level, text, security)
                why_not = text
        listed = _first(self._approved, pkg, self.family)
        if listed is not None:
            if eligible or self._approved_non_security:
                return Approval(
                    True,
                    False,
                    self._approved_level,
                    f"approved by approvedPatches entry {listed.text!r}",
                    security,
                )
            why_not = (
                f"listed in approvedPatches ({listed.text!r}) but not a security update; "
                "set approvedPatchesEnableNonSecurity to allow it"
            )
        return Approval(
            False, False, ComplianceLevel.UNSPECIFIED, f"not approved: {why_not}", security
        )

    def _rule_verdict(
        self, rule: _Rule, pkg: PackageFacts, eligible: bool
    ) -> tuple[bool, str] | None:
        """None when the rule's filters do not match; else (approved, reason)."""
        if self._failed_filter(rule.filters, pkg) is not None:
            return None
        name = f"approvalRules[{rule.index}]"
        if self._linux and not rule.enable_non_security and not eligible:
            return (
                False,
                f"{name} matches but {_not_security(self.family)} and enableNonSecurity is false",
            )
        released, source = release_day(pkg, self.os)
        criteria = ", ".join(f.text for f in rule.filters) or "all patches"
        if rule.approve_after_days is not None:
            if released is None:
                return True, f"approved by {name} ({criteria}; {source}, so no delay)"
            approve_on = released + timedelta(days=rule.approve_after_days)
            if self.today >= approve_on:
                return True, (
                    f"approved by {name} ({criteria}; {source} {released}, "
                    f"approved since {approve_on})"
                )
            return (
                False,
                f"{name} approves it on {approve_on} "
                f"({source} {released} + {rule.approve_after_days} days)",
            )
        if rule.approve_until_date is not None and released is not None:
            if released <= rule.approve_until_date:
                return True, (
                    f"approved by {name} ({criteria}; {source} {released}, "
                    f"on or before {rule.approve_until_date})"
                )
            return (
                False,
                f"{name} approves patches released until {rule.approve_until_date}; "
                f"{source} {released}",
            )
        return True, f"approved by {name} ({criteria})"

    def _failed_filter(
        self, filters: tuple[FilterMatcher, ...], pkg: PackageFacts
    ) -> FilterMatcher | None:
        for matcher in filters:
            if not matcher.matches(properties(matcher.key, pkg, self.product, self.os)):
                return matcher
        return None

    def _security_eligible(self, pkg: PackageFacts) -> bool:
        """Passes SSM's implicit rule: from a security repository or referenced by a notice."""
        if self.family is Family.APT:
            return pkg.security
        if self.family in (Family.RPM, Family.SUSE):
            return pkg.security or bool(pkg.advisory_ids)
        return True

    def _is_security_advisory(self, pkg: PackageFacts) -> bool:
        if self.family is Family.APT:
            return pkg.security
        return (pkg.classification or "").lower() in _SECURITY_CLASSIFICATIONS

    def blocked_dependency(self, update: AvailableUpdate) -> str | None:
        """The first package ``update`` needs that is rejected with BLOCK, if any."""
        if not self.block:
            return None
        for name in update.requires:
            if name not in self._blocked_names:
                hit = next((m for m in self._rejected if m.matches_name(name)), None)
                self._blocked_names[name] = hit.text if hit else None
            if self._blocked_names[name] is not None:
                return name
        return None


def _first(matchers: tuple[IdMatcher, ...], pkg: PackageFacts, family: Family) -> IdMatcher | None:
    return next((m for m in matchers if m.matches(pkg, family)), None)


def _compile_group(
    group: PatchFilterGroup | None, os: OperatingSystem
) -> tuple[FilterMatcher, ...]:
    if group is None:
        return ()
    return tuple(compile_filter(f, os) for f in group.patch_filters)


def _not_security(family: Family) -> str:
    if family is Family.APT:
        return "the version is not from the security repository"
    return "no update notice references the version"


class DecisionCache:
    """Deciders shared across instances: one per (baseline, product, UTC day)."""

    def __init__(self) -> None:
        self._deciders: dict[tuple[int, str, date], Decider] = {}
        self._keep: list[PatchBaseline] = []  # keeps id() keys valid

    def decider(self, baseline: PatchBaseline, product: str, today: date) -> Decider:
        key = (id(baseline), product, today)
        found = self._deciders.get(key)
        if found is None:
            found = self._deciders[key] = Decider(baseline, product, today)
            self._keep.append(baseline)
        return found


# ---------------------------------------------------------------------------------------------
# One instance


def evaluate(
    baseline: PatchBaseline,
    inventory: Inventory,
    now: datetime,
    *,
    patch_group: str | None = None,
    cache: DecisionCache | None = None,
) -> InstanceEvaluation:
    """Every patch's state on ``inventory``'s machine under ``baseline`` at ``now``."""
    facts = inventory.facts
    today = utc_day(now)
    product = facts.effective_product()
    decider = (cache or DecisionCache()).decider(baseline, product, today)
    compare = comparator(decider.family)
    install = inventory.operation is Operation.INSTALL
    failed = {(f.name, f.arch, f.version): f.reason for f in inventory.failed}

    chosen: dict[tuple[str, str], tuple[AvailableUpdate, Approval]] = {}
    passed_over: list[tuple[AvailableUpdate, Approval]] = []
    for update in inventory.updates:
        approval = decider.decide(update)
        key = (update.name, update.arch)
        if not approval.approved:
            passed_over.append((update, approval))
            continue
        best = chosen.get(key)
        if best is None or compare(update.version, best[0].version) > 0:
            chosen[key] = (update, approval)  # the latest approved version wins

    rows: list[PatchResult] = [
        _update_row(decider, update, approval, failed, install)
        for update, approval in chosen.values()
    ]
    for pkg in inventory.installed:
        if (pkg.name, pkg.arch) not in chosen:
            rows.append(_installed_row(decider, pkg, facts))
    not_approved = []
    asu = baseline.spec.available_security_updates_compliance_status
    seen_asu: set[tuple[str, str]] = set()
    for update, approval in passed_over:
        key = (update.name, update.arch)
        if key in chosen:
            continue
        not_approved.append(NotApproved(update.name, update.arch, update.version, approval.reason))
        if asu is not None and approval.security and not approval.rejected and key not in seen_asu:
            seen_asu.add(key)
            rows.append(
                _row(update, PatchState.AVAILABLE_SECURITY_UPDATE, approval, approval.reason)
            )
    return InstanceEvaluation(
        instance_id=inventory.instance_id,
        operating_system=str(facts.operating_system),
        baseline=baseline.metadata.name,
        patch_group=patch_group,
        operation=str(inventory.operation),
        evaluated_at=now,
        patches=tuple(rows),
        summary=summarize(rows, asu_non_compliant=asu is ComplianceStatus.NON_COMPLIANT),
        not_approved=tuple(not_approved),
    )


def _update_row(
    decider: Decider,
    update: AvailableUpdate,
    approval: Approval,
    failed: dict[tuple[str, str, str], str],
    install: bool,
) -> PatchResult:
    blocked = decider.blocked_dependency(update)
    if blocked is not None:
        reason = f"{approval.reason}; cannot be installed: needs {blocked}, rejected with BLOCK"
        state = PatchState.FAILED if install else PatchState.MISSING
        return _row(update, state, approval, reason, installable=False)
    failure = failed.get((update.name, update.arch, update.version))
    if failure is not None:
        return _row(
            update, PatchState.FAILED, approval, f"{approval.reason}; install failed: {failure}"
        )
    if not update.applicable or (
        update.installed_version is None and decider.family is not Family.WINDOWS
    ):
        why = (
            "does not apply to this machine"
            if not update.applicable
            else "package is not installed"
        )
        return _row(update, PatchState.NOT_APPLICABLE, approval, f"{approval.reason}; {why}")
    return _row(update, PatchState.MISSING, approval, approval.reason)


def _installed_row(decider: Decider, pkg: InstalledPackage, facts: Facts) -> PatchResult:
    approval = decider.decide(pkg)
    if approval.rejected:
        state = PatchState.INSTALLED_REJECTED if decider.block else PatchState.INSTALLED_OTHER
        return _row(pkg, state, approval, approval.reason)
    if not approval.approved:
        return _row(pkg, PatchState.INSTALLED_OTHER, approval, approval.reason)
    if _awaits_reboot(pkg, facts):
        return _row(
            pkg,
            PatchState.INSTALLED_PENDING_REBOOT,
            approval,
            f"{approval.reason}; installed, the machine needs a reboot to use it",
        )
    return _row(pkg, PatchState.INSTALLED, approval, approval.reason)


def _awaits_reboot(pkg: InstalledPackage, facts: Facts) -> bool:
    """The machine needs a reboot and this package is why: it asked for it, or it was installed
    after the last boot."""
    if not facts.reboot_required:
        return False
    if pkg.name in facts.reboot_required_packages:
        return True
    if facts.boot_time is None or pkg.installed_time is None:
        return False
    return _utc(pkg.installed_time) > _utc(facts.boot_time)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _row(
    pkg: PackageFacts,
    state: PatchState,
    approval: Approval,
    reason: str,
    *,
    installable: bool = True,
) -> PatchResult:
    installed_version = pkg.installed_version if isinstance(pkg, AvailableUpdate) else pkg.version
    return PatchResult(
        name=pkg.name,
        arch=pkg.arch,
        installed_version=installed_version,
        version=pkg.version,
        state=state,
        classification=pkg.classification,
        severity=pkg.severity,
        compliance_level=approval.compliance_level,
        cves=pkg.cves,
        reason=reason,
        security=approval.security,
        installable=installable,
    )


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
    return Summary(
        installed_count=states[PatchState.INSTALLED],
        installed_other_count=states[PatchState.INSTALLED_OTHER],
        installed_pending_reboot_count=states[PatchState.INSTALLED_PENDING_REBOOT],
        installed_rejected_count=states[PatchState.INSTALLED_REJECTED],
        missing_count=states[PatchState.MISSING],
        failed_count=states[PatchState.FAILED],
        not_applicable_count=states[PatchState.NOT_APPLICABLE],
        available_security_update_count=states[PatchState.AVAILABLE_SECURITY_UPDATE],
        critical_non_compliant_count=critical,
        security_non_compliant_count=security,
        other_non_compliant_count=other,
        compliance_status=ComplianceStatus.NON_COMPLIANT
        if worst is not None
        else ComplianceStatus.COMPLIANT,
        compliance_severity=COMPLIANCE_LEVEL_ORDER[worst] if worst is not None else None,
    )
