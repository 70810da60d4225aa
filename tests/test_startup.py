"""patchctl's start-up imports only what the command needs: every command imports
``reconciler.cli``, so a client library imported at the top of a module any command reaches is
paid by all of them (the Kubernetes client, numpy and GitPython each cost 0.1 to 0.2 s: the test
suite runs patchctl thousands of times, a user on every command). What `--help`, `validate` and
`evaluate` do not use must stay out of ``sys.modules``; a module that needs one imports it in the
function that uses it (docs/architecture.md). The speed itself is bench/startup.py's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-28T12:00:00Z"

HEAVY = (
    "kubernetes",  # the controller, Kubernetes sources, gates and Node jobs
    "urllib3",  # under the Kubernetes client
    "numpy",  # the engine's bulk verdicts and fleet tables: patchctl diff, bench/
    "git",  # GitPython: Git sources
    "boto3",  # S3, EventBridge, EC2 enrolment, SSM import/export
    "botocore",
    "asyncssh",  # the SSH transport
    "psycopg",  # the PostgreSQL store
    "httpx",  # gates, calendars fetched by URL, hooks' HTTP checks, chat and webhooks
    "icalendar",  # ChangeCalendars with an iCalendar source
    "recurring_ical_events",
    "ansible",  # Ansible inventories of InstanceSources
)

PROBE = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
from reconciler.cli import main
code = 0
if argv:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
heavy = json.loads(sys.argv[2])
print(json.dumps({"code": code, "imported": sorted(m for m in heavy if m in sys.modules)}))
"""


def imported_by(*argv: str, cwd: Path = ROOT) -> list[str]:
    """The HEAVY modules a fresh process holds after running ``patchctl argv`` (after only
    importing reconciler.cli when no argv), which must succeed."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["code"] == 0, run.stderr
    return list(found["imported"])


@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example fleet's baselines, groups, windows and instances (no InstanceSources, no
    calendars: a snapshot that asks for nothing but validation)."""
    root = tmp_path_factory.mktemp("snapshot")
    shutil.copytree(ROOT / "examples" / "baselines", root / "baselines")
    for name in ("groups.yaml", "windows.yaml", "instances.yaml"):
        shutil.copy(ROOT / "examples" / name, root / name)
    return root


def test_importing_the_cli_imports_no_heavy_client() -> None:
    assert imported_by() == []


def test_help_imports_no_heavy_client() -> None:
    assert imported_by("--help") == []


def test_validate_imports_no_heavy_client(small_snapshot: Path) -> None:
    assert imported_by("validate", str(small_snapshot)) == []


def test_evaluate_imports_no_heavy_client() -> None:
    argv = ("--baseline", "examples/baselines/al2023-prod.yaml")
    inventory = ("--inventory", "examples/inventories/web-2.json", "--now", NOW)
    assert imported_by("evaluate", *argv, *inventory, "-o", "json") == []
    assert imported_by("evaluate", *argv, *inventory) == []  # the table renderer too
