"""Stage: report — views. ``patchctl diff``: what changing the desired state from one revision
to another does to the fleet, before it merges.

Both snapshots are judged against the same inventories (the latest recorded scans) at the same
``now``: per instance, which package versions become approved, stop being approved or become
rejected, and whether its compliance status changes; per window, whether it was added, removed or
rescheduled, and what its next opening would install on each instance it targets. The per
baseline and per group views are sums of the instances'. Pure: no I/O, no clock (``now`` is
given); may not read the store, a source or a transport (the CLI hands everything in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reconciler.api.enums import Operation
from reconciler.api.inventory import Inventory
from reconciler.api.resources import MaintenanceWindow, PatchBaseline
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation import DecisionCache, Hold, declared_holds, evaluate, resolve
from reconciler.evaluation.pins import pins_for
from reconciler.report.views.gates import guarded
from reconciler.schedule import describe, openings
from reconciler.schedule.windows import Opening, current_opening

if TYPE_CHECKING:
    from reconciler.report.views.difftables import Judged

ABSENT = "ABSENT"
"""The status of an instance a revision does not list (it is not managed there)."""


@dataclass(frozen=True)
class Side:
    """One instance under one revision."""

    group: str | None = None
    baseline: str | None = None
    status: str = ABSENT
    """COMPLIANT, NON_COMPLIANT, ABSENT, or why no baseline applies."""
    approved: frozenset[str] = frozenset()
    rejected: frozenset[str] = frozenset()
    """Every version approved (rejected) on the instance: the reference path's. The table path
    leaves both empty and gives InstanceChange its lists instead (strings only for those)."""
    pins: tuple[str, ...] = ()
    """What an Install would send: the approved missing patches (``name[:arch]=version``)."""
    labels: Mapping[str, str] = field(default_factory=dict)


Lists = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
"""Newly approved, no longer approved, newly rejected: sorted ``name[:arch]=version``."""


@dataclass(frozen=True)
class InstanceChange:
    """How one instance's verdicts differ between the two revisions."""

    instance: str
    before: Side
    after: Side
    lists: Lists | None = None
    """The verdict lists when the tables worked them out; else the sides' sets give them."""

    @property
    def newly_approved(self) -> tuple[str, ...]:
        if self.lists is not None:
            return self.lists[0]
        return tuple(sorted(self.after.approved - self.before.approved))

    @property
    def no_longer_approved(self) -> tuple[str, ...]:
        if self.lists is not None:
            return self.lists[1]
        return tuple(sorted(self.before.approved - self.after.approved))

    @property
    def newly_rejected(self) -> tuple[str, ...]:
        if self.lists is not None:
            return self.lists[2]
        return tuple(sorted(self.after.rejected - self.before.rejected))

    @property
    def status_changed(self) -> bool:
        return self.before.status != self.after.status

    @property
    def changed(self) -> bool:
        b, a = self.before, self.after
        return (b.group, b.baseline, b.status) != (a.group, a.baseline, a.status) or bool(
            self.newly_approved or self.no_longer_approved or self.newly_rejected
        )

    def document(self) -> dict[str, Any]:
        b, a = self.before, self.after
        return {
            "instance": self.instance,
            "group": {"before": b.group, "after": a.group},
            "baseline": {"before": b.baseline, "after": a.baseline},
            "compliance": {"before": b.status, "after": a.status},
            "newlyApproved": list(self.newly_approved),
            "noLongerApproved": list(self.no_longer_approved),
            "newlyRejected": list(self.newly_rejected),
        }


@dataclass(frozen=True)
class WindowChange:
    """A window added, removed or rescheduled, with its next opening under each revision."""

    window: str
    change: str
    """added, removed or rescheduled."""
    schedule_before: str | None
    schedule_after: str | None
    next_before: Opening | None
    next_after: Opening | None

    def document(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "change": self.change,
            "schedule": {"before": self.schedule_before, "after": self.schedule_after},
            "nextOpening": {"before": _when(self.next_before), "after": _when(self.next_after)},
        }


@dataclass(frozen=True)
class NextInstall:
    """What the next opening of a window with an Install task would install, per instance
    (under the new revision), beside what it would have installed under the old one."""

    window: str
    opening: Opening | None
    instances: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    """(instance, pins before, pins after) for every instance targeted under either revision."""

    @property
    def changed(self) -> bool:
        return any(before != after for _, before, after in self.instances)

    def document(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "opening": _when(self.opening),
            "changed": self.changed,
            "instances": [
                {"instance": name, "before": list(before), "after": list(after)}
                for name, before, after in self.instances
            ],
        }


@dataclass(frozen=True)
class GateChange:
    """A safety gate of a window task or rollout stage added, removed or changed (what it reads
    or its blockedThreshold); the gate itself is not read."""

    scope: str
    """Whose gate: "task patch of window noon", "stage prod of rollout web"."""
    gate: str
    change: str
    """added, removed or changed."""

    def document(self) -> dict[str, Any]:
        return {"scope": self.scope, "gate": self.gate, "change": self.change}


@dataclass(frozen=True)
class Diff:
    """Everything that differs; empty tuples when the change does nothing to the fleet."""

    instances: tuple[InstanceChange, ...]
    windows: tuple[WindowChange, ...]
    installs: tuple[NextInstall, ...]
    gates: tuple[GateChange, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(
            self.instances or self.windows or self.gates or any(i.changed for i in self.installs)
        )

    def totals(self) -> dict[str, int]:
        changes = self.instances
        return {
            "instances": len(changes),
            "newlyApproved": sum(len(c.newly_approved) for c in changes),
            "noLongerApproved": sum(len(c.no_longer_approved) for c in changes),
            "newlyRejected": sum(len(c.newly_rejected) for c in changes),
            "complianceChanges": sum(c.status_changed for c in changes),
            "windowsAdded": sum(w.change == "added" for w in self.windows),
            "windowsRemoved": sum(w.change == "removed" for w in self.windows),
            "windowsRescheduled": sum(w.change == "rescheduled" for w in self.windows),
            "installsChanged": sum(i.changed for i in self.installs),
        }

    def document(self) -> dict[str, Any]:
        """The JSON shape of docs/diff.md."""
        return {
            "changed": self.changed,
            "totals": self.totals(),
            "baselines": by_key(self.instances, lambda side: side.baseline),
            "groups": by_key(self.instances, lambda side: side.group),
            "instances": [c.document() for c in self.instances],
            "windows": [w.document() for w in self.windows],
            "nextInstalls": [i.document() for i in self.installs],
            "gates": [g.document() for g in self.gates],
        }


def compare(
    before: Snapshot, after: Snapshot, inventories: Iterable[Inventory], now: datetime
) -> Diff:
    """How ``after`` differs from ``before`` for the machines of ``inventories`` at ``now``.
    Instances with a baseline under both revisions and nothing the tables do not count (a
    hold, a failed or NoReboot Install) are judged together from the engine's tables
    (difftables.py); the others one by one, as reference_compare judges all."""
    # The tables need numpy, which no other command may pay for at start-up (test_startup.py).
    from reconciler.report.views.difftables import Member, judge

    ordered = sorted(inventories, key=lambda i: i.instance_id)
    same = _SameBaselines()
    places = [(_place(before, i, same), _place(after, i, same)) for i in ordered]
    tabled = [n for n, (old, new) in enumerate(places) if _tabled(ordered[n], old, new)]
    members = [Member(ordered[n], places[n][0].baseline, places[n][1].baseline) for n in tabled]  # type: ignore[arg-type]
    cache = DecisionCache()  # one Decider per baseline for the tables and the others alike
    judged = dict(zip(tabled, judge(members, now, cache), strict=True))
    sides: dict[str, tuple[Side, Side]] = {}
    changes = []
    for n, inventory in enumerate(ordered):
        old, new = places[n]
        found = judged.get(n)
        if found is None:
            pair = (_side(old, inventory, now, cache), _side(new, inventory, now, cache))
            change = InstanceChange(inventory.instance_id, *pair)
        else:
            pair = (old.judged(found, 0), new.judged(found, 1))
            lists = (found.newly_approved, found.no_longer_approved, found.newly_rejected)
            change = InstanceChange(inventory.instance_id, *pair, lists=lists)
        sides[inventory.instance_id] = pair
        if change.changed:
            changes.append(change)
    return _diff(before, after, tuple(changes), sides, now)


def reference_compare(
    before: Snapshot, after: Snapshot, inventories: Iterable[Inventory], now: datetime
) -> Diff:
    """``compare`` judging every instance one by one through ``evaluate`` and string sets: the
    reference the table path is proven equal to (tests/test_diff_tables.py)."""
    cache = DecisionCache()
    sides = {
        inventory.instance_id: (
            side_of(before, inventory, now, cache),
            side_of(after, inventory, now, cache),
        )
        for inventory in sorted(inventories, key=lambda i: i.instance_id)
    }
    changes = tuple(
        change
        for name, (old, new) in sides.items()
        if (change := InstanceChange(name, old, new)).changed
    )
    return _diff(before, after, changes, sides, now)


def _diff(
    before: Snapshot,
    after: Snapshot,
    changes: tuple[InstanceChange, ...],
    sides: Mapping[str, tuple[Side, Side]],
    now: datetime,
) -> Diff:
    return Diff(
        changes,
        window_changes(before, after, now),
        next_installs(before, after, sides, now),
        gate_changes(before, after),
    )


@dataclass(frozen=True)
class _Place:
    """Where one instance stands under one revision before it is judged: its group, labels and
    baseline (or the Side of an instance with none)."""

    side: Side
    baseline: PatchBaseline | None = None
    holds: tuple[Hold, ...] = ()

    def judged(self, found: Judged, side: int) -> Side:
        return replace(self.side, status=found.status[side], pins=found.pins[side])


class _SameBaselines:
    """One object per baseline content: a baseline the change leaves alone is the same object
    in both revisions, so its Decider and table are built once."""

    def __init__(self) -> None:
        self._seen: dict[str, list[PatchBaseline]] = {}

    def of(self, baseline: PatchBaseline) -> PatchBaseline:
        seen = self._seen.setdefault(baseline.metadata.name, [])
        found = next((b for b in seen if b is baseline or b == baseline), None)
        if found is None:
            seen.append(baseline)
            found = baseline
        return found


def _place(snapshot: Snapshot, inventory: Inventory, same: _SameBaselines | None = None) -> _Place:
    instance = snapshot.instances.get(inventory.instance_id)
    if instance is None:
        return _Place(Side())
    labels = dict(instance.metadata.labels)
    resolution = resolve(snapshot, labels, inventory.facts.operating_system)
    group = resolution.group.metadata.name if resolution.group else None
    baseline = resolution.baseline
    if baseline is None:
        return _Place(Side(group=group, status=resolution.baseline_reason, labels=labels))
    baseline = same.of(baseline) if same is not None else baseline
    holds = declared_holds(resolution.group, instance)
    return _Place(Side(group, baseline.metadata.name, labels=labels), baseline, holds)


def _tabled(inventory: Inventory, old: _Place, new: _Place) -> bool:
    """Whether the tables judge this instance exactly: a baseline under both revisions, and no
    hold, failed Install or NoReboot Install (the engine's per-instance rules)."""
    return (
        old.baseline is not None
        and new.baseline is not None
        and not (old.holds or new.holds or inventory.held or inventory.failed)
        and inventory.no_reboot_install is None
    )


def side_of(snapshot: Snapshot, inventory: Inventory, now: datetime, cache: DecisionCache) -> Side:
    """The instance's group, baseline, verdicts and compliance under ``snapshot``."""
    return _side(_place(snapshot, inventory), inventory, now, cache)


def _side(place: _Place, inventory: Inventory, now: datetime, cache: DecisionCache) -> Side:
    from reconciler.report.views.difftables import version_key  # numpy: see compare()

    baseline = place.baseline
    if baseline is None:
        return place.side
    group = place.side.group
    result = evaluate(baseline, inventory, now, patch_group=group, cache=cache, holds=place.holds)
    decider = cache.decider(baseline, inventory.facts.effective_product(), now)
    approved, rejected = set(), set()
    native = inventory.facts.arch
    for package in (*inventory.updates, *inventory.installed):
        approval = decider.decide(package)
        if approval.approved:
            approved.add(version_key(package, native))
        if approval.rejected:
            rejected.add(version_key(package, native))
    return replace(
        place.side,
        status=str(result.summary.compliance_status),
        approved=frozenset(approved),
        rejected=frozenset(rejected),
        pins=pins_for(result, inventory.facts.arch),
    )


def window_changes(before: Snapshot, after: Snapshot, now: datetime) -> tuple[WindowChange, ...]:
    """Windows added, removed, or whose schedule or next opening moved."""
    out = []
    for name in sorted({*before.windows, *after.windows}):
        old, new = before.windows.get(name), after.windows.get(name)
        old_text, new_text = _schedule(old), _schedule(new)
        old_next, new_next = next_opening(old, now), next_opening(new, now)
        if old is None or new is None:
            change = "added" if old is None else "removed"
        elif (old_text, old_next) != (new_text, new_next):
            change = "rescheduled"
        else:
            continue
        out.append(WindowChange(name, change, old_text, new_text, old_next, new_next))
    return tuple(out)


def gate_changes(before: Snapshot, after: Snapshot) -> tuple[GateChange, ...]:
    """Gates added, removed or changed, per window task and rollout stage, by name."""
    old = {(scope, gate.name): gate.to_wire() for scope, gate in guarded(before)}
    new = {(scope, gate.name): gate.to_wire() for scope, gate in guarded(after)}
    out = []
    for scope, name in sorted(old.keys() | new.keys()):
        was, now = old.get((scope, name)), new.get((scope, name))
        if was != now:
            change = "added" if was is None else "removed" if now is None else "changed"
            out.append(GateChange(scope, name, change))
    return tuple(out)


def _schedule(window: MaintenanceWindow | None) -> str | None:
    return describe(window.spec) if window is not None else None


def next_opening(window: MaintenanceWindow | None, now: datetime) -> Opening | None:
    """The opening that would run the window's next new task: the current one while it still
    accepts tasks, else the next to start. None for no window, or one that never opens again."""
    if window is None:
        return None
    current = current_opening(window.spec, now)
    if current is not None and current.accepts_new_tasks(now):
        return current
    upcoming = openings(window.spec, now, limit=1)
    return upcoming[0] if upcoming else None


def next_installs(
    before: Snapshot,
    after: Snapshot,
    sides: Mapping[str, tuple[Side, Side]],
    now: datetime,
) -> tuple[NextInstall, ...]:
    """Per window with an enabled Install task under the new revision: what its next opening
    would install on each instance it targets, then and now."""
    out = []
    for name in sorted(after.windows):
        window = after.windows[name]
        if not _installs(window):
            continue
        old_window = before.windows.get(name)
        rows = []
        for instance, (old, new) in sides.items():
            then = (
                old.pins
                if old_window and _installs(old_window) and _targets(old_window, old)
                else ()
            )
            later = new.pins if _targets(window, new) else ()
            if then or later or _targets(window, new):
                rows.append((instance, then, later))
        out.append(NextInstall(name, next_opening(window, now), tuple(rows)))
    return tuple(out)


def _installs(window: MaintenanceWindow) -> bool:
    return window.spec.enabled and any(t.operation is Operation.INSTALL for t in window.spec.tasks)


def _targets(window: MaintenanceWindow, side: Side) -> bool:
    """The window's targets select the instance: by its patch group, or by its labels."""
    targets = window.spec.targets
    if side.status == ABSENT:
        return False
    by_label = targets.selector is not None and targets.selector.matches(dict(side.labels))
    return by_label or (side.group is not None and side.group in targets.patch_groups)


def by_key(
    changes: Sequence[InstanceChange], key: Callable[[Side], str | None]
) -> list[dict[str, Any]]:
    """Instance changes summed per baseline (or group): ``key(side)`` names it, the new
    revision's name first, the old one's for an instance the new revision no longer manages."""
    found: dict[str, dict[str, Any]] = {}
    for change in changes:
        name = key(change.after) or key(change.before) or "(none)"
        entry = found.setdefault(
            name,
            {
                "name": name,
                "instances": 0,
                "newlyApproved": set(),
                "noLongerApproved": set(),
                "newlyRejected": set(),
                "nowNonCompliant": 0,
                "nowCompliant": 0,
            },
        )
        entry["instances"] += 1
        entry["newlyApproved"].update(change.newly_approved)
        entry["noLongerApproved"].update(change.no_longer_approved)
        entry["newlyRejected"].update(change.newly_rejected)
        if change.status_changed:
            entry["nowNonCompliant"] += change.after.status == "NON_COMPLIANT"
            entry["nowCompliant"] += change.after.status == "COMPLIANT"
    for entry in found.values():
        for words in ("newlyApproved", "noLongerApproved", "newlyRejected"):
            entry[words] = sorted(entry[words])
    return [found[name] for name in sorted(found)]


def _when(opening: Opening | None) -> str | None:
    return opening.start.isoformat() if opening is not None else None
