"""Stage: state. The writer lock of a PostgreSQL state store: :class:`AdvisoryLock`, the
:class:`~reconciler.state.lock.WriterLock` of a store every controller replica reaches.

``pg_try_advisory_lock`` on a connection of its own, held for as long as the holder lives. The
server drops a session's advisory locks when the session ends, however it ends (a SIGKILLed
holder's socket is closed by its kernel), so a crash leaves no stale lock, as ``flock`` does for
SQLite. Advisory locks belong to one database: two stores on one server do not exclude each
other. The holder's pid, host and command travel in the session's ``application_name``, which
``pg_stat_activity`` shows the next writer for its refusal.

Touches only its own session; imports only the store's errors and the lock interface.
"""

from __future__ import annotations

import psycopg

from reconciler.redaction import redacted
from reconciler.state.lock import Holder, refusal
from reconciler.state.records import StoreLocked, StoreUnusable

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

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session ends: the server drops its advisory locks
            self._conn = None

    def _connect(self, holder: Holder) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                self.conninfo, autocommit=True, application_name=application_name(holder)
            )
        except psycopg.Error as exc:
            raise StoreUnusable(
                f"cannot reach the state store {self.store} to take its writer lock:"
                f" {' '.join(redacted(str(exc)).split())}"
            ) from None


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
