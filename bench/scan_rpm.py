"""Benchmark: the agent's RPM-family scans against the package managers' own listing commands.

Roots with N installed packages, every one with an update (half referenced by security notices of
every severity, a quarter by bugfix notices), built with tests/rpmlab.py. Median of R alternating
rounds, both sides refreshing their metadata:

- dnf (RHEL 9 root): ours ``python3 -I patchwarden-agent.pyz scan --root R`` against
  ``dnf --refresh check-update`` + ``dnf updateinfo list``;
- zypper (SLES 15 root): ours against ``zypper ref`` + ``zypper list-updates`` +
  ``zypper list-patches``.

Target (issue "RHEL family, Amazon Linux and SUSE"): ours / reference <= 1.3 for each.
"""

from __future__ import annotations

import argparse
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
from tests.rpmlab import (  # noqa: E402
    Notice,
    Rpm,
    base_and_updates,
    build_rpms,
    dnf_argv,
    make_rpm_root,
    rpm_env,
    seed_rpm_root,
)

TARGET = 1.3
LISTINGS = {
    "dnf": "`dnf --refresh check-update` + `dnf updateinfo list`",
    "zypper": "`zypper ref` + `zypper list-updates` + `zypper list-patches`",
}
SEVERITIES = ("Critical", "Important", "Moderate", "Low")


def build(base: Path, count: int, os_release: str) -> Path:
    old = [Rpm(f"bench-pkg{i:03d}", "1.0") for i in range(count)]
    new = [Rpm(f"bench-pkg{i:03d}", "1.0", "2") for i in range(count)]
    notices = [
        Notice(f"BENCH-2024-{i:04d}", "security", (new[i],), SEVERITIES[i % 4])
        for i in range(0, count, 2)
    ]
    notices += [Notice(f"BENCH-2024-{i:04d}", "bugfix", (new[i],)) for i in range(1, count, 4)]
    built = build_rpms(base / "build", [*old, *new])
    repos = base_and_updates(base, [built[r] for r in old], [built[r] for r in new], notices)
    names = [r.name for r in old]
    return seed_rpm_root(base / f"root-{os_release}", os_release, repos, names)


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode not in ok:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-500:]}")
    return time.perf_counter() - start


def compare(
    name: str,
    ours: list[str],
    reference: list[tuple[list[str], tuple[int, ...]]],
    env: dict[str, str],
    rounds: int,
) -> tuple[float, float]:
    timed(ours, env)  # warm-up
    for argv, ok in reference:
        timed(argv, env, ok)
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(timed(ours, env))
        theirs.append(sum(timed(argv, env, ok) for argv, ok in reference))
    return statistics.median(mine), statistics.median(theirs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pyz = base / "agent.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/build-agent"), str(pyz)],
            check=True,
            capture_output=True,
        )
        env = {**rpm_env(base / "home"), "LC_ALL": "C.UTF-8"}
        rhel = build(base, args.packages, "rhel9")
        dnf = dnf_argv(rhel)
        cases = {
            "dnf": (
                rhel,
                [
                    ([*dnf, "--refresh", "-q", "check-update"], (0, 100)),
                    ([*dnf, "-q", "updateinfo", "list"], (0,)),
                ],
            )
        }
        sles = base / "root-sles15"
        subprocess.run(["cp", "-a", str(rhel), str(sles)], check=True)
        make_rpm_root(sles, "sles15", {})
        zypper = ["zypper", "--non-interactive", "--no-gpg-checks", "--root", str(sles)]
        cases["zypper"] = (
            sles,
            [
                ([*zypper, "ref"], (0,)),
                ([*zypper, "list-updates"], (0,)),
                ([*zypper, "list-patches"], (0,)),
            ],
        )
        for name, (root, reference) in cases.items():
            zenv = {**env, "ZYPP_LOGFILE": str(base / "zypper.log")}
            ours, theirs = compare(
                name,
                [sys.executable, "-I", "-S", str(pyz), "scan", "--root", str(root)],
                reference,
                zenv,
                args.rounds,
            )
            ratio = ours / theirs
            verdict = "PASS" if ratio <= TARGET else "FAIL"
            print(
                f"{name}: ours {ours * 1000:.0f} ms, reference {theirs * 1000:.0f} ms, ratio {ratio:.2f} "
                f"(target <= {TARGET}) {verdict}"
            )
            record(
                f"{name} scan",
                f"Root with {args.packages} installed packages, each with an update (security notices of every "
                f"severity on half, bugfix on a quarter); median of {args.rounds} alternating rounds, both sides "
                f"refreshing metadata. Ours: the agent zipapp's scan (`--root`). Reference: {LISTINGS[name]}.",
                ["date", "ours (ms)", "reference (ms)", "ratio", "target", "result", "machine"],
                [
                    datetime.now(UTC).strftime("%Y-%m-%d"),
                    f"{ours * 1000:.0f}",
                    f"{theirs * 1000:.0f}",
                    f"{ratio:.2f}",
                    f"≤ {TARGET}",
                    verdict,
                    machine,
                ],
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
