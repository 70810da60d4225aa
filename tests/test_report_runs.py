"""``patchctl report --runs``: the recorded exports of scheduled ComplianceReports, read from a
real state store that the real loop wrote (tests/test_report_schedule.py's fleet: a directory
source, a clock the test moves), listed newest first for people and machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_report_schedule import Fleet, at, report_yaml


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120
    )


def recorded(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A store with: hourly failed (a file blocks its directory), then hourly and daily
    exported. Returns (state, hourly's destination, daily's destination)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the report directory should be")
    daily = tmp_path / "daily"
    reports = report_yaml("hourly", blocker / "reports", "rate(1 hour)", format="json")
    fleet = Fleet(tmp_path, reports, at("2026-11-28T10:20:00"))
    fleet.passes(at("2026-11-28T10:20:00"))
    blocker.unlink()
    fleet.write(reports + report_yaml("daily", daily, "cron(0 6 * * ? *)"))
    fleet.passes(at("2026-11-28T10:30:00"))
    fleet.store.close()
    return tmp_path / "state.db", blocker / "reports", daily


def test_runs_are_listed_newest_first_for_machines(tmp_path: Path) -> None:
    state, hourly, daily = recorded(tmp_path)
    done = patchctl("report", "--runs", "--state", str(state), "-o", "json")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    # Both successes finished at 10:30 (the loop exports due reports by name), the failure at
    # 10:20: newest first, and the later-recorded of two at one time first.
    assert [(r["report"], r["opening"], r["status"]) for r in runs] == [
        ("hourly", "2026-11-28T10:00:00Z", "SUCCESS"),
        ("daily", "2026-11-28T06:00:00Z", "SUCCESS"),
        ("hourly", "2026-11-28T10:00:00Z", "FAILED"),
    ]
    failed = runs[-1]
    assert failed["destination"] == str(hourly) and failed["format"] == "json"
    assert failed["locations"] == []
    assert failed["error"].startswith(f"{hourly}: cannot")
    assert failed["revision"].startswith("dir@sha256:")
    assert failed["startedAt"] == failed["finishedAt"] == "2026-11-28T10:20:00+00:00"
    exported = next(r for r in runs if r["report"] == "daily")
    (written,) = daily.iterdir()
    assert exported["locations"] == [str(written)] and exported["error"] is None


def test_runs_of_one_report_as_yaml_and_as_a_table(tmp_path: Path) -> None:
    state, hourly, _ = recorded(tmp_path)
    done = patchctl("report", "--runs", "--report", "hourly", "--state", str(state), "-o", "yaml")
    assert done.returncode == 0, done.stderr
    runs = yaml.safe_load(done.stdout)
    assert [(r["report"], r["status"]) for r in runs] == [
        ("hourly", "SUCCESS"),
        ("hourly", "FAILED"),
    ]
    (written,) = hourly.iterdir()
    assert runs[0]["locations"] == [str(written)]

    table = patchctl("report", "--runs", "--report", "hourly", "--state", str(state), "-o", "table")
    assert table.returncode == 0, table.stderr
    assert "Report runs of hourly" in table.stdout
    lines = table.stdout.splitlines()
    success = next(i for i, line in enumerate(lines) if "SUCCESS" in line)
    failure = next(i for i, line in enumerate(lines) if "FAILED" in line)
    assert success < failure, "newest first"
    assert "daily" not in table.stdout

    none = patchctl("report", "--runs", "--report", "weekly", "--state", str(state), "-o", "table")
    assert none.returncode == 0 and "nothing recorded yet" in none.stdout


def test_bad_combinations_are_refused_with_what_to_do(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    neither = patchctl("report", "--state", state)
    assert neither.returncode == 2 and "one of the arguments --to --runs is required" in (
        neither.stderr
    )
    both = patchctl("report", "--runs", "--to", str(tmp_path), "--state", state)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    stray = patchctl("report", "--to", str(tmp_path), "--report", "hourly", "--state", state)
    assert stray.returncode == 1
    assert stray.stderr == (
        "patchctl: --report and -o go with --runs: patchctl report --runs --report NAME\n"
    )
    scoped = patchctl("report", "--runs", "--group", "web", "--state", state)
    assert scoped.returncode == 1 and "--instance and --group go with --to" in scoped.stderr
    as_of = patchctl("report", "--runs", "--now", "2026-11-28T10:00:00Z", "--state", state)
    assert as_of.returncode == 1 and "--now goes with --to" in as_of.stderr
