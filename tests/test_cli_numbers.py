"""Every number ``patchctl`` takes on its command line is checked before anything starts (issue 12,
item 7): ``--stale-after 0`` rescanned forever, ``--interval -1`` spun at 100 % CPU and
``--workers 0`` was an internal error. A bad value is argparse's usage error, exit 2, naming the
option; the smallest good value still works."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.cli import main
from tests.test_cli_stderr import patchctl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LOOP = ["--source", str(EXAMPLES)]

# (the command before the option, the option, its smallest good value)
OPTIONS = [
    (["install"], "--lock-timeout", "0"),
    (["reconcile", *LOOP], "--workers", "1"),
    (["reconcile", *LOOP], "--stale-after", "0.5"),
    (["reconcile", *LOOP], "--events-queue-size", "1"),
    (["reconcile", *LOOP], "--reboot-timeout", "0.5"),
    (["plan", *LOOP], "--stale-after", "0.5"),
    (["run", *LOOP], "--workers", "1"),
    (["run", *LOOP], "--interval", "0.5"),
    (["run", *LOOP], "--stale-after", "0.5"),
    (["run", *LOOP], "--events-queue-size", "1"),
    (["run", *LOOP], "--reboot-timeout", "0.5"),
    (["controller"], "--workers", "1"),
    (
        ["node-agent", "--result-configmap", "c", "--namespace", "n", "--node", "x"],
        "--host-pid",
        "1",
    ),
    (["controller"], "--interval", "0.5"),
    (["controller"], "--stale-after", "0.5"),
    (["controller"], "--lease-duration", "0.5"),
    (["controller"], "--renew-deadline", "0.5"),
    (["controller"], "--retry-period", "0.5"),
    (["controller"], "--events-queue-size", "1"),
    (["controller"], "--reboot-timeout", "0.5"),
    (["windows", *LOOP], "--count", "1"),
    (["report", "--runs"], "--limit", "1"),
    (["diff", "--against", str(EXAMPLES)], "--limit", "1"),
    (["patch-now", "--list"], "--workers", "1"),
    (["patch-now", "--list"], "--stale-after", "0.5"),
    (["patch-now", "--list"], "--events-queue-size", "1"),
    (["patch-now", "--list"], "--start-within", "1"),
    (["emergency", "list"], "--workers", "1"),
    (["emergency", "list"], "--stale-after", "0.5"),
    (["emergency", "list"], "--events-queue-size", "1"),
    (["emergency", "list"], "--start-within", "1"),
    (["worker"], "--workers", "1"),
    (["worker"], "--lease", "2"),
    (["worker"], "--reboot-timeout", "0.5"),
]
# Below the smallest, not a number, not finite, absurdly large (timers and timedelta overflow).
BAD = ["-1", "0", "", "ten", "nan", "inf", "1e300"]


@pytest.mark.parametrize(("command", "option", "smallest"), OPTIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("bad", BAD)
def test_a_bad_number_is_a_usage_error_naming_the_option(
    command: list[str], option: str, smallest: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if bad == "0" and smallest == "0":
        bad = "-0.5"  # 0 is good there ("do not wait"); a fraction is not a whole second

    with pytest.raises(SystemExit) as exited:
        main([*command, f"{option}={bad}"])

    assert exited.value.code == 2
    (last,) = capsys.readouterr().err.splitlines()[-1:]
    assert last.startswith(f"patchctl {command[0]}: error: argument {option}: {bad!r} is ")
    assert "Traceback" not in last


def test_the_smallest_good_numbers_run(tmp_path: Path) -> None:
    state = ["--state", str(tmp_path / "state.db")]
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = {
        "windows": [
            "windows",
            *LOOP,
            "--count",
            "1",
            "--now",
            "2026-11-28T12:00:00Z",
            "-o",
            "json",
        ],
        "reconcile": [
            *("reconcile", "--source", str(empty), *state, "-o", "json"),
            *("--workers", "1", "--stale-after", "0.5", "--events-queue-size", "1"),
        ],
        "report": ["report", "--runs", "--limit", "1", *state, "-o", "json"],
    }
    for name, argv in runs.items():
        done = patchctl(*argv)
        assert done.returncode == 0, (name, done.stderr)
        json.loads(done.stdout)


def test_every_numeric_option_is_checked_here() -> None:
    """A new numeric option must use the checked types and be listed in OPTIONS."""
    family = {cli._positive_int, cli._seconds, cli._seconds_or_zero, cli._hours, cli._minutes}
    numeric = set()
    parser = cli._parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for verb, sub in verbs.choices.items():
        for action in sub._actions:
            assert action.type not in (int, float), (verb, action.option_strings)
            if action.type in family:
                numeric.add((verb, action.option_strings[-1]))
    assert numeric == {(command[0], option) for command, option, _ in OPTIONS}
