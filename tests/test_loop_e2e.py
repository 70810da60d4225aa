"""End to end: the reconcile loop on real Debian systems (directory roots driven by real apt and
dpkg), with the desired state in a real Git repository, over the local and the ssh transports,
driven through the Reconciler (with a clock the test controls) and through ``patchctl``.

Every test asserts what a user would notice: what dpkg has installed on each machine, what the
store recorded (and under which Git revision), what the plan says about machines left waiting,
and how the command behaves as a process (exit codes, logs, /healthz, /metrics).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.inventory import Inventory
from reconciler.dispatch import SshPool, transport_for
from reconciler.loop import Reconciler
from reconciler.sources import GitSource
from reconciler.state import JobRecord, StateStore
from tests.aptlab import Pkg, Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE,
    BASELINE_YAML,
    ManualClock,
    Spy,
    at_now,
    documents,
    dpkg_installs,
    local_instance_yaml,
    make_fleet,
    open_window_yaml,
    ssh_instance_yaml,
    versions,
    window_yaml,
)
from tests.git_servers import SshSigningKeys, Upstream, free_port, git_daemon
from tests.sshd import Sshd, have_sshd, start_sshd
from tests.waiting import tail_of, wait_until

pytestmark = needs_apt

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]

# Before: lib and tool have security updates (tool's needs the new lib); other has only a
# non-security update, which the baseline does not approve and nobody may install.
BEFORE = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool", "pwtest-other")]
AFTER = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1", "pwtest-other": "1.0-1"}
UNPATCHED = {"pwtest-lib": "1.0-1", "pwtest-tool": "2.0-1", "pwtest-other": "1.0-1"}
# pwtest-fail's security update has a postinst that fails.
WITH_FAIL = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-fail")]

# The window "noon" opens daily at 12:00 UTC for 4 h and takes no new task in its last hour.
NOON_WINDOW = "cron(0 12 * * ? *)"
OPENING = "2026-11-28T12:00:00Z"
BEFORE_NOON = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
IN_WINDOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
CUTOFF = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    """The fleet's Git repository (bare, under a served root) and a clone that pushes to it."""
    return Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")


def file_url(upstream: Upstream) -> str:
    return f"file://{upstream.bare}"


def commit_fleet(upstream: Upstream, roots: dict[str, Path], *extra: str, **signing: Any) -> str:
    """Commit the baseline, the group, ``extra`` documents and one local instance per root."""
    upstream.write("fleet.yaml", documents(BASELINE_YAML, *extra))
    upstream.write(
        "instances.yaml", documents(*(local_instance_yaml(n, r) for n, r in roots.items()))
    )
    return upstream.commit("fleet", **signing)


def revision_of(sha: str) -> str:
    return f"main@sha1:{sha}"


def loop(
    tmp_path: Path,
    url: str,
    clock: Callable[[], datetime],
    *,
    spy: Spy | None = None,
    on_job_done: Callable[[JobRecord], None] | None = None,
) -> Reconciler:
    """A Reconciler on ``url``'s main branch with a fresh store, on the local and ssh transports
    (watched by ``spy``), at the time ``clock`` says."""
    store = StateStore(tmp_path / "state" / "state.db")
    source = GitSource(url, ref="main", workdir=tmp_path / "state" / "clone")
    transports = spy or Spy(
        lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True)
    )
    return Reconciler(source, store, transports, clock=clock, on_job_done=on_job_done)


def patchctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def reconcile_cli(url: str, state: Path, *extra: str) -> dict[str, Any]:
    """``patchctl reconcile -o json`` at ``at_now()`` (a ``--now`` in ``extra`` comes later, so it
    wins); its JSON report (the command must succeed)."""
    argv = ["reconcile", "--source", url, "--state", str(state), "-o", "json", *at_now(), *extra]
    run = patchctl(*argv)
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a patchctl process (every line must be one JSON object)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dpkg_query(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, dpkg's status abbreviation) as dpkg itself reads it (journal included)."""
    out = subprocess.run(
        [
            "dpkg-query",
            "--root",
            str(root),
            "-W",
            "-f",
            "${Package}\t${Version}\t${db:Status-Abbrev}\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {n: (v, a.strip()) for n, v, a in (line.split("\t") for line in out.splitlines())}


def assert_installed_once(roots: dict[str, Path], interrupted: str) -> None:
    """No (instance, snapshot) was installed twice, as dpkg's own log says (each update at most
    once), and every machine but the ``interrupted`` one is patched."""
    for name, root in roots.items():
        counts = dpkg_installs(root)
        assert all(count == 1 for count in counts.values()), (name, counts)
    for name in set(roots) - {interrupted}:
        assert versions(roots[name]) == AFTER, name


def installs(store: StateStore) -> list[JobRecord]:
    return [job for job in store.jobs() if job.operation == "Install"]


def assert_converged(store: StateStore, roots: dict[str, Path], revision: str) -> None:
    """Every root has the approved updates (and only those), and its latest record says so."""
    for name, root in roots.items():
        assert versions(root) == AFTER, name
    latest = store.latest_scans()
    assert sorted(latest) == sorted(roots)
    for name, record in latest.items():
        assert record.evaluation["summary"]["complianceStatus"] == "COMPLIANT", name
        states = {p["name"]: p["state"] for p in record.evaluation["patches"]}
        assert states["pwtest-lib"] == states["pwtest-tool"] == "INSTALLED", name
        assert (record.revision, record.baseline) == (revision, BASELINE), name


# --- 1. convergence --------------------------------------------------------------------------


def test_reconcile_converges_a_fleet_inside_an_open_window(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, [f"web-{i}" for i in range(1, 5)], BEFORE)
    sha = commit_fleet(upstream, roots, open_window_yaml())
    state = tmp_path / "state" / "state.db"

    report = reconcile_cli(file_url(upstream), state)

    assert report["revision"] == revision_of(sha)
    assert report["converged"] is True
    assert report["refused"] == []
    assert report["jobs"] == {"Scan succeeded": 4, "Install succeeded": 4}
    assert {row["instance"]: row["complianceStatus"] for row in report["instances"]} == {
        name: "COMPLIANT" for name in roots
    }
    for root in roots.values():
        assert dpkg_installs(root) == {("pwtest-lib", "1.0-2"): 1, ("pwtest-tool", "2.1-1"): 1}
    with StateStore(state) as store:
        assert_converged(store, roots, revision_of(sha))
        # Every record of the history names the commit and baseline that decided it.
        for name in roots:
            history = store.scan_history(name)
            assert [r.operation for r in history] == ["Install", "Scan"]
            assert {(r.revision, r.baseline) for r in history} == {(revision_of(sha), BASELINE)}
            assert all(r.baseline_hash for r in history)
        assert {job.revision for job in store.jobs()} == {revision_of(sha)}
        assert {job.status for job in store.jobs()} == {"succeeded"}

    # Converged means idle: a second run finds nothing to do and changes nothing.
    again = reconcile_cli(file_url(upstream), state)
    assert again["jobs"] == {}
    assert again["converged"] is True
    assert all(dpkg_installs(root)[("pwtest-lib", "1.0-2")] == 1 for root in roots.values())


def test_a_noreboot_window_leaves_its_patches_pending_reboot_and_records_the_time(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    """SSM: an Install task with NoReboot leaves what it installed INSTALLED_PENDING_REBOOT (the
    machine NON_COMPLIANT) until a reboot, and records LastNoRebootInstallOperationTime."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    commit_fleet(upstream, roots, open_window_yaml(reboot_option="NoReboot"))
    state = tmp_path / "state" / "state.db"

    report = reconcile_cli(file_url(upstream), state)

    assert report["jobs"] == {"Scan succeeded": 1, "Install succeeded": 1}
    assert report["converged"] is False  # waiting for a reboot, which only the machine can do
    assert versions(roots["web-1"]) == AFTER
    with StateStore(state) as store:
        record = store.latest_scans()["web-1"]
    states = {p["name"]: p["state"] for p in record.evaluation["patches"]}
    assert states["pwtest-lib"] == states["pwtest-tool"] == "INSTALLED_PENDING_REBOOT"
    assert record.evaluation["summary"]["complianceStatus"] == "NON_COMPLIANT"
    assert record.evaluation["lastNoRebootInstallOperationTime"]
    shown = patchctl("compliance", "--state", str(state), "-o", "json")
    (row,) = json.loads(shown.stdout)
    expected = record.evaluation["lastNoRebootInstallOperationTime"]
    assert row["lastNoRebootInstallOperationTime"] == expected


def test_an_install_override_list_task_installs_its_packages_reported_installed_other(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    """SSM's InstallOverrideList on a window task: pwtest-other's non-security update, which the
    baseline does not approve, is installed, and reported INSTALLED_OTHER; the approved security
    updates are not installed by that task."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    task = "      installOverrideList: [pwtest-other]\n"
    commit_fleet(upstream, roots, open_window_yaml(task_fields=task))
    state = tmp_path / "state" / "state.db"

    report = reconcile_cli(file_url(upstream), state)

    assert report["jobs"] == {"Scan succeeded": 1, "Install succeeded": 1}
    assert versions(roots["web-1"]) == {**UNPATCHED, "pwtest-other": "1.1-1"}
    with StateStore(state) as store:
        record = store.latest_scans()["web-1"]
    states = {p["name"]: (p["state"], p["version"]) for p in record.evaluation["patches"]}
    assert states["pwtest-other"] == ("INSTALLED_OTHER", "1.1-1")
    assert states["pwtest-lib"] == ("MISSING", "1.0-2")


# --- 2. a broken commit ----------------------------------------------------------------------


def test_a_commit_that_fails_validation_is_refused_and_the_last_good_revision_stays_in_force(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    good = commit_fleet(upstream, roots, window_yaml("noon", NOON_WINDOW))
    clock = ManualClock(BEFORE_NOON)
    reconciler = loop(tmp_path, file_url(upstream), clock)

    first = reconciler.reconcile()
    assert first.jobs == {"Scan succeeded": 2}  # before noon: scanned, nothing installed
    assert not first.converged
    assert set(first.waits) == {
        (name, "window noon closed until 2026-11-28T12:00:00+00:00") for name in roots
    }

    # The broken commit also drops the window: were it half-applied, nothing would be patched.
    broken = BASELINE_YAML.replace(
        "complianceLevel: HIGH", "complianceLevel: HIGH\n      approveAfterDays: 999"
    )
    upstream.write("fleet.yaml", broken)
    bad = upstream.commit("approve after 999 days, and no window")
    line = broken.splitlines().index("      approveAfterDays: 999") + 1
    clock.advance_to(IN_WINDOW)

    second = reconciler.reconcile()

    assert second.refused == [revision_of(bad)]
    assert second.revision == revision_of(good)
    assert second.jobs == {"Install succeeded": 2}
    assert second.converged
    refusal, accepted = reconciler.store.revisions()[:2]
    assert (refusal.revision, refusal.accepted) == (revision_of(bad), False)
    assert refusal.problems == [
        f"fleet.yaml:{line}: spec.approvalRules[0].approveAfterDays: must be ≤ 360 (got 999)"
    ]
    assert (accepted.revision, accepted.accepted) == (revision_of(good), True)
    last_good = reconciler.store.last_good_revision()
    assert last_good is not None and last_good.revision == revision_of(good)
    # Nothing was ever done, or recorded, under the refused revision.
    assert {job.revision for job in reconciler.store.jobs()} == {revision_of(good)}
    assert_converged(reconciler.store, roots, revision_of(good))
    reconciler.store.close()


# --- 3. the cutoff ---------------------------------------------------------------------------


def test_no_job_starts_after_the_window_cutoff_and_the_plan_says_why(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2", "web-3"], BEFORE)
    commit_fleet(upstream, roots, window_yaml("noon", NOON_WINDOW, max_concurrency="1"))
    clock = ManualClock(IN_WINDOW)
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))

    def first_install_takes_until_the_cutoff(job: JobRecord) -> None:
        if job.operation == "Install":
            clock.advance_to(CUTOFF)

    reconciler = loop(
        tmp_path,
        file_url(upstream),
        clock,
        spy=spy,
        on_job_done=first_install_takes_until_the_cutoff,
    )

    summary = reconciler.reconcile()

    assert summary.jobs == {"Scan succeeded": 3, "Install succeeded": 1}
    assert not summary.converged
    assert spy.peak == 1 and len(spy.installs) == 1
    (patched,) = spy.installs
    assert versions(roots[patched]) == AFTER
    waiting = sorted(set(roots) - {patched})
    for name in waiting:
        assert versions(roots[name]) == UNPATCHED, name
    expected = (
        "window noon is past its cutoff (2026-11-28T15:00:00+00:00); "
        "window noon closed until 2026-11-29T12:00:00+00:00"
    )
    assert {n: r for n, r in summary.waits if n != patched} == dict.fromkeys(waiting, expected)
    # `patchctl plan` would say the same: nothing to start, and why.
    current = reconciler.plan()
    assert current is not None and current.idle
    assert {w.instance: w.reason for w in current.waits if w.instance != patched} == (
        dict.fromkeys(waiting, expected)
    )
    # Running again before the next opening starts nothing.
    assert reconciler.reconcile().jobs == {}
    assert len(installs(reconciler.store)) == 1
    reconciler.store.close()


def test_reconcile_now_acts_as_of_that_time_on_a_clock_that_runs_on_from_it(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    """``--now`` moves a rehearsal through days of windows without waiting for them."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    commit_fleet(upstream, roots, window_yaml("noon", NOON_WINDOW))
    state = tmp_path / "state" / "state.db"

    early = reconcile_cli(file_url(upstream), state, "--now", BEFORE_NOON.isoformat())
    assert early["jobs"] == {"Scan succeeded": 1}
    assert [w["reason"] for w in early["waits"]] == [
        "window noon closed until 2026-11-28T12:00:00+00:00"
    ]
    assert versions(roots["web-1"]) == UNPATCHED

    inside = reconcile_cli(file_url(upstream), state, "--now", IN_WINDOW.isoformat())
    assert inside["jobs"] == {"Install succeeded": 1}
    assert versions(roots["web-1"]) == AFTER
    with StateStore(state) as store:
        (job,) = installs(store)
    assert IN_WINDOW <= job.created_at < IN_WINDOW + timedelta(minutes=10)


# --- 4. the error budget ---------------------------------------------------------------------


def test_max_errors_halts_the_rollout_after_a_failed_install_which_is_rolled_back(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["db-1", "db-2", "db-3"], WITH_FAIL)
    window = window_yaml("noon", NOON_WINDOW, max_concurrency="1", max_errors="0")
    commit_fleet(upstream, roots, window)
    spy = Spy(lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True))
    reconciler = loop(tmp_path, file_url(upstream), ManualClock(IN_WINDOW), spy=spy)

    summary = reconciler.reconcile()

    assert summary.jobs == {"Scan succeeded": 3, "Install failed": 1}
    (failed,) = installs(reconciler.store)
    assert failed.status == "failed" and failed.opening == OPENING
    assert spy.installs == [failed.instance]
    # The failed machine got its other update and was rolled back to the pwtest-fail that worked.
    assert versions(roots[failed.instance]) == {"pwtest-lib": "1.0-2", "pwtest-fail": "1.0-1"}
    record = reconciler.store.latest_scan(failed.instance)
    assert record is not None and record.job_id == failed.id
    states = {p["name"]: p["state"] for p in record.evaluation["patches"]}
    assert states == {"pwtest-lib": "INSTALLED", "pwtest-fail": "FAILED"}
    # Nobody else was touched, and everyone is told why.
    halted = "rollout halted: 1 failed job(s) in install-security of window noon exceed maxErrors 0"
    for name in set(roots) - {failed.instance}:
        assert versions(roots[name]) == {"pwtest-lib": "1.0-1", "pwtest-fail": "1.0-1"}, name
    assert dict(summary.waits) == dict.fromkeys(roots, halted)
    # The halt holds for the rest of the opening, whatever the loop is asked again.
    assert reconciler.reconcile().jobs == {}
    assert len(installs(reconciler.store)) == 1
    reconciler.store.close()


# --- 5. crash safety -------------------------------------------------------------------------


def _kill_at_first_install(command: list[str], stderr: Path, timeout: float = 60) -> str:
    """Start ``command`` in its own process group, SIGKILL the group as soon as its log says an
    Install job started; the instance that job was for."""
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )

    def install_started() -> str | None:
        for entry in log_lines(stderr.read_text().rpartition("\n")[0]):
            if entry.get("event") == "job started" and entry.get("operation") == "Install":
                return str(entry["instance"])
        assert process.poll() is None, "the rollout ended before it could be interrupted"
        return None

    try:
        instance = wait_until(
            "an Install job", install_started, timeout=timeout, every=0.01, detail=tail_of(stderr)
        )
        os.killpg(process.pid, signal.SIGKILL)
        return instance
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.mark.slow
def test_a_killed_reconcile_resumes_without_installing_twice_or_losing_results(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, [f"web-{i}" for i in range(1, 5)], BEFORE)
    sha = commit_fleet(upstream, roots, open_window_yaml(max_concurrency="1"))
    state = tmp_path / "state" / "state.db"
    command = [*PATCHCTL, "reconcile", "--source", file_url(upstream), "--state", str(state)]
    command += at_now()

    interrupted = _kill_at_first_install(command, tmp_path / "killed.log")

    with StateStore(state) as store:
        in_flight = store.jobs(status="running")
        assert [j.instance for j in in_flight if j.operation == "Install"] == [interrupted]
        assert len(installs(store)) == 1  # maxConcurrency 1: the rest had not started

    report = reconcile_cli(file_url(upstream), state)

    assert report["revision"] == revision_of(sha)
    with StateStore(state) as store:
        jobs = {job.id: job for job in store.jobs()}
        # The jobs the crash left running were marked abandoned, not finished or re-run blindly...
        abandoned = [j for j in jobs.values() if j.status == "abandoned"]
        assert {j.id for j in abandoned} == {j.id for j in in_flight}
        # ...and their machines were rescanned after them, so what happened there is known.
        for job in abandoned:
            assert any(
                r.operation == "Scan" and r.started_at >= job.created_at
                for r in store.scan_history(job.instance)
            ), f"{job.instance} was not rescanned after its abandoned {job.operation}"
        # No result is lost: every finished job has its record, every instance a record taken
        # after its last install began.
        for job in jobs.values():
            if job.status in ("succeeded", "failed"):
                assert any(r.job_id == job.id for r in store.scan_history(job.instance)), job
        latest = store.latest_scans()
        assert sorted(latest) == sorted(roots)
        for job in installs(store):
            assert latest[job.instance].finished_at >= job.created_at, job.instance
        keys = [job.key for job in jobs.values()]
        assert len(keys) == len(set(keys))
        finished = {j.instance for j in installs(store) if j.status == "succeeded"}
        assert finished >= set(roots) - {interrupted}

    assert_installed_once(roots, interrupted)
    for name in set(roots) - {interrupted}:
        assert dpkg_installs(roots[name]) == {
            ("pwtest-lib", "1.0-2"): 1,
            ("pwtest-tool", "2.1-1"): 1,
        }
    # The interrupted machine is patched if the rescan found work left (new pins), or else waits
    # for the next opening: its snapshot was dispatched once in this one already.
    waits = {w["instance"]: w["reason"] for w in report["waits"]}
    if versions(roots[interrupted]) != AFTER:
        assert "already dispatched" in waits[interrupted]


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A security update whose postinst takes 3 s: time to kill a controller mid-configure."""
    root = tmp_path_factory.mktemp("slow-repo")
    root.chmod(0o755)
    repo = Repo(root)
    repo.add("stable", Pkg("pwtest-slow", "1.0-1"), origin="Debian", label="Debian")
    repo.add(
        "stable-security",
        Pkg("pwtest-slow", "1.0-2", scripts={"postinst": "sleep 3"}),
        origin="Debian",
        label="Debian-Security",
    )
    return repo.publish()


@pytest.mark.slow
def test_a_machine_left_half_configured_by_a_killed_reconcile_is_not_reported_compliant(
    tmp_path: Path, slow_repo: Repo, upstream: Upstream
) -> None:
    roots = make_fleet(tmp_path / "fleet", slow_repo, ["web-1"], [Pkg("pwtest-slow", "1.0-1")])
    commit_fleet(upstream, roots, open_window_yaml())
    state, log = tmp_path / "state" / "state.db", roots["web-1"] / "var/log/dpkg.log"
    command = [*PATCHCTL, "reconcile", "--source", file_url(upstream), "--state", str(state)]
    command += at_now()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            "dpkg to configure pwtest-slow",
            lambda: log.exists() and "half-configured pwtest-slow:all 1.0-2" in log.read_text(),
            timeout=60,
            detail=tail_of(log),
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert dpkg_query(roots["web-1"]) == {"pwtest-slow": ("1.0-2", "iF")}  # half-configured

    report = reconcile_cli(file_url(upstream), state)

    (row,) = report["instances"]
    if dpkg_query(roots["web-1"]) != {"pwtest-slow": ("1.0-2", "ii")}:
        # Still broken: the report must not call the machine compliant, nor the fleet converged.
        assert row["complianceStatus"] == "NON_COMPLIANT"
        assert report["converged"] is False


# --- 6. the signature gate -------------------------------------------------------------------


def test_only_signed_heads_are_reconciled_and_an_unsigned_head_keeps_the_signed_revision(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    keys = SshSigningKeys.create(tmp_path)
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    signed = commit_fleet(upstream, roots, signer=keys.signer(keys.trusted))
    state = tmp_path / "state" / "state.db"
    verify = ("--verify-ssh", str(keys.allowed_signers))

    first = reconcile_cli(file_url(upstream), state, *verify)
    assert (first["revision"], first["refused"]) == (revision_of(signed), [])
    assert first["jobs"] == {"Scan succeeded": 2}
    assert first["converged"] is False  # non-compliant, and no window to patch in

    # An unsigned commit opening a window: refused, so the window is not in force.
    unsigned = commit_fleet(upstream, roots, open_window_yaml())
    second = reconcile_cli(file_url(upstream), state, *verify)
    assert second["refused"] == [revision_of(unsigned)]
    assert second["revision"] == revision_of(signed)
    assert second["jobs"] == {}
    for root in roots.values():
        assert versions(root) == UNPATCHED
    with StateStore(state) as store:
        refusal = store.revisions()[0]
        assert (refusal.revision, refusal.accepted) == (revision_of(unsigned), False)
        assert refusal.problems == [f"{revision_of(unsigned)} refused: unsigned"]

    # A stranger's signature is no better.
    stranger = commit_fleet(upstream, roots, open_window_yaml(), signer=keys.signer(keys.stranger))
    third = reconcile_cli(file_url(upstream), state, *verify)
    assert (third["revision"], third["refused"]) == (revision_of(signed), [revision_of(stranger)])
    assert third["jobs"] == {}

    # The same change, signed by a trusted key, is applied.
    trusted = commit_fleet(upstream, roots, open_window_yaml(), signer=keys.signer(keys.trusted))
    fourth = reconcile_cli(file_url(upstream), state, *verify)
    assert (fourth["revision"], fourth["refused"]) == (revision_of(trusted), [])
    assert fourth["jobs"] == {"Install succeeded": 2}
    for root in roots.values():
        assert versions(root) == AFTER


# --- 7. patchctl run -------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def served_upstream(tmp_path: Path) -> Iterator[tuple[Upstream, str]]:
    """The fleet's repository served by ``git daemon`` on loopback: (upstream, git:// URL)."""
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    with git_daemon(tmp_path / "srv", tmp_path / "git-daemon.log") as daemon:
        yield upstream, f"git://127.0.0.1:{daemon.port}/fleet.git"


@pytest.mark.slow
def test_patchctl_run_serves_health_and_metrics_follows_commits_and_stops_gracefully(
    tmp_path: Path, apt_repo: Repo, served_upstream: tuple[Upstream, str]
) -> None:
    upstream, url = served_upstream
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    first = commit_fleet(upstream, roots)
    state, log = tmp_path / "state" / "state.db", tmp_path / "run.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["run", "--source", url, "--state", str(state), "--interval", "1", *at_now()]
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, *argv, "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_until(
            "/healthz to be 200",
            lambda: _get(f"{base}/healthz")[0] == 200,
            timeout=30,
            detail=tail_of(log),
        )
        status, metrics = _get(f"{base}/metrics")
        assert status == 200
        assert 'patchwarden_jobs_total{operation="Scan",status="succeeded"} 2.0' in metrics
        assert "patchwarden_last_successful_reconcile_timestamp_seconds " in metrics
        assert _get(f"{base}/nowhere")[0] == 404

        # A commit opening a window is picked up by the next poll, and the rollout starts.
        second = commit_fleet(upstream, roots, open_window_yaml(max_concurrency="1"))
        committed = time.monotonic()

        def install_started() -> bool:
            return any(
                e.get("event") == "job started"
                and e.get("operation") == "Install"
                and e.get("revision") == revision_of(second)
                for e in log_lines(log.read_text().rpartition("\n")[0])
            )

        wait_until(
            "an Install job of the new commit", install_started, timeout=15, detail=tail_of(log)
        )
        assert time.monotonic() - committed < 10  # polled every second

        # SIGTERM in the middle of the rollout: the running job finishes, nothing new starts.
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - stopping < 10  # the one running install, then out
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    entries = log_lines(log.read_text())
    assert entries[-1]["event"] == "stopped"
    accepted = [e["revision"] for e in entries if e["event"] == "snapshot accepted"]
    assert accepted == [revision_of(first), revision_of(second)]
    job_lines = [e for e in entries if e["event"] in ("job started", "job finished")]
    assert job_lines
    assert all(e.get("revision") and e.get("instance") for e in job_lines)
    assert all({"timestamp", "level"} <= set(e) for e in entries)
    with StateStore(state) as store:
        jobs = installs(store)
        assert store.jobs(status="running") == []
        assert [(j.status, j.revision) for j in jobs] == [("succeeded", revision_of(second))]
        patched = jobs[0].instance
        record = store.latest_scan(patched)
        assert record is not None and record.job_id == jobs[0].id
    assert versions(roots[patched]) == AFTER
    (other,) = set(roots) - {patched}
    assert versions(roots[other]) == UNPATCHED  # stopped before its turn


# --- 8. the ssh transport --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not have_sshd():
        pytest.skip("needs /usr/sbin/sshd, python3 and root")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def test_the_ssh_transport_converges_a_machine_as_the_local_one_does(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream, sshd: Sshd
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["local-1", "remote-1"], BEFORE)
    upstream.write("fleet.yaml", documents(BASELINE_YAML, window_yaml("noon", NOON_WINDOW)))
    upstream.write(
        "instances.yaml",
        documents(
            local_instance_yaml("local-1", roots["local-1"]),
            ssh_instance_yaml(
                "remote-1",
                roots["remote-1"],
                port=sshd.port,
                identity_file=sshd.client_key_file,
                known_hosts_file=sshd.known_hosts_file,
            ),
        ),
    )
    sha = upstream.commit("one local and one ssh machine")
    logins = sshd.accepted_logins()
    with SshPool() as pool:
        spy = Spy(
            lambda instance: transport_for(
                instance.spec.connection,
                pool=pool,
                ssh_dir=sshd.directory,
                trust_root_scripts=True,
            )
        )
        reconciler = loop(tmp_path, file_url(upstream), ManualClock(IN_WINDOW), spy=spy)
        summary = reconciler.reconcile()

    assert summary.jobs == {"Scan succeeded": 2, "Install succeeded": 2}
    assert summary.converged
    assert sshd.accepted_logins() > logins  # the remote machine really was reached over ssh
    assert_converged(reconciler.store, roots, revision_of(sha))
    latest = reconciler.store.latest_scans()
    local, remote = latest["local-1"], latest["remote-1"]
    assert remote.evaluation["summary"] == local.evaluation["summary"]
    assert remote.evaluation["patches"] == local.evaluation["patches"]
    assert dpkg_installs(roots["remote-1"]) == dpkg_installs(roots["local-1"])
    reconciler.store.close()


# --- first-seen dates on Debian (a Patchwarden extension) ------------------------------------


def test_first_seen_delays_debian_security_updates_by_approve_after_days(
    tmp_path: Path, apt_repo: Repo, upstream: Upstream
) -> None:
    """With approveAfterDaysFrom: FirstSeen and approveAfterDays: 7, the first scan that sees the
    security updates starts their clock: the window's openings install nothing for 7 days, then
    install them."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    delayed = BASELINE_YAML.replace(
        "      complianceLevel: HIGH\n",
        "      approveAfterDays: 7\n      complianceLevel: HIGH\n  approveAfterDaysFrom: FirstSeen\n",
    )
    upstream.write("fleet.yaml", documents(delayed, window_yaml("noon", NOON_WINDOW)))
    upstream.write("instances.yaml", local_instance_yaml("web-1", roots["web-1"]))
    upstream.commit("fleet")
    clock = ManualClock(IN_WINDOW)
    reconciler = loop(tmp_path, file_url(upstream), clock)

    reconciler.reconcile()
    assert versions(roots["web-1"]) == UNPATCHED
    # The scan was evaluated (and stored) with the time it first saw each offered version.
    scanned = Inventory.model_validate(reconciler.store.latest_scans()["web-1"].inventory)
    assert {u.name: u.first_seen for u in scanned.updates} == {
        "pwtest-lib": IN_WINDOW,
        "pwtest-tool": IN_WINDOW,
        "pwtest-other": IN_WINDOW,
    }

    clock.advance_to(IN_WINDOW + timedelta(days=6))  # the sixth opening after: still waiting
    assert reconciler.reconcile().jobs == {"Scan succeeded": 1}
    assert versions(roots["web-1"]) == UNPATCHED

    # A minute later, so that the day-old scan is stale and the planner scans again.
    clock.advance_to(IN_WINDOW + timedelta(days=7, minutes=1))
    assert reconciler.reconcile().jobs == {"Scan succeeded": 1, "Install succeeded": 1}
    assert versions(roots["web-1"]) == AFTER
    reconciler.store.close()
