"""stderr of every ``patchctl`` verb carries only patchctl's own words (issue 11).

Each command runs as a user runs it, in a fresh interpreter, with ``-W default`` (every warning
shown once, as a developer's shell may set it) and with the locked, newest wheels: asyncssh under
cryptography 46+ warns "DSA is deprecated" on import, and library loggers print through logging's
last-resort handler when nothing else is set up. None of that may reach a user; only the
command's own errors may, and they have our shapes (``patchctl: …``, ``file:line: field: …``,
``refused: …``, argparse's ``usage:``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-28T12:00:00Z"
# What patchctl itself writes to stderr, line by line. Anything else is somebody else's words.
OWN_LINE = re.compile(
    r"^(patchctl( [a-z-]+)?: .+|usage: patchctl.*|\s+.*|refused: \d+ problem\(s\); nothing was applied"
    r"|[^\s:]+(:\d+)?: .+|)$"  # a problem: path[:line]: [field: ]message
)
FOREIGN = ("Warning", "warn(", "site-packages", "Traceback", "DeprecationWarning", ".py:")


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -W default ARGS`` in the checkout, as a user's shell would start it."""
    return subprocess.run(
        [sys.executable, "-W", "default", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def patchctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return python("-m", "reconciler", *args, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty snapshot (a loop verb then reaches its SSH pool, hence asyncssh, without any
    machine to patch), a broken one, and a state store written by one reconcile."""
    work = tmp_path_factory.mktemp("stderr")
    (work / "empty").mkdir()
    broken = work / "broken"
    broken.mkdir()
    (broken / "baseline.yaml").write_text(
        "apiVersion: patchwarden.io/v1alpha1\nkind: PatchBaseline\nmetadata:\n  name: b\n"
        "spec:\n  operatingSystem: UBUNTU\n  approvalRules:\n"
        "    - approveAfterDays: 700\n      patchFilterGroup:\n        patchFilters: []\n",
        encoding="utf-8",
    )
    first = patchctl("reconcile", "--source", str(work / "empty"), "--state", str(work / "s.db"))
    assert first.returncode == 0, first.stderr
    return work


def assert_only_own_words(run: subprocess.CompletedProcess[str]) -> None:
    for word in FOREIGN:
        assert word not in run.stderr, run.stderr
    for line in run.stderr.splitlines():
        assert OWN_LINE.match(line), f"not patchctl's words: {line!r}\n{run.stderr}"


def commands(work: Path) -> list[tuple[list[str], int]]:
    """(argv, expected exit code): a dozen verbs, valid input and invalid input."""
    state = str(work / "s.db")
    return [
        (["validate", "examples"], 0),
        (["validate", str(work / "broken")], 1),
        (
            [
                "evaluate",
                "--source",
                "examples",
                "--inventory",
                "examples/inventories",
                "--now",
                NOW,
                "-o",
                "json",
            ],
            0,
        ),
        (
            [
                "explain",
                "web-1",
                "openssl",
                "--source",
                "examples",
                "--inventory",
                "examples/inventories",
                "--now",
                NOW,
            ],
            0,
        ),
        (["evaluate", "--source", "examples", "--inventory", "no-such-dir", "--now", NOW], 1),
        (["plan", "--source", "examples", "--state", state, "--now", NOW], 0),
        (["windows", "--source", "examples", "--now", NOW], 0),
        (["reconcile", "--source", str(work / "empty"), "--state", state], 0),
        (["reconcile", "--source", str(work / "missing"), "--state", state], 1),
        (["run", "--source", str(work / "empty"), "--listen", "nonsense"], 2),
        (["compliance", "--state", state, "-o", "json"], 0),
        (["report", "--state", state, "--to", str(work / "reports"), "--format", "json"], 0),
        (["audit", "--state", state], 0),
        (
            ["findings", "--state", state, "--account-id", "123456789012", "--region", "eu-west-1"],
            0,
        ),
        (["controller", "--kubeconfig", str(work / "no-kubeconfig")], 1),
        (["crds", "--out", str(work / "crds")], 0),
        (["schema", "inventory"], 0),
        (["scan", "--root", str(work / "no-root")], 1),
        (["no-such-verb"], 2),
        (["sources", "--state", state], 0),
    ]


def test_every_verb_writes_only_its_own_words_to_stderr(workdir: Path) -> None:
    failures = []
    for argv, expected in commands(workdir):
        run = patchctl(*argv)
        if run.returncode != expected:
            failures.append(f"{argv}: exit {run.returncode}, expected {expected}: {run.stderr}")
            continue
        assert_only_own_words(run)
    assert not failures, "\n".join(failures)


def test_a_loop_verb_loads_asyncssh_and_still_says_nothing_of_it(workdir: Path) -> None:
    """The verb that used to print four cryptography warnings: it does load asyncssh (so the
    test above is not passing for want of the import) and its stderr is empty."""
    probe = (
        "import sys; sys.argv = ['patchctl', 'reconcile', '--source', sys.argv[1], "
        "'--state', sys.argv[2]]\n"
        "from reconciler.cli import main\n"
        "code = main()\n"
        "print('asyncssh' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    run = python("-c", probe, str(workdir / "empty"), str(workdir / "s.db"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "True"
    assert run.stderr == ""


def test_patchwarden_debug_lets_library_warnings_through(workdir: Path) -> None:
    """The switch developers use to see what the libraries say: the same command under
    PATCHWARDEN_DEBUG shows them (or nothing at all when the installed wheels say nothing)."""
    plain = python("-c", "import asyncssh")
    library_said = [line for line in plain.stderr.splitlines() if "Warning" in line]
    env = {**os.environ, "PATCHWARDEN_DEBUG": "1"}
    empty, state = str(workdir / "empty"), str(workdir / "s.db")
    run = patchctl("reconcile", "--source", empty, "--state", state, env=env)
    assert run.returncode == 0, run.stderr
    for line in library_said:
        assert line in run.stderr


def test_schema_output_is_still_json_on_stdout() -> None:
    run = patchctl("schema", "inventory")
    assert run.returncode == 0
    assert json.loads(run.stdout)["title"]


def test_ansible_says_nothing_on_stdout_or_stderr(tmp_path: Path) -> None:
    """Enrolment from an Ansible inventory imports ansible-core, which warns on import
    (cryptography's DSA) and prints its own warnings through its Display: here, "Found both
    group and host with same name", which ``ansible-inventory`` itself shows. None of that may
    reach patchctl's stderr, nor stdout, which must stay the JSON document asked for."""
    (tmp_path / "hosts.ini").write_text("[web]\nweb\nweb2\n", encoding="utf-8")
    (tmp_path / "fleet.yaml").write_text(
        "apiVersion: patchwarden.io/v1alpha1\nkind: InstanceSource\nmetadata:\n  name: inv\n"
        "spec:\n  ansibleInventory:\n    path: hosts.ini\n",
        encoding="utf-8",
    )
    ansible = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", "hosts.ini", "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Found both group and host with same name: web" in ansible.stderr  # it does warn
    run = patchctl("validate", str(tmp_path), "-o", "json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert json.loads(run.stdout)["enrolled"][0]["instances"] == ["web", "web2"]
