"""Benchmark: planning one reconcile pass for 10,000 instances (synthetic desired and observed state).

The snapshot has 10,000 ManagedInstances in 4 patch groups (one selected by label), 4 baselines and
2 windows, one open now; the observed state has a scan for every instance (half with missing
patches, some stale, some with an older baseline) and a job history. Only ``plan()`` is timed
(median of 5), against a reference measured in the same run: one pass over the same instances
doing a dictionary lookup per instance (the floor of any per-instance work). Target: < 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from reconciler.api.enums import OperatingSystem  # noqa: E402
from reconciler.api.snapshot import Snapshot, build_snapshot  # noqa: E402
from reconciler.defaults import predefined_baselines  # noqa: E402
from reconciler.plan import Observed, ObservedJob, ObservedScan, baseline_digest, plan  # noqa: E402

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
TARGET_S = 1.0


def fleet_yaml(count: int) -> bytes:
    docs = []
    for i, group in enumerate(("web", "db", "cache", "batch")):
        docs.append(f"""apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {{name: base-{group}}}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {{patchFilters: [{{key: PRIORITY, values: [Required, Important]}}]}}
      complianceLevel: {["CRITICAL", "HIGH", "MEDIUM", "LOW"][i]}
""")
        selector = "selector: {matchLabels: {tier: web}}" if group == "web" else ""
        docs.append(f"""apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {{name: {group}}}
spec:
  {selector}
  baselines: {{DEBIAN: base-{group}}}
""")
    for name, schedule in (("noon", "cron(0 12 * * ? *)"), ("night", "cron(0 2 ? * SUN *)")):
        docs.append(f"""apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {{name: {name}}}
spec:
  schedule: {schedule}
  duration: 4
  cutoff: 1
  targets: {{patchGroups: [web, db, cache, batch]}}
  tasks: [{{name: install, operation: Install, maxConcurrency: 10%, maxErrors: 5%}}]
""")
    groups = ("web", "db", "cache", "batch")
    for i in range(count):
        group = groups[i % 4]
        labels = "{tier: web}" if group == "web" else f"{{patchwarden.io/patch-group: {group}}}"
        docs.append(f"""apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {{name: node-{i:05d}, labels: {labels}}}
spec: {{connection: {{type: local, root: /srv/fleet/node-{i:05d}}}}}
""")
    return "---\n".join(docs).encode()


def planning_inputs(count: int) -> tuple[Snapshot, Observed]:
    """The snapshot of ``count`` instances and what was observed of them (bench/fleet_scale.py
    plans over 100,000 of these)."""
    # A source file may hold at most 4 MiB (snapshot.py): 10,000 instances a file stays below.
    docs = fleet_yaml(count).split(b"---\n")
    files = [
        (f"fleet-{n}.yaml", b"---\n".join(docs[start : start + 10_000]))
        for n, start in enumerate(range(0, len(docs), 10_000))
    ]
    snapshot = build_snapshot(files, predefined_baselines())
    digests = {name: baseline_digest(b) for name, b in snapshot.baselines.items()}
    groups = ("web", "db", "cache", "batch")
    scans, jobs = {}, []
    for i, name in enumerate(sorted(snapshot.instances)):
        digest = digests[f"base-{groups[i % 4]}"] if i % 50 else "older-baseline"
        age = timedelta(hours=30) if i % 97 == 0 else timedelta(hours=2)
        pins = (f"openssl=3.0.{i % 7}-1", "libc6=2.36-9+deb12u9") if i % 2 else ()
        scans[name] = ObservedScan(NOW - age, OperatingSystem.DEBIAN, digest, pins, bool(pins))
        if i % 10 == 0:
            jobs.append(
                ObservedJob(f"{name}:Scan:old", name, "Scan", "succeeded", NOW - timedelta(days=1))
            )
    return snapshot, Observed(scans=scans, jobs=jobs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    snapshot, observed = planning_inputs(args.instances)
    scans = observed.scans
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = plan(snapshot, "main@sha1:" + "0" * 40, observed, NOW)
        times.append(time.perf_counter() - start)
    reference = []
    names = sorted(snapshot.instances)
    for _ in range(args.rounds):
        start = time.perf_counter()
        hits = sum(1 for name in names if scans.get(name) is not None and snapshot.instances[name])
        reference.append(time.perf_counter() - start)
    took, ref = statistics.median(times), statistics.median(reference)
    verdict = "PASS" if took < TARGET_S else "FAIL"
    print(
        f"plan: {args.instances} instances in {took * 1000:.0f} ms ({len(result.actions)} actions, "
        f"{len(result.waits)} waits); reference loop {ref * 1000:.1f} ms ({hits}); target < {TARGET_S} s {verdict}"
    )
    record(
        "planning",
        f"One `plan()` over {args.instances} instances (4 groups, 4 baselines, 2 windows, one open; every "
        f"instance scanned, half with missing patches, some stale or with an older baseline), median of "
        f"{args.rounds}. Reference: one pass over the same instances with a dictionary lookup each.",
        [
            "date",
            "instances",
            "plan (ms)",
            "reference (ms)",
            "ratio",
            "target",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            str(args.instances),
            f"{took * 1000:.0f}",
            f"{ref * 1000:.1f}",
            f"{took / ref:.0f}",
            f"< {TARGET_S * 1000:.0f} ms",
            verdict,
            f"{os.cpu_count()} cores, Python {platform.python_version()}",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
