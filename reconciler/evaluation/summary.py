"""Stage: evaluation. The counts without the rows: ``evaluate_summary``, the engine's fast path.

A fleet reports the same package versions over and over, and a Decider keeps each version's
finished rows with their share of the counts (packed ints, :mod:`reconciler.evaluation.counts`).
:func:`fast_summary` counts an instance from those cached entries with ``map``/``filter``/``sum``,
so the per-row work runs in C rather than in a loop per row; an instance it cannot count exactly
that way goes to :func:`~reconciler.evaluation.engine.evaluate`. Either way the Summary is
``evaluate(...).summary`` (tests/test_engine_summary.py).

Pure: no I/O, and the clock is an argument. Decides nothing itself: the rules are the engine's.
May import ``reconciler.api`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import compress, filterfalse

from reconciler.api.enums import Operation
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline
from reconciler.evaluation import counts
from reconciler.evaluation.engine import (
    APPROVED,
    INSTALL_WEIGHT,
    PACKAGE,
    SCAN_WEIGHT,
    WEIGHT,
    Decider,
    DecisionCache,
    InstalledEntry,
    UpdateEntry,
    available_security_rows,
    evaluate,
    pending_reboot,
    without_held,
)
from reconciler.evaluation.holds import Hold
from reconciler.evaluation.results import Summary


def evaluate_summary(
    baseline: PatchBaseline,
    inventory: Inventory,
    now: datetime,
    *,
    cache: DecisionCache | None = None,
    holds: Sequence[Hold] = (),
) -> Summary:
    """``evaluate(baseline, inventory, now, cache=cache).summary``, without the rows: for callers
    that keep only the counts. Most instances are counted from the cached entries at C speed
    (fast_summary); the others take the full path."""
    cache = cache or DecisionCache()
    inventory, _ = without_held(inventory, holds)
    decider = cache.decider(baseline, inventory.facts.effective_product(), now)
    found = fast_summary(decider, inventory)
    if found is None:
        found = evaluate(baseline, inventory, now, cache=cache).summary
    return found


def fast_summary(decider: Decider, inventory: Inventory) -> Summary | None:
    """``evaluate(...).summary`` for ``inventory`` without building its rows, or None when the
    instance needs the full path (a failed Install, a package with three or more approved
    updates, too many rows for the packed counts). The per-row work is ``map``/``filter``/
    ``sum`` over the cached entries, so it runs in C rather than in a loop per row."""
    if inventory.failed:
        return None
    updates = decider.update_entries(inventory.updates)
    chosen = _chosen(decider, updates)
    if chosen is None:
        return None
    weights = INSTALL_WEIGHT if inventory.operation is Operation.INSTALL else SCAN_WEIGHT
    weight = sum(map(weights, chosen.values()))
    entries = decider.installed_entries(inventory.installed)
    weight += sum(map(WEIGHT, entries))
    rows = len(chosen) + len(entries)
    reported: list[InstalledEntry] = []  # installed packages an update row reports instead
    if chosen:
        reported = list(compress(entries, map(chosen.__contains__, map(PACKAGE, entries))))
        weight -= sum(map(WEIGHT, reported))
        rows -= len(reported)
    if inventory.facts.reboot_required or inventory.no_reboot_install is not None:
        shown = [e for e in entries if e.package not in chosen] if reported else entries
        pending = pending_reboot(shown, inventory.facts, inventory.no_reboot_install)
        weight += sum(shown[i].pending_weight - shown[i].weight for i, _ in pending)
    if decider.asu:
        passed_over = list(filterfalse(APPROVED, updates))
        missed = (e for e in passed_over if e.package not in chosen)
        asu_rows, asu_weight = available_security_rows(missed)
        rows += len(asu_rows)
        weight += asu_weight
    if rows >= counts.FIELD_LIMIT:
        return None
    return counts.unpack(weight, rows)


def _chosen(decider: Decider, updates: list[UpdateEntry]) -> dict[object, UpdateEntry] | None:
    """What Decider.select() chooses (the latest approved update per package), without a Python
    loop per update when no package has more than two approved updates; None otherwise."""
    approved = list(filter(APPROVED, updates))
    packages = list(map(PACKAGE, approved))
    last = dict(zip(packages, approved, strict=True))  # a repeated key keeps its last entry
    extra = len(approved) - len(last)
    if not extra:
        return last
    first = dict(zip(reversed(packages), reversed(approved), strict=True))
    differing = last.items() - first.items()  # the packages with two approved updates
    if len(differing) != extra:
        return None  # some package has three or more: let select() order them
    for package, later in differing:
        earlier = first[package]
        # select(): a later entry replaces the chosen one only when strictly newer
        if not decider.is_newer(later.version, earlier.version):
            last[package] = earlier
    return last
