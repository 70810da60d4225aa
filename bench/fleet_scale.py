"""Benchmark: the loop at fleet scale on a simulated transport (issue 16), and planning at 100,000.

1. **Convergence**: ``--instances`` simulated machines (tests/simulated.py: scan and install
   latencies log-normal around 50 ms and 200 ms, 1% of installs failing, all from one seeded RNG;
   no network, no package manager) behind the real loop, planner and state store, a window open
   now with ``maxConcurrency`` = ``--concurrency``. Overhead = wall time ÷ (Σ job time ÷
   concurrency), job times measured by the store from claim to finish: 1.0 is every slot busy all
   the time. Target ≤ 1.1. Also: claims per second (jobs ÷ wall time) and the controller's peak
   RSS (``ru_maxrss``, this process: loop, store client and the simulated fleet).
   ``--backend postgresql`` starts a real PostgreSQL 15 (tests/postgres.py, as root: fsync off,
   as for the tests) for the state; ``sqlite`` uses a file (synchronous = FULL, as shipped). Today this is one process (leader and workers in one loop):
   issue 16's separate worker processes do not exist yet, so 1 leader + 4 workers is not measured.
2. **Planning at 100,000**: one ``plan()`` over ``--plan-instances`` instances (bench/plan_fleet.py's
   fleet; 99,990 by default, the most a snapshot's 100,000 documents hold beside its baselines,
   groups and windows), median of 3. Target < 2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from bench.fleet_convergence import _Quiet  # noqa: E402
from bench.plan_fleet import NOW as PLAN_NOW  # noqa: E402
from bench.plan_fleet import planning_inputs  # noqa: E402
from reconciler.loop import Reconciler  # noqa: E402
from reconciler.plan import plan  # noqa: E402
from reconciler.sources import DirectorySource  # noqa: E402
from reconciler.state import StateStore  # noqa: E402
from tests.simulated import SimulatedFleet  # noqa: E402

TARGET_OVERHEAD, TARGET_PLAN_S = 1.1, 2.0
FLEET_YAML = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {{name: important}}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {{patchFilters: [{{key: PRIORITY, values: [Required, Important]}}]}}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {{name: fleet}}
spec:
  selector: {{matchLabels: {{app: sim}}}}
  baselines: {{DEBIAN: important}}
---
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {{name: open-now}}
spec:
  schedule: cron(0 * * * ? *)
  duration: 2
  cutoff: 0
  targets: {{patchGroups: [fleet]}}
  tasks: [{{name: install, operation: Install, maxConcurrency: "{concurrency}", maxErrors: "5%"}}]
"""


@dataclass(frozen=True)
class Convergence:
    instances: int
    jobs: int
    wall: float
    busy: float
    concurrency: int
    patched: int

    @property
    def overhead(self) -> float:
        return self.wall / (self.busy / self.concurrency)


def write_config(base: Path, fleet: SimulatedFleet, concurrency: int) -> Path:
    config = base / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(FLEET_YAML.format(concurrency=concurrency))
    (config / "instances.yaml").write_text(
        "---\n".join(
            f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
            f"metadata: {{name: {name}, labels: {{app: sim}}}}\n"
            f"spec: {{connection: {{type: local, root: /srv/sim/{name}}}}}\n"
            for name in fleet.names()
        )
    )
    return config


@contextmanager
def state_store(backend: str, base: Path) -> Iterator[Any]:
    if backend == "sqlite":
        with StateStore(base / "state.db") as store:
            yield store
        return
    from reconciler.state.postgres.store import PostgresStore
    from tests.postgres import start_postgres

    # Its own directory: the postgres user cannot enter root's 0700 temporary directory.
    directory = Path(tempfile.mkdtemp(prefix="patchwarden-pg-"))
    server = start_postgres(directory)
    try:
        with PostgresStore(server.fresh_database(), home=base) as store:
            yield store
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def convergence(backend: str, count: int, concurrency: int, seed: int) -> Convergence:
    fleet = SimulatedFleet(count, seed=seed)
    with tempfile.TemporaryDirectory() as tmp, state_store(backend, Path(tmp)) as store:
        config = write_config(Path(tmp), fleet, concurrency)
        loop = Reconciler(
            DirectorySource(config), store, fleet.transport, workers=concurrency, log=_Quiet()
        )
        start = time.perf_counter()
        loop.reconcile(until_idle=True)
        wall = time.perf_counter() - start
        jobs = store.jobs()
        busy = sum((j.finished_at - j.created_at).total_seconds() for j in jobs if j.finished_at)
    return Convergence(count, len(jobs), wall, busy, concurrency, fleet.patched())


def planning(count: int, rounds: int = 3) -> float:
    snapshot, observed = planning_inputs(count)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        plan(snapshot, "main@sha1:" + "0" * 40, observed, PLAN_NOW)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(args: argparse.Namespace, run: Convergence, rss: float, plan_s: float) -> None:
    verdict = "PASS" if run.overhead <= TARGET_OVERHEAD else "FAIL"
    plan_verdict = "PASS" if plan_s < TARGET_PLAN_S else "FAIL"
    print(
        f"fleet scale ({args.backend}): {run.instances} simulated machines, {run.jobs} jobs in "
        f"{run.wall:.1f} s, overhead {run.overhead:.2f} (target <= {TARGET_OVERHEAD}) {verdict}; "
        f"{run.jobs / run.wall:.0f} claims/s; peak RSS {rss:.0f} MiB; {run.patched} patched; "
        f"plan over {args.plan_instances}: {plan_s:.2f} s (target < {TARGET_PLAN_S} s) {plan_verdict}"
    )
    if args.no_record:
        return
    record(
        f"fleet scale ({args.backend})",
        f"`bench/fleet_scale.py --backend {args.backend}`: {run.instances} simulated machines "
        "(tests/simulated.py: scan ~50 ms, install ~200 ms log-normal, 1% of installs fail, seeded), "
        f"one process (leader and {run.concurrency} dispatch slots in one loop: separate worker "
        "processes are not measured yet), a window open now; overhead = wall ÷ (Σ job time ÷ "
        "concurrency); claims/s = jobs ÷ wall; peak RSS of the controller process; plan = one "
        f"`plan()` over {args.plan_instances} instances (bench/plan_fleet.py's fleet), median of 3.",
        [
            "date",
            "machines",
            "jobs",
            "wall (s)",
            "overhead",
            "claims/s",
            "peak RSS (MiB)",
            "plan (s)",
            "targets",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            str(run.instances),
            str(run.jobs),
            f"{run.wall:.1f}",
            f"{run.overhead:.2f}",
            f"{run.jobs / run.wall:.0f}",
            f"{rss:.0f}",
            f"{plan_s:.2f}",
            f"overhead ≤ {TARGET_OVERHEAD}, plan < {TARGET_PLAN_S:.0f} s",
            f"{verdict} / {plan_verdict}",
            f"{os.cpu_count()} cores, Python {platform.python_version()}",
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=40)
    # 99,990 instances and plan_fleet's 10 other resources: a snapshot's limit of 100,000 documents.
    parser.add_argument("--plan-instances", type=int, default=99_990)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    run = convergence(args.backend, args.instances, args.concurrency, args.seed)
    rss = peak_rss_mib()  # before planning's 100,000 instances, which are not the controller's
    report(args, run, rss, planning(args.plan_instances))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
