"""Benchmarks of the reconcile loop on real apt roots: dispatcher overhead and commit-to-dispatch.

1. **Convergence**: 100 directory-root Debian systems, each missing approved patches, a window
   open now with ``maxConcurrency: 10``; the loop scans and patches them all. Dispatcher overhead =
   wall time ÷ (sum of job times ÷ 10): 1.0 would be ten jobs running back to back with no gap.
   Target ≤ 1.15. Job times are measured by the store (claim to finish), so planning, claiming and
   recording between jobs count as overhead.
2. **Commit to first dispatch**: ``patchctl run --interval 1`` on a Git URL; a commit opens a
   window; the time from the push until the log line of the first Install job. Target ≤ 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from reconciler.dispatch import LocalTransport  # noqa: E402
from reconciler.loop import Reconciler  # noqa: E402
from reconciler.sources import DirectorySource  # noqa: E402
from reconciler.state import StateStore  # noqa: E402
from tests.aptlab import Pkg, Repo, make_root  # noqa: E402

OLD = [Pkg(f"bench-lib{i}", "1.0-1", section="libs") for i in range(5)]
NEW = [Pkg(f"bench-lib{i}", "1.0-2", section="libs") for i in range(5)]
FLEET_YAML = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: security}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required, Important, Standard, Optional, Extra]}]}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: fleet}
spec:
  selector: {matchLabels: {app: bench}}
  baselines: {DEBIAN: security}
"""
WINDOW_YAML = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: open-now}
spec:
  schedule: cron(0 * * * ? *)
  duration: 2
  cutoff: 0
  targets: {patchGroups: [fleet]}
  tasks: [{name: install, operation: Install, maxConcurrency: "10", maxErrors: "5"}]
"""


def build(base: Path, count: int) -> Path:
    repo = Repo(base / "repo")
    repo.add("stable", *OLD, label="Debian", codename="bookworm")
    repo.add("stable-security", *NEW, label="Debian-Security", codename="bookworm-security")
    repo.publish()
    config = base / "config"
    config.mkdir()
    docs = []
    for i in range(count):
        root = make_root(
            base / "fleet" / f"node-{i:03d}", repo.uri, ["stable", "stable-security"], installed=OLD
        )
        docs.append(
            f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
            f"metadata: {{name: node-{i:03d}, labels: {{app: bench}}}}\n"
            f"spec: {{connection: {{type: local, root: {root}}}}}\n"
        )
    (config / "fleet.yaml").write_text(FLEET_YAML)
    (config / "instances.yaml").write_text("---\n".join(docs))
    return config


def convergence(count: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = build(base, count)
        (config / "window.yaml").write_text(WINDOW_YAML)
        with StateStore(base / "state.db") as store:
            reconciler = Reconciler(
                DirectorySource(config),
                store,
                lambda i: LocalTransport(i.spec.connection.root, trust_root_scripts=True),
                workers=10,
                log=_Quiet(),
            )
            start = time.perf_counter()
            summary = reconciler.reconcile(until_idle=True)
            wall = time.perf_counter() - start
            jobs = store.jobs()
            busy = sum(
                (j.finished_at - j.created_at).total_seconds() for j in jobs if j.finished_at
            )
            assert summary.converged and all(
                r.evaluation["summary"]["complianceStatus"] == "COMPLIANT"
                for r in store.latest_scans().values()
            ), summary
    return wall, busy, len(jobs)


def commit_to_dispatch() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = build(base, 3)
        bare, work = base / "config.git", base / "work"
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@x",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@x",
        }

        def run(*args: str, cwd: Path = base) -> None:
            subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

        run("init", "--bare", "--initial-branch=main", str(bare))
        run("clone", str(bare), str(work))
        for f in config.iterdir():
            (work / f.name).write_text(f.read_text())
        run("add", ".", cwd=work)
        run("commit", "-m", "fleet", cwd=work)
        run("push", "origin", "HEAD:main", cwd=work)
        log = (base / "run.log").open("w+")
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "run",
                "--source",
                f"file://{bare}",
                "--state",
                str(base / "state.db"),
                "--interval",
                "1",
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=log,
            stdout=subprocess.DEVNULL,
        )
        try:
            _wait_for(
                log,
                lambda e: e.get("event") == "job finished" and e.get("operation") == "Scan",
                count=3,
            )
            (work / "window.yaml").write_text(WINDOW_YAML)
            run("add", ".", cwd=work)
            run("commit", "-m", "open a window", cwd=work)
            pushed = time.time()
            run("push", "origin", "HEAD:main", cwd=work)
            first = _wait_for(
                log, lambda e: e.get("event") == "job started" and e.get("operation") == "Install"
            )
            return datetime.fromisoformat(first["timestamp"]).timestamp() - pushed
        finally:
            service.terminate()
            service.wait(timeout=60)


def _wait_for(log, match, count: int = 1, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    seen = 0
    while time.time() < deadline:
        log.seek(0)
        for line in log.read().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if match(event):
                seen += 1
                if seen >= count:
                    return event
        seen = 0
        time.sleep(0.05)
    raise TimeoutError("the expected log line never came")


class _Quiet:
    def bind(self, **_: object) -> _Quiet:
        return self

    def __getattr__(self, _: str):  # type: ignore[no-untyped-def]
        return lambda *a, **k: None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args()
    wall, busy, jobs = convergence(args.instances)
    overhead = wall / (busy / 10)
    verdict = "PASS" if overhead <= 1.15 else "FAIL"
    print(
        f"convergence: {args.instances} roots, {jobs} jobs in {wall:.1f} s, sum of job times {busy:.1f} s, "
        f"overhead {overhead:.2f} (target <= 1.15) {verdict}"
    )
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    record(
        "fleet convergence",
        f"{args.instances} directory-root Debian systems, 5 approved patches missing on each, a window open now "
        "with maxConcurrency 10, 10 workers; the loop scans and patches everything. Overhead = wall time ÷ "
        "(sum of job times ÷ 10), job times measured by the store from claim to finish.",
        [
            "date",
            "jobs",
            "wall (s)",
            "sum of job times (s)",
            "overhead",
            "target",
            "result",
            "machine",
        ],
        [
            today,
            str(jobs),
            f"{wall:.1f}",
            f"{busy:.1f}",
            f"{overhead:.2f}",
            "≤ 1.15",
            verdict,
            machine,
        ],
    )
    latency = commit_to_dispatch()
    verdict = "PASS" if latency <= 2.0 else "FAIL"
    print(f"commit to first dispatch: {latency:.2f} s (target <= 2 s) {verdict}")
    record(
        "commit to first dispatch",
        "`patchctl run --interval 1` on a file:// Git URL with 3 scanned roots; a pushed commit opens a window. "
        "Time from the push to the log line of the first Install job.",
        ["date", "latency (s)", "target", "result", "machine"],
        [today, f"{latency:.2f}", "≤ 2 s", verdict, machine],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
