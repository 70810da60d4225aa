"""Stage: api (the schema). A window task's hooks and health checks (docs/hooks.md).

Hooks are SSM's AWS-RunPatchBaselineWithHooks lifecycle hooks: ``preInstall`` runs before the
install, ``postInstall`` after it and before a reboot, ``onExit`` at the end (after the reboot
when there is one). Health checks are a Patchwarden extension: a command on the machine or an
HTTP(S) GET from the controller, after the install and again after a reboot. These models check
one task's hooks and checks; May not import anything outside ``reconciler.api`` but
``reconciler.paths``, and does no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from reconciler.api._base import Model
from reconciler.paths import control_character

HOST = "{host}"
"""The placeholder an HTTP check's url names the instance's address with."""
_CHECK_NAME = r"^[a-zA-Z0-9_\-.]{1,63}$"


def _no_control(value: str) -> str:
    # A control character in a word would reach the machine's command line and every log,
    # audit line and table that quotes it as something else than it looks.
    found = control_character(value)
    if found is not None:
        raise ValueError(f"must not contain control characters (found {found})")
    return value


Word = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_no_control)]
Argv = Annotated[list[Word], Field(min_length=1, max_length=64)]


class HookCommand(Model):
    """One command run on the machine by the agent: no shell, the agent's pinned environment."""

    argv: Argv
    """The program and its arguments, one word each (no shell: write ["/bin/sh", "-c", "..."]
    to use one). A program without a '/' is looked up in /usr/sbin:/usr/bin:/sbin:/bin."""
    timeout_seconds: int = Field(default=300, ge=1, le=3600, strict=True)
    """Seconds (1-3600) before the command and everything it started are killed (a failure)."""


Commands = Annotated[list[HookCommand], Field(default_factory=list, max_length=10)]


class Hooks(Model):
    """SSM's AWS-RunPatchBaselineWithHooks lifecycle hooks; a command fails when it exits
    non-zero or times out, and the commands after it in its list do not run."""

    pre_install: Commands
    """Run before the install; a failure skips the install and fails the job."""
    post_install: Commands
    """Run after the install, before a reboot; a failure fails the job (and no reboot
    follows)."""
    on_exit: Commands
    """Run at the end of every Install job, whatever happened before (after the reboot when
    there is one); a failure fails the job."""


class CommandCheck(HookCommand):
    """A health check run on the machine by the agent; healthy when it exits 0."""

    timeout_seconds: int = Field(default=30, ge=1, le=600, strict=True)
    """Seconds (1-600) before the command is killed (an unhealthy attempt)."""


class HttpCheck(Model):
    """A health check the controller makes: an HTTP(S) GET, healthy on the expected status."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    """http:// or https:// URL; {host} stands for the instance's address (an SSH connection's
    host, 127.0.0.1 for a local one), for example https://{host}:8443/healthz."""
    expected_status: int = Field(default=200, ge=100, le=599, strict=True)
    """The HTTP status a healthy answer has (redirects are not followed)."""
    timeout_seconds: int = Field(default=10, ge=1, le=300, strict=True)
    """Seconds (1-300) for the whole request."""
    insecure_skip_tls_verify: bool = False
    """Accept any certificate (https). Off by default: the certificate is verified against the
    controller's trust store."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)


def check_url(value: str) -> str:
    """``value`` if it is an http(s) URL whose only placeholder is {host}, else ValueError."""
    _no_control(value)
    if not re.match(r"^https?://", value):
        raise ValueError("must start with http:// or https://")
    rest = value.replace(HOST, "host.invalid")
    if "{" in rest or "}" in rest:
        raise ValueError("the only placeholder is {host} (the instance's address)")
    try:
        parts = urlsplit(rest)
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("names no host: write http://{host}/path or a host name")
    if "@" in parts.netloc:
        raise ValueError(
            "must not carry credentials: the configuration repository is readable by "
            "everyone who can commit to it"
        )
    return value


class HealthCheck(Model):
    """A check run after the install and again after a reboot; healthy on any attempt, else the
    job fails with the last attempt's output (consuming the window's maxErrors)."""

    name: Annotated[str, StringConstraints(pattern=_CHECK_NAME)]
    """1-63 letters, digits, '_', '-' or '.'; unique in the task."""
    command: CommandCheck | None = None
    """Run this command on the machine (give command or http)."""
    http: HttpCheck | None = None
    """GET this URL from the controller (give command or http)."""
    retries: int = Field(default=0, ge=0, le=20, strict=True)
    """Attempts after the first before the check fails (0-20)."""
    interval_seconds: int = Field(default=10, ge=1, le=600, strict=True)
    """Seconds (1-600) between attempts."""

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if (self.command is None) == (self.http is None):
            raise ValueError("give exactly one of command (on the machine) or http (a GET)")
        return self


# -- what the agent reports --------------------------------------------------------------------


class CommandRun(Model):
    """One command the agent ran for a hook or a check: its exit code and the kept end of its
    output (the agent keeps the last 4 KiB of each stream and says how much it cut)."""

    argv: list[str]
    exit_code: int
    """0 on success; 124 when it timed out and was killed; 126/127 when it could not start."""
    timed_out: bool = False
    seconds: float = 0.0
    stdout: str = ""
    stdout_cut_bytes: int = 0
    """Bytes of stdout before the kept end that were dropped."""
    stderr: str = ""
    stderr_cut_bytes: int = 0


class StageRun(Model):
    """A stage's commands as the agent ran them, in order, up to the first that failed."""

    stage: str
    ok: bool
    commands: list[CommandRun]
