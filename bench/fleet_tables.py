"""Benchmark: whole-fleet summaries from the engine's tables (``make bench``).

The fleet of bench/evaluate_fleet.py (bench/synthetic_fleet.py: default 10,000 instances x 300
available updates, 2,000 installed packages each, 5 baselines), pinned to one CPU:

1. interns the fleet's package versions (``VersionIndex``: an int per distinct version object,
   two int arrays per instance), as an inventory parser's interning step would; timed, reported
   apart (it is paid once per inventory, when it is read, not per evaluation);
2. times the same-run references of evaluate_fleet.py (one dict lookup per update; per update and
   installed package), best of three;
3. times ``FleetTables.summaries`` over the whole fleet with a fresh ``DecisionCache`` (so the
   figure includes compiling the baselines and deciding every distinct version once per
   baseline): the headline; then again with the same tables (warm);
4. times ``evaluate_summary`` per instance (the previous summary path), fresh cache, and checks
   every summary equal to it (``evaluate_summary`` is itself proven equal to ``evaluate``);
5. records memory: peak RSS, the index's arrays, and tracemalloc's peak for a fresh tables pass.

The result replaces this benchmark's section of docs/benchmarks.md (bench/_report.py). Exit 0
unless the two paths disagree: speed is recorded, not tested.

    .venv/bin/python bench/fleet_tables.py [--instances N] [--no-record]
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import record  # noqa: E402
from evaluate_fleet import (  # noqa: E402
    _best_of,
    _interned,
    _max_rss,
    _mib,
    _pin_one_cpu,
    _reference,
    _tables_passes,
)
from synthetic_fleet import NOW, Member, build_fleet  # noqa: E402

from reconciler.evaluation import DecisionCache, Summary, evaluate_summary  # noqa: E402
from reconciler.evaluation.tables import FleetTables, IndexedInventory, VersionIndex  # noqa: E402

TARGET = 2_000_000  # instance x update decisions per second, on one core

DESCRIPTION = f"""`bench/fleet_tables.py`: the fleet of *Fleet evaluation* above (10,000 instances x
300 updates, 2,000 installed packages each, 5 baselines). `FleetTables.summaries`
(`reconciler/evaluation/tables.py`) counts every instance's SSM summary from numpy arrays: package
versions interned to ints (`VersionIndex`, two int arrays per instance), and per Decider (baseline,
product, moment) a table of what each version contributes (approved, rank among its package's
versions, weight class of each row it can give, FAILED included), counting 256 instances per
array pass; instances it cannot count exactly (a NoReboot Install, two approved updates of one
package with equal versions: none here) go through `evaluate_summary`. *decisions/s* is one pass with a
fresh `DecisionCache` (deciding every distinct version once per baseline included), wall time,
pinned to one CPU; *warm* a second pass with the same tables. *interning* is building the index
from the fleet's objects (paid once per inventory when it is read; not in decisions/s). The
references run in the same process: one dict lookup per update (*floor*), and per update and
installed package; ratios are tables ÷ reference. *evaluate_summary* is the per-instance summary
path timed in the same run (fresh cache); the bench stops with an error unless every summary is
equal to it. Memory: peak RSS (fleet included), the index's arrays, tracemalloc's peak during a
separate fresh tables pass (the fleet and the index excluded). Target: ≥ {TARGET:,} decisions/s."""

COLUMNS = [
    "date (UTC)",
    "instances",
    "decisions/s (fresh)",
    "target",
    "result",
    "decisions/s (warm)",
    "wall fresh (warm)",
    "interning",
    "tables / reference: updates",
    "tables / reference: updates + installed",
    "warm tables / reference: updates + installed",
    "reference floor, decisions/s",
    "evaluate_summary: decisions/s (tables speed-up)",
    "peak RSS",
    "index arrays",
    "tables pass peak",
    "machine",
]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cpu = _pin_one_cpu()
    print(f"building {args.instances:,} instances (seeded, untimed)...", flush=True)
    fleet = build_fleet(args.instances)
    gc.collect()
    gc.freeze()  # the static fleet out of the collector's way, as evaluate_fleet.py does
    interning, index, members = _interned(fleet)
    ref_updates = _best_of(3, lambda: _reference(fleet, installed=False))
    ref_all = _best_of(3, lambda: _reference(fleet, installed=True))
    fresh, warm, got = _tables_passes(index, members)
    print("evaluate_summary per instance, fresh cache...", flush=True)
    slow, expected = _timed(lambda: _per_instance(fleet))
    if got != expected:
        print("ERROR: the tables and evaluate_summary disagree on some summary", file=sys.stderr)
        return 1
    peak = _traced_peak(index, members)
    decisions = sum(len(m.inventory.updates) for m in fleet)
    arrays = sum(i.updates.nbytes + i.installed.nbytes for _, i in members)
    row = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        f"{args.instances:,}",
        f"{decisions / fresh:,.0f}",
        f"{TARGET:,}",
        "PASS" if decisions / fresh >= TARGET else "**FAIL**",
        f"{decisions / warm:,.0f}",
        f"{fresh:.2f} s ({warm:.2f} s)",
        f"{interning:.2f} s",
        f"{fresh / ref_updates:.2f}x",
        f"{fresh / ref_all:.2f}x",
        f"{warm / ref_all:.2f}x",
        f"{decisions / ref_updates:,.0f}",
        f"{decisions / slow:,.0f} ({slow / fresh:.1f}x)",
        _mib(_max_rss()),
        _mib(arrays),
        _mib(peak),
        f"{cpu=}, Python {platform.python_version()}",
    ]
    print("\n".join(f"{c}: {v}" for c, v in zip(COLUMNS, row, strict=True)))
    if not args.no_record:
        record("fleet tables", DESCRIPTION, COLUMNS, row)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000, help="fleet size (10000)")
    parser.add_argument("--no-record", action="store_true", help="print only")
    return parser


def _timed(run: object) -> tuple[float, list[Summary]]:
    assert callable(run)
    started = time.perf_counter()
    found = run()
    return time.perf_counter() - started, found


def _per_instance(fleet: list[Member]) -> list[Summary]:
    cache = DecisionCache()
    return [evaluate_summary(m.baseline, m.inventory, NOW, cache=cache) for m in fleet]


def _traced_peak(index: VersionIndex, members: list[tuple[object, IndexedInventory]]) -> int:
    gc.collect()
    tracemalloc.start()
    FleetTables(index).summaries(members, NOW)  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


if __name__ == "__main__":
    sys.exit(main())
