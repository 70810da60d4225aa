"""Stage: evaluation. Whole-fleet summaries from tables: SSM's counts for many instances at once.

A fleet reports the same package versions over and over. :class:`VersionIndex` interns them: each
distinct package-version object gets an int, and an instance becomes two int arrays (its updates,
its installed packages: :class:`IndexedInventory`). Per Decider (one baseline, product and moment)
a :class:`DecisionTable` holds, in numpy arrays indexed by those ints, what each version
contributes to the counts (whether it is approved, its rank among its package's versions, the
weight class of each row it can give, FAILED when its install failed). A table's instances are
then counted 256 at a time (sized for the CPU's caches): their versions concatenated into one
array, each row's class looked up, one ``bincount`` per (instance, class) and a matrix product to
the counts' fields, not a Python step per package. The decisions are the engine's own
(``Decider.decide`` and the engine's state rules); instances the tables cannot count exactly
(a NoReboot Install, two updates of one package with equal versions) go through
``evaluate_summary``. Either way each Summary is ``evaluate(...).summary``
(tests/test_engine_tables.py), and ``evaluate`` stays the reference.

Pure: no I/O, and the clock is an argument. Decides nothing itself: the rules are the engine's.
May import ``reconciler.api`` and numpy only; decides through ``Decider.verdicts``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from reconciler.api.enums import ComplianceLevel, Family, Operation, PatchState
from reconciler.api.inventory import AvailableUpdate, Inventory, PackageFacts
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import counts
from reconciler.evaluation.engine import Decider, DecisionCache, installed_state, not_applicable
from reconciler.evaluation.results import Approval, Summary
from reconciler.evaluation.summary import evaluate_summary
from reconciler.evaluation.verdicts import LEVELS, Verdicts, micros
from reconciler.evaluation.versions import VersionKey, sort_key

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
        self._same: dict[tuple[str, str, str], list[int]] = {}  # (name, arch, version) -> ints
        self._installed_at: list[int] = []  # microseconds since the epoch, UTC
        self._keys: dict[Family, Callable[[str], VersionKey]] = {}
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
        self._same.setdefault((pkg.name, pkg.arch, pkg.version), []).append(number)
        return number

    def numbers_of(self, name: str, arch: str, version: str) -> list[int]:
        """The ints of every version object with this name, architecture and version."""
        return self._same.get((name, arch, version), [])

    def name_ids(self, names: Iterable[str]) -> Ids:
        """The ints of these package names (names no version carries have none)."""
        return np.array([self._names[n] for n in names if n in self._names], np.int32)

    @property
    def packages(self) -> int:
        return len(self._packages)

    def version_key(self, family: Family) -> Callable[[str], VersionKey]:
        """``family``'s sort key, cached per version string: shared by every table of the
        family, so each distinct version is parsed once."""
        found = self._keys.get(family)
        if found is None:
            found = self._keys[family] = functools.cache(sort_key(family))
        return found


@dataclass(frozen=True, slots=True, eq=False)
class Decided:
    """A DecisionTable's verdicts per version int: ``decide``'s approved and rejected (installed
    versions too), and whether the version is an approved update the engine finds applicable
    (``not_applicable`` gives nothing: it is pinned when it wins, unless blocked)."""

    approved: npt.NDArray[np.bool_]
    rejected: npt.NDArray[np.bool_]
    applicable: npt.NDArray[np.bool_]


class DecisionTable:
    """One Decider's decisions over a VersionIndex, as arrays: per version int, whether an update
    is approved, its rank among its package's versions, and the weight class of each row it can
    give (0: no row or weight 0; ``weights[c]`` is class c's packed counts)."""

    def __init__(self, decider: Decider, index: VersionIndex) -> None:
        self.decider = decider
        self.index = index
        self.weights: list[int] = [0]
        self._classes: dict[tuple[PatchState, ComplianceLevel, bool, bool], int] = {}
        self._filled = np.zeros(0, np.bool_)
        self.approved = np.zeros(0, np.bool_)
        self.rank = np.zeros(0, np.int32)
        self.scan = np.zeros(0, np.int16)  # an approved update's row, on a Scan
        self.install = np.zeros(0, np.int16)  # the same on an Install
        self.asu = np.zeros(0, np.int16)  # an update not approved, AVAILABLE_SECURITY_UPDATE
        self.installed = np.zeros(0, np.int16)  # an installed package's row
        self.pending = np.zeros(0, np.int16)  # the same when the machine awaits its reboot
        self.failed = np.zeros(0, np.int16)  # an approved version's row when its install failed
        self.blocked = np.zeros(0, np.bool_)  # an approved update needs a package BLOCK rejects
        self._members: dict[int, list[int]] = {}  # per package: its updates' ints
        self._version_key = index.version_key(decider.family)
        # each fill's new version ints, their bulk verdicts and kind codes, kept for decided():
        # patchctl diff's comparison reads them instead of deciding every version again
        self._decided: list[tuple[npt.NDArray[np.intp], Verdicts, npt.NDArray[np.int64]]] = []

    def fill(self, items: Sequence[IndexedInventory]) -> None:
        """Decide every version ``items`` use that the table has not decided yet: their
        verdicts in bulk (``Decider.verdicts``), then each row's weight class once per distinct
        (kind, verdict, blocked, not applicable), not once per version."""
        self._grow(len(self.index.versions))
        used = np.zeros(len(self.index.versions), np.bool_)
        for item in items:
            used[item.updates] = True
            used[item.installed] = True
        new = np.flatnonzero(used & ~self._filled)
        self._filled |= used
        if not len(new):
            return
        pkgs = list(map(self.index.versions.__getitem__, new.tolist()))
        verdicts = self.decider.verdicts(pkgs)
        update = np.fromiter((isinstance(p, AvailableUpdate) for p in pkgs), np.bool_, len(pkgs))
        self.approved[new] = verdicts.approved & update
        codes = self._kinds(pkgs, verdicts, update)
        self._decided.append((new, verdicts, codes))
        distinct, group = np.unique(codes, return_inverse=True)
        for kind, code in enumerate(distinct.tolist()):  # a few dozen kinds
            self._classify(new[group == kind], _kind(code))
        packages = self.index.package[new[update]].tolist()
        for package, number in zip(packages, new[update].tolist(), strict=True):
            self._members.setdefault(package, []).append(number)
        for package in set(packages):
            self._rerank(package)

    def decided(self) -> Decided:
        """The verdicts ``fill`` computed, per version int of the index (False for a version no
        filled instance uses): nothing is decided again."""
        size = len(self.index.versions)
        found = Decided(*(np.zeros(size, np.bool_) for _ in range(3)))
        for new, verdicts, codes in self._decided:
            found.approved[new] = verdicts.approved
            found.rejected[new] = verdicts.rejected
            # bit 0: an update, bit 5: not applicable (_kinds)
            found.applicable[new] = verdicts.approved & ((codes & 1) == 1) & ((codes & 32) == 0)
        return found

    def _kinds(
        self, pkgs: Sequence[PackageFacts], verdicts: Verdicts, update: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.int64]:
        """Per version what its rows depend on, as one int (_kind reads it): whether it is an
        update, its verdict, and for an approved update whether it is blocked and whether it is
        not applicable (the engine's blocked_dependency and not_applicable, asked only about
        approved updates)."""
        decider = self.decider
        approved_updates = np.flatnonzero(update & verdicts.approved)
        blocked = np.zeros(len(pkgs), np.bool_)
        inapplicable = np.zeros(len(pkgs), np.bool_)
        for position in approved_updates.tolist():
            pkg = pkgs[position]
            assert isinstance(pkg, AvailableUpdate)
            blocked[position] = decider.blocked_dependency(pkg) is not None
            inapplicable[position] = not_applicable(decider, pkg) is not None
        flags = (update, verdicts.approved, verdicts.rejected, verdicts.security, blocked)
        code = verdicts.level.astype(np.int64) * 64 + inapplicable * 32
        for bit, flag in enumerate(flags):
            code += flag.astype(np.int64) << bit
        return code

    def _classify(self, numbers: npt.NDArray[np.intp], kind: _Kind) -> None:
        """The weight classes of versions of one kind: the engine's _update_row without a failure
        (only a blocked update depends on the operation), installed_state, the
        AVAILABLE_SECURITY_UPDATE row of an update not approved."""
        is_update, (approved, rejected, level, security), blocked, inapplicable = kind
        approval = Approval(approved, rejected, level, "", security)
        decider = self.decider
        if is_update and not approved:
            asu = decider.asu and security and not rejected
            state = PatchState.AVAILABLE_SECURITY_UPDATE if asu else None
            self.asu[numbers] = self._class(state, approval, decider.asu_non_compliant)
        elif is_update:
            self.failed[numbers] = self._class(PatchState.FAILED, approval, False)
            self.blocked[numbers] = blocked
            scan = PatchState.NOT_APPLICABLE if inapplicable else PatchState.MISSING
            install = PatchState.FAILED if blocked else scan
            scan = PatchState.MISSING if blocked else scan
            self.scan[numbers] = self._class(scan, approval, False)
            self.install[numbers] = self._class(install, approval, False)
        else:
            state = installed_state(decider, approval)
            self.installed[numbers] = self._class(state, approval, False)
            if state is PatchState.INSTALLED:
                pending = PatchState.INSTALLED_PENDING_REBOOT
                self.pending[numbers] = self._class(pending, approval, False)
                self.failed[numbers] = self._class(PatchState.FAILED, approval, False)

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
        self.failed = _padded(self.failed, extra)
        self.blocked = _padded(self.blocked, extra)

    def _class(self, state: PatchState | None, approval: Approval, asu_non_compliant: bool) -> int:
        """The weight class of a row in ``state`` (None: no row) of a version so approved."""
        if state is None:
            return 0
        key = (state, approval.compliance_level, approval.security, asu_non_compliant)
        found = self._classes.get(key)
        if found is None:
            weight = counts.weight_of(*key)
            if weight not in self.weights:
                self.weights.append(weight)
            found = self._classes[key] = self.weights.index(weight)
        return found

    def _rerank(self, package: int) -> None:
        """Rank the package's update versions in the family's order (equal versions share a
        rank, so that the instances holding both go through the engine). Each version's sort
        key is computed once per family (versions.sort_key orders as the comparator does)."""
        members = self._members[package]
        versions = self.index.versions
        key = self._version_key
        distinct = {versions[m].version for m in members}
        # a package offering one version needs no sort key (a key costs a parse of the version)
        ordered = sorted(distinct, key=key) if len(distinct) > 1 else list(distinct)
        rank: dict[str, int] = {}
        for position, version in enumerate(ordered):
            same = position and key(version) == key(ordered[position - 1])
            rank[version] = rank[ordered[position - 1]] if same else position
        for m in members:
            self.rank[m] = rank[versions[m].version]


# What a version's rows depend on: is an update, (approved, rejected, level, security), blocked,
# not applicable.
_Kind = tuple[bool, tuple[bool, bool, ComplianceLevel, bool], bool, bool]


def _kind(code: int) -> _Kind:
    """DecisionTable._kinds' int as a _Kind."""
    update, approved, rejected, security, blocked, inapplicable = (
        bool(code >> bit & 1) for bit in range(6)
    )
    return update, (approved, rejected, LEVELS[code >> 6], security), blocked, inapplicable


_A = TypeVar("_A", bound=np.generic)


def _padded(array: npt.NDArray[_A], extra: int) -> npt.NDArray[_A]:
    return np.concatenate([array, np.zeros(extra, array.dtype)])


# Instances counted together. Not a whole table at once: at 2,000 instances a table's arrays
# (16 MB of installed ids alone) leave the CPU's caches, and the pass was slower than the old
# 512-instance chunks (10,000-instance bench fleet: 1.07 s; blocks of 128: 0.76 s, 256:
# 0.65-0.72 s, 512: 0.70 s; old code 0.98-1.04 s).
_BLOCK = 256
_BITMAP = 1 << 25  # bytes of a block's (instances x packages) bitmap, at most: fewer instances


def table_summaries(
    table: DecisionTable, items: Sequence[IndexedInventory]
) -> list[Summary | None]:
    """``evaluate(...).summary`` of each of ``items`` from ``table`` (filled for them), or None
    for an instance that needs the engine (a NoReboot Install, two approved updates of one
    package with equal versions, too many rows for the packed counts). Counted with whole-array
    operations over blocks of instances: no Python step per package."""
    block = max(1, min(_BLOCK, _BITMAP // max(table.index.packages, 1)))
    found: list[Summary | None] = []
    for start in range(0, len(items), block):
        found.extend(_block_summaries(table, items[start : start + block]))
    return found


@dataclass(frozen=True, slots=True)
class _Rows:
    """Package versions of a block of instances, concatenated: ``ids``, and where each
    instance's run of them starts (``starts``) and how long it is (``sizes``)."""

    ids: Ids
    starts: npt.NDArray[np.intp]
    sizes: npt.NDArray[np.intp]

    @classmethod
    def of(cls, arrays: Sequence[Ids]) -> _Rows:
        sizes = np.fromiter(map(len, arrays), np.intp, len(arrays))
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        starts = np.cumsum(sizes) - sizes
        return cls(ids.astype(np.int32, copy=False), starts, sizes)

    def owner(self) -> Ids:
        """Each row's instance (its position in the block)."""
        return np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.sizes)

    def rows_of(
        self, instances: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The positions of the rows of these instances (a mask over the block), in order, and
        each one's instance: without a step over the other instances' rows."""
        sizes = self.sizes[instances]
        before = np.cumsum(sizes) - sizes  # where each instance's run lands in the result
        shift = np.repeat(self.starts[instances] - before, sizes)
        owner = np.repeat(np.flatnonzero(instances), sizes)
        return np.arange(len(shift), dtype=np.intp) + shift, owner


def _block_summaries(
    table: DecisionTable, items: Sequence[IndexedInventory]
) -> list[Summary | None]:
    index = table.index
    updates = _Rows.of([i.updates for i in items])
    installed = _Rows.of([i.installed for i in items])
    operations = (i.inventory.operation is Operation.INSTALL for i in items)
    install = np.fromiter(operations, np.bool_, len(items))
    update_owner = updates.owner()
    winners, owners, tied = _winners(table, updates.ids, update_owner)
    # (instance, package) pairs an update row reports: their installed packages are not shown
    reported = np.zeros((len(items), index.packages), np.bool_)
    reported[owners, index.package[winners]] = True
    chosen = np.where(install[owners], table.install[winners], table.scan[winners])
    listed = _installed_classes(table, installed, items)
    failures = _failures(index, items)
    if len(failures):
        failing = _failing(failures, len(items), max(len(index.versions), 1))
        rows = np.flatnonzero(failing[owners])
        _mark_failed(table, chosen, winners, rows, owners[rows], failures, installable=True)
        rows, owner = installed.rows_of(failing)
        _mark_failed(table, listed, installed.ids, rows, owner, failures, installable=False)
    classes = [(chosen, owners)]
    if table.decider.asu:
        classes.append(_asu_classes(table, updates.ids, update_owner, reported))
    counted = _counted(table, installed, listed, _hidden(table, installed, reported))
    for found, instance in classes:
        counted += np.bincount(
            instance.astype(np.int64) * len(table.weights) + found, minlength=len(counted)
        )
    # per instance, its rows and the sums of their weights' fields (counts.fields)
    per_instance = counted.reshape(len(items), len(table.weights))
    weights = np.array([counts.fields(w) for w in table.weights], np.int64)
    summed = (per_instance @ weights).tolist()
    rows = per_instance.sum(axis=1).tolist()
    declined = set(tied.tolist())
    return [
        None
        if position in declined or _needs_engine(item.inventory, size)
        else counts.from_fields(found, size)
        for position, (item, found, size) in enumerate(zip(items, summed, rows, strict=True))
    ]


def _counted(
    table: DecisionTable, installed: _Rows, classes: _Classes, hidden: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Per (instance, weight class) how many installed rows are shown, flattened: one bincount
    over the block's rows, the ``hidden`` ones in a bin past the instances' (dropped)."""
    width = len(table.weights)
    size = len(installed.sizes) * width
    key = np.repeat(np.arange(0, size, width, dtype=np.int64), installed.sizes) + classes
    key[hidden] = size
    return np.bincount(key, minlength=size + 1)[:size]


def _hidden(
    table: DecisionTable, installed: _Rows, reported: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Which installed rows an update row reports (same instance and package): not shown. Looked
    up in the flattened bitmap: nearly every installed package of a fleet has some update, so
    narrowing the rows first costs more than it saves."""
    packages = table.index.packages
    start = np.repeat(np.arange(len(installed.sizes), dtype=np.int64) * packages, installed.sizes)
    found: npt.NDArray[np.bool_] = reported.ravel()[start + table.index.package[installed.ids]]
    return found


def _needs_engine(inventory: Inventory, rows: int) -> bool:
    """A NoReboot Install (the patches it installed are named, not interned), or too many rows
    for the packed counts."""
    return inventory.no_reboot_install is not None or rows >= counts.FIELD_LIMIT


def _failures(index: VersionIndex, items: Sequence[IndexedInventory]) -> npt.NDArray[np.int64]:
    """(instance, version) keys of the versions each instance's last Install failed on."""
    width = max(len(index.versions), 1)
    return np.array(
        [
            position * width + number
            for position, item in enumerate(items)
            for f in item.inventory.failed
            for number in index.numbers_of(f.name, f.arch, f.version)
        ],
        np.int64,
    )


def _failing(failures: npt.NDArray[np.int64], instances: int, width: int) -> npt.NDArray[np.bool_]:
    """The instances (a mask) with a failure among ``failures`` (_failures' keys)."""
    failing = np.zeros(instances, np.bool_)
    failing[failures // width] = True
    return failing


def _mark_failed(
    table: DecisionTable,
    classes: _Classes,
    ids: Ids,
    rows: npt.NDArray[np.intp],
    owner: npt.NDArray[np.intp] | Ids,
    failures: npt.NDArray[np.int64],
    *,
    installable: bool,
) -> None:
    """Rows of versions whose install failed become FAILED, in place: the chosen updates that
    can be installed (a blocked one cannot: the engine's _update_row) and the approved installed
    versions (INSTALLED or pending: _failed_installed). Only ``rows`` (the rows of the few
    instances with a failure; ``owner``, their instances) are looked at."""
    width = max(len(table.index.versions), 1)
    keys = owner.astype(np.int64) * width + ids[rows]
    hit = rows[np.isin(keys, failures)]
    hit = hit[~table.blocked[ids[hit]]] if installable else hit[table.pending[ids[hit]] != 0]
    classes[hit] = table.failed[ids[hit]]


def _winners(table: DecisionTable, ids: Ids, owner: Ids) -> tuple[Ids, Ids, Ids]:
    """Decider.select()'s winners among update rows ``ids`` of instances ``owner``: per instance
    and package the approved update of highest rank, with their instances, and the instances
    where two approved updates of one package share a rank (the engine orders those)."""
    approved = table.approved[ids]
    ids, owner = ids[approved], owner[approved]
    package, rank = table.index.package[ids], table.rank[ids]
    # one int64 sort key, (instance, package, rank): an argsort, cheaper than a lexsort
    ranks = int(rank.max(initial=0)) + 1
    key = (owner.astype(np.int64) * table.index.packages + package) * ranks + rank
    order = np.argsort(key, kind="stable")
    key, ids, owner, rank = key[order], ids[order], owner[order], rank[order]
    same = key[1:] // ranks == key[:-1] // ranks  # same instance and package
    tied: Ids = owner[1:][same & (rank[1:] <= rank[:-1])]
    last = np.ones(len(ids), np.bool_)  # the last of each (instance, package): the highest rank
    last[:-1] = ~same
    return ids[last], owner[last], tied


def _installed_classes(
    table: DecisionTable, installed: _Rows, items: Sequence[IndexedInventory]
) -> _Classes:
    """Every installed row's weight class (the hidden ones too: _counted drops them),
    INSTALLED_PENDING_REBOOT for those their machine awaits a reboot for (the engine's
    pending_reboot without a NoReboot Install): it needs a reboot, and the package asked for it
    or was installed after the last boot. Only the rebooting instances' rows are looked at."""
    found = table.installed[installed.ids]
    facts = [i.inventory.facts for i in items]
    rebooting = np.fromiter((f.reboot_required for f in facts), np.bool_, len(facts))
    if not rebooting.any():
        return found
    rows, owner = installed.rows_of(rebooting)
    could = table.pending[installed.ids[rows]] != 0  # could be pending
    rows, owner = rows[could], owner[could]
    ids = installed.ids[rows]
    index = table.index
    boot = np.full(len(facts), _LATEST, np.int64)  # only the rebooting machines' are read
    for position in np.flatnonzero(rebooting).tolist():
        when = facts[position].boot_time
        boot[position] = _LATEST if when is None else micros(when)
    awaits = index.installed_at[ids] > boot[owner]
    named = [
        (position, name)
        for position, f in enumerate(facts)
        if f.reboot_required
        for name in index.name_ids(f.reboot_required_packages).tolist()
    ]
    if named:
        width = max(len(index.versions), 1)
        keys = np.array([p * width + n for p, n in named], np.int64)
        awaits |= np.isin(owner.astype(np.int64) * width + index.name[ids], keys)
    found[rows[awaits]] = table.pending[ids[awaits]]
    return found


_LATEST = np.iinfo(np.int64).max  # the boot time of a machine that reports none: nothing after it


def _asu_classes(
    table: DecisionTable, ids: Ids, owner: Ids, reported: npt.NDArray[np.bool_]
) -> tuple[_Classes, Ids]:
    """One AVAILABLE_SECURITY_UPDATE row per instance and package no update row reports: its
    first security update not approved (available_security_rows), among update rows ``ids`` of
    instances ``owner``; with their instances."""
    asu = table.asu[ids]
    package = table.index.package[ids]
    missed = (asu != 0) & ~reported[owner, package]
    owner = owner[missed]
    keys = owner.astype(np.int64) * table.index.packages + package[missed]
    _, first = np.unique(keys, return_index=True)
    return asu[missed][first], owner[first]


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
        counted: dict[int, Iterator[Summary | None]] = {
            key: iter(table_summaries(table, by_table[key]))
            for key, table in {id(t): t for t in tables}.items()
        }
        found = []
        for table, (baseline, item) in zip(tables, members, strict=True):
            summary = next(counted[id(table)])
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
