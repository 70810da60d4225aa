"""Stage: agent. A window task's hooks (SSM's AWS-RunPatchBaselineWithHooks) and command health
checks, run on this machine: argv lists (never a shell), the agent's pinned environment
(:func:`runner.pinned_env`) plus ``PATCHWARDEN_STAGE`` and ``PATCHWARDEN_ROOT``, as the agent's
own user (root, or the user sudo ran it as), a timeout that kills the command's process group,
and only the last :data:`OUTPUT_LIMIT` bytes of its stdout and stderr kept (the result says how
many were cut, so a command printing gigabytes costs the machine and the controller nothing).

``install_with_hooks`` wraps a backend's install: preInstall before it (before the package
manager's lock is taken, so a hook may use the package manager), postInstall after it and
before the agent's own reboot. The commands come from the configuration repository, and run
on the machine the agent runs on: the transports refuse them where that machine is the
controller unless the operator allows it (docs/hooks.md). May not read the root's files.
Standard library only; python3 >= 3.6.
"""

import base64
import binascii
import json
import os
import re
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from reconciler.agent.errors import AgentError
from reconciler.agent.outcome import reboot
from reconciler.agent.runner import kill_group, pinned_env

OUTPUT_LIMIT = 4096
"""Bytes of a command's stdout, and of its stderr, that are kept: the end, where errors are."""
STAGES = ("preInstall", "postInstall", "onExit", "healthCheck")

Command = Dict[str, Any]
Run = Dict[str, Any]


class BadHooks(AgentError):
    """The --hooks or --commands word is not what the controller sends."""

    code = "BadHooks"


class PreInstallFailed(AgentError):
    """A preInstall command failed: nothing was installed."""

    code = "PreInstallFailed"


def decode(text: str, what: str) -> Any:
    """The base64 JSON a word of the agent's command line carries."""
    try:
        return json.loads(base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise BadHooks("{} is not base64 of JSON: {}".format(what, exc)) from None


def commands_of(value: Any, what: str) -> List[Command]:
    """``value`` checked as a list of {argv: [str, ...], timeoutSeconds: number}."""
    if not isinstance(value, list):
        raise BadHooks("{}: expected a list of commands".format(what))
    for command in value:
        argv = command.get("argv") if isinstance(command, dict) else None
        timeout = command.get("timeoutSeconds") if isinstance(command, dict) else None
        words = isinstance(argv, list) and argv and all(isinstance(w, str) and w for w in argv)
        if not words or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise BadHooks("{}: each command is {{argv: [word, ...], timeoutSeconds}}".format(what))
    return value


def run_stage(stage: str, commands: List[Command], root: str) -> Run:
    """Run ``commands`` in order; the first that fails stops the stage."""
    runs = []  # type: List[Dict[str, Any]]
    for command in commands:
        runs.append(run_command(command, stage, root))
        if runs[-1]["exitCode"] != 0:
            break
    ok = all(r["exitCode"] == 0 for r in runs)
    return {"stage": stage, "ok": ok, "commands": runs}


def run_command(command: Command, stage: str, root: str) -> Dict[str, Any]:
    """One command's outcome: exit code (124 on timeout, 126/127 when it cannot start), the
    kept end of its output and how many bytes were cut."""
    argv, timeout = [str(w) for w in command["argv"]], float(command["timeoutSeconds"])
    env = pinned_env({"PATCHWARDEN_STAGE": stage, "PATCHWARDEN_ROOT": root})
    started = time.monotonic()
    try:
        proc = subprocess.Popen(  # noqa: S603 - an argv list, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        message = "[patchwarden] cannot run {}: {}".format(argv[0], exc.strerror or exc)
        return _outcome(argv, code, False, started, (b"", 0), (message.encode(), 0))
    out, err = _Tail(proc.stdout), _Tail(proc.stderr)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc.pid)
        proc.wait()
    # A process that left the group (daemonised) may hold the pipes: never wait for it.
    stdout, stderr = out.result(), err.result()
    if timed_out:
        note = "[patchwarden] timed out after {:g}s and was killed".format(timeout)
        note = ("\n" if stderr[0] else "") + note
        stderr = (stderr[0] + note.encode(), stderr[1])
    rc = 124 if timed_out else _exit_code(proc.returncode)
    return _outcome(argv, rc, timed_out, started, stdout, stderr)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128+N


def _outcome(
    argv: List[str], rc: int, timed_out: bool, started: float, stdout: Any, stderr: Any
) -> Dict[str, Any]:
    return {
        "argv": argv,
        "exitCode": rc,
        "timedOut": timed_out,
        "seconds": round(time.monotonic() - started, 3),
        "stdout": stdout[0].decode("utf-8", "replace"),
        "stdoutCutBytes": stdout[1],
        "stderr": stderr[0].decode("utf-8", "replace"),
        "stderrCutBytes": stderr[1],
    }


class _Tail:
    """Reads a pipe to its end in a thread, keeping only its last OUTPUT_LIMIT bytes."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.kept = b""
        self.cut = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.pipe.read1(65536), b""):
            kept = self.kept + chunk
            if len(kept) > OUTPUT_LIMIT:
                self.cut += len(kept) - OUTPUT_LIMIT
                kept = kept[-OUTPUT_LIMIT:]
            self.kept = kept

    def result(self) -> Any:
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.pipe.close()
        return self.kept, self.cut


def install_with_hooks(
    install: Callable[[bool], Dict[str, object]],
    hooks: Dict[str, Any],
    root: str,
    reboot_option: str,
    allow_reboot: bool,
) -> Dict[str, object]:
    """``install(allow_reboot)`` between the preInstall and postInstall commands of ``hooks``;
    the result gains ``hooks``: the stages that ran. A failed preInstall raises
    PreInstallFailed (nothing installed); with postInstall commands the agent's reboot waits
    for them, and does not happen when they fail."""
    if not isinstance(hooks, dict) or set(hooks) - {"preInstall", "postInstall"}:
        raise BadHooks("--hooks: expected {preInstall: [...], postInstall: [...]}")
    pre_commands = commands_of(hooks.get("preInstall", []), "preInstall")
    post_commands = commands_of(hooks.get("postInstall", []), "postInstall")
    runs = []  # type: List[Run]
    if pre_commands:
        runs.append(run_stage("preInstall", pre_commands, root))
        if not runs[-1]["ok"]:
            raise PreInstallFailed(failure_message(runs[-1]), {"hooks": runs})
    result = install(allow_reboot and not post_commands)
    if post_commands:
        runs.append(run_stage("postInstall", post_commands, root))
        if runs[-1]["ok"] and allow_reboot:
            result["reboot"] = _deferred_reboot(result.get("reboot"), reboot_option, root)
    result["hooks"] = runs
    return result


_HELD_BACK = re.compile(r"^reboot needed \((?P<why>.*)\); pass --allow-reboot")


def _deferred_reboot(done: Optional[Any], reboot_option: str, root: str) -> Any:
    """The reboot the install held back for postInstall, now that it succeeded."""
    if not isinstance(done, dict) or not done.get("required") or done.get("performed"):
        return done
    held = _HELD_BACK.match(str(done.get("reason", "")))
    why = held.group("why") if held else str(done.get("reason", ""))
    return reboot(True, why, reboot_option, os.path.realpath(root) == "/", True)


def failure_message(run: Run) -> str:
    """One line: which command of the stage failed and the last line it printed."""
    failed = run["commands"][-1]
    said = (failed["stderr"] or failed["stdout"]).strip().splitlines()[-1:] or ["no output"]
    how = "timed out" if failed["timedOut"] else "exited {}".format(failed["exitCode"])
    return "{} command {} {}: {}".format(run["stage"], " ".join(failed["argv"]), how, said[0])
