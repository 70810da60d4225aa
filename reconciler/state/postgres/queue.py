"""Stage: state. The job queue of PostgreSQL state (issue 16, "many workers, one plan";
docs/state.md, "Workers"): the leader enqueues planned actions under their idempotency keys, any
number of workers claim them with ``SELECT … FOR UPDATE SKIP LOCKED``, heartbeat what they hold,
and an entry whose worker stopped heartbeating for a lease is reclaimed by exactly one worker.
Touches only the connection it is given, inside the caller's transaction: the ``job_queue``
table, and when reclaiming the ``jobs`` row of the same key; decides nothing (callers pass
``now`` and the lease).

The queue is a work list, not history: an entry goes queued → claimed → done and is updated in
place. What ran, and what each job did, stays in the append-only ``jobs`` table, where the key's
UNIQUE index still decides that a key runs once: a reclaimed entry whose dead worker had claimed
its job finds that job abandoned (its machine is rescanned by the plan, as after a dead leader)
and runs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from reconciler.state.postgres.notify import DONE, QUEUED, notify
from reconciler.state.records import from_json, to_json, to_text

Connection = psycopg.Connection[tuple[Any, ...]]

_CLAIMED = " RETURNING q.key, q.payload, q.claims"


@dataclass(frozen=True)
class QueuedJob:
    """An entry a worker holds: the action's key and payload (``asdict(action)``), and how many
    times it was claimed (1, or more when reclaimed from a worker that died)."""

    key: str
    payload: dict[str, Any]
    claims: int


def enqueue(conn: Connection, entries: Iterable[tuple[str, dict[str, Any]]], now: datetime) -> int:
    """Queue each (key, payload) not queued before; how many were new. A key queued again (the
    leader re-plans every pass) is left as it is, whatever its state. New entries are announced
    on :data:`~reconciler.state.postgres.notify.QUEUED` when the caller's transaction commits."""
    listed = list(entries)
    if not listed:
        return 0
    # The arrays go in binary (%b): as text, psycopg escapes every quote of every JSON payload
    # with a regular expression, most of the leader's time per queued job (bench/fleet_scale.py).
    cursor = conn.execute(
        "INSERT INTO job_queue (key, payload, enqueued_at)"
        " SELECT e.key, e.payload, %s FROM unnest(%b::text[], %b::text[])"
        " WITH ORDINALITY AS e (key, payload, n) ORDER BY e.n ON CONFLICT (key) DO NOTHING",
        (to_text(now), [key for key, _ in listed], [to_json(doc) for _, doc in listed]),
    )
    if cursor.rowcount > 0:
        notify(conn, QUEUED)
    return cursor.rowcount


def claim(conn: Connection, worker: str, limit: int, now: datetime) -> list[QueuedJob]:
    """Up to ``limit`` queued entries, oldest first, now held by ``worker``. Rows another worker
    is claiming at this instant are skipped, not waited for: no entry is claimed twice."""
    rows = conn.execute(
        "UPDATE job_queue AS q SET state = 'claimed', worker = %s, heartbeat_at = %s,"
        " claims = q.claims + 1 FROM (SELECT key FROM job_queue WHERE state = 'queued'"
        " ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) AS free WHERE q.key = free.key" + _CLAIMED,
        (worker, to_text(now), limit),
    ).fetchall()
    return _held(rows)


def reclaim(
    conn: Connection, worker: str, lease: timedelta, limit: int, now: datetime
) -> list[QueuedJob]:
    """Up to ``limit`` claimed entries whose worker's last heartbeat is older than ``lease``,
    now held by ``worker``; the running job each dead worker claimed under the key is finished
    as abandoned. The lapse is checked again on the locked row, so of several workers
    reclaiming at once exactly one takes each entry."""
    stale = to_text(now - lease)
    rows = conn.execute(
        "UPDATE job_queue AS q SET worker = %s, heartbeat_at = %s, claims = q.claims + 1"
        " FROM (SELECT key FROM job_queue WHERE state = 'claimed' AND heartbeat_at < %s"
        " ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) AS lapsed"
        " WHERE q.key = lapsed.key" + _CLAIMED,
        (worker, to_text(now), stale, limit),
    ).fetchall()
    held = _held(rows)
    if held:
        # A job waiting for its machine's reboot is not lost: the leader resumes it.
        conn.execute(
            "UPDATE jobs SET status = 'abandoned', finished_at = %s"
            " WHERE key = ANY(%s) AND status = 'running' AND id NOT IN"
            " (SELECT job_id FROM job_phases WHERE phase = 'rebooting')",
            (to_text(now), [job.key for job in held]),
        )
    return held


def heartbeat(conn: Connection, worker: str, keys: Iterable[str], now: datetime) -> set[str]:
    """Renew ``worker``'s lease on ``keys``; the keys it still holds (one reclaimed from it after
    its lease lapsed is no longer its own)."""
    rows = conn.execute(
        "UPDATE job_queue SET heartbeat_at = %s"
        " WHERE key = ANY(%s) AND worker = %s AND state = 'claimed' RETURNING key",
        (to_text(now), list(keys), worker),
    ).fetchall()
    return {row[0] for row in rows}


def done(conn: Connection, worker: str, key: str, now: datetime) -> bool:
    """Mark ``key`` done by ``worker``, announced on
    :data:`~reconciler.state.postgres.notify.DONE` at commit; False when the entry is no longer
    its own."""
    marked = (
        conn.execute(
            "UPDATE job_queue SET state = 'done', heartbeat_at = %s"
            " WHERE key = %s AND worker = %s AND state = 'claimed'",
            (to_text(now), key, worker),
        ).rowcount
        == 1
    )
    if marked:
        notify(conn, DONE)
    return marked


def states(conn: Connection, keys: Iterable[str]) -> dict[str, str]:
    """Each queued key's state (queued, claimed or done); a key never queued is absent."""
    rows = conn.execute(
        "SELECT key, state FROM job_queue WHERE key = ANY(%s)", (list(keys),)
    ).fetchall()
    return {str(key): str(state) for key, state in rows}


def _held(rows: list[tuple[Any, ...]]) -> list[QueuedJob]:
    return [QueuedJob(str(key), from_json(payload), int(claims)) for key, payload, claims in rows]
