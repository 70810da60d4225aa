"""Executable docs: the ```console blocks of README.md, docs/*.md and examples/README.md, run.

Sybil (a pytest-friendly documentation tester) finds the fenced blocks; this module says what a
``console`` block means, as a reader would take it:

- ``$ command`` is typed at a shell (a line ending in ``\\`` continues on the next), in a working
  directory holding the repository's ``examples/`` and ``tests/docfiles/``, with patchctl on PATH
  and a demo fleet's state as the user's default state database.
- The lines up to the next ``$`` are what it prints (stdout and stderr, as a terminal shows them),
  compared exactly except that ``...`` stands for anything (doctest's ELLIPSIS): times, digests,
  temporary paths. A command shown without output must exit 0.
- A block right after ``<!-- docs: not-run REASON -->`` cannot run here (a cluster, the host's
  packages, AWS): its own commands' options are checked instead (``patchctl SUB --help``, the
  agent's ``--help``, the Helm chart's values, the Makefile's targets).

Nothing here decides anything for the product; it reads docs and runs what they say.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "examples" / "README.md", *(ROOT / "docs").glob("*.md")])
NOT_RUN = re.compile(r"<!--\s*docs:\s*not-run\b(?P<reason>.*?)-->\s*\Z", re.DOTALL)
PROMPT = "$ "
CHECKER = doctest.OutputChecker()
MATCHING = doctest.ELLIPSIS


@dataclass(frozen=True)
class Command:
    """One ``$`` command of a block and the output shown under it ("" when none is shown)."""

    line: int
    text: str
    shown: str


def transcript(source: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith(PROMPT):
            raise AssertionError(f"line {first_line + i}: expected '$ command', got {lines[i]!r}")
        start, text = i, lines[i][len(PROMPT) :]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text += "\n" + lines[i]
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith(PROMPT):
            output.append(lines[i] + "\n")
            i += 1
        commands.append(Command(first_line + start, text, "".join(output).strip("\n")))
    return commands


def not_run_reason(example: Example) -> str | None:
    """The reason given in a ``<!-- docs: not-run ... -->`` comment right before the block."""
    before = example.document.text[: example.start]
    found = NOT_RUN.search(before.rstrip("\n").rsplit("\n\n", 1)[-1] + "\n")
    return found.group("reason").strip(" :\n") if found else None


# -- running a command --------------------------------------------------------------------------


def run(command: Command, cwd: Path, env: dict[str, str]) -> str | None:
    """Run ``command`` in bash; a failure message, or None."""
    done = subprocess.run(
        ["bash", "-c", command.text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    got = done.stdout
    if not command.shown:
        if done.returncode == 0:
            return None
        return f"line {command.line}: `{command.text}` exited {done.returncode}:\n{got}"
    want = command.shown + "\n"
    if CHECKER.check_output(want, got, MATCHING):
        return None
    diff = CHECKER.output_difference(doctest.Example(command.text, want), got, MATCHING)
    return f"line {command.line}: `{command.text}` printed something else:\n{diff}"


# -- checking a command that cannot run here ------------------------------------------------------


def words(command: Command) -> list[str]:
    """The command's words, without the environment assignments and ``sudo`` in front."""
    argv = shlex.split(command.text.replace("\\\n", " "), comments=True)
    while argv and (argv[0] == "sudo" or re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0])):
        argv.pop(0)
    return argv


def options(argv: list[str]) -> set[str]:
    return {re.split(r"[=\[\]]", w.lstrip("["))[0] for w in argv if w.lstrip("[").startswith("-")}


def help_accepts(help_argv: list[str], argv: list[str], env: dict[str, str]) -> str | None:
    """Every option of ``argv`` is one the program's ``--help`` lists."""
    shown = subprocess.run(help_argv, env=env, capture_output=True, text=True, timeout=60)
    if shown.returncode != 0:
        return f"`{shlex.join(help_argv)}` exited {shown.returncode}: {shown.stderr.strip()}"
    listed = set(re.findall(r"(?<![\w-])(-{1,2}[A-Za-z][\w-]*)", shown.stdout))
    unknown = sorted(options(argv) - listed)
    return f"not options of `{shlex.join(help_argv)}`: {unknown}" if unknown else None


def check_patchctl(argv: list[str], env: dict[str, str]) -> str | None:
    sub = next((w for w in argv[1:] if not w.startswith("-")), None)
    return help_accepts(["patchctl", *([sub] if sub else []), "--help"], argv, env)


def check_agent(argv: list[str], env: dict[str, str]) -> str | None:
    if not (len(argv) > 2 and argv[1].endswith("patchwarden-agent.pyz")):
        return None  # some other Python program: not ours to check
    agent = [sys.executable, "-m", "reconciler.agent", argv[2], "--help"]
    return help_accepts(agent, argv[2:], env)


def check_helm(argv: list[str], env: dict[str, str]) -> str | None:
    """``--set key=value``: the key is one of the chart's values."""
    values = yaml.safe_load((ROOT / "charts" / "patchwarden" / "values.yaml").read_text())
    unknown = []
    for i, word in enumerate(argv[:-1]):
        if word == "--set":
            node: Any = values
            for part in argv[i + 1].partition("=")[0].split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                unknown.append(argv[i + 1])
    return f"not values of charts/patchwarden: {unknown}" if unknown else None


def check_make(argv: list[str], env: dict[str, str]) -> str | None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    unknown = [w for w in argv[1:] if not w.startswith("-") and w not in targets]
    return f"not targets of the Makefile: {unknown}" if unknown else None


CHECKERS: dict[str, Callable[[list[str], dict[str, str]], str | None]] = {
    "patchctl": check_patchctl,
    "python3": check_agent,
    "helm": check_helm,
    "make": check_make,
}
"""Programs whose options we own; kubectl, docker, aws, curl... are someone else's."""


def check_options(command: Command, env: dict[str, str]) -> str | None:
    argv = words(command)
    checker = CHECKERS.get(Path(argv[0]).name) if argv else None
    problem = checker(argv, env) if checker else None
    return f"line {command.line}: `{command.text}`: {problem}" if problem else None


# -- the Sybil parser -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """Where the commands run, and their environment."""

    cwd: Path
    env: dict[str, str]


def evaluate(example: Example) -> str | None:
    """Run the block (or check its options); a failure message, or None. The document's
    namespace holds the ``Workspace`` under ``"workspace"``."""
    workspace: Workspace = example.namespace["workspace"]
    reason = not_run_reason(example)
    if reason == "":
        return f"line {example.line}: say why the block cannot run: <!-- docs: not-run: WHY -->"
    for command in transcript(example.parsed, example.line + 1):
        if reason is None:
            problem = run(command, workspace.cwd, workspace.env)
        else:
            problem = check_options(command, workspace.env)
        if problem:
            return problem
    return None


PARSER = CodeBlockParser(language="console", evaluator=evaluate)


def examples(path: Path) -> list[Example]:
    """The console blocks of one document."""
    return list(Sybil(parsers=[PARSER]).parse(path))


def environment(home: Path, state_home: Path) -> dict[str, str]:
    """A user's shell: patchctl on PATH, no AWS credentials, the demo's state as the default."""
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TERM")}
    return {
        **keep,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_STATE_HOME": str(state_home),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "TZ": "UTC",
    }
