"""Stage: state. The writer lock of a PostgreSQL state store: :class:`AdvisoryLock`, the
:class:`~reconciler.state.lock.WriterLock` of a store every controller replica reaches.

``pg_try_advisory_lock`` on a connection of its own, held for as long as the holder lives. The
server drops a session's advisory locks when the session ends, however it ends (a SIGKILLed
holder's socket is closed by its kernel), so a crash leaves no stale lock, as ``flock`` does for
SQLite. Advisory locks belong to one database: two stores on one server do not exclude each
other. The holder's pid, host and command travel in the session's ``application_name``, which
``pg_stat_activity`` shows the next writer for its refusal.

A session can also end under a living holder (``pg_terminate_backend``, a server restart, a cut
connection): the lock is gone with it, and another process may take it. :meth:`AdvisoryLock.check`
notices (the server's goodbye makes the socket readable; a cheap poll, a query only then) and
raises :class:`WriterLost`; the store checks before every transaction, so a writer that lost its
lock writes nothing more and the process stops with that one line.

Touches only its own session; imports only the store's errors and the lock interface.
"""

from __future__ import annotations

import select

import psycopg

from reconciler.redaction import redacted
from reconciler.state.lock import Holder, refusal
from reconciler.state.postgres.session import connect
from reconciler.state.records import StoreLocked, StoreUnusable, WriterLost

LOCK_KEY = 0x50775772
"""The advisory lock's key ("PwWr"): below 2**31, so pg_locks shows it as ``objid`` with
``classid`` 0. Fixed: every Patchwarden process must ask for the same one."""

NAME_LIMIT = 63
"""PostgreSQL truncates ``application_name`` to NAMEDATALEN - 1 bytes."""

_HOLDER = """
SELECT a.application_name FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s
   AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
"""


class AdvisoryLock:
    """``pg_try_advisory_lock(LOCK_KEY)`` on a session that lives as long as the lock."""

    def __init__(self, conninfo: str, store: str) -> None:
        """``conninfo``: a libpq URL or key=value string (credentials included, never shown);
        ``store`` names the store in messages, already without credentials."""
        self.conninfo, self.store = conninfo, store
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lost: str | None = None
        """Why the lock's session ended under its holder; None while held (or never taken)."""

    def acquire(self, holder: Holder) -> None:
        conn = self._connect(holder)
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if not (row and row[0]):
                current = _holder(conn)
                raise StoreLocked(refusal(self.store, current))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def check(self) -> None:
        """Raise :class:`WriterLost` if the lock's session has ended; cheap while it lives."""
        if self._lost is None and self._conn is not None and _ended(self._conn):
            self._conn.close()
            self._conn = None
            self._lost = "its database session ended"
        if self._lost is not None:
            raise WriterLost(
                f"lost the writer lock of the state store {self.store}: {self._lost} (ended by"
                " the server, an administrator or the network); stopping as writer, since"
                " another process may write now. Start this command again to take the lock anew"
            )

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session ends: the server drops its advisory locks
            self._conn = None

    def _connect(self, holder: Holder) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return connect(self.conninfo, application_name=application_name(holder))
        except psycopg.Error as exc:
            raise StoreUnusable(
                f"cannot reach the state store {self.store} to take its writer lock:"
                f" {' '.join(redacted(str(exc)).split())}"
            ) from None


def _ended(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the session is gone. An idle session's socket has nothing to read until the
    server says something, such as "terminating connection" before it closes; only then is a
    query sent, which fails on an ended session and answers on a living one."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if not readable:
        return False
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def application_name(holder: Holder) -> str:
    """``pid|command|host``, cut to what PostgreSQL keeps (the host goes first)."""
    return f"{holder.pid}|{holder.command}|{holder.host}".encode()[:NAME_LIMIT].decode(
        errors="ignore"
    )


def parse_application_name(name: str) -> Holder | None:
    """The holder :func:`application_name` wrote, or None for another client's name."""
    pid, _, rest = name.partition("|")
    command, bar, host = rest.partition("|")
    if not (pid.isdigit() and bar):
        return None
    return Holder(int(pid), host, command)


def _holder(conn: psycopg.Connection[tuple[object, ...]]) -> Holder | None:
    """Who holds the lock now, or None (it just let go, or its name is not ours to read)."""
    row = conn.execute(_HOLDER, (LOCK_KEY,)).fetchone()
    name = row[0] if row else None
    return parse_application_name(name) if isinstance(name, str) else None
