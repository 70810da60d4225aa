"""Many workers, one plan, on a real PostgreSQL 15 (issue 16, item 2): a leader with
``--external-workers`` queues its planned jobs, ``patchctl worker`` processes claim and run them
on real Debian roots (dpkg.log counts every install), within the window task's maxConcurrency;
a worker SIGKILLed mid-job has its entry reclaimed once after its lease, its machine rescanned
and nothing installed twice; SQLite state refuses both options in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import structlog

from reconciler.api.enums import OperatingSystem, Operation
from reconciler.api.snapshot import build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.evaluation import resolve
from reconciler.loop.common import InForce, utc_now
from reconciler.loop.jobs import JobRunner
from reconciler.loop.workers import QueueExecutor, Worker, WorkerSettings, decode, job_payload
from reconciler.plan import Action
from reconciler.state import JobRecord
from reconciler.state.postgres.store import PostgresStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import (
    API,
    BASELINE,
    BASELINE_YAML,
    documents,
    dpkg_installs,
    local_instance_yaml,
    make_fleet,
    open_window_yaml,
    versions,
    window_yaml,
)
from tests.git_servers import Upstream
from tests.test_loop_e2e import (
    AFTER,
    BEFORE,
    PATCHCTL,
    ROOT,
    _kill_at_first_install,
    assert_installed_once,
    commit_fleet,
    file_url,
    installs,
    log_lines,
    patchctl,
    upstream,  # noqa: F401  (the fleet's Git repository, a fixture)
)
from tests.waiting import tail_of, wait_until

LEASE = "2"  # seconds: a killed worker's entry is reclaimed this long after its last heartbeat


@contextmanager
def _workers(url: str, logs: Path, *names: str, slots: str = "2") -> Iterator[list[Path]]:
    """``patchctl worker`` processes on ``url``, one per name; SIGTERMed at the end, each must
    then exit 0 (its running jobs finished)."""
    processes, stderrs = [], []
    for name in names:
        stderr = logs / f"{name}.log"
        with stderr.open("wb") as err:
            command = [*PATCHCTL, "worker", "--state", url, "--worker-id", name]
            command += ["--workers", slots, "--lease", LEASE]
            processes.append(subprocess.Popen(command, cwd=ROOT, stderr=err))
        stderrs.append(stderr)
    try:
        yield stderrs
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
        assert codes == [0] * len(processes), [tail_of(e)() for e in stderrs]


def _fleet(
    tmp_path: Path, repo: Repo, git: Upstream, count: int, *, max_concurrency: int
) -> dict[str, Path]:
    """``count`` unpatched Debian roots, committed with a window open now."""
    roots = make_fleet(tmp_path / "fleet", repo, [f"web-{i}" for i in range(1, count + 1)], BEFORE)
    # patchctl worker has no --now: a leader and its workers write one job's times (queued,
    # claimed, finished) from different processes, and each process would start a --now clock
    # when it parses it, so they would disagree by their start-up times. They share the wall
    # clock, so this window alone is open at the host's time.
    window = open_window_yaml(now=utc_now(), max_concurrency=str(max_concurrency))
    commit_fleet(git, roots, window)
    return roots


def _leader(url: str, state: str, stdout: Path, stderr: Path) -> subprocess.Popen[bytes]:
    command = [*PATCHCTL, "reconcile", "--source", url, "--state", state]
    command += ["--external-workers", "-o", "json"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err)


def _most_at_once(jobs: list[JobRecord]) -> int:
    """The most jobs running at one instant, from their recorded start and finish times."""
    edges = [(j.created_at, 1) for j in jobs] + [(j.finished_at or j.created_at, -1) for j in jobs]
    most = running = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        most = max(most, running)
    return most


def _started_jobs(log: Path) -> list[str]:
    return [
        str(entry["instance"])
        for entry in log_lines(log.read_text())
        if entry.get("event") == "job started"
    ]


@needs_apt
def test_a_leader_and_two_workers_converge_a_fleet_within_max_concurrency(
    tmp_path: Path,
    apt_repo: Repo,
    upstream: Upstream,  # noqa: F811  (the fixture imported above)
    postgres_url: str,
) -> None:
    roots = _fleet(tmp_path, apt_repo, upstream, 5, max_concurrency=2)
    with _workers(postgres_url, tmp_path, "w1", "w2") as worker_logs:
        leader = _leader(
            file_url(upstream), postgres_url, tmp_path / "out.json", tmp_path / "leader.log"
        )
        assert leader.wait(timeout=300) == 0, tail_of(tmp_path / "leader.log")()

    report = json.loads((tmp_path / "out.json").read_text())
    assert report["converged"] is True
    for name, root in roots.items():
        assert versions(root) == AFTER, name
        assert all(count == 1 for count in dpkg_installs(root).values()), name
    # The leader ran nothing itself: every job was a worker's.
    assert _started_jobs(tmp_path / "leader.log") == []
    ran = [name for log in worker_logs for name in _started_jobs(log)]
    assert set(ran) == set(roots)  # a scan, then an install, of every machine
    with PostgresStore(postgres_url) as store:
        done = [job for job in installs(store) if job.status == "succeeded"]
        assert sorted(job.instance for job in done) == sorted(roots)
        assert _most_at_once(done) <= 2


@needs_apt
def test_a_killed_workers_job_is_reclaimed_once_and_its_machine_rescanned_not_reinstalled(
    tmp_path: Path,
    apt_repo: Repo,
    upstream: Upstream,  # noqa: F811  (the fixture imported above)
    postgres_url: str,
) -> None:
    roots = _fleet(tmp_path, apt_repo, upstream, 3, max_concurrency=1)
    out, leader_log = tmp_path / "out.json", tmp_path / "leader.log"
    leader = _leader(file_url(upstream), postgres_url, out, leader_log)
    try:
        doomed = [*PATCHCTL, "worker", "--state", postgres_url, "--worker-id", "doomed"]
        doomed += ["--workers", "1", "--lease", LEASE]
        interrupted = _kill_at_first_install(doomed, tmp_path / "doomed.log", timeout=120)
        with _workers(postgres_url, tmp_path, "heir", slots="1") as (heir_log,):
            assert leader.wait(timeout=300) == 0, tail_of(leader_log)()
    finally:
        if leader.poll() is None:
            os.kill(leader.pid, signal.SIGKILL)

    # The interrupted install's key was dispatched in this opening: not tried again in it.
    waits = {w["instance"]: w["reason"] for w in json.loads(out.read_text())["waits"]}
    assert "already dispatched" in waits[interrupted]
    reclaims = [e for e in log_lines(heir_log.read_text()) if "reclaimed" in e.get("event", "")]
    assert [e["event"] for e in reclaims] == ["job reclaimed: its worker stopped heartbeating"]
    assert_installed_once(roots, interrupted)
    with PostgresStore(postgres_url) as store:
        (dead,) = [j for j in installs(store) if j.status == "abandoned"]
        assert dead.instance == interrupted
        assert store.queued_states([dead.key]) == {dead.key: "done"}
        # The machine the kill interrupted was rescanned after the abandoned install.
        rescans = [s for s in store.scan_history(interrupted) if s.started_at > dead.created_at]
        assert rescans, f"{interrupted} was not rescanned after its worker was killed"


def test_sqlite_state_and_a_lease_of_less_than_a_few_heartbeats_are_refused_in_one_line(
    tmp_path: Path,
) -> None:
    state = str(tmp_path / "state.db")
    worker = patchctl("worker", "--state", state)
    assert worker.returncode != 0
    assert worker.stderr.splitlines() == [
        "patchctl: patchctl worker needs PostgreSQL state (--state"
        " postgresql://USER@HOST/DATABASE): the job queue workers claim from is in PostgreSQL;"
        " SQLite state runs jobs in one process"
    ]
    leader = patchctl(
        "reconcile", "--source", str(tmp_path), "--state", state, "--external-workers"
    )
    assert leader.returncode != 0
    assert leader.stderr.splitlines()[-1].startswith(
        "patchctl: --external-workers needs PostgreSQL state"
    )


def test_a_payload_a_worker_cannot_decode_fails_its_job_with_the_reason(
    postgres_url: str,
) -> None:
    now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    stopping = threading.Event()

    def no_runner(_: InForce) -> JobRunner:
        raise AssertionError("an undecodable payload must run nothing")

    with PostgresStore(postgres_url) as store:
        garbled = {"format": 1, "action": {"instance": "web-1", "operation": "Install"}}
        store.enqueue_jobs([("k-garbled", garbled), ("k-future", {"format": 99})], now)
        settings = WorkerSettings("w1", 2, timedelta(seconds=30))
        log = structlog.get_logger("test")
        worker = Worker(
            store, store, no_runner, settings, clock=lambda: now, log=log, stopping=stopping
        )
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(
                "both entries done",
                lambda: (
                    store.queued_states(["k-garbled", "k-future"])
                    == {"k-garbled": "done", "k-future": "done"}
                ),
            )
        finally:
            stopping.set()
            thread.join(timeout=30)
        garbled_job, future_job = store.job_by_key("k-garbled"), store.job_by_key("k-future")
    assert garbled_job is not None and future_job is not None
    assert (garbled_job.status, garbled_job.instance, garbled_job.operation) == (
        "failed",
        "web-1",
        "Install",
    )
    assert garbled_job.result["error"]["code"] == "PayloadRefused"
    assert "cannot decode the queued job" in garbled_job.result["error"]["message"]
    assert future_job.result["error"]["message"].startswith("payload format 99 is not 1")


def test_a_queued_payload_carries_what_its_job_reads_and_nothing_is_lost_on_the_way() -> None:
    text = documents(
        BASELINE_YAML,
        window_yaml("noon", "cron(0 12 * * ? *)"),
        window_yaml("night", "cron(0 1 * * ? *)"),
        local_instance_yaml("web-1", Path("/srv/web-1")),
        local_instance_yaml("web-2", Path("/srv/web-2")),
    )
    snapshot = build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    in_force = InForce(snapshot=snapshot, revision="main@sha1:abc")
    windowed = Action(
        Operation.INSTALL, "web-1", "k1", "missing", BASELINE, "h", "noon", "install-security",
        "2026-11-28T12:00:00Z", pins=("pwtest-lib=1.0-2",),
    )  # fmt: skip
    one_off = Action(Operation.SCAN, "web-2", "k2", "now", BASELINE, "h", opening="oneoff-1")

    for action, windows in ((windowed, ["noon"]), (one_off, ["night", "noon"])):
        payload = json.loads(json.dumps(job_payload(action, in_force)))  # as the queue keeps it
        decoded, carried = decode(payload)
        assert decoded == action
        assert carried.revision == "main@sha1:abc" and carried.snapshot is not None
        assert list(carried.snapshot.instances) == [action.instance]
        assert sorted(carried.snapshot.windows) == windows
        labels = snapshot.instances[action.instance].metadata.labels
        for system in OperatingSystem:
            here, there = (
                resolve(snapshot, labels, system),
                resolve(carried.snapshot, labels, system),
            )
            assert (here.baseline, here.group) == (there.baseline, there.group), system


def test_a_leader_whose_queued_jobs_no_worker_claims_says_so_once() -> None:
    """With ``--external-workers`` and no ``patchctl worker`` running, the leader's pass waits
    for its queued jobs; after UNCLAIMED_WARNING it tells the operator what to start, once."""
    text = documents(BASELINE_YAML, window_yaml("noon", "cron(0 12 * * ? *)"))
    text = documents(text, local_instance_yaml("web-1", Path("/srv/web-1")))
    snapshot = build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    queue, runner = _UnclaimedQueue(), _Runner()
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    with structlog.testing.capture_logs() as logs:
        pool = QueueExecutor(
            cast(Any, queue), InForce(snapshot=snapshot, revision="main@sha1:abc"),
            cast(Any, runner), 2, lambda: now[0], poll=0.05,
        )  # fmt: skip
        try:
            action = Action(Operation.SCAN, "web-1", "k-root", "now", BASELINE, "h", "noon")
            pool.submit(runner.execute, action)
            wait_until("the leader polls the queue", lambda: queue.asked >= 2)
            assert not [line for line in logs if "wait for a worker" in line["event"]]
            now[0] += timedelta(minutes=3)
            wait_until(
                "the warning", lambda: any("wait for a worker" in line["event"] for line in logs)
            )
            asked = queue.asked
            wait_until("two more polls", lambda: queue.asked >= asked + 2)
        finally:
            pool.shutdown(wait=True)
    warned = [line for line in logs if "wait for a worker" in line["event"]]
    assert len(warned) == 1 and "patchctl worker" in warned[0]["event"]
    assert (warned[0]["queued"], warned[0]["waiting_seconds"]) == (1, 180)


class _UnclaimedQueue:
    """A queue whose entries no worker ever claims."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.asked = 0

    def enqueue_jobs(self, entries: Any, now: datetime) -> int:
        self.queued.extend(key for key, _ in entries)
        return len(self.queued)

    def queued_states(self, keys: Any) -> dict[str, str]:
        self.asked += 1
        return {key: "queued" for key in keys}

    def listen_queue(self, event: str, wake: Any) -> Any:
        return _NotListening()


class _RecordingQueue:
    """The store's job queue as the leader sees it (enqueue only): what was queued."""

    def __init__(self) -> None:
        self.queued: list[str] = []

    def enqueue_jobs(self, entries: Any, now: datetime) -> int:
        self.queued.extend(key for key, _ in entries)
        return len(self.queued)

    def queued_states(self, keys: Any) -> dict[str, str]:
        return {}

    def listen_queue(self, event: str, wake: Any) -> Any:
        return _NotListening()


class _NotListening:
    """A queue no notification comes from: the leader reads it on its poll alone."""

    def close(self) -> None:
        pass


class _Runner:
    """Stands for the leader's JobRunner: which actions ran in this process."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.log = structlog.get_logger()

    def execute(self, action: Action) -> None:
        self.ran.append(action.key)


def test_a_kubernetes_nodes_job_runs_on_the_leader_never_in_the_queue() -> None:
    """Workers have no Kubernetes API access (the chart binds their account to nothing), so a
    Node's job (node Job, cordon, drain) stays with the controller; other jobs are queued."""
    node = f"{API}\nkind: ManagedInstance\nmetadata:\n  name: node-1\n  labels: {{fleet: e2e}}\n"
    node += "spec:\n  connection: {type: kubernetes, node: node-1}\n"
    text = documents(
        BASELINE_YAML, window_yaml("noon", "cron(0 12 * * ? *)"), node,
        local_instance_yaml("web-1", Path("/srv/web-1")),
    )  # fmt: skip
    snapshot = build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    queue, runner = _RecordingQueue(), _Runner()
    clock = lambda: datetime(2030, 1, 1, tzinfo=UTC)  # noqa: E731
    pool = QueueExecutor(
        cast(Any, queue), InForce(snapshot=snapshot, revision="main@sha1:abc"),
        cast(Any, runner), 2, clock,
    )  # fmt: skip
    try:
        on_node = Action(Operation.SCAN, "node-1", "k-node", "now", BASELINE, "h", "noon")
        on_root = Action(Operation.SCAN, "web-1", "k-root", "now", BASELINE, "h", "noon")
        pool.submit(runner.execute, on_node).result(timeout=30)
        pool.submit(runner.execute, on_root)
        assert (runner.ran, queue.queued) == (["k-node"], ["k-root"])
    finally:
        pool.shutdown(wait=True)


class _InstantQueue:
    """A queue whose worker is faster than the leader: the entry is done, and the queue says
    so, before ``enqueue_jobs`` has returned (a 50 ms job on a loaded host)."""

    def __init__(self) -> None:
        self.wake: Any = None
        self.leader: QueueExecutor | None = None

    def listen_queue(self, event: str, wake: Any) -> Any:
        assert event == "done"
        self.wake = wake
        return _NotListening()

    def enqueue_jobs(self, entries: Any, now: datetime) -> int:
        self.wake()
        assert self.leader is not None
        leader = self.leader
        wait_until("the leader read the queue and waits again", lambda: leader.wakeup.asleep)
        return 1

    def queued_states(self, keys: Any) -> dict[str, str]:
        return {key: "done" for key in keys}

    def job_by_key(self, key: str) -> None:
        return None


def test_a_job_done_before_its_enqueue_returns_completes_on_that_announcement() -> None:
    """The leader follows a key before queuing it, so an announcement that beats the enqueue's
    return finds it; with the fallback poll at an hour, nothing else could complete it."""
    text = documents(BASELINE_YAML, local_instance_yaml("web-1", Path("/srv/web-1")))
    snapshot = build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    runner, queue = _Runner(), _InstantQueue()
    pool = queue.leader = QueueExecutor(
        cast(Any, queue), InForce(snapshot=snapshot, revision="main@sha1:abc"),
        cast(Any, runner), 2, lambda: datetime(2030, 1, 1, tzinfo=UTC), poll=3600,
    )  # fmt: skip
    try:
        action = Action(Operation.SCAN, "web-1", "k-fast", "never scanned", BASELINE, "h")
        assert pool.submit(runner.execute, action).result(timeout=30) is None
    finally:
        pool.shutdown(wait=True)
