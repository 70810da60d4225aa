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
        # SSM refuses a window that fires more often than every 5 minutes, for cron as for rate
        # (https://docs.aws.amazon.com/systems-manager/latest/userguide/reference-cron-and-rate-expressions.html).
        ("cron(0/2 1 * * ? *)", "fires 2 minutes apart at its closest"),
        # A step past its field is refused as AWS refuses it, with the field's range.
        ("cron(*/60 1 * * ? *)", "Minutes field '*/60': the step 60 is larger than the field"),
        ("cron(30 1 L-31 * ? *)", "Day-of-month field 'L-31': 'L-n' counts 0-30 days back"),
    ],
)
def test_bad_schedule_is_reported_at_its_line(tmp_path: Path, schedule: str, message: str) -> None:
    run = _validate_with(tmp_path, "windows.yaml", schedule)
    windows = tmp_path / "fleet" / "windows.yaml"
    line = next(i for i, text in enumerate(windows.read_text().splitlines(), 1) if schedule in text)
    assert run.returncode == 1
    assert f"windows.yaml:{line}: spec.schedule:" in run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("file", "schedule"),
    [
        # AWS's wrap-around example and an L-n day validate in a window.
        ("windows.yaml", "cron(0/30 20-2 ? * MON-FRI *)"),
        ("windows.yaml", "cron(0 3 L-2 NOV-FEB ? *)"),
        # A report's schedule is not a maintenance window's: AWS runs report exports from an
        # EventBridge schedule, which has no 5-minute floor for cron.
        ("reports.yaml", "cron(0/2 * * * ? *)"),
    ],
)
def test_schedules_aws_accepts_validate(tmp_path: Path, file: str, schedule: str) -> None:
    run = _validate_with(tmp_path, file, schedule)
    assert run.returncode == 0, run.stderr


# The examples' schedules that a test replaces, per file.
EXAMPLE_SCHEDULES = {"windows.yaml": "cron(30 1 * * ? *)", "reports.yaml": "cron(0 6 * * ? *)"}


def _validate_with(tmp_path: Path, file: str, schedule: str) -> subprocess.CompletedProcess[str]:
    """``patchctl validate`` on the examples, with one schedule in ``file`` replaced."""
    shutil.copytree(ROOT / "examples", tmp_path / "fleet")
    path = tmp_path / "fleet" / file
    path.write_text(path.read_text().replace(EXAMPLE_SCHEDULES[file], schedule))
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(tmp_path / "fleet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
