"""Benchmark: patchctl's start-up. Every command pays for importing ``reconciler.cli`` before it
does anything, and the test suite runs patchctl as a subprocess thousands of times.

Timed (wall clock of the whole process, median of ``--rounds``, the commands interleaved round
by round so a load that changes during the run weighs on all alike): ``patchctl --help``,
``patchctl validate`` of a small snapshot (examples/: the baselines, groups, windows and
instances), and two references measured in the same run: ``python -c pass`` (the interpreter's
own start) and ``python -c "import pydantic"`` (the schema library every validating command
needs). ``--before REV`` also times the tree of commit REV (``git archive`` into a temporary
directory, run with the same interpreter and packages), so one row shows before and after.
Ratios, not milliseconds, are what compare across runs: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402

SNAPSHOT = ("baselines", "groups.yaml", "windows.yaml", "instances.yaml")
"""What of examples/ makes the small snapshot ``validate`` reads."""


def small_snapshot(into: Path) -> Path:
    into.mkdir()
    for name in SNAPSHOT:
        source = ROOT / "examples" / name
        if source.is_dir():
            shutil.copytree(source, into / name)
        else:
            shutil.copy(source, into / name)
    return into


def tree_at(rev: str, into: Path) -> Path:
    """The repository's files at ``rev`` (its ``reconciler`` package is what gets imported)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "reconciler"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(argv: Sequence[str], tree: Path, cwd: Path) -> float:
    """Seconds ``argv`` takes with ``tree``'s reconciler first on the path; it must exit 0."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return took


def commands(snapshot: Path) -> dict[str, list[str]]:
    python = [sys.executable]
    return {
        "pass": [*python, "-c", "pass"],
        "pydantic": [*python, "-c", "import pydantic"],
        "help": [*python, "-m", "reconciler", "--help"],
        "validate": [*python, "-m", "reconciler", "validate", str(snapshot)],
    }


def measure(trees: dict[str, Path], snapshot: Path, rounds: int) -> dict[str, float]:
    """Median seconds per (tree, command) key, ``tree:command``; references once per round."""
    argvs = commands(snapshot)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, tree in trees.items():
            for name, argv in argvs.items():
                if name in ("pass", "pydantic") and label != "after":
                    continue
                samples.setdefault(f"{label}:{name}", []).append(timed(argv, tree, snapshot))
    return {key: statistics.median(values) for key, values in samples.items()}


def _both(medians: dict[str, float], name: str, scale: float, fmt: str) -> str:
    after = format(medians[f"after:{name}"] / scale, fmt)
    if f"before:{name}" not in medians:
        return after
    return f"{format(medians[f'before:{name}'] / scale, fmt)} → {after}"


def _bytecode() -> str:
    # Without written .pyc files every start compiles reconciler's modules from source again
    # (reconciler.cli alone: ~50 ms against ~3 ms from its .pyc), in both trees alike: the row
    # says so.
    return (
        ", no .pyc (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    )


def report(medians: dict[str, float], rounds: int, before: str | None) -> None:
    ms = 0.001
    plain, pydantic = medians["after:pass"], medians["after:pydantic"]
    cells = [
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        before or "—",
        f"{plain * 1000:.0f}",
        f"{pydantic * 1000:.0f}",
        _both(medians, "help", ms, ".0f"),
        _both(medians, "validate", ms, ".0f"),
        _both(medians, "help", plain, ".1f") + " / " + _both(medians, "help", pydantic, ".2f"),
        _both(medians, "validate", plain, ".1f")
        + " / "
        + _both(medians, "validate", pydantic, ".2f"),
        f"{os.getloadavg()[0]:.1f}",
        f"{os.cpu_count()} cores, Python {platform.python_version()}" + _bytecode(),
    ]
    print(" | ".join(cells))
    record(
        "patchctl start-up",
        f"Wall clock of the whole process, median of {rounds} interleaved rounds on a shared, "
        "loaded machine: `patchctl --help` and `patchctl validate` of a small snapshot "
        "(examples/ baselines, groups, windows, instances), against `python -c pass` and "
        '`python -c "import pydantic"` measured in the same run. "before → after": the tree '
        "of the commit named (bench/startup.py `--before REV`) and this one, in the same run. "
        "What the start-up may import is guarded by tests/test_startup.py, not by this timing.",
        [
            "date",
            "before",
            "python -c pass (ms)",
            "import pydantic (ms)",
            "--help (ms)",
            "validate (ms)",
            "--help ÷ pass / ÷ pydantic",
            "validate ÷ pass / ÷ pydantic",
            "load (1 min)",
            "machine",
        ],
        cells,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", metavar="REV", help="also time the tree of this commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work = Path(tmp)
        snapshot = small_snapshot(work / "snapshot")
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": tree_at(args.before, work / "before"), **trees}
        medians = measure(trees, snapshot, args.rounds)
    report(medians, args.rounds, args.before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
