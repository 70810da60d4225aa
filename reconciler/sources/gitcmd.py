"""Stage: sources. Running git for the Git source: argv lists through GitPython, never a shell."""

from __future__ import annotations

from git import Repo


def run_git(
    repo: Repo, *args: str, env: dict[str, str] | None = None, timeout: float
) -> tuple[int, str, str]:
    """Run ``git args`` in ``repo`` (argv, no shell); (status, stdout, stderr), never raises on
    a non-zero status. ``timeout`` kills a hung transfer."""
    argv = [repo.git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args]
    return repo.git.execute(
        argv,
        with_extended_output=True,
        with_exceptions=False,
        env=env,
        kill_after_timeout=timeout,
    )
