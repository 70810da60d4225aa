"""Benchmark: the loop at fleet scale on a simulated transport (issue 16), and planning at 100,000.

1. **Convergence**: ``--instances`` simulated machines (tests/simulated.py: scan and install
   latencies log-normal around 50 ms and 200 ms, 1% of installs failing, all from one seeded RNG;
   no network, no package manager) behind the real loop, planner and state store, a window open
   now with ``maxConcurrency`` = ``--concurrency``. Overhead = wall time ÷ (Σ job time ÷
   concurrency), job times measured by the store from claim to finish: 1.0 is every slot busy all
   the time. Target ≤ 1.1. Also: claims per second (jobs ÷ wall time) and the controller's peak
   RSS (``ru_maxrss``, this process: loop, store client and the simulated fleet).
   ``--backend postgresql`` starts a real PostgreSQL 15 (tests/postgres.py, as root: fsync off,
   as for the tests) for the state; ``sqlite`` uses a file (synchronous = FULL, as shipped). By
   default one process runs the leader and its ``--concurrency`` dispatch slots.
   ``--external-workers N`` (PostgreSQL only) measures issue 16's real protocol instead: the
   leader with the job queue (``Reconciler(job_queue=…)``, as ``patchctl run
   --external-workers``) and N ``Worker`` processes (multiprocessing spawn, as ``patchctl
   worker``), each with its own PostgresStore connection, its own copy of the simulated fleet
   (same seed and profile) and ``--concurrency`` ÷ N slots. Also reported there: per-claim
   latency (a queued entry's ``enqueued_at`` to its job's claim by a worker) and the workers'
   peak RSS. The wall time starts once every worker is connected. The leader and the workers
   wake on the queue's LISTEN/NOTIFY; ``--queue-poll S`` sets ``reconciler.loop.workers.POLL``
   (their fallback poll when no notification came, 5 s as shipped; it was the only wake-up,
   every 0.5 s, before LISTEN/NOTIFY) in every process: a diagnosis knob.
2. **Planning at 100,000**: one ``plan()`` over ``--plan-instances`` instances (bench/plan_fleet.py's
   fleet; 99,990 by default, the most a snapshot's 100,000 documents hold beside its baselines,
   groups and windows), median of 3. Target < 2 s.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reconciler.loop.workers as job_queue  # noqa: E402
from bench._report import record  # noqa: E402
from bench.fleet_convergence import _Quiet  # noqa: E402
from bench.plan_fleet import NOW as PLAN_NOW  # noqa: E402
from bench.plan_fleet import planning_inputs  # noqa: E402
from reconciler.loop import Reconciler  # noqa: E402
from reconciler.loop.common import utc_now  # noqa: E402
from reconciler.loop.reboots import RebootSettings  # noqa: E402
from reconciler.loop.workers import JobQueue, Worker, WorkerSettings, runners  # noqa: E402
from reconciler.plan import plan  # noqa: E402
from reconciler.sources import DirectorySource  # noqa: E402
from reconciler.state import StateStore  # noqa: E402
from reconciler.state.records import from_text  # noqa: E402
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
def postgres_url() -> Iterator[str]:
    """A fresh database on a real PostgreSQL 15 started for the run; its URL."""
    from tests.postgres import start_postgres

    # Its own directory: the postgres user cannot enter root's 0700 temporary directory.
    directory = Path(tempfile.mkdtemp(prefix="patchwarden-pg-"))
    server = start_postgres(directory)
    try:
        yield server.fresh_database()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def state_store(backend: str, base: Path) -> Iterator[Any]:
    if backend == "sqlite":
        with StateStore(base / "state.db") as store:
            yield store
        return
    from reconciler.state.postgres.store import PostgresStore

    with postgres_url() as url, PostgresStore(url, home=base) as store:
        yield store


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
        busy, jobs = busy_seconds(store), len(store.jobs())
    return Convergence(count, jobs, wall, busy, concurrency, fleet.patched())


def busy_seconds(store: Any) -> float:
    """Σ job time: each job from its claim to its finish, as the store recorded them."""
    return sum(
        (j.finished_at - j.created_at).total_seconds() for j in store.jobs() if j.finished_at
    )


# -- 1 leader + N worker processes on PostgreSQL (issue 16's protocol) --------------------------


@dataclass(frozen=True)
class WorkerRun:
    """What ``--external-workers`` adds to a Convergence: the processes, the per-claim
    latencies (enqueue → claim, seconds, sorted) and each worker's peak RSS (MiB)."""

    processes: int
    claim_latency: tuple[float, ...]
    worker_rss: tuple[float, ...]

    def latency_ms(self, share: float) -> float:
        if not self.claim_latency:
            return float("nan")
        index = min(len(self.claim_latency) - 1, int(share * len(self.claim_latency)))
        return 1000 * self.claim_latency[index]


def worker_process(
    url: str, home: str, fleet: tuple[int, int, float], slots: int, index: int, stop: Any, out: Any
) -> None:
    """One ``patchctl worker`` as the CLI builds it, on the simulated fleet: runs in its own
    (spawned) process until ``stop`` is set, then sends the machines it patched and its RSS."""
    from reconciler.state.postgres.store import PostgresStore

    machines = SimulatedFleet(fleet[0], seed=fleet[1])
    job_queue.POLL = fleet[2]  # a spawned process starts from the shipped value
    stopping = threading.Event()  # the Worker's waits are a threading.Event's
    threading.Thread(target=lambda: (stop.wait(), stopping.set()), daemon=True).start()
    with PostgresStore(url, home=Path(home)) as store:
        runner_for = runners(
            store, machines.transport, clock=utc_now, log=_Quiet(), stopping=stopping,
            reboot_settings=RebootSettings(),
        )  # fmt: skip
        settings = WorkerSettings(f"bench-worker-{index}", slots, timedelta(seconds=30))
        queue: JobQueue = store  # PostgresStore: the queue's methods beside the backend's
        out.put(("ready", index))
        Worker(
            queue, store, runner_for, settings, clock=utc_now, log=_Quiet(), stopping=stopping
        ).run()
    patched = [name for name, machine in machines.machines.items() if machine.patched]
    out.put(("done", patched, peak_rss_mib()))


def claim_latencies(url: str) -> tuple[float, ...]:
    """Seconds from each queued entry's enqueue to its job's claim by a worker, sorted."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT q.enqueued_at, j.created_at FROM job_queue q JOIN jobs j ON j.key = q.key"
        ).fetchall()
    return tuple(sorted((from_text(c) - from_text(e)).total_seconds() for e, c in rows))


@contextmanager
def worker_processes(
    url: str, home: str, fleet: tuple[int, int, float], slots: int, processes: int
) -> Iterator[list[Any]]:
    """Start ``processes`` workers and return once each is connected; when the block ends
    without error, stop them and fill the list given with what each sent back (the machines it
    patched, its peak RSS). Daemons: a failed run leaves none behind."""
    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    spawned = [
        spawn.Process(
            target=worker_process, args=(url, home, fleet, slots, i, stop, out), daemon=True
        )
        for i in range(processes)
    ]
    finished: list[Any] = []
    for process in spawned:
        process.start()
    try:
        for _ in spawned:
            out.get(timeout=300)  # ("ready", index): the wall time starts with every worker in
        yield finished
        stop.set()
        finished.extend(out.get(timeout=300) for _ in spawned)
    finally:
        stop.set()
        for process in spawned:
            process.join(timeout=60)


def with_workers(
    count: int, concurrency: int, seed: int, processes: int, poll: float
) -> tuple[Convergence, WorkerRun]:
    """The leader here with the job queue, ``processes`` spawned workers sharing the slots."""
    from reconciler.state.postgres.store import PostgresStore

    fleet, slots = SimulatedFleet(count, seed=seed), math.ceil(concurrency / processes)
    job_queue.POLL = poll
    with tempfile.TemporaryDirectory() as tmp, postgres_url() as url:
        with PostgresStore(url, home=Path(tmp)) as store:
            config = write_config(Path(tmp), fleet, concurrency)
            with worker_processes(url, tmp, (count, seed, poll), slots, processes) as finished:
                loop = Reconciler(
                    DirectorySource(config), store, fleet.transport, workers=concurrency,
                    log=_Quiet(), job_queue=store,
                )  # fmt: skip
                start = time.perf_counter()
                loop.reconcile(until_idle=True)
                wall = time.perf_counter() - start
            busy, jobs = busy_seconds(store), len(store.jobs())
        latencies = claim_latencies(url)
    patched = {name for _, names, _ in finished for name in names}
    run = Convergence(count, jobs, wall, busy, min(concurrency, slots * processes), len(patched))
    return run, WorkerRun(processes, latencies, tuple(rss for _, _, rss in finished))


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


def report_workers(args: argparse.Namespace, run: Convergence, workers: WorkerRun) -> None:
    verdict = "PASS" if run.overhead <= TARGET_OVERHEAD else "FAIL"
    median, p95 = workers.latency_ms(0.5), workers.latency_ms(0.95)
    worker_rss = "/".join(f"{rss:.0f}" for rss in workers.worker_rss)
    print(
        f"fleet scale (postgresql, 1 leader + {workers.processes} worker processes, LISTEN/NOTIFY,"
        f" fallback poll {args.queue_poll:g} s): {run.instances} simulated machines, {run.jobs} jobs in {run.wall:.1f} s, overhead "
        f"{run.overhead:.2f} (target <= {TARGET_OVERHEAD}) {verdict}; "
        f"{run.jobs / run.wall:.0f} claims/s; enqueue → claim median {median:.0f} ms, p95 "
        f"{p95:.0f} ms; peak RSS leader {peak_rss_mib():.0f} MiB, workers {worker_rss} MiB; "
        f"{run.patched} patched"
    )
    if args.no_record:
        return
    record(
        "fleet scale (postgresql, worker processes)",
        "`bench/fleet_scale.py --backend postgresql --external-workers N`: the simulated fleet "
        "of *fleet scale (postgresql)*, the leader with the job queue (as `patchctl run "
        "--external-workers`) and N `Worker` processes (as `patchctl worker`, spawned), each "
        "with its own PostgreSQL connection, its own copy of the seeded fleet and "
        "concurrency ÷ N slots; all on the same 2 cores as PostgreSQL. overhead = wall ÷ (Σ job "
        "time ÷ total slots); claim latency = a queued entry's enqueue to its job's claim; "
        "queue poll: the interval the leader and the workers read the queue at (before "
        'LISTEN/NOTIFY), or "NOTIFY, 5 fallback" (they wake on the queue\'s notifications and '
        "poll every 5 s only as a fallback); peak "
        "RSS of the leader and of each worker.",
        [
            "date",
            "machines",
            "workers x slots",
            "queue poll (s)",
            "jobs",
            "wall (s)",
            "overhead",
            "claims/s",
            "claim latency median / p95 (ms)",
            "peak RSS leader / workers (MiB)",
            "target",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            str(run.instances),
            f"{workers.processes} x {run.concurrency // workers.processes}",
            f"NOTIFY, {args.queue_poll:g} fallback",
            str(run.jobs),
            f"{run.wall:.1f}",
            f"{run.overhead:.2f}",
            f"{run.jobs / run.wall:.0f}",
            f"{median:.0f} / {p95:.0f}",
            f"{peak_rss_mib():.0f} / {worker_rss}",
            f"overhead ≤ {TARGET_OVERHEAD}",
            verdict,
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
    parser.add_argument(
        "--external-workers",
        type=int,
        default=0,
        metavar="N",
        help="run the jobs in N worker processes over the PostgreSQL job queue (planning is "
        "not measured then: it is the leader's alone, as in one process)",
    )
    parser.add_argument(
        "--queue-poll",
        type=float,
        default=job_queue.POLL,
        metavar="SECONDS",
        help="with --external-workers: the queue's fallback poll in every process (diagnosis)",
    )
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.external_workers:
        if args.backend != "postgresql" or args.external_workers < 0:
            parser.error("--external-workers N needs --backend postgresql and N >= 1")
        report_workers(
            args,
            *with_workers(
                args.instances, args.concurrency, args.seed, args.external_workers, args.queue_poll
            ),
        )
        return 0
    run = convergence(args.backend, args.instances, args.concurrency, args.seed)
    rss = peak_rss_mib()  # before planning's 100,000 instances, which are not the controller's
    report(args, run, rss, planning(args.plan_instances))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
