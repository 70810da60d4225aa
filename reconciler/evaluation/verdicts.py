"""Stage: evaluation. A Decider's verdicts on many package versions at once, as arrays.

``Decider.decide`` judges one version and writes why; counting a fleet (:mod:`.tables`) needs
only the verdict (approved, rejected, compliance level, security) of each of the tens of thousands
of distinct versions a fleet reports, and most of them share what the filters read. So
:func:`decide_many` asks the Decider once per distinct value of the fields its filters read
(``Decider.profile``: global filters, each rule's filters, security and eligibility) and once per
distinct value of the fields its approvedPatches/rejectedPatches ids read (``Decider.listed``),
then combines those per-group answers with the versions' release times in numpy, rule by rule in
SSM's order (docs/ssm-semantics.md): rejection wins, the first approving rule gives the compliance
level, approvedPatches after the rules. Reasons are not built: ``decide`` gives them when a row is
shown. Every verdict equals ``decide``'s (tests/test_engine_verdicts.py, a hypothesis property);
``decide`` stays the reference.

Pure: no I/O, and the clock is the Decider's ``now``. May import ``reconciler.api`` and numpy;
the engine only for its types (the Decider calls this module).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from reconciler.api.enums import ComplianceLevel
from reconciler.api.inventory import PackageFacts

if TYPE_CHECKING:
    from reconciler.evaluation.engine import Decider

Bools = npt.NDArray[np.bool_]
_T = TypeVar("_T")
LEVELS = tuple(ComplianceLevel)
"""The compliance levels, in the order :attr:`Verdicts.level` numbers them."""
_UNSPECIFIED = LEVELS.index(ComplianceLevel.UNSPECIFIED)
_NONE = np.iinfo(np.int64).min  # a version with no release time
_DAY = 86_400_000_000  # microseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Profile:
    """What a Decider reads of a version before its dates and the id lists."""

    security: bool
    eligible: bool  # passes the implicit "security repositories only" rule
    excluded: bool  # a global filter fails
    matched: tuple[bool, ...]  # per approval rule: its filters match


@dataclass(frozen=True, slots=True, eq=False)
class Verdicts:
    """Per package version (in the order given): ``decide(pkg)``'s approved, rejected and
    security, and its compliance level as an index in :data:`LEVELS`."""

    approved: Bools
    rejected: Bools
    level: npt.NDArray[np.int8]
    security: Bools


def decide_many(decider: Decider, pkgs: Sequence[PackageFacts]) -> Verdicts:
    """``decider.decide``'s verdict on each of ``pkgs``."""
    profiles, group = _grouped(pkgs, _profile_key(decider), _profile(decider))
    security = np.array([p.security for p in profiles], np.bool_)[group]
    eligible = np.array([p.eligible for p in profiles], np.bool_)[group]
    excluded = np.array([p.excluded for p in profiles], np.bool_)[group]
    rejected, listed = _lists(decider, pkgs)
    active = ~rejected & ~excluded  # the rules run on these
    approved = np.zeros(len(pkgs), np.bool_)
    level = np.full(len(pkgs), _UNSPECIFIED, np.int8)
    releases = _Releases(decider, pkgs)
    for number, rule in enumerate(decider.rules):
        hit = active & ~approved & np.array([p.matched[number] for p in profiles], np.bool_)[group]
        if decider.linux and not rule.enable_non_security:
            hit &= eligible
        if rule.approve_after_days is not None:
            hit &= releases.after_days(hit, rule.approve_after_days, rule.enable_non_security)
        elif rule.approve_until_date is not None:
            hit &= releases.until(hit, rule.approve_until_date)
        level[hit] = LEVELS.index(rule.compliance_level)
        approved |= hit
    list_level, non_security = decider.approved_list
    by_list = ~rejected & ~approved & listed & (eligible | non_security)
    level[by_list] = LEVELS.index(list_level)
    return Verdicts(approved | by_list, rejected, level, security)


def _profile_key(decider: Decider) -> Callable[[PackageFacts], Hashable]:
    fields = attrgetter(*decider.profile_fields())
    shadowed = decider.shadowed
    return lambda pkg: (fields(pkg), shadowed(pkg), not pkg.advisory_ids)


def _profile(decider: Decider) -> Callable[[PackageFacts], Profile]:
    return lambda pkg: decider.profile(pkg, decider.shadowed(pkg))


def _lists(decider: Decider, pkgs: Sequence[PackageFacts]) -> tuple[Bools, Bools]:
    """Per version: rejectedPatches names it, approvedPatches names it."""
    fields = decider.list_fields()
    if not fields:
        return np.zeros(len(pkgs), np.bool_), np.zeros(len(pkgs), np.bool_)
    answers, group = _grouped(pkgs, attrgetter(*fields), decider.listed)
    rejected = np.array([a[0] for a in answers], np.bool_)[group]
    approved = np.array([a[1] for a in answers], np.bool_)[group]
    return rejected, approved


def _grouped(
    pkgs: Sequence[PackageFacts],
    key: Callable[[PackageFacts], Hashable],
    ask: Callable[[PackageFacts], _T],
) -> tuple[list[_T], npt.NDArray[np.intp]]:
    """``ask`` once per distinct ``key`` of ``pkgs`` (about the first version with that key), and
    the position of each version's answer."""
    numbers: dict[Hashable, int] = {}
    group = np.fromiter(
        (numbers.setdefault(k, len(numbers)) for k in map(key, pkgs)), np.intp, len(pkgs)
    )
    _, first = np.unique(group, return_index=True)
    return [ask(pkgs[i]) for i in first.tolist()], group


class _Releases:
    """The versions' release times (``Decider.release``) in microseconds, worked out on first
    use and only for the versions a date rule is asked about."""

    def __init__(self, decider: Decider, pkgs: Sequence[PackageFacts]) -> None:
        self._decider = decider
        self._pkgs = pkgs
        self._known = np.zeros(len(pkgs), np.bool_)
        self.moment = np.full(len(pkgs), _NONE, np.int64)
        self.built = np.zeros(len(pkgs), np.bool_)  # the moment is the build time
        self._now = micros(decider.now)

    def _read(self, wanted: Bools) -> None:
        for position in np.flatnonzero(wanted & ~self._known).tolist():
            when, source = self._decider.release(self._pkgs[position])
            if when is not None:
                self.moment[position] = micros(when)
                self.built[position] = source == "build time"
        self._known |= wanted

    def after_days(self, wanted: Bools, days: int, non_security: bool) -> Bools:
        """approveAfterDays approves these (``wanted`` only; the engine's _rule_verdict): from
        the release time plus ``days``; with no release time, at once, unless the moment is the
        first scan (none yet) or the baseline has sources and the rule is security only (then
        a build time does not count either)."""
        self._read(wanted)
        has: Bools = self.moment != _NONE
        if not self._decider.first_seen and self._decider.sourced and not non_security:
            has = has & ~self.built
        due: Bools = self.moment <= self._now - days * _DAY
        if self._decider.first_seen or (self._decider.sourced and not non_security):
            return has & due
        return ~has | due

    def until(self, wanted: Bools, last: date) -> Bools:
        """approveUntilDate approves these: released on or before ``last`` (UTC day), or with no
        release time."""
        self._read(wanted)
        has: Bools = self.moment != _NONE
        day = (last - _EPOCH.date()).days
        on_time: Bools = np.floor_divide(self.moment, _DAY) <= day
        return ~has | on_time


def micros(moment: datetime) -> int:
    """``moment`` (naive means UTC, as the engine reads it) in microseconds since the epoch."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return (moment - _EPOCH) // timedelta(microseconds=1)
