"""The job queue of many workers on a real PostgreSQL 15 (issue 16, items 2 and 5;
``reconciler.state.postgres.queue``): claims with ``FOR UPDATE SKIP LOCKED`` never give one entry
to two workers, heartbeats keep a lease, and an entry whose worker died is reclaimed exactly once,
its dead worker's running job abandoned so that its key still runs once.

Each worker is a store of its own (its own session, as another process or host would have);
workers run as threads, so their claims really race in the server. Times are injected.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.enums import Operation
from reconciler.state.postgres.queue import QueuedJob
from reconciler.state.postgres.store import PostgresStore
from tests.postgres import Postgres

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def _entries(count: int, prefix: str = "job") -> list[tuple[str, dict[str, Any]]]:
    return [(f"{prefix}-{n}", {"instance": f"web-{n}", "n": n}) for n in range(count)]


def _race(workers: int, body: Callable[[int], None]) -> None:
    """Run ``body(i)`` for each worker i on its own thread, all released at once; re-raise the
    first failure."""
    start, failures = threading.Barrier(workers), []

    def run(i: int) -> None:
        try:
            start.wait()
            body(i)
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def test_ten_thousand_jobs_claimed_by_racing_workers_each_run_exactly_once(
    postgres_url: str,
) -> None:
    with PostgresStore(postgres_url) as leader:
        assert leader.enqueue_jobs(_entries(10_000), NOW) == 10_000
        assert leader.enqueue_jobs(_entries(10), NOW) == 0  # re-planned keys are not queued again
    ran: list[list[str]] = [[] for _ in range(6)]

    def worker(i: int) -> None:
        with PostgresStore(postgres_url) as store:
            while held := store.claim_queued(f"w{i}", limit=25, now=NOW):
                for job in held:  # the cheapest job body: finish it, owning it
                    assert job.claims == 1
                    assert store.finish_queued(f"w{i}", job.key, NOW)
                    ran[i].append(job.key)

    _race(6, worker)

    counts = Counter(key for keys in ran for key in keys)
    assert len(counts) == 10_000
    assert set(counts.values()) == {1}, [k for k, c in counts.items() if c > 1][:10]
    assert sum(1 for keys in ran if keys) > 1  # the workers did share the queue


def test_a_dead_workers_jobs_are_reclaimed_exactly_once_and_its_running_job_not_rerun(
    postgres_url: str,
) -> None:
    with PostgresStore(postgres_url) as store:
        store.enqueue_jobs(_entries(40), NOW)
        dead = store.claim_queued("dead", limit=20, now=NOW)
        alive = store.claim_queued("alive", limit=20, now=NOW)
        started = _claim_job(store, dead[0])  # the dead worker had started one of its jobs
        later = NOW + LEASE + timedelta(seconds=1)
        assert store.heartbeat_queued("alive", [j.key for j in alive], later) == {
            j.key for j in alive
        }
    taken: list[list[QueuedJob]] = [[] for _ in range(4)]

    def reclaimer(i: int) -> None:
        with PostgresStore(postgres_url) as own:
            while held := own.reclaim_lapsed(f"r{i}", lease=LEASE, limit=3, now=later):
                taken[i].extend(held)

    _race(4, reclaimer)

    reclaimed = [job for jobs in taken for job in jobs]
    assert sorted(j.key for j in reclaimed) == sorted(j.key for j in dead)  # each one, once
    assert {j.claims for j in reclaimed} == {2}
    with PostgresStore(postgres_url) as store:
        # The dead worker lost its leases, even if it was only slow...
        assert store.heartbeat_queued("dead", [j.key for j in dead], later) == set()
        assert not store.finish_queued("dead", dead[0].key, later)
        # ...its started job was abandoned (its machine gets rescanned), and its key keeps its
        # meaning: whoever reclaimed it cannot start it again.
        assert store.job(started).status == "abandoned"  # type: ignore[union-attr]
        assert _claim_job(store, dead[0]) is None


@settings(max_examples=15, deadline=None)
@given(
    queued=st.integers(0, 60),
    workers=st.integers(2, 5),
    batch=st.integers(1, 7),
    dying=st.integers(0, 4),
)
def test_claims_and_reclaims_never_give_one_entry_to_two_live_workers(
    postgres_server: Postgres, queued: int, workers: int, batch: int, dying: int
) -> None:
    url = postgres_server.fresh_database()
    with PostgresStore(url) as store:
        store.enqueue_jobs(_entries(queued), NOW)
        lost = {j.key for j in store.claim_queued("dying", limit=dying * batch, now=NOW)}
    later = NOW + LEASE * 2
    ran: list[list[str]] = [[] for _ in range(workers)]

    def worker(i: int) -> None:
        with PostgresStore(url) as own:
            while held := own.claim_queued(f"w{i}", limit=batch, now=later) or own.reclaim_lapsed(
                f"w{i}", lease=LEASE, limit=batch, now=later
            ):
                ran[i].extend(job.key for job in held if own.finish_queued(f"w{i}", job.key, later))

    _race(workers, worker)

    counts = Counter(key for keys in ran for key in keys)
    assert sorted(counts) == sorted(key for key, _ in _entries(queued))
    assert set(counts.values()) <= {1}
    assert lost <= set(counts)  # the dying worker's entries were taken over


def _claim_job(store: PostgresStore, job: QueuedJob) -> str | None:
    """Claim the job of a queue entry in the jobs table (what a worker's runner does first)."""
    record = store.claim_job(
        key=job.key,
        instance=job.payload["instance"],
        operation=Operation.SCAN,
        window=None,
        task=None,
        opening=None,
        revision="main@sha1:0",
        payload=job.payload,
        now=NOW,
    )
    return None if record is None else record.id
