"""`make demo` converges its fleet: the README's first command must keep working, and what it
tells a newcomer to type next must work as printed in a new shell (no virtualenv activated)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_apt

ROOT = Path(__file__).resolve().parent.parent


def fresh_shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` in a new non-interactive bash: the system PATH only, no virtualenv."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def demo() -> Iterator[subprocess.CompletedProcess[str]]:
    yield subprocess.run(
        [sys.executable, "scripts/demo.py"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@needs_apt
def test_demo_converges_the_fleet(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    before, after = demo.stdout.split("=== After", 1)
    assert before.count("NON_COMPLIANT") == 6  # scanned, nothing installed without a window
    assert "Converged: every instance is compliant." in after
    assert "NON_COMPLIANT" not in after
    assert "6 Install succeeded" in after
    from reconciler.state import StateStore

    with StateStore(ROOT / "build" / "demo" / "state.db") as store:
        executions = store.window_executions("open-now")
    # The window is still open (across an hour boundary the run may touch two of its openings).
    assert executions and {e["status"] for e in executions} == {"IN_PROGRESS"}


@needs_apt
def test_the_try_line_runs_as_printed_in_a_new_shell(
    demo: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    (line,) = [line for line in demo.stdout.splitlines() if line.startswith("Try: ")]
    run = fresh_shell(line.removeprefix("Try: "), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    # The fleet converged inside the window: the planner has nothing left to install.
    for name in ("web-1", "db-2"):
        assert name in run.stdout


def test_make_install_ends_with_how_to_get_patchctl_on_path(tmp_path: Path) -> None:
    venv = Path(sys.executable).parent.parent
    install = subprocess.run(
        ["make", "-s", "install", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    last = install.stdout.strip().splitlines()[-1]
    assert last.startswith("To run patchctl in a new shell: ")
    activate = last.removeprefix("To run patchctl in a new shell: ").split("   (or")[0]
    assert fresh_shell("patchctl --version", cwd=tmp_path).returncode == 127  # not on PATH
    run = fresh_shell(f"{activate} && patchctl --version", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("patchctl ")
