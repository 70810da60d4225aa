"""Stage: agent. Running package-manager commands: argv lists, absolute paths, a pinned environment.

Never a shell. Every command gets ``LC_ALL=C.UTF-8`` (stable messages to parse) and
``DEBIAN_FRONTEND=noninteractive``; callers add what their tool needs (``APT_CONFIG``). A timeout
kills the whole process group, because maintainer scripts may outlive dpkg and hold our pipes.
Nothing of the caller's environment passes but HOME and TMPDIR (so no ``ZYPP_CONF``,
``RPM_CONFIGDIR`` or ``PYTHONPATH`` reaches a package manager). :func:`private_dir` is where the
configuration the agent writes for a directory root lives: outside the root, which may not
supply any.
"""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional

BASE_ENV = {
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
    "NEEDRESTART_MODE": "l",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}


class Result(NamedTuple):
    argv: List[str]
    rc: int
    stdout: str
    stderr: str


def run(
    argv: List[str],
    env: Optional[Dict[str, str]] = None,
    timeout: float = 600.0,
    cwd: Optional[str] = None,
    stdin: Optional[str] = None,
) -> Result:
    """Run ``argv`` with the pinned environment (plus ``env``) and return its outcome;
    ``stdin`` is fed to the command (for tools that take commands on standard input)."""
    return Running(argv, env, cwd, stdin).result(timeout)


class Running:
    """A started command; ``result()`` waits for it. Lets read-only queries run side by side."""

    def __init__(
        self,
        argv: List[str],
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ):
        self.argv = argv
        self.stdin = stdin
        self.proc = _start(argv, env, cwd, stdin is not None)

    def result(self, timeout: float = 600.0) -> Result:
        try:
            out, err = self.proc.communicate(input=self.stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            out, err = self.proc.communicate()
            err += "\n[patchwarden] command timed out after {}s and was killed".format(timeout)
            return Result(self.argv, 124, out, err)
        return Result(self.argv, self.proc.returncode, out, err)


def _start(
    argv: List[str], env: Optional[Dict[str, str]], cwd: Optional[str], with_stdin: bool = False
) -> "subprocess.Popen[str]":
    full_env = pinned_env(env)
    return subprocess.Popen(  # noqa: S603 - argv list with absolute paths, never a shell
        argv,
        stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )


def pinned_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Every command's environment: BASE_ENV, the caller's HOME and TMPDIR, then ``env``."""
    full_env = dict(BASE_ENV)
    for key in ("HOME", "TMPDIR"):
        if key in os.environ:
            full_env[key] = os.environ[key]
    full_env.update(env or {})
    return full_env


def kill_group(pid: int) -> None:
    """Kill a command started in its own session and everything it started."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


_PRIVATE = []  # type: List[str]


def private_dir() -> str:
    """A new directory of this agent run's own (mode 0700, outside any system root, removed when
    the agent exits): the package managers' HOME and the configuration the agent writes for a
    root live there. Never inside the root: whoever is root in it could put hooks, ``.dpkg.cfg``
    or ``.rpmmacros`` there, and the package managers run on this host."""
    if not _PRIVATE:
        base = tempfile.mkdtemp(prefix="patchwarden-agent-")
        atexit.register(shutil.rmtree, base, True)
        _PRIVATE.append(base)
    return tempfile.mkdtemp(dir=_PRIVATE[0])


def empty_dir(private: str) -> str:
    """An empty directory inside ``private``, to pin a plugin or configuration path to."""
    path = os.path.join(private, "empty")
    os.makedirs(path, exist_ok=True)
    return path


def private_home() -> str:
    """A :func:`private_dir` for rpm (dnf, yum, zypper) as HOME: its ``.rpmmacros`` keeps rpm's
    database where RHEL and SUSE have it (Debian's rpm, used by the tests, defaults to
    ``~/.rpmdb``, which would write outside the root)."""
    home = private_dir()
    with open(os.path.join(home, ".rpmmacros"), "w", encoding="utf-8") as handle:
        handle.write("%_dbpath /var/lib/rpm\n")
    return home


def note(text: str) -> None:
    """One line for the agent's operator on stderr (stdout carries only the result document)."""
    sys.stderr.write("patchwarden-agent: {}\n".format(text))


def dumps(document: object) -> str:
    """The JSON the agent prints."""
    return json.dumps(document, indent=2, sort_keys=False)
