"""Stage: evaluation. Whole-fleet summaries from tables: SSM's counts for many instances at once.

A fleet reports the same package versions over and over. :class:`VersionIndex` interns them: each
distinct package-version object gets an int, and an instance becomes two int arrays (its updates,
its installed packages: :class:`IndexedInventory`). Per Decider (one baseline, product and moment)
a :class:`DecisionTable` holds, in numpy arrays indexed by those ints, what each version
contributes to the counts (whether it is approved, its rank among its package's versions, the
weight class of each row it can give). An instance's Summary is then a few array operations
over its two arrays, not a Python step per package. The decisions are the engine's own
(``Decider.decide`` and the engine's state rules); instances the tables cannot count exactly (a
failed Install, a NoReboot Install, two updates of one package with equal versions) go through
``evaluate_summary``. Either way each Summary is ``evaluate(...).summary``
(tests/test_engine_tables.py), and ``evaluate`` stays the reference.

Pure: no I/O, and the clock is an argument. Decides nothing itself: the rules are the engine's.
May import ``reconciler.api`` and numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cmp_to_key
from operator import mul
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from reconciler.api.enums import Operation, PatchState
from reconciler.api.inventory import AvailableUpdate, Inventory, PackageFacts
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import counts
from reconciler.evaluation.engine import Decider, DecisionCache, installed_state, not_applicable
from reconciler.evaluation.results import Summary
from reconciler.evaluation.summary import evaluate_summary

Ids = npt.NDArray[np.int32]
_Classes = npt.NDArray[np.int16]
_NEVER = np.iinfo(np.int64).min  # the installed time of a package that reports none
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, eq=False)
class IndexedInventory:
    """One inventory with its package versions as ints of a VersionIndex."""

    inventory: Inventory
    updates: Ids  # inventory.updates, in order
    installed: Ids  # inventory.installed, in order


class VersionIndex:
    """Interned package versions: an int per distinct package-version object (by identity, kept
    alive), and per int what does not depend on a baseline (its package, name, installed time)."""

    def __init__(self) -> None:
        self.versions: list[PackageFacts] = []
        self._ids: dict[int, int] = {}
        self._packages: dict[tuple[str, str], int] = {}
        self._names: dict[str, int] = {}
        self._package: list[int] = []
        self._name: list[int] = []
        self._installed_at: list[int] = []  # microseconds since the epoch, UTC
        self.package: Ids = np.zeros(0, np.int32)
        self.name: Ids = np.zeros(0, np.int32)
        self.installed_at: npt.NDArray[np.int64] = np.zeros(0, np.int64)

    def index(self, inventory: Inventory) -> IndexedInventory:
        """``inventory`` with its versions interned (new versions get new ints)."""
        return IndexedInventory(
            inventory, self._intern(inventory.updates), self._intern(inventory.installed)
        )

    def sync(self) -> None:
        """Bring the arrays up to the versions interned so far (once per batch, not per
        inventory: each rebuild copies every column)."""
        if len(self.package) != len(self.versions):
            self.package = np.array(self._package, np.int32)
            self.name = np.array(self._name, np.int32)
            self.installed_at = np.array(self._installed_at, np.int64)

    def _intern(self, packages: Sequence[PackageFacts]) -> Ids:
        ids = self._ids
        try:  # the common case, every object seen before, without a Python loop
            return np.fromiter(map(ids.__getitem__, map(id, packages)), np.int32, len(packages))
        except KeyError:
            numbers = [ids[id(p)] if id(p) in ids else self._add(p) for p in packages]
            return np.array(numbers, np.int32)

    def _add(self, pkg: PackageFacts) -> int:
        number = self._ids[id(pkg)] = len(self.versions)
        self.versions.append(pkg)
        self._package.append(self._packages.setdefault((pkg.name, pkg.arch), len(self._packages)))
        self._name.append(self._names.setdefault(pkg.name, len(self._names)))
        when = getattr(pkg, "installed_time", None)
        self._installed_at.append(_NEVER if when is None else micros(when))
        return number

    def name_ids(self, names: Iterable[str]) -> Ids:
        """The ints of these package names (names no version carries have none)."""
        return np.array([self._names[n] for n in names if n in self._names], np.int32)

    @property
    def packages(self) -> int:
        return len(self._packages)


def micros(moment: datetime) -> int:
    """``moment`` (naive means UTC, as the engine reads it) in microseconds since the epoch."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return (moment - _EPOCH) // timedelta(microseconds=1)


class DecisionTable:
    """One Decider's decisions over a VersionIndex, as arrays: per version int, whether an update
    is approved, its rank among its package's versions, and the weight class of each row it can
    give (0: no row or weight 0; ``weights[c]`` is class c's packed counts)."""

    def __init__(self, decider: Decider, index: VersionIndex) -> None:
        self.decider = decider
        self.index = index
        self.weights: list[int] = [0]
        self._classes: dict[int, int] = {0: 0}
        self._filled = np.zeros(0, np.bool_)
        self.approved = np.zeros(0, np.bool_)
        self.rank = np.zeros(0, np.int32)
        self.scan = np.zeros(0, np.int16)  # an approved update's row, on a Scan
        self.install = np.zeros(0, np.int16)  # the same on an Install
        self.asu = np.zeros(0, np.int16)  # an update not approved, AVAILABLE_SECURITY_UPDATE
        self.installed = np.zeros(0, np.int16)  # an installed package's row
        self.pending = np.zeros(0, np.int16)  # the same when the machine awaits its reboot
        self._members: dict[int, list[int]] = {}  # per package: its updates' ints

    def fill(self, items: Sequence[IndexedInventory]) -> None:
        """Decide every version ``items`` use that the table has not decided yet."""
        self._grow(len(self.index.versions))
        used = np.zeros(len(self.index.versions), np.bool_)
        for item in items:
            used[item.updates] = True
            used[item.installed] = True
        touched: set[int] = set()
        for number in np.flatnonzero(used & ~self._filled).tolist():
            pkg = self.index.versions[number]
            if isinstance(pkg, AvailableUpdate):
                self._decide_update(number, pkg)
                touched.add(int(self.index.package[number]))
            else:
                self._decide_installed(number, pkg)
        self._filled |= used
        for package in touched:
            self._rerank(package)

    def _grow(self, size: int) -> None:
        extra = size - len(self._filled)
        if extra <= 0:
            return
        self._filled = _padded(self._filled, extra)
        self.approved = _padded(self.approved, extra)
        self.rank = _padded(self.rank, extra)
        self.scan = _padded(self.scan, extra)
        self.install = _padded(self.install, extra)
        self.asu = _padded(self.asu, extra)
        self.installed = _padded(self.installed, extra)
        self.pending = _padded(self.pending, extra)

    def _class(self, state: PatchState | None, number: int, asu_non_compliant: bool) -> int:
        """The weight class of version ``number``'s row in ``state`` (None: no row)."""
        if state is None:
            return 0
        approval = self.decider.decide(self.index.versions[number])
        weight = counts.weight_of(
            state, approval.compliance_level, approval.security, asu_non_compliant
        )
        found = self._classes.get(weight)
        if found is None:
            found = self._classes[weight] = len(self.weights)
            self.weights.append(weight)
        return found

    def _decide_update(self, number: int, update: AvailableUpdate) -> None:
        decider = self.decider
        approval = decider.decide(update)
        self.approved[number] = approval.approved
        package = int(self.index.package[number])
        self._members.setdefault(package, []).append(number)
        if not approval.approved:
            security = decider.asu and approval.security and not approval.rejected
            state = PatchState.AVAILABLE_SECURITY_UPDATE if security else None
            self.asu[number] = self._class(state, number, decider.asu_non_compliant)
            return
        # the engine's _update_row without a failure: only a blocked update depends on the
        # operation
        if decider.blocked_dependency(update) is not None:
            scan, install = PatchState.MISSING, PatchState.FAILED
        elif not_applicable(decider, update) is not None:
            scan = install = PatchState.NOT_APPLICABLE
        else:
            scan = install = PatchState.MISSING
        self.scan[number] = self._class(scan, number, False)
        self.install[number] = self._class(install, number, False)

    def _decide_installed(self, number: int, pkg: PackageFacts) -> None:
        state = installed_state(self.decider, self.decider.decide(pkg))
        self.installed[number] = self._class(state, number, False)
        if state is PatchState.INSTALLED:
            self.pending[number] = self._class(PatchState.INSTALLED_PENDING_REBOOT, number, False)

    def _rerank(self, package: int) -> None:
        """Rank the package's update versions in the family's order (equal versions share a
        rank, so that the instances holding both go through the engine)."""
        members = self._members[package]
        newer = self.decider.is_newer

        def order(a: str, b: str) -> int:
            return 1 if newer(a, b) else -1 if newer(b, a) else 0

        versions = sorted({self.index.versions[m].version for m in members}, key=cmp_to_key(order))
        rank: dict[str, int] = {}
        for position, version in enumerate(versions):
            same = position and not newer(version, versions[position - 1])
            rank[version] = rank[versions[position - 1]] if same else position
        for m in members:
            self.rank[m] = rank[self.index.versions[m].version]


_A = TypeVar("_A", bound=np.generic)


def _padded(array: npt.NDArray[_A], extra: int) -> npt.NDArray[_A]:
    return np.concatenate([array, np.zeros(extra, array.dtype)])


def table_summary(table: DecisionTable, item: IndexedInventory) -> Summary | None:
    """``evaluate(...).summary`` of ``item`` from ``table`` (filled for it), or None when the
    instance needs the engine (a failed or NoReboot Install, two updates of one package with
    equal versions, too many rows for the packed counts)."""
    inventory = item.inventory
    if inventory.failed or inventory.no_reboot_install is not None:
        return None
    package = table.index.package
    chosen = _chosen(table, item.updates)
    if chosen is None:
        return None
    # the installed packages an update row reports instead are not shown
    reported = np.zeros(table.index.packages, np.bool_)
    reported[package[chosen]] = True
    shown = item.installed[~reported[package[item.installed]]]
    weights = table.install if inventory.operation is Operation.INSTALL else table.scan
    classes = [weights[chosen], _installed_classes(table, shown, inventory)]
    if table.decider.asu:
        classes.append(_asu_classes(table, item.updates, reported))
    rows = sum(map(len, classes))
    if rows >= counts.FIELD_LIMIT:
        return None
    found = np.bincount(np.concatenate(classes), minlength=len(table.weights)).tolist()
    return counts.unpack(sum(map(mul, found, table.weights)), rows)


def _chosen(table: DecisionTable, updates: Ids) -> Ids | None:
    """Decider.select()'s winners: the approved update of highest rank per package; None when
    two approved updates of one package share a rank."""
    approved = updates[table.approved[updates]]
    packages = table.index.package[approved]
    ranks = table.rank[approved]
    order = np.lexsort((ranks, packages))
    packages, ranks = packages[order], ranks[order]
    same = packages[1:] == packages[:-1]
    if not same.any():
        return approved
    if (same & (ranks[1:] <= ranks[:-1])).any():
        return None
    winners: Ids = approved[order][np.append(~same, True)]
    return winners


def _installed_classes(table: DecisionTable, shown: Ids, inventory: Inventory) -> _Classes:
    """The shown installed packages' weight classes, INSTALLED_PENDING_REBOOT for those the
    machine awaits a reboot for (the engine's pending_reboot without a NoReboot Install)."""
    found = table.installed[shown]
    facts = inventory.facts
    if not facts.reboot_required:
        return found
    index = table.index
    awaits = np.isin(index.name[shown], index.name_ids(facts.reboot_required_packages))
    if facts.boot_time is not None:
        awaits |= index.installed_at[shown] > micros(facts.boot_time)
    pending = table.pending[shown]
    return np.where(awaits & (pending != 0), pending, found)


def _asu_classes(table: DecisionTable, updates: Ids, reported: npt.NDArray[np.bool_]) -> _Classes:
    """One AVAILABLE_SECURITY_UPDATE row per package no update row reports: its first security
    update not approved (available_security_rows)."""
    missed = updates[table.asu[updates] != 0]
    packages = table.index.package[missed]
    keep = ~reported[packages]
    missed, packages = missed[keep], packages[keep]
    _, first = np.unique(packages, return_index=True)
    found: _Classes = table.asu[missed[first]]
    return found


class FleetTables:
    """The decision tables of a fleet over one VersionIndex, one per Decider of ``cache``."""

    def __init__(self, index: VersionIndex, cache: DecisionCache | None = None) -> None:
        self.index = index
        self.cache = cache or DecisionCache()
        self._tables: dict[int, DecisionTable] = {}

    def summaries(
        self, members: Sequence[tuple[PatchBaseline, IndexedInventory]], now: datetime
    ) -> list[Summary]:
        """Each member's ``evaluate(baseline, inventory, now).summary``, in order."""
        self.index.sync()
        tables = [self.table(b, i.inventory, now) for b, i in members]
        by_table: dict[int, list[IndexedInventory]] = {}
        for table, (_, item) in zip(tables, members, strict=True):
            by_table.setdefault(id(table), []).append(item)
        for table in {id(t): t for t in tables}.values():
            table.fill(by_table[id(table)])
        found = []
        for table, (baseline, item) in zip(tables, members, strict=True):
            summary = table_summary(table, item)
            if summary is None:
                summary = evaluate_summary(baseline, item.inventory, now, cache=self.cache)
            found.append(summary)
        return found

    def table(self, baseline: PatchBaseline, inventory: Inventory, now: datetime) -> DecisionTable:
        """The table of the Decider that judges ``inventory`` under ``baseline`` at ``now``."""
        decider = self.cache.decider(baseline, inventory.facts.effective_product(), now)
        found = self._tables.get(id(decider))
        if found is None:
            found = self._tables[id(decider)] = DecisionTable(decider, self.index)
        return found
