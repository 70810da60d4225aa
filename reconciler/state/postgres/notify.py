"""Stage: state. Wake-ups of the PostgreSQL job queue (docs/state.md, "Workers"): the queue
(``queue``) sends ``NOTIFY`` on :data:`QUEUED` in the transaction that enqueues entries and on
:data:`DONE` in the one that marks an entry done, so PostgreSQL delivers each at commit, never
before the rows are visible; a :class:`Listener` ``LISTEN``\\s on one of them on a session of
its own and calls its ``wake`` for every notification. Workers wake on :data:`QUEUED` to claim,
the leader on :data:`DONE` to free the entry's slot, instead of reading the queue on a fixed
beat; their slow poll stays only as the fallback for a notification that cannot arrive.

A notification is a hint, not a record: it carries nothing, and one sent while no session
listens (the listener's session was cut, the server restarted) is lost. So a listener whose
session ended opens a new one (every :data:`RETRY` seconds until it can), and calls ``wake``
once it listens again, for the reader to look at the queue itself.

Touches only its own session (autocommit, keepalives as every session of the store); decides
nothing; never raises from its thread (a failed session is retried, silently: the store's own
calls say when the database is away).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from reconciler.state.postgres.session import connect

Connection = psycopg.Connection[tuple[Any, ...]]

QUEUED = "patchwarden_job_queued"
"""Sent when entries were enqueued: workers claim."""
DONE = "patchwarden_job_done"
"""Sent when an entry was marked done: the leader completes its future and frees its slot."""
CHANNELS = {"queued": QUEUED, "done": DONE}
"""The channels by what they announce (:meth:`PostgresStore.listen_queue`)."""

APPLICATION = "patchwarden queue listener"
"""The listening session's ``application_name`` (``pg_stat_activity`` shows who listens)."""
RETRY = 1.0
"""Seconds between attempts to open a new session after the last one ended."""
TICK = 0.5
"""Longest wait for a notification before the thread looks whether it was closed: how long a
closed listener's session may outlive :meth:`Listener.close`. No query is sent meanwhile."""


def notify(conn: Connection, channel: str) -> None:
    """Announce on ``channel`` when the caller's transaction commits (nothing if it rolls back).
    Several in one transaction are delivered once: PostgreSQL folds equal notifications."""
    conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(channel)))


class Listener:
    """``LISTEN channel`` on a session of its own, in a thread: ``wake()`` for each notification
    and after each new session. :meth:`start` listens before it returns when the database
    answers, so what is committed after it is announced."""

    def __init__(self, conninfo: str, channel: str, wake: Callable[[], None]) -> None:
        self.conninfo, self.channel, self.wake = conninfo, channel, wake
        self._closed = threading.Event()

    def start(self) -> Listener:
        conn = self._listen()
        name = f"listen-{self.channel}"
        threading.Thread(target=self._follow, args=(conn,), name=name, daemon=True).start()
        return self

    def close(self) -> None:
        """Stop listening; the session ends within :data:`TICK`, without being waited for."""
        self._closed.set()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _listen(self) -> Connection | None:
        """A new session listening on the channel, or None while the database cannot be used."""
        try:
            conn = connect(self.conninfo, application_name=APPLICATION)
        except psycopg.Error:
            return None
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error:
            conn.close()
            return None
        return conn

    def _follow(self, conn: Connection | None) -> None:
        while not self._closed.is_set():
            if conn is None:
                if self._closed.wait(RETRY):
                    break
                conn = self._listen()
                if conn is not None:
                    self.wake()  # what was announced while nobody listened is lost: look again
                continue
            try:
                for _ in conn.notifies(timeout=TICK):
                    self.wake()
            except psycopg.Error:  # the session ended (server restarted, terminated, cut)
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
