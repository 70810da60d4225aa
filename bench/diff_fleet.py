"""Benchmark: ``patchctl diff`` over a whole fleet (``make bench``; issue 17 items 1 and 3).

The fleet of bench/synthetic_fleet.py (default 10,000 instances x 300 available updates, 2,000
installed packages each, 5 baselines), each instance a ManagedInstance of its baseline's patch
group, and two revisions of the desired state that differ as a reviewed change would: one
approval rule's approveAfterDays (al2023-prod: 7 -> 10 days), a rejected pattern added
(ubuntu-prod: ``pkg-ubuntu-03*``), a rule's classification list changed (rhel-prod: Bugfix and
Enhancement -> Bugfix), and one window rescheduled; two Install windows and a Scan window
target the groups. Pinned to one CPU:

1. times ``compare`` (reconciler/report/views/diff.py: both sides, every instance, windows and
   what each next opening would install) over the whole fleet, fresh (no cache shared with
   anything before): the headline, target <= 2 s;
2. times the reference in the same run: the per-instance path ``compare`` had before the tables
   (``diff.reference_compare``: ``evaluate`` and string sets per instance and side), on
   ``--reference-instances`` instances (it takes minutes for the whole fleet), extrapolated
   linearly to the fleet, and checks both give the same Diff on those instances.

The result replaces this benchmark's section of docs/benchmarks.md (bench/_report.py). Exit 0
unless the two paths disagree: speed is recorded, not tested.

    .venv/bin/python bench/diff_fleet.py [--instances N] [--reference-instances N] [--no-record]
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import record  # noqa: E402
from evaluate_fleet import _max_rss, _mib, _pin_one_cpu, _reference  # noqa: E402

from bench.synthetic_fleet import NOW, Member, build_fleet  # noqa: E402
from bench.synthetic_revisions import revisions  # noqa: E402
from reconciler.api.inventory import Inventory, PackageFacts  # noqa: E402
from reconciler.api.resources import PatchBaseline  # noqa: E402
from reconciler.api.snapshot import Snapshot  # noqa: E402
from reconciler.evaluation import DecisionCache  # noqa: E402
from reconciler.evaluation.tables import VersionIndex  # noqa: E402
from reconciler.report.views.diff import compare, reference_compare  # noqa: E402

TARGET = 2.0  # seconds, the whole diff of the default fleet on one core
T = TypeVar("T")

DESCRIPTION = f"""`bench/diff_fleet.py`: `compare` (`reconciler/report/views/diff.py`, what `patchctl
diff` computes before rendering) over the fleet of *Fleet evaluation* (10,000 instances x 300
updates, 2,000 installed packages each, 5 baselines), each instance a ManagedInstance in its
baseline's patch group, two Install windows and a Scan window (`bench/synthetic_revisions.py`).
The two revisions differ as a reviewed change would: al2023-prod's first rule approveAfterDays
7 -> 10, ubuntu-prod rejects `pkg-ubuntu-03*` too, rhel-prod's second rule approves Bugfix only
(was Bugfix and Enhancement), and one Install window moves from Sunday to Saturday. *diff* is
one `compare` call, wall time, pinned to one CPU, fresh: interning every inventory's versions,
deciding every distinct version once per Decider (5 baselines before, the 3 changed ones
after), the tables, the verdict lists, statuses, pins and windows are all inside it. Measured
apart in the same run: *deciding alone, bulk verdicts* (how `compare` decides: every distinct
version the fleet uses judged by `Decider.verdicts`, one call per baseline the diff needs, as
`DecisionTable.fill` calls it, fresh `DecisionCache`, no reasons built), *interning alone* (a
fresh `VersionIndex` over every inventory), and the *floor* of evaluate_fleet.py (one dict
lookup per update and installed package of every instance: any path that reads each package
once pays it). The *reference* is the per-instance path `compare` had before
(`reference_compare`: `evaluate` and string sets per instance and side), timed on the first
*reference instances* and extrapolated linearly (an overestimate: deciding is shared across
instances); the bench stops with an error unless both give the same Diff there. Target:
≤ {TARGET:.0f} s for 10,000 instances."""

COLUMNS = [
    "date (UTC)",
    "instances",
    "diff (s)",
    "target",
    "result",
    "instances changed",
    "deciding alone, bulk verdicts (s)",
    "interning alone (s)",
    "floor: one dict lookup per package (s)",
    "reference instances",
    "reference (s)",
    "reference extrapolated (s)",
    "speed-up",
    "peak RSS",
    "machine",
]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cpu = _pin_one_cpu()
    print(f"building {args.instances:,} instances and two revisions (untimed)...", flush=True)
    fleet = build_fleet(args.instances)
    before, after = revisions(fleet)
    inventories = [m.inventory for m in fleet]
    gc.collect()
    gc.freeze()  # the static fleet out of the collector's way, as evaluate_fleet.py does
    fast, found = _timed(lambda: compare(before, after, inventories, NOW))
    print(f"compare: {fast:.2f} s, {len(found.instances):,} instances changed", flush=True)
    some = inventories[: args.reference_instances]
    slow, expected = _timed(lambda: reference_compare(before, after, some, NOW))
    if compare(before, after, some, NOW).document() != expected.document():
        print("ERROR: compare and the reference path disagree", file=sys.stderr)
        return 1
    extrapolated = slow * len(inventories) / max(len(some), 1)
    deciding = _deciding(fleet, before, after)
    interning, _ = _timed(lambda: _intern(inventories))
    floor = _reference(fleet, installed=True)  # type: ignore[arg-type]
    row = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        f"{args.instances:,}",
        f"{fast:.2f}",
        f"≤ {TARGET:.0f} s",
        "PASS" if fast <= TARGET else "**FAIL**",
        f"{len(found.instances):,}",
        f"{deciding:.2f}",
        f"{interning:.2f}",
        f"{floor:.2f}",
        f"{len(some):,}",
        f"{slow:.2f}",
        f"{extrapolated:,.0f}",
        f"{extrapolated / fast:,.0f}x",
        _mib(_max_rss()),
        f"{cpu=}, Python {platform.python_version()}",
    ]
    print("\n".join(f"{c}: {v}" for c, v in zip(COLUMNS, row, strict=True)))
    if not args.no_record:
        record("diff fleet", DESCRIPTION, COLUMNS, row)
    return 0


def _deciding(fleet: list[Member], before: Snapshot, after: Snapshot) -> float:
    """The floor of a fresh diff: every distinct version the instances use judged in bulk
    (``Decider.verdicts``, what ``DecisionTable.fill`` calls in ``compare``), once per baseline
    the diff needs (one equal in both revisions once), with a fresh DecisionCache."""
    work: dict[int, tuple[PatchBaseline, str, dict[int, PackageFacts]]] = {}
    for m in fleet:
        name, product = m.baseline.metadata.name, m.inventory.facts.effective_product()
        old, new = before.baselines[name], after.baselines[name]
        for baseline in (old, old if new == old else new):
            versions = work.setdefault(id(baseline), (baseline, product, {}))[2]
            versions.update((id(p), p) for p in (*m.inventory.updates, *m.inventory.installed))
    batches = [
        (baseline, product, list(versions.values()))
        for baseline, product, versions in work.values()
    ]
    cache = DecisionCache()
    started = time.perf_counter()
    for baseline, product, pkgs in batches:
        cache.decider(baseline, product, NOW).verdicts(pkgs)
    return time.perf_counter() - started


def _intern(inventories: list[Inventory]) -> VersionIndex:
    """What compare does first: every inventory's versions interned in a fresh index."""
    index = VersionIndex()
    for inventory in inventories:
        index.index(inventory)
    return index


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000, help="fleet size (10000)")
    parser.add_argument(
        "--reference-instances",
        type=int,
        default=200,
        help="instances the reference path is timed on, then extrapolated (200)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only")
    return parser


def _timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    found = run()
    return time.perf_counter() - started, found


if __name__ == "__main__":
    sys.exit(main())
