"""Stage: loop, step ``dispatch`` of an Install job: its window task's hooks and health checks
(docs/hooks.md), as SSM's AWS-RunPatchBaselineWithHooks orders them. The agent runs preInstall
and postInstall inside its install (:class:`InstallRequest`); this module runs the health checks
after the install, and :meth:`JobHooks.at_exit` the checks after a reboot and onExit, and keeps
what each did for the job's result (``hooks``) and the audit log (``job.hook``).

Touches the job's transport and the HTTP check edge; decides nothing beyond the task's own words
(a failed step fails the job); may not touch the store or the source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.api.hooks import CommandRun, HealthCheck, HookCommand, StageRun
from reconciler.api.install import InstallResult
from reconciler.api.resources import (
    KubernetesConnection,
    LocalConnection,
    ManagedInstance,
    WindowTask,
)
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch import AgentFailed
from reconciler.dispatch.base import Transport
from reconciler.dispatch.httpcheck import HttpAttempt, http_get
from reconciler.loop.common import Emitter
from reconciler.plan import Action
from reconciler.report.notify.occurrences import Kind

Wait = Callable[[float], object]
"""Waits the given seconds between a check's attempts (the loop's stop event in production)."""
HttpGet = Callable[..., HttpAttempt]
Entry = dict[str, Any]
"""What one stage or check did, as the job's result and the audit log keep it."""

_FAILED = {
    "preInstall": "PreInstallFailed",
    "postInstall": "PostInstallFailed",
    "onExit": "OnExitFailed",
    "healthCheck": "HealthCheckFailed",
}


def task_of(snapshot: Snapshot | None, action: Action) -> WindowTask | None:
    """The window task an action runs for (None outside a window)."""
    window = snapshot.windows.get(action.window) if snapshot and action.window else None
    tasks = window.spec.tasks if window else []
    return next((task for task in tasks if task.name == action.task), None)


def address_of(instance: ManagedInstance) -> str:
    """What an HTTP check's ``{host}`` stands for: where the controller reaches the machine."""
    connection = instance.spec.connection
    if isinstance(connection, LocalConnection):
        return "127.0.0.1"
    if isinstance(connection, KubernetesConnection):
        return connection.node
    return connection.host


class JobHooks:
    """One Install job's hooks and checks: what ran, and the first failure (the job's error)."""

    def __init__(
        self,
        task: WindowTask | None,
        instance: ManagedInstance,
        transport: Transport,
        *,
        job: str,
        emit: Emitter,
        wait: Wait,
        http: HttpGet = http_get,
    ) -> None:
        self.hooks = task.hooks if task else None
        self.checks = tuple(task.health_checks) if task else ()
        self.instance, self.transport, self.job = instance, transport, job
        self.emit, self.wait, self.http = emit, wait, http
        self.entries: list[Entry] = []
        self.error: dict[str, str] | None = None

    @property
    def pre_install(self) -> tuple[HookCommand, ...]:
        """What the agent runs before the install (InstallRequest.pre_install)."""
        return tuple(self.hooks.pre_install) if self.hooks else ()

    @property
    def post_install(self) -> tuple[HookCommand, ...]:
        """What the agent runs after the install, before its reboot."""
        return tuple(self.hooks.post_install) if self.hooks else ()

    def refuse_unsupported(self) -> None:
        """AgentFailed before anything runs when the machine's transport cannot run the task's
        commands (a Kubernetes node): never installed and then left unchecked."""
        commands = self.hooks is not None or any(c.command for c in self.checks)
        connection = self.instance.spec.connection
        if commands and isinstance(connection, KubernetesConnection):
            raise AgentFailed(
                "HooksUnsupported",
                f"node {connection.node}: hooks and command health checks do not run on "
                "Kubernetes nodes yet; use http health checks, or remove them from the task",
            )

    def installed(self, outcome: InstallResult) -> None:
        """Keep the preInstall and postInstall stages the agent ran inside the install."""
        for stage in outcome.document().get("hooks") or []:
            self._stage(StageRun.model_validate(stage))

    def install_failed(self, exc: AgentFailed) -> None:
        """Keep the stages an install that failed reports (a failed preInstall's output)."""
        for stage in exc.details.get("hooks") or []:
            try:
                self._stage(StageRun.model_validate(stage))
            except ValueError:  # the error itself is what the job reports
                continue

    def after_install(self) -> None:
        """The health checks, once the install is done (before any reboot)."""
        for check in self.checks:
            self._check(check, "install")

    def at_exit(self, *, rebooted: bool) -> None:
        """The end of the job, after the reboot when there was one: the health checks again
        (when the machine ``rebooted``), then onExit, which always runs."""
        if rebooted:
            for check in self.checks:
                self._check(check, "reboot")
        if self.hooks and self.hooks.on_exit:
            try:
                self._stage(self.transport.run_stage("onExit", self.hooks.on_exit))
            except AgentFailed as exc:
                self._fail("onExit", f"onExit could not run: {exc.code}: {exc.message}")

    def result(self, result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """The job's result with ``hooks`` (when any ran) and, when a step failed and the job
        had no error yet, that step's; and whether a step failed."""
        if self.entries:
            result = {**result, "hooks": self.entries}
        if self.error is not None and "error" not in result:
            result = {**result, "error": self.error}
        return self.error is not None, result

    def kept(self) -> dict[str, Any]:
        """What ran so far and the first failure, to keep with a job's phase (a reboot a
        restart may resume): :meth:`restore` puts them back."""
        return {"entries": list(self.entries), "error": self.error}

    def restore(self, kept: Mapping[str, Any]) -> None:
        """Continue from what :meth:`kept` said (a resumed job), without announcing it again."""
        self.entries = [dict(entry) for entry in kept.get("entries") or []]
        error = kept.get("error")
        self.error = dict(error) if isinstance(error, Mapping) else None

    # -- each step ---------------------------------------------------------------------------

    def _stage(self, run: StageRun) -> None:
        entry = {"stage": run.stage, "ok": run.ok, "commands": _commands(run.commands)}
        self._keep(entry)
        if not run.ok:
            self._fail(run.stage, failure_line(run.stage, run.commands[-1]))

    def _check(self, check: HealthCheck, after: str) -> None:
        attempts = 0
        for attempt in range(check.retries + 1):
            if attempt:
                self.wait(check.interval_seconds)
            attempts += 1
            ok, output, line = self._attempt(check)
            if ok:
                break
        entry = {"stage": "healthCheck", "name": check.name, "after": after, "ok": ok}
        self._keep({**entry, "attempts": attempts, **output})
        if not ok:
            self._fail("healthCheck", f"health check {check.name} after the {after}: {line}")

    def _attempt(self, check: HealthCheck) -> tuple[bool, Entry, str]:
        """One attempt: healthy or not, what to keep, and one line saying why not."""
        if check.http is not None:
            got = self.http(check.http, address_of(self.instance))
            ok = got.status == check.http.expected_status
            said = got.error or f"HTTP {got.status}, expected {check.http.expected_status}"
            return ok, {"http": got.document()}, f"GET {got.url}: {said}"
        assert check.command is not None  # the schema: exactly one of command, http
        try:
            run = self.transport.run_stage("healthCheck", [check.command])
        except AgentFailed as exc:
            return False, {"error": f"{exc.code}: {exc.message}"}, f"{exc.code}: {exc.message}"
        (command,) = run.commands
        return run.ok, {"command": _commands(run.commands)[0]}, failure_line("", command)

    def _keep(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.emit(Kind.HOOK_RAN, instance=self.instance.metadata.name, job=self.job, **entry)

    def _fail(self, stage: str, message: str) -> None:
        if self.error is None:
            self.error = {"code": _FAILED[stage], "message": message}


def _commands(runs: list[CommandRun]) -> list[Entry]:
    return [run.model_dump(mode="json", by_alias=True) for run in runs]


def failure_line(stage: str, run: CommandRun) -> str:
    """One line: the command, how it ended, and the last line it printed."""
    said = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
    how = "timed out" if run.timed_out else f"exited {run.exit_code}"
    what = f"{stage} command" if stage else "command"
    return f"{what} {' '.join(run.argv)} {how}: {said[0]}"
