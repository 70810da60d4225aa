"""The job queue's wake-ups on a real PostgreSQL 15 (tests/postgres.py): workers claim what is
queued, and the leader learns that a queued job finished, when the queue announces it (LISTEN /
NOTIFY), not on their fallback poll; a listening session that is cut is made anew; an entry
whose announcement was lost is still claimed on the fallback poll.

Every leader and worker here but the last test's polls once an hour (:data:`NEVER`), so a test
that passes did so by a notification: none waits anywhere near that long. The jobs are real
JobRunner jobs against a simulated machine (tests/simulated.py), recorded in the real store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import structlog

from reconciler.api.enums import Operation
from reconciler.api.snapshot import build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.loop.common import InForce
from reconciler.loop.reboots import RebootSettings
from reconciler.loop.workers import QueueExecutor, Worker, WorkerSettings, job_payload, runners
from reconciler.plan import Action
from reconciler.state import JobRecord
from reconciler.state.postgres.notify import APPLICATION
from reconciler.state.postgres.store import PostgresStore
from reconciler.state.records import to_json, to_text
from tests.fleet import BASELINE, BASELINE_YAML, documents, local_instance_yaml
from tests.simulated import SimulatedFleet
from tests.waiting import wait_until

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NEVER = 3600.0
"""The fallback poll of the leaders and workers under test: an hour, far beyond any wait here."""
MACHINE = "sim-00000"


def _clock() -> datetime:
    return NOW


def _in_force() -> InForce:
    text = documents(BASELINE_YAML, local_instance_yaml(MACHINE, Path(f"/srv/sim/{MACHINE}")))
    snapshot = build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    return InForce(snapshot=snapshot, revision="main@sha1:abc")


def _scan(key: str) -> Action:
    return Action(Operation.SCAN, MACHINE, key, "never scanned", BASELINE, "h")


class _Parts:
    """A simulated machine and a JobRunner for the revision, built as ``patchctl worker`` does."""

    def __init__(self, store: PostgresStore) -> None:
        self.fleet = SimulatedFleet(1)
        self.stopping = threading.Event()
        self.runner_for = runners(
            store, self.fleet.transport, clock=_clock, log=structlog.get_logger("test"),
            stopping=self.stopping, reboot_settings=RebootSettings(),
        )  # fmt: skip


@contextmanager
def _worker(store: PostgresStore, parts: _Parts, *, poll: float = NEVER) -> Iterator[Worker]:
    """A worker of 2 slots running in a thread; stopped (and its thread joined) at the end."""
    settings = WorkerSettings("w1", 2, timedelta(seconds=30), poll=poll)
    worker = Worker(
        store, store, parts.runner_for, settings, clock=_clock,
        log=structlog.get_logger("test"), stopping=parts.stopping,
    )  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        yield worker
    finally:
        parts.stopping.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def _asleep(worker: Worker) -> None:
    """Wait until the worker has read the queue, found nothing, and sleeps on its wake-up."""
    wait_until("the worker waits", lambda: worker.wakeup.asleep)


def _done(store: PostgresStore, key: str) -> JobRecord:
    """The job of ``key`` once its entry is done."""
    wait_until(f"{key} done", lambda: store.queued_states([key]) == {key: "done"}, timeout=30)
    job = store.job_by_key(key)
    assert job is not None
    return job


def _queued_while_asleep(store: PostgresStore, worker: Worker, key: str) -> JobRecord:
    """Queue a scan of the machine once the worker sleeps; its job once done."""
    _asleep(worker)
    store.enqueue_jobs([(key, job_payload(_scan(key), _in_force()))], NOW)
    return _done(store, key)


@contextmanager
def _served(url: str, *, poll: float = NEVER) -> Iterator[tuple[PostgresStore, _Parts, Worker]]:
    """A store on ``url`` and a worker on it, with the worker's parts."""
    with PostgresStore(url) as store:
        parts = _Parts(store)
        with _worker(store, parts, poll=poll) as worker:
            yield store, parts, worker


def test_an_idle_worker_claims_a_job_queued_while_it_waits_without_waiting_for_its_poll(
    postgres_url: str,
) -> None:
    with _served(postgres_url) as (store, parts, worker):
        first = _queued_while_asleep(store, worker, "k1")
        second = _queued_while_asleep(store, worker, "k2")  # and again, once idle anew
    assert [(job.status, job.instance) for job in (first, second)] == [("succeeded", MACHINE)] * 2
    assert parts.fleet.machines[MACHINE].calls == 2


def test_the_leader_frees_a_queued_jobs_slot_when_the_queue_says_it_is_done(
    postgres_url: str,
) -> None:
    in_force = _in_force()
    # The worker claims on a short poll: only the leader's wake-up is under test.
    with _served(postgres_url, poll=0.2) as (store, parts, _):
        leader = QueueExecutor(store, in_force, parts.runner_for(in_force), 2, _clock, poll=NEVER)
        try:
            job = leader.submit(leader.runner.execute, _scan("k1")).result(timeout=30)
        finally:
            leader.shutdown(wait=True)
    assert job is not None and (job.key, job.status) == ("k1", "succeeded")


def _listeners(url: str) -> set[int]:
    """The sessions of queue listeners on the database at ``url``."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()",
            (APPLICATION,),
        ).fetchall()
    return {int(row[0]) for row in rows}


def test_a_worker_whose_listening_session_is_cut_listens_again_and_claims_without_its_poll(
    postgres_url: str,
) -> None:
    with _served(postgres_url) as (store, _, worker):
        _asleep(worker)
        (first,) = _listeners(postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        wait_until(
            "a new listening session",
            lambda: (lambda now: bool(now) and first not in now)(_listeners(postgres_url)),
        )
        job = _queued_while_asleep(store, worker, "k1")
    assert job.status == "succeeded"


def test_an_entry_whose_announcement_was_lost_is_claimed_on_the_fallback_poll(
    postgres_url: str,
) -> None:
    """Queued without a NOTIFY (as if sent while no session listened): the poll finds it."""
    with _served(postgres_url, poll=0.2) as (store, _, worker):
        _asleep(worker)
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute(
                "INSERT INTO job_queue (key, payload, enqueued_at) VALUES (%s, %s, %s)",
                ("k1", to_json(job_payload(_scan("k1"), _in_force())), to_text(NOW)),
            )
        job = _done(store, "k1")
    assert job.status == "succeeded"
