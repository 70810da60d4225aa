"""Patch now (issue 14 item 5): ``patchctl patch-now`` records a one-off opening in the state
store, audited with who asked; the loop (``reconcile``, or ``--wait`` in the same process) runs
it outside any window through the same planner and budgets as a window's task; ``plan`` shows
it; ``--cancel`` stops what has not started; a bad target is refused with nothing recorded.

Real SQLite store, real apt and dpkg on directory roots (local transport), real patchctl
processes; the one-off tests that need a clock of their own drive the Reconciler in-process.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import Operation
from reconciler.api.install import InstallResult
from reconciler.api.oneoff import (
    OneOffOpening,
    OneOffStatus,
    OneOffTargets,
    parse_selector,
    selector_text,
)
from reconciler.api.resources import LabelSelector, ManagedInstance, WindowTask
from reconciler.api.snapshot import Snapshot
from reconciler.dispatch import transport_for
from reconciler.dispatch.base import InstallRequest, Transport
from reconciler.loop import Reconciler
from reconciler.loop.oneoffs import OneOffOpenings
from reconciler.plan import Action
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import (
    BASELINE_YAML,
    ManualClock,
    Spy,
    documents,
    local_instance_yaml,
    make_fleet,
    versions,
)
from tests.test_loop_e2e import AFTER, BEFORE, UNPATCHED, WITH_FAIL, patchctl

# A window that opens on 1 January only: patch now is what patches the fleet in these tests.
CLOSED_WINDOW = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: new-year}
spec:
  schedule: cron(0 0 1 1 ? *)
  duration: 2
  cutoff: 1
  targets: {patchGroups: [fleet]}
  tasks: [{name: install-security, operation: Install}]
"""


def write_config(directory: Path, roots: dict[str, Path]) -> Path:
    """The baseline, the group, a closed window and one local instance per root."""
    directory.mkdir(parents=True, exist_ok=True)
    instances = [local_instance_yaml(name, root) for name, root in roots.items()]
    (directory / "fleet.yaml").write_text(documents(BASELINE_YAML, CLOSED_WINDOW, *instances))
    return directory


def one_off(
    targets: OneOffTargets,
    now: datetime,
    *,
    operation: str = "Install",
    concurrency: str = "1",
    errors: str = "1",
) -> OneOffOpening:
    task = WindowTask.model_validate(
        {
            "name": "patch-now",
            "operation": operation,
            "maxConcurrency": concurrency,
            "maxErrors": errors,
        }
    )
    return OneOffOpening(
        id=f"pn-test-{targets.describe().replace(' ', '-')}",
        targets=targets,
        task=task,
        requested_by="alice",
        os_user="alice",
        created_at=now,
        expires_at=now + timedelta(minutes=60),
    )


def loop(
    config: Path,
    store: StateStore,
    clock: Callable[[], datetime],
    transports: Callable[[ManagedInstance], Transport] | None = None,
) -> Reconciler:
    return Reconciler(
        DirectorySource(config),
        store,
        transports
        or (lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True)),
        clock=clock,
    )


NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


# --- the selector's text -------------------------------------------------------------------------


def test_the_selector_takes_kubectls_syntax_as_a_windows_label_selector() -> None:
    selector = parse_selector("env=prod,role in (web, api),!canary,tier!=db,zone")
    assert selector == LabelSelector.model_validate(
        {
            "matchLabels": {"env": "prod"},
            "matchExpressions": [
                {"key": "role", "operator": "In", "values": ["web", "api"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "zone", "operator": "Exists"},
            ],
        }
    )
    assert selector.matches({"env": "prod", "role": "api", "tier": "web", "zone": "a"})
    assert not selector.matches({"env": "prod", "role": "api", "zone": "a", "canary": "1"})
    assert parse_selector(selector_text(selector)) == selector
    for bad in ("env=prod,", "role in (web", "a b"):
        with pytest.raises(ValueError):
            parse_selector(bad)


def test_a_one_off_job_runs_the_task_stored_with_its_opening(tmp_path: Path) -> None:
    """The hooks and health checks --hooks-from copies travel in the stored task."""
    opening = one_off(OneOffTargets(instances=["web-1"]), NOW, concurrency="3")
    with StateStore(tmp_path / "state.db") as store:
        store.record_one_off(opening, now=NOW)
        runner = OneOffOpenings(store, ManualClock(NOW), lambda *a, **k: None)  # type: ignore[arg-type]
        action = Action(
            Operation.INSTALL, "web-1", "k", "why", "b", "h", None, "patch-now", opening.id
        )
        assert runner.task_for(action, Snapshot()) == opening.task
        window_job = Action(Operation.INSTALL, "web-1", "k", "why", "b", "h", "noon", "t", "o")
        assert runner.task_for(window_job, Snapshot()) is None


# --- through patchctl ------------------------------------------------------------------------


def test_options_another_form_needs_are_refused_not_ignored(tmp_path: Path) -> None:
    state = ("--state", str(tmp_path / "state.db"))
    cases = {
        ("--list", "--operation", "Scan"): "--list takes no --operation",
        ("--list", "--requested-by", "bob"): "--list takes no --requested-by",
        ("--cancel", "pn-1", "--max-errors", "3", "--wait"): "--cancel takes no --max-errors, "
        "--wait",
        ("--group", "web", "--source", "examples", "--workers", "3"): "a request without --wait "
        "takes no --workers",
        ("--group", "web", "--source", "examples", "--note", "a\x1b[2Jb"): "--note: contains "
        "\\x1b; nothing recorded",
        ("--group", "web", "--source", "examples", "--requested-by", " "): "--requested-by: give "
        "1 to 128 characters on one line; nothing recorded",
    }
    for args, message in cases.items():
        run = patchctl("patch-now", *args, *state)
        assert run.returncode == 1, args
        assert run.stderr.endswith(f"{message}\n") and run.stderr.count("\n") == 1, args
    listed = patchctl("patch-now", "--list", *state, "-o", "json")
    assert json.loads(listed.stdout) == []


@needs_apt
def test_bad_targets_are_refused_with_the_known_ones_and_nothing_is_recorded(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    config, state = write_config(tmp_path / "config", roots), tmp_path / "state" / "state.db"
    common = ("--source", str(config), "--state", str(state))
    cases = {
        ("--group", "db"): "patch-now: unknown patch group db; known: fleet; nothing recorded",
        ("--instance", "web-9"): "patch-now: unknown instance web-9; known: web-1, web-2; "
        "nothing recorded",
        ("--selector", "role=db"): "patch-now: selector role=db selects no instance; "
        "instances: web-1, web-2; nothing recorded",
        ("--selector", "role in (db"): "--selector role in (db: 'role in (db' is not key=value, "
        "key!=value, key in (a,b), key; nothing recorded",
        ("--group", "fleet", "--hooks-from", "nightly"): "--hooks-from nightly: unknown window "
        "'nightly'; windows: new-year; nothing recorded",
        ("--group", "fleet", "--hooks-from", "new-year/install-security"): "--hooks-from "
        "new-year/install-security: task install-security of window new-year has no hooks or "
        "health checks to copy; nothing recorded",
    }
    for args, message in cases.items():
        run = patchctl("patch-now", *args, *common)
        assert (run.returncode, run.stdout) == (1, ""), args
        assert run.stderr.splitlines()[-1] == f"patchctl: {message}", args
    usage = patchctl("patch-now", "--group", "fleet", "--max-concurrency", "0", *common)
    assert usage.returncode == 2 and "'0' is not valid: give a number of targets" in usage.stderr
    listed = patchctl("patch-now", "--list", "--state", str(state), "-o", "json")
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
    assert (
        not (state.parent / "audit.jsonl").exists()
        or "patchnow" not in (state.parent / "audit.jsonl").read_text()
    )
    for root in roots.values():
        assert versions(root) == UNPATCHED


@needs_apt
def test_a_request_is_recorded_audited_shown_by_plan_and_run_by_the_loop(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2", "web-3"], BEFORE)
    config, state = write_config(tmp_path / "config", roots), tmp_path / "state" / "state.db"
    common = ("--source", str(config), "--state", str(state))

    run = patchctl(
        "patch-now", "--selector", "fleet=e2e", "--max-concurrency", "2", "--max-errors", "0",
        "--note", "CVE-2026-0001", "--requested-by", "alice", *common, "-o", "json",
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    recorded = json.loads(run.stdout)
    opening = recorded["id"]
    assert recorded["status"] == "PENDING"
    assert recorded["instances"] == ["web-1", "web-2", "web-3"]
    assert (recorded["requestedBy"], recorded["osUser"]) == ("alice", getpass.getuser())
    assert recorded["task"]["maxConcurrency"] == "2" and recorded["note"] == "CVE-2026-0001"
    (audited,) = [
        e for e in audit_entries(state.parent / "audit.jsonl") if e["kind"] == "patchnow.requested"
    ]
    assert audited["author"] == "alice" and audited["detail"]["id"] == opening
    # Nothing ran yet; plan shows the opening and the jobs the loop would start for it.
    planned = patchctl("plan", *common, "-o", "json")
    assert planned.returncode == 0, planned.stderr
    shown = json.loads(planned.stdout)
    (progress,) = shown["oneOffs"]
    assert (progress["id"], progress["targets"], progress["done"]) == (opening, 3, 0)
    assert [(a["instance"], a["operation"]) for a in shown["actions"]] == [
        ("web-1", "Scan"),
        ("web-2", "Scan"),
    ]  # maxConcurrency 2
    assert all(opening in a["reason"] for a in shown["actions"])
    assert "Patch now" in patchctl("plan", *common).stdout

    done = patchctl("reconcile", *common, "-o", "json")

    assert done.returncode == 0, done.stderr
    for name, root in roots.items():
        assert versions(root) == AFTER, name
    listed = json.loads(patchctl("patch-now", "--list", "--state", str(state), "-o", "json").stdout)
    assert [(o["id"], o["status"]) for o in listed] == [(opening, "SUCCESS")]
    with StateStore(state) as store:
        jobs = store.one_off_jobs([opening])
    assert sorted((j.instance, j.operation, j.status) for j in jobs) == [
        (name, operation, "succeeded")
        for name in ("web-1", "web-2", "web-3")
        for operation in ("Install", "Scan")
    ]
    statuses = [
        e["detail"]["status"]
        for e in audit_entries(state.parent / "audit.jsonl")
        if e["kind"] == "patchnow.status"
    ]
    assert statuses == ["IN_PROGRESS", "SUCCESS"]


@needs_apt
def test_wait_runs_the_opening_here_and_prints_its_outcome(tmp_path: Path, apt_repo: Repo) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    config, state = write_config(tmp_path / "config", roots), tmp_path / "state" / "state.db"

    run = patchctl(
        "patch-now", "--instance", "web-1", "--wait", "--source", str(config),
        "--state", str(state), "-o", "json",
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["status"] == "SUCCESS"
    assert outcome["jobs"] == [
        {"instance": "web-1", "operation": "Scan", "status": "succeeded", "error": None},
        {"instance": "web-1", "operation": "Install", "status": "succeeded", "error": None},
    ]
    assert versions(roots["web-1"]) == AFTER
    assert versions(roots["web-2"]) == UNPATCHED  # not targeted; its window is closed


@needs_apt
def test_wait_exits_1_when_the_opening_failed(tmp_path: Path, apt_repo: Repo) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["db-1", "db-2"], WITH_FAIL)
    config, state = write_config(tmp_path / "config", roots), tmp_path / "state" / "state.db"

    run = patchctl(
        "patch-now", "--group", "fleet", "--max-errors", "0", "--wait", "--source", str(config),
        "--state", str(state), "-o", "json",
    )  # fmt: skip

    assert run.returncode == 1, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["status"] == "FAILED"
    assert [(j["instance"], j["operation"], j["status"]) for j in outcome["jobs"]] == [
        ("db-1", "Scan", "succeeded"),
        ("db-1", "Install", "failed"),
    ]
    assert versions(roots["db-2"]) == {"pwtest-lib": "1.0-1", "pwtest-fail": "1.0-1"}


@needs_apt
def test_cancel_stops_what_has_not_started(tmp_path: Path, apt_repo: Repo) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    config, state = write_config(tmp_path / "config", roots), tmp_path / "state" / "state.db"
    common = ("--source", str(config), "--state", str(state))
    run = patchctl("patch-now", "--group", "fleet", *common, "-o", "json")
    opening = json.loads(run.stdout)["id"]

    cancel = patchctl("patch-now", "--cancel", opening, "--state", str(state), "-o", "json")

    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout)["status"] == "CANCELLED"
    assert patchctl("reconcile", *common).returncode == 0
    for root in roots.values():
        assert versions(root) == UNPATCHED
    with StateStore(state) as store:
        assert store.one_off_jobs([opening]) == []
    again = patchctl("patch-now", "--cancel", opening, "--state", str(state))
    assert again.returncode == 1
    assert again.stderr == f"patchctl: {opening} already ended CANCELLED: nothing to cancel\n"
    unknown = patchctl("patch-now", "--cancel", "pn-nope", "--state", str(state))
    assert unknown.stderr == "patchctl: no one-off opening pn-nope; pending or running: none\n"


def audit_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- in-process, with budgets watched and a clock of its own ---------------------------------


@needs_apt
def test_max_concurrency_caps_the_installs_running_at_once(tmp_path: Path, apt_repo: Repo) -> None:
    names = [f"web-{i}" for i in range(1, 5)]
    roots = make_fleet(tmp_path / "fleet", apt_repo, names, BEFORE)
    config = write_config(tmp_path / "config", roots)
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    with StateStore(tmp_path / "state.db") as store:
        store.record_one_off(
            one_off(OneOffTargets(patch_groups=["fleet"]), NOW, concurrency="2"), now=NOW
        )
        summary = loop(config, store, ManualClock(NOW), spy).reconcile()
        (record,) = store.one_offs()
    assert record.status is OneOffStatus.SUCCESS
    assert summary.jobs == {"Scan succeeded": 4, "Install succeeded": 4}
    assert sorted(spy.installs) == names and spy.peak <= 2
    for root in roots.values():
        assert versions(root) == AFTER


@needs_apt
def test_max_errors_stops_new_targets(tmp_path: Path, apt_repo: Repo) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["db-1", "db-2", "db-3"], WITH_FAIL)
    config = write_config(tmp_path / "config", roots)
    with StateStore(tmp_path / "state.db") as store:
        opening = one_off(OneOffTargets(patch_groups=["fleet"]), NOW, errors="0")
        store.record_one_off(opening, now=NOW)
        reconciler = loop(config, store, ManualClock(NOW))
        reconciler.reconcile()
        jobs = store.one_off_jobs([opening.id])
        (record,) = store.one_offs()
        assert [(j.instance, j.operation, j.status) for j in jobs] == [
            ("db-1", "Scan", "succeeded"),
            ("db-1", "Install", "failed"),
        ]
        assert record.status is OneOffStatus.FAILED
        assert reconciler.reconcile().jobs.get("Install failed") is None  # it stays halted
    assert versions(roots["db-1"]) == {"pwtest-lib": "1.0-2", "pwtest-fail": "1.0-1"}
    for name in ("db-2", "db-3"):
        assert versions(roots[name]) == {"pwtest-lib": "1.0-1", "pwtest-fail": "1.0-1"}, name


@needs_apt
def test_a_cancel_while_a_job_runs_lets_it_finish_and_starts_nothing_else(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    config = write_config(tmp_path / "config", roots)
    with StateStore(tmp_path / "state.db") as store:
        opening = one_off(OneOffTargets(patch_groups=["fleet"]), NOW)
        store.record_one_off(opening, now=NOW)

        def cancelling(instance: ManagedInstance) -> Transport:
            inner = transport_for(instance.spec.connection, trust_root_scripts=True)
            return _CancelOnInstall(inner, lambda: _cancel(store, opening.id))

        loop(config, store, ManualClock(NOW), cancelling).reconcile()
        jobs = store.one_off_jobs([opening.id])
        (record,) = store.one_offs()
    assert record.status is OneOffStatus.CANCELLED
    assert [(j.instance, j.operation, j.status) for j in jobs] == [
        ("web-1", "Scan", "succeeded"),
        ("web-1", "Install", "succeeded"),
    ]
    assert versions(roots["web-1"]) == AFTER  # the running install finished
    assert versions(roots["web-2"]) == UNPATCHED


def _cancel(store: StateStore, opening: str) -> None:
    store.change_one_off(
        opening,
        status=OneOffStatus.CANCELLED,
        now=NOW,
        only_from=(OneOffStatus.PENDING, OneOffStatus.IN_PROGRESS),
    )


class _CancelOnInstall:
    """A transport whose install cancels the opening first, as another process would."""

    def __init__(self, inner: Transport, cancel: Callable[[], None]) -> None:
        self.inner, self.cancel = inner, cancel

    def scan(self, **options: Any) -> Any:
        return self.inner.scan(**options)

    def install(self, request: InstallRequest) -> InstallResult:
        self.cancel()
        return self.inner.install(request)


@needs_apt
def test_an_opening_not_started_before_its_expiry_is_dropped(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    config = write_config(tmp_path / "config", roots)
    with StateStore(tmp_path / "state.db") as store:
        opening = one_off(OneOffTargets(instances=["web-1"]), NOW)
        store.record_one_off(opening, now=NOW)
        later = ManualClock(opening.expires_at)
        summary = loop(config, store, later).reconcile()
        (record,) = store.one_offs()
        assert record.status is OneOffStatus.EXPIRED
        assert store.one_off_jobs([opening.id]) == []
    assert summary.jobs == {"Scan succeeded": 1}  # the loop's own first scan, nothing else
    assert versions(roots["web-1"]) == UNPATCHED


@needs_apt
def test_hooks_the_window_task_no_longer_has_are_refused_before_anything_runs(
    tmp_path: Path, apt_repo: Repo
) -> None:
    """The commands a machine runs come from the configuration, never from the state database
    alone: a stored request whose hooks are not (or no longer) its window task's fails."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    config = write_config(tmp_path / "config", roots)
    with StateStore(tmp_path / "state.db") as store:
        opening = one_off(OneOffTargets(instances=["web-1"]), NOW).model_copy(
            update={"hooks_from": "new-year/install-security"}
        )
        store.record_one_off(opening, now=NOW)
        loop(config, store, ManualClock(NOW)).reconcile()
        (job,) = store.one_off_jobs([opening.id])
        (record,) = store.one_offs()
    assert (job.operation, job.status, record.status) == ("Scan", "failed", "FAILED")
    assert job.error is not None and job.error["code"] == "HooksRefused"
    assert "no hooks or health checks to copy" in job.error["message"]
    assert versions(roots["web-1"]) == UNPATCHED


@needs_apt
def test_hooks_from_runs_the_window_tasks_hooks_around_the_one_off_install(
    tmp_path: Path, apt_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--hooks-from copies a window task's hooks; the one-off Install runs them on the machine
    (here a local root, which the operator allows with PATCHWARDEN_TRUST_LOCAL_HOOKS=1)."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    marker = tmp_path / "pre-install-ran"
    window = CLOSED_WINDOW.replace(
        "tasks: [{name: install-security, operation: Install}]",
        "tasks: [{name: install-security, operation: Install,"
        f" hooks: {{preInstall: [{{argv: [/usr/bin/touch, '{marker}']}}]}}}}]",
    )
    config = tmp_path / "config"
    config.mkdir()
    instance = local_instance_yaml("web-1", roots["web-1"])
    (config / "fleet.yaml").write_text(documents(BASELINE_YAML, window, instance))
    monkeypatch.setenv("PATCHWARDEN_TRUST_LOCAL_HOOKS", "1")

    run = patchctl(
        "patch-now", "--instance", "web-1", "--hooks-from", "new-year/install-security",
        "--wait", "--source", str(config), "--state", str(tmp_path / "state.db"), "-o", "json",
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["status"] == "SUCCESS"
    assert marker.exists()
    assert versions(roots["web-1"]) == AFTER
