"""Stage: report — views. ``patchctl diff``'s comparison from the engine's fleet tables
(:mod:`reconciler.evaluation.tables`), for whole fleets.

The latest inventories are interned once (one VersionIndex for both revisions); each revision's
baselines give DecisionTables over it (a baseline equal in both revisions is one object, so its
table is built once). Per instance and revision, the compliance status comes from the tables'
summaries and the pins from the tables' approved and rank arrays. The verdict lists (newly
approved, no longer approved, newly rejected) come from per-version arrays: the versions whose
decision differs between the two revisions' Deciders are found first (usually few), and only the
instances' rows of those package names are looked at; strings are built only for what is
reported. Instances with a hold, a failed Install or a NoReboot Install do not come here
(diff.py judges them one by one, the reference path); the results are the reference's
(tests/test_diff_tables.py).

Pure: no I/O, no clock (``now`` is given); may not read the store, a source or a transport.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from reconciler.api.inventory import Inventory, PackageFacts
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation.engine import DecisionCache
from reconciler.evaluation.pins import _pin
from reconciler.evaluation.tables import (
    DecisionTable,
    FleetTables,
    Ids,
    IndexedInventory,
    VersionIndex,
)

_Flags = npt.NDArray[np.bool_]
_CHUNK = 1024  # instances whose rows are concatenated together: bounds the arrays' size


def version_key(package: PackageFacts, native_arch: str) -> str:
    """``name[:arch]=version``, as pins name it: the architecture only when not the machine's."""
    arch = "" if package.arch in ("", "all", "noarch", native_arch) else f":{package.arch}"
    return f"{package.name}{arch}={package.version}"


@dataclass(frozen=True, slots=True)
class Member:
    """One instance to judge: its latest inventory and its baseline under each revision."""

    inventory: Inventory
    before: PatchBaseline
    after: PatchBaseline


@dataclass(frozen=True, slots=True)
class Judged:
    """One instance under both revisions: compliance status and pins of each, and the verdict
    lists (sorted ``name[:arch]=version``)."""

    status: tuple[str, str]
    pins: tuple[tuple[str, ...], tuple[str, ...]]
    newly_approved: tuple[str, ...] = ()
    no_longer_approved: tuple[str, ...] = ()
    newly_rejected: tuple[str, ...] = ()


class _Decisions:
    """One table's verdicts per version int, as ``DecisionTable.fill`` computed them (no version
    is decided again): approved, rejected, and (updates) whether it would be pinned when it wins
    (approved, not blocked, applicable)."""

    def __init__(self, table: DecisionTable) -> None:
        self.table = table
        decided = table.decided()
        self.approved = decided.approved
        self.rejected = decided.rejected
        self.pinned = decided.applicable & ~table.blocked[: len(decided.applicable)]


class _Strings:
    """Each version's pin and verdict key per native architecture, built once."""

    def __init__(self, index: VersionIndex) -> None:
        self._versions = index.versions
        self._pins: dict[tuple[int, str], str] = {}
        self._keys: dict[tuple[int, str], str] = {}

    def pin(self, number: int, native: str) -> str:
        found = self._pins.get((number, native))
        if found is None:
            found = self._pins[number, native] = _pin(self._versions[number], native)  # type: ignore[arg-type]
        return found

    def key(self, number: int, native: str) -> str:
        found = self._keys.get((number, native))
        if found is None:
            found = self._keys[number, native] = version_key(self._versions[number], native)
        return found


def judge(members: Sequence[Member], now: datetime, cache: DecisionCache) -> list[Judged]:
    """Each member's statuses, pins and verdict lists under both revisions, from the tables
    (their Deciders from ``cache``, shared with the instances judged one by one). An instance
    whose two revisions give it one Decider (its baseline unchanged) is counted and pinned
    once."""
    index = VersionIndex()
    items = [index.index(m.inventory) for m in members]
    index.sync()
    tables = FleetTables(index, cache)
    pairs = [
        (tables.table(m.before, m.inventory, now), tables.table(m.after, m.inventory, now))
        for m in members
    ]
    moved = [n for n, (old, new) in enumerate(pairs) if old is not new]
    status = [str(s.compliance_status) for s in tables.summaries(_side(members, items, 0), now)]
    after = tables.summaries(_side([members[n] for n in moved], [items[n] for n in moved], 1), now)
    decisions = _decisions(pairs)
    strings = _Strings(index)
    natives = [m.inventory.facts.arch for m in members]
    pins = _pins([decisions[id(p[0])] for p in pairs], items, natives, strings)
    pins_after = _pins(
        [decisions[id(pairs[n][1])] for n in moved],
        [items[n] for n in moved],
        [natives[n] for n in moved],
        strings,
    )
    changed = dict(zip(moved, zip(after, pins_after, strict=True), strict=True))
    lists = _verdict_lists(pairs, decisions, items, natives, strings)
    found = []
    for n in range(len(members)):
        summary, pinned = changed.get(n, (None, pins[n]))
        later = status[n] if summary is None else str(summary.compliance_status)
        empty: _Lists = ((), (), ())
        found.append(Judged((status[n], later), (pins[n], pinned), *lists.get(n, empty)))
    return found


def _side(
    members: Sequence[Member], items: Sequence[IndexedInventory], side: int
) -> list[tuple[PatchBaseline, IndexedInventory]]:
    return [(m.after if side else m.before, item) for m, item in zip(members, items, strict=True)]


def _decisions(pairs: Sequence[tuple[DecisionTable, DecisionTable]]) -> dict[int, _Decisions]:
    """Per table (by id), its verdicts for every version its instances use (the summaries
    passes filled each table for its instances)."""
    tables = {id(t): t for pair in pairs for t in pair}
    return {key: _Decisions(table) for key, table in tables.items()}


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows (version ints) of a chunk of instances, concatenated, with each one's instance
    (its position in the chunk) and its position in its own list."""

    ids: Ids
    owner: Ids
    position: Ids

    @classmethod
    def of(cls, arrays: Sequence[Ids]) -> _Rows:
        sizes = np.array([len(a) for a in arrays], np.int64)
        owner = np.repeat(np.arange(len(arrays), dtype=np.int32), sizes)
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        position = (np.arange(len(owner)) - starts).astype(np.int32)
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        return cls(ids.astype(np.int32, copy=False), owner, position)


def _chunks(positions: Sequence[int]) -> list[list[int]]:
    return [list(positions[s : s + _CHUNK]) for s in range(0, len(positions), _CHUNK)]


def _pins(
    decisions: Sequence[_Decisions],
    items: Sequence[IndexedInventory],
    natives: Sequence[str],
    strings: _Strings,
) -> list[tuple[str, ...]]:
    """Each instance's pins under its table: Decider.select()'s winners (per package the
    approved update of highest rank, the first of equal ones) that are MISSING, in the order
    the engine lists their rows (its package's first approved update)."""
    found: list[tuple[str, ...]] = [() for _ in items]
    by_table: dict[int, list[int]] = {}
    for n, d in enumerate(decisions):
        by_table.setdefault(id(d), []).append(n)
    for positions in by_table.values():
        d = decisions[positions[0]]
        for chunk in _chunks(positions):
            rows = _Rows.of([items[n].updates for n in chunk])
            for owner, numbers in _winning_pins(d, rows):
                n = chunk[owner]
                found[n] = tuple(strings.pin(v, natives[n]) for v in numbers)
    return found


def _winning_pins(d: _Decisions, rows: _Rows) -> list[tuple[int, list[int]]]:
    """(instance in the chunk, version ints pinned in order) for the chunk's instances."""
    approved = d.approved[rows.ids]
    if not approved.any():
        return []
    ids, owner, position = rows.ids[approved], rows.owner[approved], rows.position[approved]
    index = d.table.index
    group = owner.astype(np.int64) * index.packages + index.package[ids]
    order = np.lexsort((position, -d.table.rank[ids], group))
    group, ids, owner, position = group[order], ids[order], owner[order], position[order]
    starts = _starts(group)
    first = np.minimum.reduceat(position, starts)
    winners, owners = ids[starts], owner[starts]
    keep = d.pinned[winners]
    if not keep.any():
        return []
    winners, owners, first = winners[keep], owners[keep], first[keep]
    order = np.lexsort((first, owners))
    winners, owners = winners[order], owners[order]
    cut = _starts(owners)
    return [
        (int(owners[s]), part.tolist())
        for s, part in zip(cut.tolist(), np.split(winners, cut[1:]), strict=True)
    ]


def _starts(sorted_keys: npt.NDArray[np.int64] | Ids) -> npt.NDArray[np.intp]:
    """Where each run of equal keys starts (none for no keys)."""
    if not len(sorted_keys):
        return np.zeros(0, np.intp)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


_Lists = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _verdict_lists(
    pairs: Sequence[tuple[DecisionTable, DecisionTable]],
    decisions: dict[int, _Decisions],
    items: Sequence[IndexedInventory],
    natives: Sequence[str],
    strings: _Strings,
) -> dict[int, _Lists]:
    """Per instance whose two Deciders differ on one of its versions: the verdict lists."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for n, (old, new) in enumerate(pairs):
        if old is not new:
            by_pair.setdefault((id(old), id(new)), []).append(n)
    found: dict[int, _Lists] = {}
    for (old_id, new_id), positions in by_pair.items():
        was, now = decisions[old_id], decisions[new_id]
        names = _changed_names(was, now)
        if not names.any():
            continue
        for chunk in _chunks(positions):
            found.update(_chunk_lists(was, now, names, chunk, items, natives, strings))
    return found


def _changed_names(was: _Decisions, now: _Decisions) -> _Flags:
    """Per package name, whether a version of it is decided differently by the two."""
    changed = (was.approved != now.approved) | (was.rejected != now.rejected)
    index = was.table.index
    names = np.zeros(int(index.name.max(initial=-1)) + 1, np.bool_)
    names[index.name[np.flatnonzero(changed)]] = True
    return names


def _chunk_lists(
    was: _Decisions,
    now: _Decisions,
    names: _Flags,
    chunk: Sequence[int],
    items: Sequence[IndexedInventory],
    natives: Sequence[str],
    strings: _Strings,
) -> dict[int, _Lists]:
    """The verdict lists of a chunk's instances. Only rows of a changed package name are read:
    any row giving one of their strings is among them, so set differences over them are the
    reference's over every row (two versions may give one string: sets, not ints)."""
    index = was.table.index
    rows = _Rows.of([np.concatenate((items[n].updates, items[n].installed)) for n in chunk])
    hit = names[index.name[rows.ids]]
    ids, owner = rows.ids[hit], rows.owner[hit]
    found: dict[int, _Lists] = {}
    if not len(ids):
        return found
    cut = _starts(owner)
    for s, part in zip(cut.tolist(), np.split(ids, cut[1:]), strict=True):
        n = chunk[int(owner[s])]
        lists = _lists(was, now, part, functools.partial(strings.key, native=natives[n]))
        if any(lists):
            found[n] = lists
    return found


def _lists(was: _Decisions, now: _Decisions, ids: Ids, key: Callable[[int], str]) -> _Lists:
    """Newly approved, no longer approved, newly rejected among ``ids`` (one instance's)."""
    differ = (was.approved[ids] != now.approved[ids]) | (was.rejected[ids] != now.rejected[ids])
    if not differ.any():
        return (), (), ()
    before_a = {key(v) for v in ids[was.approved[ids]].tolist()}
    after_a = {key(v) for v in ids[now.approved[ids]].tolist()}
    before_r = {key(v) for v in ids[was.rejected[ids]].tolist()}
    after_r = {key(v) for v in ids[now.rejected[ids]].tolist()}
    return (
        tuple(sorted(after_a - before_a)),
        tuple(sorted(before_a - after_a)),
        tuple(sorted(after_r - before_r)),
    )
