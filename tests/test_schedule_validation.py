"""Schedules are parsed at validation time, so a bad cron field is a file:line error, not a
surprise when the loop first computes the window's openings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("cron(30 25 * * ? *)", "Hours field '25': 25 is outside 0-23"),
        ("cron(0 2 ? * TUE#6 *)", "spec.schedule:"),
        ("rate(2 minutes)", "spec.schedule:"),
    ],
)
def test_bad_schedule_is_reported_at_its_line(tmp_path: Path, schedule: str, message: str) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "fleet")
    windows = tmp_path / "fleet" / "windows.yaml"
    windows.write_text(windows.read_text().replace("cron(30 1 * * ? *)", schedule))
    line = next(i for i, text in enumerate(windows.read_text().splitlines(), 1) if schedule in text)
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(tmp_path / "fleet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert f"windows.yaml:{line}: spec.schedule:" in run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
