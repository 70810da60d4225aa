"""Stage: evaluation. The decision engine: (baseline, inventory, now) -> per-patch states + counts.

SSM's order on the machine (reference §1.9): global filters, then approval rules (with the implicit
"security repositories only" rule unless enableNonSecurity), then approvedPatches, then
rejectedPatches (rejection always wins); when several versions of a package are approved the latest
wins. A decision depends on the baseline and the package version, not on the instance, so a
:class:`Decider` caches decisions and is shared across a fleet (:class:`DecisionCache`).

Speed (docs/benchmarks.md): a fleet reports the same package versions over and over, so a Decider
also caches, per package-version object, the finished result rows and their share of the counts
(:class:`UpdateEntry`, :class:`InstalledEntry`). Evaluating one more instance is then mostly
looking its packages up: only what depends on the instance (which update wins, failures, pending
reboots) is worked out per instance, and the counts are one ``sum`` of packed integers
(:mod:`reconciler.evaluation.counts`). The counts without the rows, with no Python loop per row,
are :mod:`reconciler.evaluation.summary`'s: it reads the entries, this module decides them.

Pure: no I/O, and the clock is an argument. May import ``reconciler.api`` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar

from reconciler.api.enums import (
    LINUX_SYSTEMS,
    ApproveAfterDaysFrom,
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
    FailedPatch,
    InstalledPackage,
    Inventory,
    NoRebootInstall,
    PackageFacts,
)
from reconciler.api.resources import PatchBaseline, PatchFilterGroup
from reconciler.api.times import utc_stamp
from reconciler.evaluation import counts
from reconciler.evaluation.holds import Hold, machine_holds, split_held
from reconciler.evaluation.matching import (
    PROPERTY_FIELDS,
    FilterMatcher,
    IdMatcher,
    compile_filter,
    compile_id,
    id_fields,
    id_list,
    named,
    names_pattern,
    package_names,
    properties,
    release_time,
)
from reconciler.evaluation.results import (
    Approval,
    HeldPatch,
    InstanceEvaluation,
    NotApproved,
    PatchResult,
)
from reconciler.evaluation.versions import comparator

if TYPE_CHECKING:
    from reconciler.evaluation.verdicts import Profile, Verdicts

# Microsoft's CriticalUpdates fix critical *non-security* bugs, so they are not security updates
# (https://learn.microsoft.com/en-us/troubleshoot/windows-client/installing-updates-features-roles/standard-terminology-software-updates);
# SecurityNonCompliantCount counts patches a notice calls Security (API: InstancePatchState).
_SECURITY_CLASSIFICATIONS = frozenset({"security", "securityupdates"})
_P = TypeVar("_P", bound=PackageFacts)
_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    filters: tuple[FilterMatcher, ...]
    approve_after_days: int | None
    approve_until_date: date | None
    compliance_level: ComplianceLevel
    enable_non_security: bool


class Decider:
    """One baseline compiled for one product and one moment, with a cache of its decisions."""

    def __init__(self, baseline: PatchBaseline, product: str, now: datetime) -> None:
        spec = baseline.spec
        self.baseline = baseline
        self.os = spec.operating_system
        self.family = family_of(self.os)
        self.product = product
        self.now = _utc(now)
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
        self._approved_names = names_pattern(self._approved)
        self._rejected_names = names_pattern(self._rejected)
        self._named = bool(self._approved or self._rejected)
        self._lists = (id_list(self._rejected), id_list(self._approved))  # for listed()
        self._approved_level = spec.approved_patches_compliance_level
        self._approved_non_security = spec.approved_patches_enable_non_security
        # Patchwarden extension: apt archives carry no release dates, so an opted-in baseline
        # counts approve-after-days from the first scan that saw the version (the caller merges
        # the state store's times into the inventory as first_seen; the engine does no I/O).
        self._first_seen = (
            self.family is Family.APT
            and spec.approve_after_days_from is ApproveAfterDaysFrom.FIRST_SEEN
        )
        # SSM: with a source for this product the machine's repositories are the baseline's.
        self._sourced = any("*" in s.products or product in s.products for s in spec.sources)
        # Decisions keyed by the version's PackageFacts fields alone: the update to one version
        # from each older installed version, and the installed package of that version, differ
        # only in fields a decision does not read (installedVersion, installedTime, requires...).
        self._cache: dict[tuple[object, ...], Approval] = {}
        self._blocked_names: dict[str, str | None] = {}
        asu = spec.available_security_updates_compliance_status
        self.asu = asu is not None
        self.asu_non_compliant = asu is ComplianceStatus.NON_COMPLIANT
        self._compare = comparator(self.family)
        self._newer: dict[tuple[str, str], bool] = {}
        # Finished rows per package version. The identity maps (id(obj) -> entry) are the fast
        # path: a fleet's inventories repeat the same versions, and identity needs no hashing of a
        # 25-field model. The value maps share the work between equal objects (inventories parsed
        # one by one). _pinned keeps each id() key's object alive, so that no id is reused.
        self._update_ids: dict[int, UpdateEntry] = {}
        self._installed_ids: dict[int, InstalledEntry] = {}
        self._update_values: dict[AvailableUpdate, UpdateEntry] = {}
        self._installed_values: dict[InstalledPackage, InstalledEntry] = {}
        self._pinned: list[PackageFacts] = []
        # One small object per (name, arch): the key of "which update wins" and of "an update row
        # reports this installed package", hashed by identity rather than by two strings.
        self._packages: dict[tuple[str, str], object] = {}

    # -- one package version ------------------------------------------------------------------

    def decide(self, pkg: PackageFacts) -> Approval:
        """Whether the baseline approves this package version, and why (cached)."""
        shadowed = self._shadowed(pkg)
        key = (*_FACTS_KEY(pkg), shadowed)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._decide(pkg, shadowed)
        return found

    def _shadowed(self, pkg: PackageFacts) -> bool:
        """apt: a security version that is not apt's candidate (a newer non-security version is).
        AWS's implicit rule asks that the candidate be from a security repository, so such a
        version fails it (docs/ssm-semantics.md §3.1)."""
        return (
            self.family is Family.APT
            and isinstance(pkg, AvailableUpdate)
            and not pkg.candidate
            and pkg.security
        )

    # -- many package versions at once (reconciler.evaluation.verdicts) ------------------------

    def verdicts(self, pkgs: Sequence[PackageFacts]) -> Verdicts:
        """``decide``'s verdicts (approved, rejected, compliance level, security) on ``pkgs``, as
        arrays, without reasons: each filter and id list judged once per distinct value of the
        fields it reads (tests/test_engine_verdicts.py proves them equal to ``decide``)."""
        # numpy is imported only by the bulk paths (patchctl diff, bench/): every other command
        # would pay for it at start-up (tests/test_startup.py).
        from reconciler.evaluation.verdicts import decide_many

        return decide_many(self, pkgs)

    @property
    def rules(self) -> tuple[_Rule, ...]:
        return self._rules

    @property
    def first_seen(self) -> bool:
        """Approve-after-days counts from first_seen (apt, approveAfterDaysFrom: FirstSeen)."""
        return self._first_seen

    @property
    def sourced(self) -> bool:
        return self._sourced

    @property
    def linux(self) -> bool:
        return self._linux

    def profile_fields(self) -> tuple[str, ...]:
        """The PackageFacts fields :meth:`profile` reads, beside whether the version is shadowed
        and whether it has advisory ids (the implicit rule reads no more of them)."""
        keys = {f.key for f in self._global} | {f.key for r in self._rules for f in r.filters}
        fields = {field for key in keys for field in PROPERTY_FIELDS[key]}
        return tuple(sorted({*fields, "security", "classification"}))

    def profile(self, pkg: PackageFacts, shadowed: bool) -> Profile:
        """What ``_decide`` reads of ``pkg`` before dates and id lists: security, eligibility for
        the implicit security rule, the global filters, and which rules' filters match."""
        from reconciler.evaluation.verdicts import Profile  # numpy: see verdicts()

        return Profile(
            security=self._is_security_advisory(pkg),
            eligible=self._security_eligible(pkg) and not shadowed,
            excluded=self._failed_filter(self._global, pkg) is not None,
            matched=tuple(self._failed_filter(r.filters, pkg) is None for r in self._rules),
        )

    def list_fields(self) -> tuple[str, ...]:
        """The PackageFacts fields :meth:`listed` reads."""
        every = (*self._rejected, *self._approved)
        return tuple(sorted({f for m in every for f in id_fields(m, self.family)}))

    def listed(self, pkg: PackageFacts) -> tuple[bool, bool]:
        """Whether rejectedPatches, and approvedPatches, name ``pkg`` (as ``_decide`` finds
        them, without which id: one regex search per list for the name ids)."""
        names = package_names(pkg, self.family) if self._named else ()
        rejected, approved = self._lists
        return named(rejected, pkg, self.family, names), named(approved, pkg, self.family, names)

    @property
    def approved_list(self) -> tuple[ComplianceLevel, bool]:
        """approvedPatches' compliance level, and whether it approves non-security versions."""
        return self._approved_level, self._approved_non_security

    def shadowed(self, pkg: PackageFacts) -> bool:
        return self._shadowed(pkg)

    def release(self, pkg: PackageFacts) -> tuple[datetime | None, str]:
        """The moment approve-after-days counts from, and its source (as in reasons)."""
        return self._release_time(pkg)

    def _decide(self, pkg: PackageFacts, shadowed: bool) -> Approval:
        security = self._is_security_advisory(pkg)
        eligible = self._security_eligible(pkg) and not shadowed
        not_security = _SHADOWED if shadowed else _not_security(self.family)
        # The keys every name form gives this version, built once for both lists.
        names = package_names(pkg, self.family) if self._named else ()
        rejected_by = _first(self._rejected, self._rejected_names, pkg, self.family, names)
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
            released = self._release_time(pkg)  # once per version, whatever the rules
            for rule in self._rules:
                verdict = self._rule_verdict(rule, pkg, eligible, not_security, released)
                if verdict is None:
                    continue
                approved, text = verdict
                if approved:
                    return Approval(True, False, rule.compliance_level, text, security)
                why_not = text
        listed = _first(self._approved, self._approved_names, pkg, self.family, names)
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
                f"listed in approvedPatches ({listed.text!r}) but "
                f"{_SHADOWED if shadowed else 'not a security update'}; "
                "set approvedPatchesEnableNonSecurity to allow it"
            )
        return Approval(
            False, False, ComplianceLevel.UNSPECIFIED, f"not approved: {why_not}", security
        )

    def _release_time(self, pkg: PackageFacts) -> tuple[datetime | None, str]:
        if self._first_seen:
            return pkg.first_seen, (
                "first seen" if pkg.first_seen else "no scan has recorded this version yet"
            )
        return release_time(pkg, self.os)

    def _rule_verdict(
        self,
        rule: _Rule,
        pkg: PackageFacts,
        eligible: bool,
        not_security: str,
        release: tuple[datetime | None, str],
    ) -> tuple[bool, str] | None:
        """None when the rule's filters do not match; else (approved, reason). ``not_security``
        says why a version that is not ``eligible`` fails the implicit security rule.
        ``release`` is release_time(pkg): approve-after-days counts whole 24-hour periods from
        that moment; approve-until-date compares its UTC day."""
        if self._failed_filter(rule.filters, pkg) is not None:
            return None
        name = f"approvalRules[{rule.index}]"
        if self._linux and not rule.enable_non_security and not eligible:
            return False, f"{name} matches but {not_security} and enableNonSecurity is false"
        released, source = release
        criteria = ", ".join(f.text for f in rule.filters) or "all patches"
        if rule.approve_after_days is not None:
            if released is None and self._first_seen:
                days = rule.approve_after_days
                return False, f"{name} approves it {days} days after it is first seen; {source}"
            if self._sourced and not rule.enable_non_security and source == "build time":
                released, source = None, "no release date"
            if released is None and self._sourced and not rule.enable_non_security:
                return False, (
                    f"{name} matches but the baseline's sources give it no release date: "
                    "approveAfterDays drops such patches unless enableNonSecurity is true"
                )
            if released is None:
                return True, f"approved by {name} ({criteria}; {source}, so no delay)"
            approve_at = released + timedelta(days=rule.approve_after_days)
            if self.now >= approve_at:
                return True, (
                    f"approved by {name} ({criteria}; {source} {utc_stamp(released)}, "
                    f"approved since {utc_stamp(approve_at)})"
                )
            return (
                False,
                f"{name} approves it from {utc_stamp(approve_at)} "
                f"({source} {utc_stamp(released)} + {rule.approve_after_days} days)",
            )
        if rule.approve_until_date is not None and released is not None:
            if released.date() <= rule.approve_until_date:  # release_time() gives UTC
                return True, (
                    f"approved by {name} ({criteria}; {source} {utc_stamp(released)}, "
                    f"on or before {rule.approve_until_date})"
                )
            return (
                False,
                f"{name} approves patches released until {rule.approve_until_date}; "
                f"{source} {utc_stamp(released)}",
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

    # -- finished rows, per package-version object ----------------------------------------------

    def select(
        self, updates: Sequence[AvailableUpdate]
    ) -> tuple[dict[object, UpdateEntry], list[UpdateEntry]]:
        """The latest approved update per package (name, arch), and the updates not approved, in
        order."""
        chosen: dict[object, UpdateEntry] = {}
        passed_over: list[UpdateEntry] = []
        for entry in self.update_entries(updates):
            if not entry.approved:
                passed_over.append(entry)
                continue
            best = chosen.get(entry.package)
            if best is None or self.is_newer(entry.version, best.version):
                chosen[entry.package] = entry  # the latest approved version wins
        return chosen, passed_over

    def update_entries(self, updates: Sequence[AvailableUpdate]) -> list[UpdateEntry]:
        """Each update's entry, in order."""
        return self._entries(updates, self._update_ids, self._update_entry)

    def installed_entries(self, installed: Sequence[InstalledPackage]) -> list[InstalledEntry]:
        """Each installed package's entry, in order."""
        return self._entries(installed, self._installed_ids, self._installed_entry)

    @staticmethod
    def _entries(
        packages: Sequence[_P], by_id: dict[int, _E], make: Callable[[_P], _E]
    ) -> list[_E]:
        try:  # map() keeps the common case (every object seen before) out of the interpreter loop
            return list(map(by_id.__getitem__, map(id, packages)))
        except KeyError:
            return [by_id.get(id(pkg)) or make(pkg) for pkg in packages]

    def _update_entry(self, update: AvailableUpdate) -> UpdateEntry:
        entry = self._update_values.get(update)
        if entry is None:
            entry = self._update_values[update] = UpdateEntry.of(self, update)
        self._pin(update)
        self._update_ids[id(update)] = entry
        return entry

    def _installed_entry(self, pkg: InstalledPackage) -> InstalledEntry:
        entry = self._installed_values.get(pkg)
        if entry is None:
            entry = self._installed_values[pkg] = InstalledEntry.of(self, pkg)
        self._pin(pkg)
        self._installed_ids[id(pkg)] = entry
        return entry

    def _pin(self, pkg: PackageFacts) -> None:
        """Keep ``pkg`` (an id() key) alive; forget the identity maps when they outgrow the values
        many times over, as they do when equal versions arrive as distinct objects."""
        values = len(self._update_values) + len(self._installed_values)
        if len(self._pinned) >= max(_IDENTITY_MIN, 4 * values):
            self._update_ids.clear()
            self._installed_ids.clear()
            self._pinned.clear()
        self._pinned.append(pkg)

    def package(self, name: str, arch: str) -> object:
        """The key standing for package (name, arch)."""
        return self._packages.setdefault((name, arch), object())

    def is_newer(self, version: str, than: str) -> bool:
        """Whether ``version`` is newer than ``than`` in this family's order (cached)."""
        key = (version, than)
        found = self._newer.get(key)
        if found is None:
            found = self._newer[key] = self._compare(version, than) > 0
        return found


_IDENTITY_MIN = 1 << 16  # identity-map entries a Decider may always keep
# The fields of a package version a decision may read (_decide() takes a PackageFacts).
_FACTS_KEY = attrgetter(*PackageFacts.model_fields)


@dataclass(frozen=True, slots=True, eq=False)
class UpdateEntry:
    """One available update as one Decider sees it: its decision and its finished rows."""

    update: AvailableUpdate  # one of the equal objects that share this entry
    package: object  # Decider.package(name, arch)
    version: str
    approval: Approval
    approved: bool
    scan_row: PatchResult | None  # approved: its row on a Scan, when no install failed
    scan_weight: int
    install_row: PatchResult | None  # the same on an Install
    install_weight: int
    not_approved: NotApproved | None  # not approved: what explain lists
    asu_row: PatchResult | None  # a security update not approved, when the baseline reports those
    asu_weight: int

    @classmethod
    def of(cls, decider: Decider, update: AvailableUpdate) -> UpdateEntry:
        approval = decider.decide(update)
        scan = install = asu = None
        not_approved = None
        blocked = approval.approved and decider.blocked_dependency(update) is not None
        if approval.approved:
            scan = _update_row(decider, update, approval, {}, False)
            # Only a blocked update's row depends on the operation.
            install = _update_row(decider, update, approval, {}, True) if blocked else scan
        else:
            not_approved = NotApproved(update.name, update.arch, update.version, approval.reason)
            if decider.asu and approval.security and not approval.rejected:
                state = PatchState.AVAILABLE_SECURITY_UPDATE
                asu = _row(update, state, approval, approval.reason)
        return cls(
            update=update,
            package=decider.package(update.name, update.arch),
            version=update.version,
            approval=approval,
            approved=approval.approved,
            scan_row=scan,
            scan_weight=counts.weight(scan, False),
            install_row=install,
            install_weight=counts.weight(install, False),
            not_approved=not_approved,
            asu_row=asu,
            asu_weight=counts.weight(asu, decider.asu_non_compliant),
        )


@dataclass(frozen=True, slots=True, eq=False)
class InstalledEntry:
    """One installed package as one Decider sees it: its decision and its finished rows."""

    package: object  # Decider.package(name, arch)
    name: str
    version: str
    row: PatchResult  # its row unless the machine awaits a reboot because of it
    weight: int
    pending_row: PatchResult | None  # approved: its row when the machine awaits that reboot
    pending_weight: int
    installed_at: datetime | None  # UTC

    @classmethod
    def of(cls, decider: Decider, pkg: InstalledPackage) -> InstalledEntry:
        approval = decider.decide(pkg)
        pending = None
        state = installed_state(decider, approval)
        if state is PatchState.INSTALLED:
            why = f"{approval.reason}; installed, the machine needs a reboot to use it"
            pending = _row(pkg, PatchState.INSTALLED_PENDING_REBOOT, approval, why)
        row = _row(pkg, state, approval, approval.reason)
        return cls(
            package=decider.package(pkg.name, pkg.arch),
            name=pkg.name,
            version=pkg.version,
            row=row,
            weight=counts.weight(row, False),
            pending_row=pending,
            pending_weight=counts.weight(pending, False),
            installed_at=None if pkg.installed_time is None else _utc(pkg.installed_time),
        )


def installed_state(decider: Decider, approval: Approval) -> PatchState:
    """An installed package's state, unless the machine awaits a reboot because of it."""
    if approval.rejected:
        return PatchState.INSTALLED_REJECTED if decider.block else PatchState.INSTALLED_OTHER
    return PatchState.INSTALLED if approval.approved else PatchState.INSTALLED_OTHER


def _first(
    matchers: tuple[IdMatcher, ...],
    any_name: re.Pattern[str] | None,
    pkg: PackageFacts,
    family: Family,
    names: tuple[str, ...],
) -> IdMatcher | None:
    """The first of ``matchers`` naming ``pkg``; ``any_name`` is their names_pattern() and
    ``names`` the package_names() of ``pkg``."""
    if not matchers:
        return None
    if any_name is not None and not any(any_name.match(name) for name in names):
        return None
    return next((m for m in matchers if m.matches(pkg, family, names)), None)


def _compile_group(
    group: PatchFilterGroup | None, os: OperatingSystem
) -> tuple[FilterMatcher, ...]:
    if group is None:
        return ()
    return tuple(compile_filter(f, os) for f in group.patch_filters)


_SHADOWED = "a newer non-security version is the candidate"


def _not_security(family: Family) -> str:
    if family is Family.APT:
        return "the version is not from the security repository"
    return "no update notice references the version"


class DecisionCache:
    """Deciders shared across instances: one per (baseline, product, moment). A fleet is
    evaluated at one ``now``, so its instances share one Decider per baseline and product."""

    def __init__(self) -> None:
        self._deciders: dict[tuple[int, str, datetime], Decider] = {}
        self._keep: list[PatchBaseline] = []  # keeps id() keys valid

    def decider(self, baseline: PatchBaseline, product: str, now: datetime) -> Decider:
        key = (id(baseline), product, now)
        found = self._deciders.get(key)
        if found is None:
            found = self._deciders[key] = Decider(baseline, product, now)
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
    holds: Sequence[Hold] = (),
) -> InstanceEvaluation:
    """Every patch's state on ``inventory``'s machine under ``baseline`` at ``now``; updates
    ``holds`` or the machine's own holds name are listed as held instead."""
    inventory, held = without_held(inventory, holds)
    facts = inventory.facts
    product = facts.effective_product()
    decider = (cache or DecisionCache()).decider(baseline, product, now)
    chosen, passed_over = decider.select(inventory.updates)
    update_rows, weight = _update_rows(decider, chosen.values(), inventory)
    installed_rows, installed_weight = _installed_rows(decider, inventory, chosen)
    if inventory.failed:
        installed_weight += _failed_installed(installed_rows, inventory.failed)
    missed = [entry for entry in passed_over if entry.package not in chosen]
    asu_rows, asu_weight = available_security_rows(missed) if decider.asu else ([], 0)
    patches = (*update_rows, *installed_rows, *asu_rows)
    if len(patches) < counts.FIELD_LIMIT:
        summary = counts.unpack(weight + installed_weight + asu_weight, len(patches))
    else:  # too many rows for the packed counts
        summary = counts.summarize(patches, asu_non_compliant=decider.asu_non_compliant)
    return InstanceEvaluation(
        instance_id=inventory.instance_id,
        operating_system=str(facts.operating_system),
        baseline=baseline.metadata.name,
        patch_group=patch_group,
        operation=str(inventory.operation),
        evaluated_at=now,
        patches=patches,
        summary=summary,
        not_approved=tuple(map(NOT_APPROVED, missed)),  # set on every entry not approved
        held=held,
        last_no_reboot_install_time=(
            _utc(inventory.no_reboot_install.time) if inventory.no_reboot_install else None
        ),
    )


def without_held(
    inventory: Inventory, holds: Sequence[Hold]
) -> tuple[Inventory, tuple[HeldPatch, ...]]:
    """``inventory`` without the updates a hold names, and those updates."""
    every = (*holds, *machine_holds(inventory))
    if not every:
        return inventory, ()
    kept, held = split_held(inventory.updates, every)
    return inventory.model_copy(update={"updates": kept}), held


# Getters of the entries' fields, for map()/filter(): as attrgetters they run in C. They are
# public for the counting fast path (reconciler.evaluation.summary), which reads the same fields.
SCAN_ROW = attrgetter("scan_row")
SCAN_WEIGHT = attrgetter("scan_weight")
INSTALL_ROW = attrgetter("install_row")
INSTALL_WEIGHT = attrgetter("install_weight")
ROW = attrgetter("row")
WEIGHT = attrgetter("weight")
NOT_APPROVED = attrgetter("not_approved")
PACKAGE = attrgetter("package")
APPROVED = attrgetter("approved")


def _update_rows(
    decider: Decider, chosen: Collection[UpdateEntry], inventory: Inventory
) -> tuple[list[PatchResult], int]:
    """The rows of the updates that won, and their weight."""
    install = inventory.operation is Operation.INSTALL
    if inventory.failed:  # the last Install failed somewhere: work the rows out here
        failed = {(f.name, f.arch, f.version): f.reason for f in inventory.failed}
        rows = [_update_row(decider, e.update, e.approval, failed, install) for e in chosen]
        return rows, sum(counts.weight(row, False) for row in rows)
    if install:
        return list(map(INSTALL_ROW, chosen)), sum(map(INSTALL_WEIGHT, chosen))
    return list(map(SCAN_ROW, chosen)), sum(map(SCAN_WEIGHT, chosen))


def _installed_rows(
    decider: Decider, inventory: Inventory, chosen: dict[object, UpdateEntry]
) -> tuple[list[PatchResult], int]:
    """The rows of the installed packages no update row reports, and their weight."""
    entries = decider.installed_entries(inventory.installed)
    if chosen:
        entries = [entry for entry in entries if entry.package not in chosen]
    rows = list(map(ROW, entries))
    weight = sum(map(WEIGHT, entries))
    for index, pending in pending_reboot(entries, inventory.facts, inventory.no_reboot_install):
        rows[index] = pending
        weight += entries[index].pending_weight - entries[index].weight
    return rows, weight


def pending_reboot(
    shown: Sequence[InstalledEntry], facts: Facts, no_reboot: NoRebootInstall | None
) -> Iterator[tuple[int, PatchResult]]:
    """(index, INSTALLED_PENDING_REBOOT row) for each approved entry of ``shown`` (installed
    rows) the machine awaits a reboot for: SSM's rule, a NoReboot Install installed it and the
    machine has not booted since (``no_reboot``); and ours, the machine says it needs a reboot
    and the package asked for it or was installed after the last boot."""
    boot = None if facts.boot_time is None else _utc(facts.boot_time)
    awaiting = _installed_without_reboot(no_reboot, boot)
    if not facts.reboot_required and not awaiting:
        return
    for index, entry in enumerate(shown):
        if entry.pending_row is None:
            continue
        if (entry.name, entry.version) in awaiting:
            assert no_reboot is not None  # awaiting is empty without it
            why = f"installed by an Install with NoReboot at {_utc(no_reboot.time).isoformat()}"
            yield index, replace(entry.pending_row, reason=f"{entry.row.reason}; {why}")
        elif facts.reboot_required and _awaits_reboot(entry, facts, boot):
            yield index, entry.pending_row


def _installed_without_reboot(
    no_reboot: NoRebootInstall | None, boot: datetime | None
) -> frozenset[tuple[str, str]]:
    """(name, version) of the patches NoReboot Installs installed since the last boot: SSM
    reports them INSTALLED_PENDING_REBOOT until the machine boots (a root that never booted
    keeps them pending)."""
    if no_reboot is None or (boot is not None and boot >= _utc(no_reboot.time)):
        return frozenset()
    return frozenset((p.name, p.version) for p in no_reboot.patches)


def _failed_installed(rows: list[PatchResult], failed: Sequence[FailedPatch]) -> int:
    """Mark FAILED the approved installed versions the agent reports as not properly installed
    (dpkg left them half-configured, an install of exactly that version failed): on disk, but
    not a working patch. Rewrites ``rows`` in place; returns the change of weight."""
    reasons = {(f.name, f.arch, f.version): f.reason for f in failed}
    change = 0
    for index, row in enumerate(rows):
        reason = reasons.get((row.name, row.arch, row.version))
        if reason is None or row.state not in _WORKING_INSTALLED:
            continue
        rows[index] = replace(
            row, state=PatchState.FAILED, reason=f"{row.reason}; not working: {reason}"
        )
        change += counts.weight(rows[index], False) - counts.weight(row, False)
    return change


_WORKING_INSTALLED = frozenset({PatchState.INSTALLED, PatchState.INSTALLED_PENDING_REBOOT})


def _awaits_reboot(entry: InstalledEntry, facts: Facts, boot: datetime | None) -> bool:
    """On a machine that needs a reboot, whether this package is why: it asked for it, or it was
    installed after the last boot (``boot``, UTC)."""
    if entry.name in facts.reboot_required_packages:
        return True
    if boot is None or entry.installed_at is None:
        return False
    return entry.installed_at > boot


def available_security_rows(missed: Iterable[UpdateEntry]) -> tuple[list[PatchResult], int]:
    """One AVAILABLE_SECURITY_UPDATE row per package with a security update not approved."""
    rows: list[PatchResult] = []
    weight = 0
    seen: set[object] = set()
    for entry in missed:
        if entry.asu_row is not None and entry.package not in seen:
            seen.add(entry.package)
            rows.append(entry.asu_row)
            weight += entry.asu_weight
    return rows, weight


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
    why = not_applicable(decider, update)
    if why is not None:
        return _row(update, PatchState.NOT_APPLICABLE, approval, f"{approval.reason}; {why}")
    return _row(update, PatchState.MISSING, approval, approval.reason)


def not_applicable(decider: Decider, update: AvailableUpdate) -> str | None:
    """Why an approved update that can be installed and did not fail is NOT_APPLICABLE (else
    None, and it is MISSING)."""
    if not update.applicable:
        return "does not apply to this machine"
    if update.installed_version is None and decider.family is not Family.WINDOWS:
        return "package is not installed"
    return None


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
