"""Benchmark: observe() + plan() after a year of history vs with no history, same run.

A fleet of 200 instances, one daily maintenance window (open now) with an Install task; a year
of history in a real state file: 2 jobs a day per instance (a nightly install and a scan, 2%
failed), each with its recorded scan, about 146,000 jobs and scans in all. Today's state (the
latest scan of every instance, from yesterday or tonight, and tonight's jobs, some still
running) is the same in both files; the "empty" file has nothing older than yesterday. Timed: ``Reconciler.plan()`` (observe the store, then plan),
median of 7 alternating rounds. Target: history / empty ≤ 2. For comparison, the same plan from the
whole job history (``store.jobs()``, what observe() read before) is timed too. ``--backend
postgresql`` copies both files into a real PostgreSQL 15 (tests/postgres.py, as root) and times
the same on PostgresStore (issue 16).

The history is written straight into the file in one transaction through a second sqlite3
connection (the store's ``claim_job``/``record_scan`` commit with ``synchronous = FULL`` each
time, which would take most of an hour for 146,000 rows); instances' latest scans are kept by
the store's own ``schema.upsert_instance``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from reconciler.api.snapshot import Snapshot, build_snapshot  # noqa: E402
from reconciler.defaults import predefined_baselines  # noqa: E402
from reconciler.loop import Reconciler  # noqa: E402
from reconciler.plan import Observed, ObservedJob, baseline_digest, plan, snapshot_digest  # noqa: E402
from reconciler.state import StateBackend, StateStore  # noqa: E402
from reconciler.state.postgres.store import PostgresStore  # noqa: E402
from reconciler.state.records import to_json, to_text  # noqa: E402
from reconciler.state.schema import upsert_instance  # noqa: E402

NOW = datetime(2026, 11, 28, 2, 40, tzinfo=UTC)  # inside tonight's opening (02:00-06:00)
REVISION = "main@sha1:" + "2" * 40
TARGET = 2.0


def fleet_yaml(count: int) -> bytes:
    docs = [
        """apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: debian-prod}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required, Important]}]}
""",
        """apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  baselines: {DEBIAN: debian-prod}
""",
        """apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: nightly}
spec:
  schedule: cron(0 2 * * ? *)
  duration: 4
  cutoff: 1
  targets: {patchGroups: [web]}
  tasks: [{name: install, operation: Install, maxConcurrency: 10%, maxErrors: 5%}]
""",
    ]
    docs += [
        f"""apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {{name: node-{i:04d}, labels: {{role: web}}}}
spec: {{connection: {{type: local, root: /srv/fleet/node-{i:04d}}}}}
"""
        for i in range(count)
    ]
    return "---\n".join(docs).encode()


def scan_row(name: str, job_id: str, started: datetime, pins: list[str]) -> tuple[Any, ...]:
    inventory = {
        "instanceId": name,
        "facts": {"operatingSystem": "DEBIAN", "hostname": name, "kernel": "6.1.0-27"},
    }
    evaluation = {
        "pins": pins,
        "patches": [],
        "summary": {"complianceStatus": "NON_COMPLIANT" if pins else "COMPLIANT"},
        "facts": inventory["facts"],
    }
    finished = started + timedelta(minutes=3)
    return (
        name,
        job_id,
        to_text(started),
        to_text(finished),
        to_json(inventory),
        to_json(evaluation),
    )


def fill(path: Path, snapshot: Snapshot, days: int) -> int:
    """Write ``days`` days of history before today, then today's jobs; returns the job count."""
    StateStore(path).close()  # creates the file at the current schema version
    digest = baseline_digest(snapshot.baselines["debian-prod"])
    names = sorted(snapshot.instances)
    jobs: list[tuple[Any, ...]] = []
    scans: list[tuple[Any, ...]] = []
    today = NOW.replace(hour=0, minute=0)

    def job(name: str, key: str, op: str, status: str, start: datetime, window: bool) -> str:
        job_id = uuid.uuid4().hex
        opening = start.strftime("%Y-%m-%dT02:00:00Z") if window else None
        finished = None if status == "running" else to_text(start + timedelta(minutes=3))
        jobs.append(
            (
                job_id,
                key,
                name,
                op,
                "nightly" if window else None,
                "install" if window else None,
                opening,
                REVISION,
                status,
                to_json({"key": key}),
                None if status == "running" else to_json({}),
                to_text(start),
                finished,
            )
        )
        return job_id

    for day in range(days, -1, -1):
        night = today - timedelta(days=day) + timedelta(hours=2, minutes=5)
        for i, name in enumerate(names):
            pins = [f"openssl=3.0.{day % 13}-1"]
            snap = snapshot_digest(pins, digest)
            key = f"{name}:Install:{snap}:nightly:{night.strftime('%Y-%m-%dT02:00:00Z')}"
            if day == 0 and i % 10 == 0:  # tonight: a few installs still running
                job(name, key, "Install", "running", night + timedelta(minutes=i % 30), True)
                continue
            if day == 0 and i % 10 != 5:
                continue  # the rest of tonight's installs have not started yet
            status = "failed" if (day * 7 + i) % 50 == 0 else "succeeded"
            start = night + timedelta(minutes=i % 30)
            job_id = job(name, key, "Install", status, start, True)
            scans.append(("Install", *scan_row(name, job_id, start, [])))
            if day == 0:
                continue
            noon = start + timedelta(hours=10)
            scan_key = f"{name}:Scan:{digest}:{noon.isoformat()}"
            job_id = job(name, scan_key, "Scan", "succeeded", noon, False)
            scans.append(("Scan", *scan_row(name, job_id, noon, pins[: (day + i) % 2])))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs (id, key, instance, operation, window, task, opening, revision,"
            " status, payload, result, created_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            jobs,
        )
        for operation, name, job_id, started, finished, inventory, evaluation in sorted(
            scans, key=lambda s: s[4]
        ):
            scan_id = conn.execute(
                "INSERT INTO scans (instance, operation, revision, baseline, baseline_hash,"
                " job_id, started_at, finished_at, inventory, evaluation)"
                " VALUES (?, ?, ?, 'debian-prod', ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    operation,
                    REVISION,
                    digest,
                    job_id,
                    started,
                    finished,
                    inventory,
                    evaluation,
                ),
            ).lastrowid
            assert scan_id is not None
            upsert_instance(conn, scan_id, name, finished, {"operatingSystem": "DEBIAN"})
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return len(jobs)


TABLES = {
    "jobs": "id, key, instance, operation, window, task, opening, revision, status, payload,"
    " result, created_at, finished_at",
    "scans": "id, instance, operation, revision, baseline, baseline_hash, job_id, started_at,"
    " finished_at, inventory, evaluation",
    "instances": "instance, facts, first_seen, last_seen, last_scan_id",
}


def to_postgres(path: Path, url: str) -> None:
    """The SQLite file's history copied into a new PostgreSQL state database (the columns are
    the same, ``window`` quoted there), in rowid order so PostgreSQL's ``seq`` keeps the order."""
    import psycopg

    PostgresStore(url).close()  # creates the schema at the current version
    source = sqlite3.connect(path)
    try:
        with psycopg.connect(url) as conn, conn.cursor() as cursor:
            for table, columns in TABLES.items():
                quoted = columns.replace("window", '"window"')
                rows = source.execute(f"SELECT {columns} FROM {table} ORDER BY rowid")
                with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('scans', 'id'), max(id)) FROM scans"
            )
            cursor.execute("ANALYZE")
    finally:
        source.close()


@contextmanager
def opened(path: Path, backend: str) -> Iterator[StateBackend]:
    """The store on ``path`` itself (SQLite), or on a PostgreSQL copy of it."""
    if backend == "sqlite":
        with StateStore(path) as store:
            yield store
        return
    from tests.postgres import start_postgres

    directory = Path(tempfile.mkdtemp(prefix="patchwarden-pg-"))  # postgres cannot enter /tmp's
    server = start_postgres(directory)
    try:
        url = server.fresh_database()
        to_postgres(path, url)
        with PostgresStore(url) as store:
            yield store
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def timed(reconciler: Reconciler, rounds: int, full: bool) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        if full:  # what observe() did before: every job ever claimed
            observed = reconciler.observe(NOW)
            everything = [
                ObservedJob(
                    j.key,
                    j.instance,
                    j.operation,
                    j.status,
                    j.created_at,
                    j.window,
                    j.task,
                    j.opening,
                )
                for j in reconciler.store.jobs()
            ]
            assert reconciler.snapshot is not None
            result = plan(
                reconciler.snapshot,
                REVISION,
                Observed(observed.scans, everything),
                NOW,
                reconciler.settings,
            )
        else:
            result = reconciler.plan()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def reconciler_on(store: StateBackend, snapshot: Snapshot) -> Reconciler:
    reconciler = Reconciler(
        None,  # type: ignore[arg-type]  # only observe() and plan() run: no source, no transport
        store,
        lambda _: None,  # type: ignore[arg-type,return-value]
        clock=lambda: NOW,
    )
    reconciler.snapshot, reconciler.revision = snapshot, REVISION
    return reconciler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    snapshot = build_snapshot([("fleet.yaml", fleet_yaml(args.instances))], predefined_baselines())
    with tempfile.TemporaryDirectory(prefix="observe-history-") as tmp:
        setup = time.perf_counter()
        total = fill(Path(tmp) / "history.db", snapshot, args.days)
        empty_total = fill(Path(tmp) / "empty.db", snapshot, 1)
        setup = time.perf_counter() - setup
        with (
            opened(Path(tmp) / "history.db", args.backend) as big,
            opened(Path(tmp) / "empty.db", args.backend) as small,
        ):
            on_big, on_small = reconciler_on(big, snapshot), reconciler_on(small, snapshot)
            timed(on_big, 1, False)  # warm the page cache of both files alike
            timed(on_small, 1, False)
            big_times, small_times = [], []
            for _ in range(args.rounds):  # alternating, so drift hits both alike
                took, plan_big = timed(on_big, 1, False)
                big_times.append(took)
                took, plan_small = timed(on_small, 1, False)
                small_times.append(took)
            ours, ref = statistics.median(big_times), statistics.median(small_times)
            before, plan_full = timed(on_big, max(3, args.rounds // 2), True)
            read = len(on_big.observe(NOW).jobs)
    same = plan_big == plan_full and plan_big.actions == plan_small.actions
    ratio = ours / ref
    verdict = "PASS" if ratio <= TARGET and same else "FAIL"
    print(
        f"observe+plan: {total} jobs of history {ours * 1000:.1f} ms ({read} jobs read), "
        f"empty history ({empty_total} jobs) {ref * 1000:.1f} ms, ratio {ratio:.2f} "
        f"(target <= {TARGET}) {verdict}; whole-history read {before * 1000:.0f} ms; "
        f"same plan: {same}; setup {setup:.0f} s"
    )
    suffix = "" if args.backend == "sqlite" else f" ({args.backend})"
    record(
        f"observe with a year of history{suffix}",
        f"`Reconciler.plan()` (observe the {'' if args.backend == 'sqlite' else 'PostgreSQL '}store, then plan) for {args.instances} instances and one "
        f"daily window open now, median of {args.rounds} alternating rounds: on a state file with {args.days} days of "
        f"history ({total} jobs, each with its scan) vs one holding only today's state "
        f"({empty_total} jobs: yesterday and tonight). Both plans are equal, and equal to the plan from the whole job "
        'history; "whole history" is that plan\'s time (reading `store.jobs()`, as observe() did '
        "before reading only what the planner can act on).",
        [
            "date",
            "jobs",
            "history (ms)",
            "empty (ms)",
            "ratio",
            "target",
            "whole history (ms)",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            str(total),
            f"{ours * 1000:.1f}",
            f"{ref * 1000:.1f}",
            f"{ratio:.2f}",
            f"≤ {TARGET}",
            f"{before * 1000:.0f}",
            verdict,
            f"{os.cpu_count()} cores, Python {platform.python_version()}",
        ],
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
