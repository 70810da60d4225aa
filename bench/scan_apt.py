"""Benchmark: the agent's apt scan against apt's own refresh + simulated upgrade, same root, same run.

A Debian root with 300 installed packages, all 300 upgradable (half from the security suite), is
built with tests/aptlab.py. Measured, alternating, N rounds each (median):

- ours: ``python3 -I -S patchwarden-agent.pyz scan --root R`` (the zipapp of ``make agent``: refresh
  + full inventory, as shipped);
- reference: ``apt-get update`` + ``apt-get -s dist-upgrade`` on the same root with the same
  APT_CONFIG.

Target (issue "Debian/Ubuntu agent"): ours / reference <= 1.3. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from reconciler.agent.apt import Apt  # noqa: E402
from tests.aptlab import Pkg, Repo, make_root  # noqa: E402

TARGET = 1.3


def build(base: Path, count: int) -> Path:
    repo = Repo(base / "repo")
    stable = [Pkg(f"bench-pkg{i:03d}", "1.0-1", section="libs") for i in range(count)]
    newer = [Pkg(f"bench-pkg{i:03d}", "1.0-2", section="libs") for i in range(count)]
    repo.add(
        "stable",
        *stable,
        *[p for i, p in enumerate(newer) if i % 2],
        label="Debian",
        codename="bookworm",
    )
    repo.add(
        "stable-security",
        *[p for i, p in enumerate(newer) if not i % 2],
        label="Debian-Security",
        codename="bookworm-security",
    )
    repo.publish()
    return make_root(base / "root", repo.uri, ["stable", "stable-security"], installed=stable)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = build(Path(tmp), args.packages)
        env = dict(os.environ)
        pyz = Path(tmp) / "patchwarden-agent.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/build-agent"), str(pyz)],
            check=True,
            capture_output=True,
        )
        ours_argv = [sys.executable, "-I", "-S", str(pyz), "scan", "--root", str(root)]
        _, out = timed(ours_argv, env)  # warm-up
        document = json.loads(out)
        upgradable = len(document["updates"])
        security = sum(1 for u in document["updates"] if u["security"])
        # The configuration the agent runs apt with lives in its private directory, gone when
        # it exits: the reference gets the same one, made here.
        apt_env = {**env, **Apt(str(root)).environment, "LC_ALL": "C.UTF-8"}
        ours, reference = [], []
        for _ in range(args.rounds):
            ours.append(timed(ours_argv, env)[0])
            t_update, _ = timed(["/usr/bin/apt-get", "update"], apt_env)
            t_sim, sim = timed(["/usr/bin/apt-get", "-s", "dist-upgrade"], apt_env)
            reference.append(t_update + t_sim)
        inst = sum(1 for line in sim.splitlines() if line.startswith("Inst "))
    ours_s, ref_s = statistics.median(ours), statistics.median(reference)
    ratio = ours_s / ref_s
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"scan: ours {ours_s * 1000:.0f} ms, apt-get update + -s dist-upgrade {ref_s * 1000:.0f} ms, "
        f"ratio {ratio:.2f} (target <= {TARGET}) {verdict}; {upgradable} updates ({security} security), "
        f"apt simulated {inst} upgrades"
    )
    record(
        "apt scan",
        f"Root with {args.packages} installed and {upgradable} upgradable packages ({security} from the "
        f"security suite); median of {args.rounds} alternating rounds. Ours: `python3 -I -S patchwarden-agent.pyz "
        "scan --root R` (the zipapp: refresh + inventory, as shipped). Reference: `apt-get update` + "
        "`apt-get -s dist-upgrade` on the same root and APT_CONFIG.",
        ["date", "ours (ms)", "reference (ms)", "ratio", "target", "result", "machine"],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            f"{ours_s * 1000:.0f}",
            f"{ref_s * 1000:.0f}",
            f"{ratio:.2f}",
            f"≤ {TARGET}",
            verdict,
            f"{os.cpu_count()} cores, Python {platform.python_version()}",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
