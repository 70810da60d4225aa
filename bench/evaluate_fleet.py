"""Benchmark: evaluate a synthetic fleet with the decision engine (``make bench``).

Builds the fleet of bench/synthetic_fleet.py (default 10,000 instances x 300 available updates,
2,000 installed packages each, 5 baselines), then, pinned to one CPU:

1. times two references on the same fleet, the floor any engine pays: a loop over every
   instance's updates doing one dict lookup per update, and the same over updates and installed
   packages (best of three each);
2. times ``evaluate_summary`` (the counts without the rows) over the whole fleet with one fresh
   ``DecisionCache`` (so the figure includes compiling the baselines and deciding every distinct
   package version once), keeping each instance's summary, as a reconciler writing compliance
   counts would: the headline; then again with the same cache (warm);
3. times ``evaluate`` (every row built, then dropped) the same two ways, reported in its own
   column, and checks that both paths give the same summaries (same digest);
4. times the fleet tables (``FleetTables.summaries``, the whole-fleet path ``patchctl diff``
   counts with; bench/fleet_tables.py details it) the same two ways, after interning the fleet's
   versions (timed apart), and checks their summaries have the same digest too;
5. measures memory: the process's peak RSS, and with tracemalloc (a separate, untimed pass of
   ``evaluate_summary`` with a fresh cache) the peak allocated by the evaluation phase alone.

Results are printed and a row is added to docs/benchmarks.md. The target (2,000,000 instance x
update decisions per second) is reported as PASS/FAIL with the ratio to the reference; the script
exits 0 either way, as speed is recorded, not tested (house rule: no timed unit tests).

    .venv/bin/python bench/evaluate_fleet.py [--instances N] [--no-record] [--no-tracemalloc]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic_fleet import NOW, Member, build_fleet  # noqa: E402

from reconciler.api.resources import PatchBaseline  # noqa: E402
from reconciler.evaluation import (  # noqa: E402
    DecisionCache,
    Summary,
    evaluate,
    evaluate_summary,
)
from reconciler.evaluation.tables import FleetTables, IndexedInventory, VersionIndex  # noqa: E402

TARGET = 2_000_000  # instance x update decisions per second, on one core
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class EngineRun:
    wall: float
    cpu: float
    decisions: int  # instance x available update
    installed_rows: int  # installed packages evaluated
    patches: int  # PatchResult rows produced
    noncompliant: int
    gc_collections: int
    digest: str  # of every summary, to notice a behaviour change between runs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cpu = _pin_one_cpu()
    print(f"building {args.instances:,} instances (seeded, untimed)...", flush=True)
    started = time.perf_counter()
    fleet = build_fleet(args.instances, progress=_progress)
    print(f"  built in {time.perf_counter() - started:.1f} s")
    # The fleet is static input: keep the collector from re-traversing it on every collection,
    # as a service does once its data is loaded. Objects the engine creates are still collected.
    gc.collect()
    gc.freeze()
    rss_fleet = _max_rss()

    ref_updates = _best_of(3, lambda: _reference(fleet, installed=False))
    ref_all = _best_of(3, lambda: _reference(fleet, installed=True))
    print(f"reference, 1 dict lookup per update:                 {ref_updates:.3f} s")
    print(f"reference, 1 dict lookup per update and installed:   {ref_all:.3f} s")

    print("summaries (evaluate_summary), fresh DecisionCache, then the same cache...", flush=True)
    cache = DecisionCache()
    cold = _time_engine(fleet, cache, rows=False)
    warm = _time_engine(fleet, cache, rows=False)
    del cache
    print("full evaluations (evaluate), fresh DecisionCache, then the same cache...", flush=True)
    cache = DecisionCache()
    full_cold = _time_engine(fleet, cache, rows=True)
    full_warm = _time_engine(fleet, cache, rows=True)
    del cache
    rss_peak = _max_rss()
    print("fleet tables (FleetTables.summaries), fresh DecisionCache, then warm...", flush=True)
    tables = _time_tables(fleet)
    if len({cold.digest, warm.digest, full_cold.digest, full_warm.digest, tables.digest}) != 1:
        print("ERROR: evaluate_summary, evaluate and the tables disagree", file=sys.stderr)
        return 1
    traced = None if args.no_tracemalloc else _traced_peak(fleet)
    result = Result(
        args.instances,
        cold,
        warm,
        full_cold,
        full_warm,
        tables,
        ref_updates,
        ref_all,
        rss_fleet,
        rss_peak,
        traced,
        args.note,
    )
    print(result.describe(cpu))
    if not args.no_record:
        _record(result)
        print(f"recorded in {DOC}")
    return 0


@dataclass(frozen=True)
class Result:
    instances: int
    cold: EngineRun  # evaluate_summary, fresh DecisionCache: the headline
    warm: EngineRun  # the same fleet again with the same cache (a re-evaluation the same day)
    full_cold: EngineRun  # evaluate (rows built), fresh DecisionCache, as `patchctl evaluate` runs
    full_warm: EngineRun
    tables: TablesRun  # FleetTables.summaries, as patchctl diff counts a fleet
    ref_updates: float
    ref_all: float
    rss_fleet: int
    rss_peak: int
    traced: int | None
    note: str

    @property
    def rate(self) -> float:
        return self.cold.decisions / self.cold.wall

    @property
    def verdict(self) -> str:
        return "PASS" if self.rate >= TARGET else "FAIL"

    def describe(self, cpu: int | str) -> str:
        cold, warm = self.cold, self.warm
        lines = [
            f"summaries, fresh cache: {cold.wall:.3f} s wall, {cold.cpu:.3f} s CPU (pinned to cpu {cpu}); "
            f"{cold.decisions:,} decisions, {cold.installed_rows:,} installed rows, "
            f"{cold.noncompliant:,} non-compliant instances, "
            f"{cold.gc_collections} gc collections",
            f"  {self.rate:,.0f} decisions/s (target {TARGET:,}): {self.verdict}",
            f"  {cold.installed_rows / cold.wall:,.0f} installed rows/s",
            f"  engine/reference: {cold.wall / self.ref_updates:.1f}x (updates), "
            f"{cold.wall / self.ref_all:.1f}x (updates and installed)",
            f"warm cache: {warm.wall:.3f} s wall, {warm.decisions / warm.wall:,.0f} decisions/s, "
            f"engine/reference {warm.wall / self.ref_updates:.1f}x, "
            f"{warm.wall / self.ref_all:.1f}x",
            f"reference floors: {cold.decisions / self.ref_updates:,.0f} decisions/s (updates), "
            f"{cold.decisions / self.ref_all:,.0f} (updates and installed)",
            f"full evaluate: fresh cache {self.full_cold.wall:.3f} s, "
            f"{_rate(self.full_cold):,.0f} decisions/s; warm cache {self.full_warm.wall:.3f} s, "
            f"{_rate(self.full_warm):,.0f} decisions/s; {self.full_cold.patches:,} patch rows",
            f"fleet tables: {self.tables.cell(cold.decisions)}",
            f"peak RSS {_mib(self.rss_peak)} (fleet alone {_mib(self.rss_fleet)})",
        ]
        if self.traced is not None:
            lines.append(f"evaluation peak (tracemalloc, fresh cache): {_mib(self.traced)}")
        lines.append(f"summary digest {cold.digest} (warm {warm.digest})")
        return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000, help="fleet size (10000)")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; do not add a row to the doc"
    )
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip the (slow) tracemalloc pass"
    )
    parser.add_argument("--note", default="", help="a note for the recorded row")
    return parser


def _progress(done: int) -> None:
    if done % 5000 == 0:
        print(f"  {done:,}", flush=True)


# ---------------------------------------------------------------------------------------------
# Measurements


def _reference(fleet: list[Member], *, installed: bool) -> float:
    """The floor: visit every update (and installed package) once, with one dict lookup each in
    a table per baseline of every object seen, as the engine's caches are per baseline."""
    tables: dict[int, dict[int, int]] = {}
    for member in fleet:
        table = tables.setdefault(id(member.baseline), {})
        for pkg in member.inventory.updates:
            table[id(pkg)] = 1
        if installed:
            for pkg in member.inventory.installed:
                table[id(pkg)] = 1
    work = [(tables[id(m.baseline)].get, m.inventory) for m in fleet]
    hits = 0
    started = time.perf_counter()
    for get, inventory in work:
        for update in inventory.updates:
            hits += get(id(update), 0)
        if installed:
            for pkg in inventory.installed:
                hits += get(id(pkg), 0)
    elapsed = time.perf_counter() - started
    assert hits == sum(len(i.updates) + installed * len(i.installed) for _, i in work)
    return elapsed


def _time_engine(fleet: list[Member], cache: DecisionCache, *, rows: bool) -> EngineRun:
    """One timed pass: ``evaluate`` (rows built, counted, dropped) or ``evaluate_summary``."""
    summaries: list[Summary] = []
    patches = 0
    collections_before = sum(s["collections"] for s in gc.get_stats())
    cpu_started = time.process_time()
    started = time.perf_counter()
    if rows:
        for member in fleet:
            result = evaluate(
                member.baseline, member.inventory, NOW, patch_group=member.patch_group, cache=cache
            )
            summaries.append(result.summary)
            patches += len(result.patches)
    else:
        for member in fleet:
            summaries.append(evaluate_summary(member.baseline, member.inventory, NOW, cache=cache))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    collections = sum(s["collections"] for s in gc.get_stats()) - collections_before
    return EngineRun(
        wall=wall,
        cpu=cpu,
        decisions=sum(len(m.inventory.updates) for m in fleet),
        installed_rows=sum(len(m.inventory.installed) for m in fleet),
        patches=patches if rows else sum(s.total for s in summaries),
        noncompliant=sum(s.compliance_status == "NON_COMPLIANT" for s in summaries),
        gc_collections=collections,
        digest=_digest(summaries),
    )


@dataclass(frozen=True)
class TablesRun:
    """The fleet tables' passes (``FleetTables.summaries``, the path ``patchctl diff`` counts
    a fleet with), and their summaries' digest."""

    interning: float  # a fresh VersionIndex over every inventory, apart from the passes
    fresh: float  # FleetTables.summaries over the fleet, fresh DecisionCache
    warm: float  # the same again, same tables
    digest: str

    def cell(self, decisions: int) -> str:
        return (
            f"{decisions / self.fresh:,.0f} ({decisions / self.warm:,.0f}); "
            f"interning {self.interning:.1f} s"
        )


def _time_tables(fleet: list[Member]) -> TablesRun:
    """The whole-fleet path: the versions interned, then two ``FleetTables.summaries`` passes
    (fresh DecisionCache, then the same tables)."""
    interning, index, members = _interned(fleet)
    fresh, warm, summaries = _tables_passes(index, members)
    return TablesRun(interning, fresh, warm, _digest(summaries))


def _interned(
    fleet: list[Member],
) -> tuple[float, VersionIndex, list[tuple[PatchBaseline, IndexedInventory]]]:
    """Seconds to intern every inventory's versions in a fresh index, the index, the members."""
    started = time.perf_counter()
    index = VersionIndex()
    members = [(m.baseline, index.index(m.inventory)) for m in fleet]
    return time.perf_counter() - started, index, members


def _tables_passes(
    index: VersionIndex, members: list[tuple[PatchBaseline, IndexedInventory]]
) -> tuple[float, float, list[Summary]]:
    """Seconds of a fresh ``FleetTables.summaries`` pass (deciding included) and of a warm one
    with the same tables, and the fresh pass's summaries."""
    tables = FleetTables(index)
    started = time.perf_counter()
    summaries = tables.summaries(members, NOW)
    fresh = time.perf_counter() - started
    started = time.perf_counter()
    tables.summaries(members, NOW)
    return fresh, time.perf_counter() - started, summaries


def _digest(summaries: list[Summary]) -> str:
    return hashlib.sha256(repr([s.to_dict() for s in summaries]).encode()).hexdigest()[:16]


def _traced_peak(fleet: list[Member]) -> int:
    """Peak bytes allocated while counting the fleet (fresh cache; summaries dropped as made)."""
    gc.collect()
    tracemalloc.start()
    cache = DecisionCache()
    for member in fleet:
        evaluate_summary(member.baseline, member.inventory, NOW, cache=cache)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _rate(run: EngineRun) -> float:
    return run.decisions / run.wall


def _best_of(times: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(times))


def _pin_one_cpu() -> int | str:
    if not hasattr(os, "sched_setaffinity"):
        return "unpinned"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md: this benchmark's block, between its markers; other blocks are left alone.

BEGIN = "<!-- bench:evaluate fleet -->"
END = "<!-- /bench:evaluate fleet -->"
HEADER = (
    "| date (UTC) | commit | instances | decisions/s | target | result "
    "| reference floor, decisions/s | decisions/s, warm cache "
    "| full evaluate: decisions/s (warm cache) "
    "| fleet tables: decisions/s (warm), interning apart | wall (CPU) "
    "| engine / reference: updates "
    "| engine / reference: updates + installed | peak RSS (fleet alone) | evaluation peak "
    "| machine | digest | note |"
)
RULE = "|---" * HEADER.count(" | ") + "|---|"

SECTION = f"""## Fleet evaluation

`bench/evaluate_fleet.py` times the decision engine (`reconciler.evaluation`) over a
synthetic fleet of 10,000 instances, each with 300 available updates and 2,000 installed packages,
under 5 baselines: `ubuntu-prod` and `ubuntu-dev` (Ubuntu 22.04, apt), `al2023-prod` (Amazon Linux
2023), `rhel-prod` (RHEL 9) and `suse-prod` (SLES 15), with approval rules, global filters, approved
and rejected lists (some rejected with BLOCK, some updates needing a rejected package). The fleet is
seeded (`bench/synthetic_fleet.py`): every OS has a pool of 2,600 package names with five versions
each; an instance installs a common core of 1,700 names plus 300 of the other 900, and is behind,
at a random older version, on enough packages to have exactly 300 updates (a quarter of those
packages offer two newer versions, a few updates are new packages). 15% of the instances need a
reboot, 2% follow an Install with a failed patch. Instances share most package versions but no two
have the same installed set. Every distinct package version is one object shared by the instances
that report it, as an inventory parser followed by an interning step would give; building the
fleet is not timed.

*Decisions* are instance x available update pairs (10,000 x 300 = 3,000,000); the installed
packages of every instance are counted as well (20,000,000 of them). *decisions/s* is one pass
over the whole fleet with a fresh `DecisionCache` through `evaluate_summary`, the path for callers
that keep only each instance's SSM counts (it counts from the cached per-version entries with
`map`/`filter`/`sum` instead of building rows; instances it cannot count exactly, such as one
whose last Install failed, go through `evaluate`), `time.perf_counter` wall time, pinned to one
CPU, each instance's summary kept; it includes deciding every distinct package version once per
baseline. *warm cache* is a second pass with the same cache (a re-evaluation at the same `now`).
*full evaluate* is the same two passes through `evaluate`, which builds every row (each instance's
summary kept, its rows dropped), as `patchctl evaluate` and the reconcile loop run. *fleet
tables* is the whole-fleet path `patchctl diff` counts with (`FleetTables.summaries`,
`reconciler/evaluation/tables.py`; *fleet tables* below details it): a pass with a fresh
`DecisionCache` (deciding every distinct version once per baseline included), then with the same
tables (warm), after interning every inventory's versions in a fresh `VersionIndex`, which is
timed apart (paid once per inventory when it is read) and not in its decisions/s; it runs after
the peak RSS is read. The bench stops with an error unless all paths give the same summaries (the
digest). Rows recorded before `evaluate_summary` existed measured `evaluate` alone: their
decisions/s are full evaluations; rows before the fleet tables column say "not measured". The
*reference* runs in the same process on the same fleet: a loop doing one dict lookup per available
update in a per-baseline table (the floor any engine pays), and the same per update and installed
package; the ratios are engine (summary path) time / reference time, and the *reference floor* is
the decisions/s of the first reference alone: a target above it cannot be met by an engine that
looks each update up once. A summary also needs every installed package's state, so the second
reference (updates and installed) is the floor of any engine that looks each package up once.
*Peak RSS* is `ru_maxrss` (fleet included); *evaluation peak* is the peak traced by `tracemalloc`
during a separate summary pass with a fresh cache (caches and transient results, the fleet
excluded). The static fleet is moved out of the collector's way with `gc.freeze()`. The summary
digest changes only when the engine's results do.

Target: at least {TARGET:,} decisions per second on one core. Run `make bench`
(`.venv/bin/python bench/evaluate_fleet.py --instances 1000 --no-record` for a quick look).
"""


def _record(result: Result) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nRun with `make bench`.\n"
    rows: list[str] = []
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        block, tail = rest.split(END, 1)
        rows = [
            _migrated(line)
            for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| date (UTC) |")
        ]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    rows.append(_row(result))
    block = "\n".join([SECTION, HEADER, RULE, *rows])
    DOC.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def _migrated(row: str) -> str:
    """A row recorded under fewer columns, filled in: before the summary path existed (two
    columns fewer) its decisions/s were full evaluations, so they fill the full-evaluate column
    too; before the fleet tables column (one fewer) the tables were not measured."""
    cells = [cell.strip() for cell in row.strip().strip("|").split(" | ")]
    columns = HEADER.count(" | ") + 1
    if len(cells) >= columns:
        return row
    if len(cells) == columns - 2:
        cells.insert(8, f"{cells[3]} ({cells[7]})")
    if len(cells) == columns - 1:
        cells.insert(9, "not measured")
    return "| " + " | ".join(cells) + " |"


def _row(result: Result) -> str:
    cold, warm = result.cold, result.warm
    machine = f"{os.cpu_count()} CPU {_cpu_model()}, Python {platform.python_version()}"
    cells = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        _commit(),
        f"{result.instances:,}",
        f"{result.rate:,.0f}",
        f"{TARGET:,}",
        f"**{result.verdict}**",
        f"{cold.decisions / result.ref_updates:,.0f}",
        f"{warm.decisions / warm.wall:,.0f}",
        f"{_rate(result.full_cold):,.0f} ({_rate(result.full_warm):,.0f})",
        result.tables.cell(cold.decisions),
        f"{cold.wall:.1f} s ({cold.cpu:.1f} s)",
        f"{cold.wall / result.ref_updates:.1f}x",
        f"{cold.wall / result.ref_all:.1f}x",
        f"{_mib(result.rss_peak)} ({_mib(result.rss_fleet)})",
        _mib(result.traced) if result.traced is not None else "not measured",
        machine,
        f"`{cold.digest}`",
        result.note.replace("|", "/"),
    ]
    return "| " + " | ".join(cells) + " |"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    """The checked-out commit, read from .git without running git (best effort)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:10]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:10]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:10]
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
