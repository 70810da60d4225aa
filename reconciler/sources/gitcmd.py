"""Stage: sources. Running git for the Git source: argv lists through GitPython, never a shell.

Every git process runs with umask 077, whatever the controller's: what git writes (the bare
clone's config, refs, objects) is the controller's alone, files 0600 (objects 0400) and
directories 0700. May not decide what is fetched or read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # GitPython at run time only where a repository is read: see init_bare
    from git import Git, Repo

PRIVATE_UMASK = 0o077


def run_git(
    repo: Repo, *args: str, env: dict[str, str] | None = None, timeout: float
) -> tuple[int, str, str]:
    """Run ``git args`` in ``repo`` (argv, no shell); (status, stdout, stderr), never raises on
    a non-zero status. ``timeout`` kills a hung transfer."""
    return _execute(repo.git, args, env, timeout)


def init_bare(path: Path, *, timeout: float) -> tuple[int, str, str]:
    """``git init --bare`` in the existing directory ``path``; (status, stdout, stderr)."""
    # reconciler.sources imports this module for every command (tests/test_startup.py).
    from git import Git

    return _execute(Git(str(path)), ("init", "--quiet", "--bare"), None, timeout)


def _execute(
    git: Git, args: tuple[str, ...], env: dict[str, str] | None, timeout: float
) -> tuple[int, str, str]:
    argv = [git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args]
    return git.execute(
        argv,
        with_extended_output=True,
        with_exceptions=False,
        env=env,
        kill_after_timeout=timeout,
        umask=PRIVATE_UMASK,  # passed on to Popen: this process only, no race with other threads
    )
