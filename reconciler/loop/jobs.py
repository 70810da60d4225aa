"""Stage: loop, steps ``dispatch`` and ``record`` for one job: claim an action (exactly once),
run it on its machine's transport, record the scan and the job's result with its provenance.

Touches transports and the store's jobs and scans; decides nothing (the plan did) beyond
checking, as it claims a window's job, that the opening still takes new jobs (a job queued for a
worker past the cutoff never starts); may not read the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from reconciler.api.enums import JobStatus, Operation
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.api.resources import ManagedInstance, WindowTask
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch import AgentFailed
from reconciler.dispatch.base import (
    BaselineSource,
    InstallRequest,
    Transport,
    baseline_sources,
)
from reconciler.dispatch.outcomes import (
    after_install,
    assumed_installed,
    install_failed,
    pins_for,
)
from reconciler.evaluation import InstanceEvaluation, declared_holds, evaluate, resolve
from reconciler.loop.common import Clock, Emitter, InForce, Log, TransportFor
from reconciler.loop.executions import WindowExecutions
from reconciler.loop.failures import failure_output, job_error
from reconciler.loop.hooks import JobHooks, Wait, task_of
from reconciler.loop.oneoffs import OneOffOpenings, is_one_off
from reconciler.loop.reboots import (
    RebootJob,
    Reboots,
    RebootSettings,
    RebootStopped,
    awaited,
    not_back,
    pending_reboot_outcome,
    reboot_only,
    resumed_hooks,
    resumed_outcome,
    with_awaited,
)
from reconciler.plan import INSTALL, Action, baseline_digest
from reconciler.report.notify.occurrences import Kind
from reconciler.schedule import open_openings
from reconciler.state import JobPhase, JobRecord, StateBackend, StoreWriteFailed

JobDone = Callable[[JobRecord], None]
Result = tuple[JobStatus, dict[str, Any]]
"""A job's status and its result document."""


@dataclass(frozen=True)
class Resumption:
    """A job left running in a phase (``rebooting``) by an earlier run, and its action."""

    job: JobRecord
    phase: JobPhase
    action: Action


_GONE = (
    "{} is no longer in the configuration in force: its reboot was not awaited and nothing "
    "was rescanned"
)


@dataclass(frozen=True)
class Claimed:
    """An action this process owns, with what it runs against."""

    action: Action
    job: JobRecord
    instance: ManagedInstance
    revision: str
    started: datetime
    log: Log


class JobRunner:
    """Runs actions on transports, one call per action, from any worker thread."""

    def __init__(
        self,
        store: StateBackend,
        in_force: InForce,
        transport_for: TransportFor,
        executions: WindowExecutions,
        *,
        clock: Clock,
        log: Log,
        emit: Emitter,
        on_job_done: JobDone | None = None,
        wait: Wait = time.sleep,
        one_offs: OneOffOpenings | None = None,
        reboot_settings: RebootSettings = RebootSettings(),  # noqa: B008 - frozen value
    ) -> None:
        """``on_job_done`` is called with each finished job (the CLI's progress); ``wait``
        waits between a health check's attempts and between reads of a rebooting machine's
        boot id; ``one_offs`` keeps the one-off openings' statuses (patch now);
        ``reboot_settings`` bound the wait for an SSH machine's reboot (docs/reboots.md)."""
        self.store, self.in_force, self.transport_for = store, in_force, transport_for
        self.executions, self.clock, self.log, self.emit = executions, clock, log, emit
        self.on_job_done, self.wait = on_job_done, wait
        self.one_offs = one_offs or OneOffOpenings(store, clock, emit)
        self.reboots = Reboots(store, clock, wait, reboot_settings)

    def execute(self, action: Action) -> JobRecord | None:
        """Run one action: claim it (exactly once), run it on the machine, record the result."""
        claimed = self._claim(action)
        if claimed is None:
            return None  # another pass or process already owns this key
        return self._complete(claimed, lambda: self._run(claimed))

    def resumable(self) -> list[Resumption]:
        """Jobs a stopped or killed run left waiting for their machine's reboot (running, in
        phase ``rebooting``): this process finishes them (:meth:`resume`)."""
        return [
            Resumption(job, phase, action_of(job.payload))
            for job, phase in self.store.rebooting_jobs()
        ]

    def resume(self, resumption: Resumption) -> JobRecord | None:
        """Finish a job left waiting for its machine's reboot: wait for the new boot id (or see
        it has changed already), rescan, record, finish; never install again."""
        claimed = self._reclaim(resumption)
        if claimed is None:
            return None
        claimed.log.info("job resumed", phase=resumption.phase.phase)

        def run() -> Result:
            transport = self.transport_for(claimed.instance)
            hooks = self._hooks(claimed, transport)
            hooks.restore(resumed_hooks(resumption.phase))
            job = self._reboot_job(claimed, hooks)
            installed = resumed_outcome(resumption.phase)
            try:
                back = self.reboots.wait(job, transport, resumption.phase, asked=False)
            except AgentFailed as exc:
                return self._not_back(claimed, transport, hooks, installed, exc)
            return self._exit(claimed, transport, hooks, with_awaited(installed, back))

        return self._complete(claimed, run)

    def _reclaim(self, resumption: Resumption) -> Claimed | None:
        job, action = resumption.job, resumption.action
        snapshot, revision = self.in_force.snapshot, self.in_force.revision
        if snapshot is None or revision is None:
            return None  # no revision in force yet: a later pass resumes it
        log = self.log.bind(
            instance=job.instance, revision=revision, job=job.id, operation=job.operation
        )
        instance = snapshot.instances.get(job.instance)
        if instance is None:
            claimed = Claimed(action, job, _unknown(job.instance), revision, job.created_at, log)
            error = {"code": "InstanceGone", "message": _GONE.format(job.instance)}
            self._finish(claimed, JobStatus.FAILED, {"error": error})
            return None
        return Claimed(action, job, instance, revision, job.created_at, log)

    def _complete(self, claimed: Claimed, run: Callable[[], Result]) -> JobRecord | None:
        try:
            status, result = run()
        except RebootStopped:  # the loop stops: the job stays running in phase rebooting
            claimed.log.info("job left waiting for its reboot; the next start resumes it")
            return None
        except AgentFailed as exc:  # the agent (or the loop) refused: the job fails with its code
            status, result = JobStatus.FAILED, {"error": job_error(exc)}
        except StoreWriteFailed:  # cannot be recorded now: the job stays running in the store,
            raise  # and the service abandons it once writes succeed (the machine is rescanned)
        except Exception as exc:  # a bug: a job must always finish, and the loop goes on
            claimed.log.exception("job crashed")
            status, result = JobStatus.FAILED, {"error": job_error(exc)}
        return self._finish(claimed, status, result)

    def _claim(self, action: Action) -> Claimed | None:
        snapshot, revision = self.in_force.snapshot, self.in_force.revision
        assert snapshot is not None and revision is not None
        instance = snapshot.instances[action.instance]
        now = self.clock()
        if not _may_start(snapshot, action, now):
            # Planned before the cutoff, but its worker was free only after it (queued behind
            # other jobs): it never starts, whatever the task's cutoffBehavior.
            self.log.info(
                "job not started: its window opening is past its cutoff",
                instance=action.instance,
                window=action.window,
                opening=action.opening,
            )
            return None
        if is_one_off(action) and not self.one_offs.may_start(action, now):
            # Cancelled or expired after it was planned: a job not started never starts.
            self.log.info("job not started: its one-off opening ended", opening=action.opening)
            return None
        job = self.store.claim_job(
            key=action.key,
            instance=action.instance,
            operation=action.operation,
            window=action.window,
            task=action.task,
            opening=action.opening,
            revision=revision,
            payload=asdict(action),
            now=now,
        )
        if job is None:
            return None
        if action.window and action.opening:
            self.executions.started(action.window, action.opening)
        elif is_one_off(action):
            self.one_offs.started(action.opening or "")
        log = self.log.bind(
            instance=action.instance, revision=revision, job=job.id, operation=action.operation
        )
        claimed = Claimed(action, job, instance, revision, now, log)
        self._announce(claimed)
        return claimed

    def _announce(self, claimed: Claimed) -> None:
        action = claimed.action
        claimed.log.info(
            "job started", reason=action.reason, window=action.window, pins=len(action.pins)
        )
        self.emit(
            Kind.JOB_DISPATCHED,
            instance=action.instance,
            job=claimed.job.id,
            operation=action.operation,
            reason=action.reason,
            window=action.window,
            task=action.task,
            opening=action.opening,
            pins=list(action.pins),
        )

    def _run(self, claimed: Claimed) -> Result:
        if self.in_force.snapshot is not None:
            # A one-off job's hooks must still be its window task's: refused before it runs.
            self.one_offs.task_for(claimed.action, self.in_force.snapshot)
        transport = self.transport_for(claimed.instance)
        if claimed.action.operation == INSTALL:
            return self._install(claimed, transport)
        return self._scan(claimed, transport)

    def _finish(self, claimed: Claimed, status: JobStatus, result: dict[str, Any]) -> JobRecord:
        action, job = claimed.action, claimed.job
        finished = self.store.finish_job(job.id, status=status, result=result, now=self.clock())
        claimed.log.info("job finished", status=status, error=result.get("error"))
        failed = status == JobStatus.FAILED
        retry_of = self._earlier_failure(action, job.id) if failed else None
        # Emitted before the execution changes: a machine's failure is told before the window's
        # FAILED it causes.
        self.emit(
            Kind.JOB_FINISHED,
            instance=action.instance,
            job=job.id,
            operation=action.operation,
            status=status,
            window=action.window,
            error=result.get("error"),
            seconds=(finished.finished_at - finished.created_at).total_seconds()
            if finished.finished_at
            else None,
            **({"output": failure_output(result)} if failed else {}),
            **({"retryOf": retry_of} if retry_of else {}),
        )
        if action.window and action.opening:
            if failed:
                self.executions.failed(action.window, action.opening)
            self.executions.finished(
                action.window, action.opening, finished.finished_at or self.clock()
            )
        if self.on_job_done is not None:
            self.on_job_done(finished)
        return finished

    def _earlier_failure(self, action: Action, job_id: str) -> str | None:
        """The first failed job of this machine's operation in this opening, when this one is
        a further attempt (the plan retries an install whose rescan left other pins): it is
        audited, but only the first failure is announced (``Occurrence.transition``)."""
        if not action.opening:
            return None
        where = {"instance": action.instance, "window": action.window, "opening": action.opening}
        earlier = self.store.jobs(status=JobStatus.FAILED, **where)
        return next(
            (j.id for j in earlier if j.id != job_id and j.operation == action.operation), None
        )

    def _scan(self, claimed: Claimed, transport: Transport) -> Result:
        name = claimed.instance.metadata.name
        sources = self._sources(claimed)
        inventory = transport.scan(instance_id=name, refresh=True, sources=sources)
        evaluation = self._record(claimed, inventory, Operation.SCAN)
        return JobStatus.SUCCEEDED, {"summary": evaluation.summary.to_dict()}

    def _task(self, action: Action) -> WindowTask | None:
        """The task a job runs for: a one-off opening's stored one (patch now), else its
        window's in the snapshot in force."""
        snapshot = self.in_force.snapshot
        if is_one_off(action) and snapshot is not None:
            return self.one_offs.task_for(action, snapshot)
        return task_of(snapshot, action)

    def _install(self, claimed: Claimed, transport: Transport) -> Result:
        hooks = self._hooks(claimed, transport)
        try:
            hooks.refuse_unsupported()
            if reboot_only(claimed.action):
                outcome = pending_reboot_outcome(claimed.action.reason)
            else:
                outcome = self._install_patches(claimed, transport, hooks)
        except AgentFailed as exc:  # the install did not run (a failed preInstall) or broke
            return _failed(hooks, exc)
        hooks.after_install()
        try:
            rebooted = self.reboots.after_install(
                self._reboot_job(claimed, hooks), self.in_force.snapshot, transport, outcome
            )
        except AgentFailed as exc:  # no boot id, or the machine did not come back in time
            return self._not_back(claimed, transport, hooks, outcome, exc)
        return self._exit(claimed, transport, hooks, rebooted)

    def _not_back(
        self,
        claimed: Claimed,
        transport: Transport,
        hooks: JobHooks,
        outcome: InstallResult,
        exc: AgentFailed,
    ) -> Result:
        """The install ran but its reboot failed or was not seen: the job fails with that
        error and keeps the install's outcome; what was installed is recorded, pending the
        reboot (from a rescan when the machine answers, else from the outcome itself)."""
        hooks.at_exit(rebooted=False)
        outcome = not_back(outcome, exc)
        try:
            _, result = self._rescan_after_install(
                claimed, transport, outcome, self._sources(claimed)
            )
        except AgentFailed as unreached:
            claimed.log.warning("no rescan after the reboot failed", error=unreached.message)
            result = self._assume_installed(claimed, outcome)
        _, result = hooks.result({**result, "error": job_error(exc)})
        return JobStatus.FAILED, result

    def _exit(
        self, claimed: Claimed, transport: Transport, hooks: JobHooks, outcome: InstallResult
    ) -> Result:
        """After the install and its reboot: the health checks again when the machine rebooted,
        onExit, then the rescan that records the install."""
        hooks.at_exit(rebooted=awaited(outcome))
        sources = self._sources(claimed)
        status, result = self._rescan_after_install(claimed, transport, outcome, sources)
        failed, result = hooks.result(result)
        return (JobStatus.FAILED if failed else status), result

    def _hooks(self, claimed: Claimed, transport: Transport) -> JobHooks:
        task = self._task(claimed.action)
        return JobHooks(
            task, claimed.instance, transport, job=claimed.job.id, emit=self.emit, wait=self.wait
        )

    def _install_patches(
        self, claimed: Claimed, transport: Transport, hooks: JobHooks
    ) -> InstallResult:
        action = claimed.action
        # A node's transport drains it, lets its agent reboot it and waits for it to come back;
        # an SSH machine is rebooted by the loop (reboots.py); this host (local) never reboots
        # under the loop.
        allow_reboot = (
            claimed.instance.spec.connection.type == "kubernetes"
            and action.reboot_option == "RebootIfNeeded"
        )
        outcome = transport.install(
            InstallRequest(
                action.pins,
                blocked=action.blocked,
                holds=self._holds(claimed),
                reboot_option=action.reboot_option,
                allow_reboot=allow_reboot,
                sources=self._sources(claimed),
                pre_install=hooks.pre_install,
                post_install=hooks.post_install,
            )
        )
        hooks.installed(outcome)
        return outcome

    def _rescan_after_install(
        self,
        claimed: Claimed,
        transport: Transport,
        outcome: InstallResult,
        sources: tuple[BaselineSource, ...],
    ) -> Result:
        """Rescan, then record the install's outcome (after the reboot, when there was one)."""
        name = claimed.instance.metadata.name
        rescanned = transport.scan(instance_id=name, refresh=False, sources=sources)
        status = JobStatus.FAILED if install_failed(outcome) else JobStatus.SUCCEEDED
        return status, self._record_install(claimed, rescanned, outcome)

    def _assume_installed(self, claimed: Claimed, outcome: InstallResult) -> dict[str, Any]:
        """For a machine that cannot be rescanned: its last scan with the outcome applied."""
        before = self.store.latest_scan(claimed.instance.metadata.name)
        if before is None or not outcome.changed:  # nothing new to record (a reboot-only job)
            return {"install": outcome.stored()}
        last = Inventory.model_validate(before.inventory)
        return self._record_install(
            claimed, assumed_installed(last, outcome, self.clock()), outcome
        )

    def _record_install(
        self, claimed: Claimed, inventory: Inventory, outcome: InstallResult
    ) -> dict[str, Any]:
        """Record ``inventory`` as the install's scan; the job result's install and summary."""
        name = claimed.instance.metadata.name
        before = self.store.latest_scan(name)
        arch = {
            (p["name"], p["version"]): p.get("arch", "") for p in (before.patches if before else [])
        }
        evaluation = self._record(
            claimed, after_install(inventory, outcome, arch), Operation.INSTALL
        )
        self._report_install(name, claimed.job.id, outcome)
        return {"install": outcome.stored(), "summary": evaluation.summary.to_dict()}

    def _reboot_job(self, claimed: Claimed, hooks: JobHooks) -> RebootJob:
        return RebootJob(
            claimed.job.id, claimed.instance, claimed.action, claimed.log, hooks.kept()
        )

    def _report_install(self, instance: str, job: str, outcome: InstallResult) -> None:
        stored = outcome.stored()
        if outcome.changed:
            self.emit(
                Kind.PATCHES_INSTALLED,
                instance=instance,
                job=job,
                patches=stored["patches"] or [],
                dependencies=stored["dependencies"] or [],
            )
        if outcome.reboot is not None and outcome.reboot.required:
            self.emit(Kind.REBOOT, instance=instance, job=job, **outcome.reboot.document())

    def _sources(self, claimed: Claimed) -> tuple[BaselineSource, ...]:
        snapshot = self.in_force.snapshot
        labels = claimed.instance.metadata.labels
        return baseline_sources(snapshot, labels) if snapshot is not None else ()

    def _holds(self, claimed: Claimed) -> tuple[str, ...]:
        """The hold patterns the instance's patch group and the instance itself declare."""
        snapshot, instance = self.in_force.snapshot, claimed.instance
        groups = snapshot.groups_of(instance.metadata.labels) if snapshot is not None else []
        holds = declared_holds(groups[0] if groups else None, instance)
        return tuple(dict.fromkeys(hold.pattern for hold in holds))

    def _record(
        self, claimed: Claimed, inventory: Inventory, operation: Operation
    ) -> InstanceEvaluation:
        snapshot, instance = self.in_force.snapshot, claimed.instance
        assert snapshot is not None
        resolution = resolve(snapshot, instance.metadata.labels, inventory.facts.operating_system)
        if resolution.baseline is None:
            raise AgentFailed("NoBaseline", resolution.baseline_reason)
        group = resolution.group.metadata.name if resolution.group else None
        inventory = inventory.model_copy(update={"operation": operation})
        now = self.clock()
        if resolution.baseline.spec.approve_after_days_from is not None:
            inventory = self.store.with_first_seen(inventory, now)
        holds = declared_holds(resolution.group, instance)
        result = evaluate(resolution.baseline, inventory, now, patch_group=group, holds=holds)
        evaluation = result.to_dict()
        evaluation["pins"] = list(pins_for(result, inventory.facts.arch))
        previous = self.store.latest_scan(instance.metadata.name)
        self.store.record_scan(
            instance=instance.metadata.name,
            operation=operation,
            revision=claimed.revision,
            baseline=resolution.baseline.metadata.name,
            baseline_hash=baseline_digest(resolution.baseline),
            job_id=claimed.job.id,
            started_at=claimed.started,
            finished_at=now,
            inventory=inventory.model_dump(mode="json", by_alias=True),
            evaluation=evaluation,
        )
        before = previous.compliance_status if previous else None
        summary = evaluation["summary"]
        if summary.get("complianceStatus") != before:
            self.emit(
                Kind.COMPLIANCE_CHANGED,
                instance=instance.metadata.name,
                job=claimed.job.id,
                status=summary.get("complianceStatus"),
                previous=before,
                group=group,
                baseline=resolution.baseline.metadata.name,
                operation=str(operation),
                summary=summary,
            )
        return result


def _failed(hooks: JobHooks, exc: AgentFailed) -> Result:
    """A job that failed before its rescan: what the hooks ran, then onExit (which always
    runs), and the failure."""
    hooks.install_failed(exc)
    hooks.at_exit(rebooted=False)
    _, result = hooks.result({"error": job_error(exc)})
    return JobStatus.FAILED, result


def action_of(payload: dict[str, Any]) -> Action:
    """The action a job was claimed for, from its stored payload (``asdict(action)``)."""
    fields = {**payload, "operation": Operation(payload["operation"])}
    fields.update(
        pins=tuple(payload.get("pins") or ()), blocked=tuple(payload.get("blocked") or ())
    )
    return Action(**fields)


def _unknown(name: str) -> ManagedInstance:
    """A stand-in for an instance no longer configured, to name it in the job's record."""
    return ManagedInstance.model_validate(
        {
            "apiVersion": "patchwarden.io/v1alpha1",
            "kind": "ManagedInstance",
            "metadata": {"name": name},
            "spec": {"connection": {"type": "local"}},
        }
    )


def _may_start(snapshot: Snapshot, action: Action, now: datetime) -> bool:
    """Whether a window's job may still start at ``now``: its opening is open and before its
    cutoff (a job outside any window always may)."""
    window = snapshot.windows.get(action.window) if action.window else None
    if window is None:
        return True
    return any(
        opening.id == action.opening and opening.accepts_new_tasks(now)
        for opening in open_openings(window.spec, now)
    )
