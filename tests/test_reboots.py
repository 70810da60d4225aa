"""Reboots the loop does and waits for (issue 14 item 3, docs/reboots.md): the planner's part
(pure), and the job's phases through the real Reconciler and SQLite store, on a scripted SSH
machine whose boot id changes when it reboots and which refuses connections while it is down.
No sleep: the loop's pause between polls is the test's, and moves the test's clock.

The same on real machines over real SSH (the multi-host fleet) is in tests/test_fleet_reboots.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import JobStatus
from reconciler.api.hooks import HookCommand, StageRun
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.api.resources import ManagedInstance
from reconciler.dispatch.base import AgentFailed, BaselineSource, InstallRequest, boot_id_of
from reconciler.loop import Reconciler
from reconciler.loop.reboots import RebootSettings
from reconciler.plan import Observed, ObservedJob, ObservedScan, baseline_digest, plan
from reconciler.report.notify.audit import describe
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.factories import inventory
from tests.fleet import BASELINE, BASELINE_YAML, ManualClock, documents, window_yaml

IN_WINDOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
OPENING = "2026-11-28T12:00:00Z"
WINDOW_END = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)  # cron noon, 4 h, cutoff 1 h (15:00)
OLD, NEW = "1.0-1", "1.0-2"


def ssh_instance(name: str, root: str | None = None) -> str:
    where = f", root: {root}" if root else ""
    return f"""\
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {{name: {name}, labels: {{fleet: e2e}}}}
spec: {{connection: {{type: ssh, host: 192.0.2.10, user: root{where}}}}}
"""


@dataclass
class Machine:
    """A scripted machine reached over SSH: one package with a security update whose install
    asks for a reboot; a reboot takes it down for ``down_for`` boot-id reads (each refused like
    a closed port), then it answers with a new boot id and no reboot pending."""

    version: str = OLD
    pending: bool = False
    boot: int = 1
    down: int = 0
    down_for: int = 2
    comes_back: bool = True
    drops_when_asked: bool = False
    """The connection drops as the reboot is asked for (sshd stopped before the answer left)."""
    installs: list[tuple[str, ...]] = field(default_factory=list)
    reboots: list[str] = field(default_factory=list)
    stages: list[tuple[str, int]] = field(default_factory=list)
    on_read: Callable[[], None] = lambda: None
    package: str = "pwtest-lib"
    operating_system: str = "DEBIAN"
    notice: dict[str, Any] = field(
        default_factory=lambda: {"priority": "optional", "security": True}
    )
    """What the package's update says besides its versions (an RPM machine: its CVEs)."""

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: tuple[BaselineSource, ...] = (),
    ) -> Inventory:
        self._up()
        package = {"name": self.package, **self.notice}
        updates = (
            [] if self.version == NEW else [{**package, "version": NEW, "installedVersion": OLD}]
        )
        return inventory(
            self.operating_system,
            [{**package, "version": self.version}],
            updates,
            rebootRequired=self.pending,
            rebootRequiredPackages=[self.package] if self.pending else [],
        )

    def install(self, request: InstallRequest) -> InstallResult:
        self._up()
        assert not request.allow_reboot, "the loop, not the agent, reboots an SSH machine"
        self.installs.append(request.pins)
        self.version, self.pending = NEW, True
        patch = {"name": self.package, "version": NEW, "result": "INSTALLED", "changed": True}
        reboot = {"required": True, "performed": False, "why": self.package, "reason": "..."}
        return InstallResult.model_validate({"changed": True, "patches": [patch], "reboot": reboot})

    def run_stage(self, stage: str, commands: Sequence[HookCommand]) -> StageRun:
        """A hook stage or a command health check: ok, and which boot it ran in."""
        self._up()
        self.stages.append((stage, self.boot))
        runs = [{"argv": list(c.argv), "exitCode": 0} for c in commands]
        return StageRun.model_validate({"stage": stage, "ok": True, "commands": runs})

    def boot_id(self) -> str:
        self.on_read()
        self._up()
        return f"boot-{self.boot}"

    def reboot(self, if_boot_id: str) -> bool:
        self._up()
        if if_boot_id != f"boot-{self.boot}":
            return False
        self.reboots.append(if_boot_id)
        self.down = self.down_for if self.comes_back else 10**9
        if self.drops_when_asked:
            raise AgentFailed("SshUnreachable", "connection lost while the agent ran")
        return True

    def _up(self) -> None:
        if self.down:
            self.down -= 1
            if not self.down:  # back from the reboot
                self.boot, self.pending = self.boot + 1, False
            raise AgentFailed("SshUnreachable", "root@192.0.2.10:22: Connection refused")


class Fleet:
    """A Reconciler on a directory of resources and a real store, over scripted machines."""

    def __init__(self, tmp_path: Path, machines: dict[str, Machine], *docs: str) -> None:
        self.config = tmp_path / "config"
        self.config.mkdir(exist_ok=True)
        self.config.joinpath("fleet.yaml").write_text(documents(BASELINE_YAML, *docs))
        self.machines, self.path = machines, tmp_path / "state.db"
        self.clock = ManualClock(IN_WINDOW)
        self.occurrences: list[Occurrence] = []
        self.pauses: list[float] = []
        self.stop_at_pause: int | None = None
        self.during_pause: Callable[[Reconciler], None] = lambda loop: None

    def loop(self, store: StateStore, workers: int = 10) -> Reconciler:
        def transport(instance: ManagedInstance) -> Machine:
            return self.machines[instance.metadata.name]

        def pause(seconds: float) -> bool:
            self.pauses.append(seconds)
            self.during_pause(reconciler)
            self.clock.advance_to(self.clock.now + timedelta(seconds=seconds))
            return self.stop_at_pause is not None and len(self.pauses) >= self.stop_at_pause

        reconciler = Reconciler(
            DirectorySource(self.config),
            store,
            transport,  # type: ignore[arg-type,return-value]
            clock=self.clock,
            workers=workers,
            observers=[self.occurrences.append],
            reboot_settings=RebootSettings(timeout=timedelta(minutes=10), poll=30.0),
            wait=pause,
        )
        return reconciler

    def reboot_events(self) -> list[dict[str, Any]]:
        return [o.detail for o in self.occurrences if o.kind is Kind.REBOOT]


def _one(tmp_path: Path, machine: Machine, **window: Any) -> Fleet:
    """web-1 (``machine``) in the noon window."""
    return Fleet(
        tmp_path,
        {"web-1": machine},
        window_yaml("noon", "cron(0 12 * * ? *)", **window),
        ssh_instance("web-1"),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state.db") as opened:
        yield opened


def _install(store: StateStore, instance: str) -> Any:
    return next(j for j in store.jobs(instance=instance) if j.operation == "Install")


# --- the job: install, reboot, wait, rescan ---------------------------------------------------


def test_the_loop_reboots_after_the_install_holds_the_slot_and_rescans_after_the_new_boot(
    tmp_path: Path, store: StateStore
) -> None:
    machines = {"web-1": Machine(), "web-2": Machine()}
    fleet = Fleet(
        tmp_path,
        machines,
        window_yaml("noon", "cron(0 12 * * ? *)", max_concurrency="1"),
        ssh_instance("web-1"),
        ssh_instance("web-2"),
    )
    seen: list[tuple[list[str], dict[str, str]]] = []

    def look(loop: Reconciler) -> None:
        rebooting = [job.instance for job, _ in store.rebooting_jobs()]
        current = loop.plan()
        assert current is not None
        seen.append((rebooting, {w.instance: w.reason for w in current.waits}))

    fleet.during_pause = look
    # One worker: web-2's scan is done before web-1's install runs, so what the plan says of
    # web-2 during web-1's reboot is about the slot, not a scan still running.
    summary = fleet.loop(store, workers=1).reconcile()

    assert summary.jobs == {"Scan succeeded": 2, "Install succeeded": 2}
    assert summary.converged
    # While web-1 rebooted, its job was running in phase rebooting, and the one slot of
    # maxConcurrency "1" stayed taken: web-2 waited for it.
    first_rebooting, waits = seen[0]
    assert first_rebooting == ["web-1"]
    assert waits["web-1"] == "a job is running on it"
    assert "maxConcurrency 1 of install-security reached" in waits["web-2"]
    for machine in machines.values():
        assert len(machine.installs) == 1 and machine.reboots == ["boot-1"]
        assert machine.boot == 2
    job = _install(store, "web-1")
    assert job.status == JobStatus.SUCCEEDED
    reboot = job.result["install"]["reboot"]
    assert reboot["performed"] and reboot["awaited"]
    assert (reboot["bootIdBefore"], reboot["bootId"]) == ("boot-1", "boot-2")
    assert reboot["reason"] == "reboot needed (pwtest-lib)"
    # The install's record was taken after the reboot: nothing left pending.
    latest = store.latest_scan("web-1")
    assert latest is not None and latest.job_id == job.id
    assert latest.compliance_status == "COMPLIANT"
    assert latest.count("installedPendingRebootCount") == 0
    assert [e["awaited"] for e in fleet.reboot_events()] == [True, True]
    assert fleet.reboot_events()[0]["seconds"] == 60.0  # down at two reads, 30 s apart
    # What the audit log and /metrics say of it.
    metrics = LoopMetrics()
    for occurrence in fleet.occurrences:
        metrics(occurrence)
    assert metrics.registry.get_sample_value("patchwarden_reboot_wait_seconds_count") == 2
    assert metrics.registry.get_sample_value("patchwarden_reboot_wait_seconds_sum") == 120
    entry = {"kind": Kind.REBOOT, "detail": fleet.reboot_events()[0]}
    assert describe(entry) == (
        "reboot required, performed and awaited (back after 60.0 s with a new boot id): "
        "reboot needed (pwtest-lib)"
    )


def test_a_machine_that_does_not_come_back_fails_its_job_which_counts_against_max_errors(
    tmp_path: Path, store: StateStore
) -> None:
    machines = {"web-1": Machine(comes_back=False), "web-2": Machine()}
    fleet = Fleet(
        tmp_path,
        machines,
        window_yaml("noon", "cron(0 12 * * ? *)", max_concurrency="1", max_errors="0"),
        ssh_instance("web-1"),
        ssh_instance("web-2"),
    )
    reconciler = fleet.loop(store)
    summary = reconciler.reconcile()

    job = _install(store, "web-1")
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error["code"] == "RebootTimeout"
    assert "did not come back with a new boot id within 600s" in job.error["message"]
    assert "SshUnreachable" in job.error["message"]  # the last thing the machine answered
    assert fleet.clock.now - job.created_at >= timedelta(minutes=10)
    # maxErrors 0: the failure halts the rollout; web-2 is not installed.
    assert machines["web-2"].installs == []
    waits = dict(summary.waits)
    assert "rollout halted: 1 failed job(s)" in waits["web-2"]


def test_a_job_whose_machine_did_not_come_back_keeps_what_it_installed_pending_the_reboot(
    tmp_path: Path, store: StateStore
) -> None:
    """RebootTimeout fails the job, but the install happened: its result keeps the install's
    outcome, and compliance shows the installed patch pending the reboot (the machine does not
    answer, so from the last scan with the outcome applied)."""
    fleet = _one(tmp_path, Machine(comes_back=False), max_errors="0")
    fleet.loop(store).reconcile()

    job = _install(store, "web-1")
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "RebootTimeout"
    assert [p["name"] for p in job.result["install"]["patches"]] == ["pwtest-lib"]
    assert job.result["install"]["reboot"]["performed"] is False
    assert job.result["install"]["reboot"]["reason"].startswith("RebootTimeout: web-1 did not")
    latest = store.latest_scan("web-1")
    assert latest is not None and latest.job_id == job.id and latest.operation == "Install"
    assert latest.count("installedPendingRebootCount") == 1
    assert latest.count("missingCount") == 0
    assert job.result["summary"]["installedPendingRebootCount"] == 1


def test_a_boot_id_unreadable_right_after_the_install_still_records_the_install(
    tmp_path: Path, store: StateStore
) -> None:
    """The boot id cannot be read after the install: the job fails with that error, and the
    machine, which answers a rescan, is recorded as it is: the patch pending its reboot."""
    machine = Machine()

    def no_boot_id() -> None:
        raise AgentFailed("BootIdUnreadable", "no /proc/sys/kernel/random/boot_id")

    machine.on_read = no_boot_id
    fleet = _one(tmp_path, machine, max_errors="0")
    fleet.loop(store).reconcile()

    job = _install(store, "web-1")
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error["code"] == "BootIdUnreadable"
    assert job.result["install"]["patches"][0]["result"] == "INSTALLED"
    latest = store.latest_scan("web-1")
    assert latest is not None and latest.job_id == job.id
    assert latest.count("installedPendingRebootCount") == 1
    assert machine.reboots == []


def test_no_reboot_starts_after_the_window_end_the_job_says_it_is_left_pending(
    tmp_path: Path, store: StateStore
) -> None:
    machine = Machine()
    fleet = _one(tmp_path, machine)
    original = machine.install

    def long_install(request: InstallRequest) -> InstallResult:
        fleet.clock.advance_to(WINDOW_END)  # the install ran until the window closed
        return original(request)

    machine.install = long_install  # type: ignore[method-assign]
    fleet.loop(store).reconcile()

    job = _install(store, "web-1")
    assert job.status == JobStatus.SUCCEEDED
    assert machine.reboots == [] and machine.boot == 1
    reboot = job.result["install"]["reboot"]
    assert (reboot["required"], reboot["performed"]) == (True, False)
    assert reboot["reason"] == (
        f"reboot needed (pwtest-lib); window noon's opening {OPENING} has ended: left pending "
        "for the next opening"
    )
    latest = store.latest_scan("web-1")
    assert latest is not None and latest.count("installedPendingRebootCount") == 1


def test_no_reboot_starts_after_the_cutoff_of_a_cancel_task_task(
    tmp_path: Path, store: StateStore
) -> None:
    machine = Machine()
    fleet = _one(tmp_path, machine, cutoff_behavior="CANCEL_TASK")
    original = machine.install

    def install_past_cutoff(request: InstallRequest) -> InstallResult:
        fleet.clock.advance_to(datetime(2026, 11, 28, 15, 30, tzinfo=UTC))
        return original(request)

    machine.install = install_past_cutoff  # type: ignore[method-assign]
    fleet.loop(store).reconcile()

    assert machine.reboots == []
    reason = _install(store, "web-1").result["install"]["reboot"]["reason"]
    assert "window noon is past its cutoff (2026-11-28T15:00:00+00:00)" in reason
    assert "task install-security is CANCEL_TASK: left pending" in reason


def test_a_directory_root_over_ssh_is_never_rebooted(tmp_path: Path, store: StateStore) -> None:
    machine = Machine()
    fleet = Fleet(
        tmp_path,
        {"web-1": machine},
        window_yaml("noon", "cron(0 12 * * ? *)"),
        ssh_instance("web-1", root="/srv/web-1"),
    )
    fleet.loop(store).reconcile()

    assert len(machine.installs) == 1 and machine.reboots == []
    reboot = _install(store, "web-1").result["install"]["reboot"]
    assert reboot["performed"] is False and "awaited" not in reboot


# --- a restart in the middle of the wait ------------------------------------------------------


def test_a_restarted_loop_resumes_the_reboot_wait_without_installing_again(
    tmp_path: Path,
) -> None:
    machine = Machine(down_for=3)
    fleet = _one(tmp_path, machine)
    fleet.stop_at_pause = 1  # the service is stopped (or killed) while the machine is down
    with StateStore(fleet.path) as store:
        first = fleet.loop(store)
        first.reconcile()
        [(job, phase)] = store.rebooting_jobs()
        assert job.status == JobStatus.RUNNING
        assert (phase.phase, phase.boot_id) == ("rebooting", "boot-1")
        assert phase.detail["install"]["patches"][0]["name"] == "pwtest-lib"

    fleet.stop_at_pause = None
    with StateStore(fleet.path) as store:
        second = fleet.loop(store)
        assert second.recover() == []  # a job waiting for its reboot is not abandoned
        summary = second.reconcile()

        assert summary.jobs == {"Install succeeded": 1}
        assert summary.converged
        finished = store.job(job.id)
        assert finished is not None and finished.status == JobStatus.SUCCEEDED
        assert finished.result is not None
        assert finished.result["install"]["reboot"]["bootId"] == "boot-2"
        assert store.rebooting_jobs() == []
        latest = store.latest_scan("web-1")
        assert latest is not None and latest.job_id == job.id
        assert latest.compliance_status == "COMPLIANT"
    assert len(machine.installs) == 1  # never installed twice
    assert machine.reboots == ["boot-1"]  # not asked again: it was down, then back


def test_a_restart_before_the_reboot_was_asked_for_asks_again(tmp_path: Path) -> None:
    """The phase is recorded before the reboot is asked for: a crash in between leaves the boot
    id unchanged, and the resumed job asks (once) for the reboot it is waiting for."""
    machine = Machine()
    fleet = _one(tmp_path, machine)
    with StateStore(fleet.path) as store:
        loop = fleet.loop(store)
        loop.refresh()
        action = {
            "operation": "Install",
            "instance": "web-1",
            "key": "web-1:Install:x:noon:" + OPENING,
            "reason": "test",
            "baseline": BASELINE,
            "baseline_hash": "h",
            "window": "noon",
            "task": "install-security",
            "opening": OPENING,
            "pins": ["pwtest-lib=1.0-2"],
            "blocked": [],
            "reboot_option": "RebootIfNeeded",
        }
        job = store.claim_job(
            key=action["key"],
            instance="web-1",
            operation="Install",
            window="noon",
            task="install-security",
            opening=OPENING,
            revision="r",
            payload=action,
            now=IN_WINDOW,
        )
        assert job is not None
        machine.version, machine.pending = NEW, True  # the install had run
        store.record_phase(
            job.id, phase="rebooting", boot_id="boot-1", detail={"install": {}}, now=IN_WINDOW
        )
        summary = loop.reconcile()

        assert summary.jobs["Install succeeded"] == 1
        assert machine.reboots == ["boot-1"] and machine.boot == 2
        assert machine.installs == []


# --- the planner: a machine whose only issue is a pending reboot ------------------------------


def _pending_scan(snapshot: Any) -> ObservedScan:
    baseline = snapshot.baseline(BASELINE)
    return ObservedScan(
        IN_WINDOW - timedelta(minutes=5),
        "DEBIAN",  # type: ignore[arg-type]
        baseline_digest(baseline),
        (),
        non_compliant=True,
        pending_reboot=2,
    )


def _snapshot(tmp_path: Path, *docs: str) -> Any:
    fleet = Fleet(tmp_path, {}, *docs)
    with StateStore(fleet.path) as store:
        loop = fleet.loop(store)
        loop.refresh()
        return loop.snapshot


def test_a_machine_whose_only_issue_is_a_pending_reboot_is_rebooted_under_reboot_if_needed(
    tmp_path: Path,
) -> None:
    snapshot = _snapshot(tmp_path, window_yaml("noon", "cron(0 12 * * ? *)"), ssh_instance("web-1"))
    result = plan(snapshot, "r", Observed(scans={"web-1": _pending_scan(snapshot)}), IN_WINDOW)

    [action] = result.actions
    assert (action.operation, action.pins, action.reboot_option) == (
        "Install",
        (),
        "RebootIfNeeded",
    )
    assert action.key == f"web-1:Reboot:noon:{OPENING}"
    assert action.reason == (
        "reboot pending: 2 patch(es) installed pending reboot; install-security of window noon "
        "is open (RebootIfNeeded)"
    )
    # Once per opening: after that job, the machine waits.
    done = ObservedJob(action.key, "web-1", action.operation, JobStatus.SUCCEEDED, IN_WINDOW)
    again = plan(
        snapshot,
        "r",
        Observed(scans={"web-1": _pending_scan(snapshot)}, jobs=[done]),
        IN_WINDOW,
    )
    assert again.actions == ()
    assert "the remaining violations need a reboot" in again.waits[0].reason


@pytest.mark.parametrize(
    ("window", "instance"),
    [
        (window_yaml("noon", "cron(0 12 * * ? *)", reboot_option="NoReboot"), ssh_instance("w")),
        (window_yaml("noon", "cron(0 12 * * ? *)"), ssh_instance("w", root="/srv/w")),
    ],
    ids=["NoReboot", "directory root"],
)
def test_a_pending_reboot_is_left_alone_under_no_reboot_or_on_a_directory_root(
    tmp_path: Path, window: str, instance: str
) -> None:
    snapshot = _snapshot(tmp_path, window, instance.replace("name: w,", "name: web-1,"))
    result = plan(snapshot, "r", Observed(scans={"web-1": _pending_scan(snapshot)}), IN_WINDOW)

    assert result.actions == ()
    assert result.waits[0].reason == (
        "nothing installable: the remaining violations need a reboot or a decision"
    )


def test_a_reboot_only_job_reboots_and_installs_nothing(tmp_path: Path, store: StateStore) -> None:
    machine = Machine(version=NEW, pending=True)
    fleet = _one(tmp_path, machine)
    summary = fleet.loop(store).reconcile()

    assert summary.jobs == {"Scan succeeded": 1, "Install succeeded": 1}
    assert summary.converged
    assert machine.installs == [] and machine.reboots == ["boot-1"]
    job = _install(store, "web-1")
    assert job.key == f"web-1:Reboot:noon:{OPENING}"
    assert job.result["install"]["reboot"]["awaited"] is True


def test_a_connection_dropped_while_asking_for_the_reboot_is_the_reboot(
    tmp_path: Path, store: StateStore
) -> None:
    machine = Machine(drops_when_asked=True)
    fleet = _one(tmp_path, machine)
    summary = fleet.loop(store).reconcile()

    assert summary.jobs == {"Scan succeeded": 1, "Install succeeded": 1}
    assert _install(store, "web-1").result["install"]["reboot"]["bootId"] == "boot-2"


def test_a_job_whose_instance_left_the_configuration_during_its_reboot_fails_saying_so(
    tmp_path: Path,
) -> None:
    machine = Machine(down_for=3)
    fleet = _one(tmp_path, machine)
    fleet.stop_at_pause = 1
    with StateStore(fleet.path) as store:
        fleet.loop(store).reconcile()
        [(job, _)] = store.rebooting_jobs()
    fleet.config.joinpath("fleet.yaml").write_text(
        documents(BASELINE_YAML, window_yaml("noon", "cron(0 12 * * ? *)"))
    )
    with StateStore(fleet.path) as store:
        fleet.loop(store).reconcile()
        finished = store.job(job.id)
        assert finished is not None and finished.status == JobStatus.FAILED
        assert finished.error == {
            "code": "InstanceGone",
            "message": "web-1 is no longer in the configuration in force: its reboot was not "
            "awaited and nothing was rescanned",
        }


HOOKED = """\
      hooks:
        onExit: [{argv: [/usr/bin/systemctl, start, app]}]
      healthChecks:
        - {name: app, command: {argv: [/usr/bin/curl, -fsS, "http://localhost:8080/ready"]}}
"""


def test_health_checks_run_after_the_install_and_again_after_the_reboot_then_on_exit(
    tmp_path: Path, store: StateStore
) -> None:
    machine = Machine()
    fleet = _one(tmp_path, machine, task_fields=HOOKED)
    fleet.loop(store).reconcile()

    # Boot 1: the check after the install; boot 2: the check after the reboot, then onExit.
    assert machine.stages == [("healthCheck", 1), ("healthCheck", 2), ("onExit", 2)]
    job = _install(store, "web-1")
    assert job.status == JobStatus.SUCCEEDED
    hooks = [(h["stage"], h.get("after")) for h in job.result["hooks"]]
    assert hooks == [("healthCheck", "install"), ("healthCheck", "reboot"), ("onExit", None)]


def test_a_resumed_reboot_runs_the_checks_after_the_reboot_and_on_exit(tmp_path: Path) -> None:
    machine = Machine(down_for=3)
    fleet = _one(tmp_path, machine, task_fields=HOOKED)
    fleet.stop_at_pause = 1
    with StateStore(fleet.path) as store:
        fleet.loop(store).reconcile()
    assert machine.stages == [("healthCheck", 1)]
    fleet.stop_at_pause = None
    with StateStore(fleet.path) as store:
        fleet.loop(store).reconcile()
        job = _install(store, "web-1")
        assert job.status == JobStatus.SUCCEEDED
        # The check run before the restart is still in the job's result.
        hooks = [(h["stage"], h.get("after")) for h in job.result["hooks"]]
        assert hooks == [("healthCheck", "install"), ("healthCheck", "reboot"), ("onExit", None)]
    assert machine.stages == [("healthCheck", 1), ("healthCheck", 2), ("onExit", 2)]
    assert len(machine.installs) == 1


@pytest.mark.parametrize(
    "said", ["\x1b]8;;http://x\x07boot\x1b]8;;\x07", "a" * 65, "", "../boot", 42, None]
)
def test_a_boot_id_that_is_not_letters_digits_and_dashes_reaches_no_record(said: object) -> None:
    """A machine's root may answer anything: only 1-64 letters, digits and '-' is a boot id."""
    with pytest.raises(AgentFailed) as refused:
        boot_id_of({"bootId": said})
    assert refused.value.code == "BadBootId"
    assert boot_id_of({"bootId": "3f2c-9a"}) == "3f2c-9a"
