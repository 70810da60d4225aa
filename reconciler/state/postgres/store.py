"""Stage: state. :class:`PostgresStore`, the observed state in a PostgreSQL database (issue 16):
a whole :class:`~reconciler.state.backend.StateBackend`, method for method what SQLite's
:class:`~reconciler.state.store.StateStore` does (tests/test_state.py runs on both). What both
do alike is written once in their base, :class:`~reconciler.state.shared.SqlStore`, run in
PostgreSQL's :data:`~reconciler.state.dialect.POSTGRESQL`; this class keeps what differs
(docs/state.md, "Two backends, one store"). ``patchctl`` chooses it for a ``postgresql://``
``--state``.

An I/O edge: it talks to its one database and nothing else; it decides nothing (callers pass
``now`` and every value). Rows are SQLite's (same text times and JSON), decoded by the same
records (``state.records``), so both backends return equal values.

Concurrency. One connection per store, serialised by a lock, as SQLite's store does. Between
processes, PostgreSQL's own transactions: a claim is ``INSERT … ON CONFLICT (key) DO NOTHING``,
decided by the UNIQUE key inside the server; a read-then-write runs in one transaction under a
row or table lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from reconciler.api.enrolment import Provenance
from reconciler.api.enums import ExecutionStatus, Operation
from reconciler.api.inventory import FirstSeenKey, Inventory
from reconciler.redaction import redacted
from reconciler.state.backend import StateBackend
from reconciler.state.dialect import POSTGRESQL
from reconciler.state.lock import Holder
from reconciler.state.postgres import history, queue, session
from reconciler.state.postgres.lock import AdvisoryLock
from reconciler.state.postgres.notify import CHANNELS, Listener
from reconciler.state.postgres.queue import QueuedJob
from reconciler.state.postgres.schema import migrate, schema_version
from reconciler.state.records import (
    JobRecord,
    ScanRecord,
    StateError,
    StoreUnusable,
    StoreWriteFailed,
    from_text,
    to_json,
    to_text,
)
from reconciler.state.schema import facts_of, patch_rows
from reconciler.state.shared import SqlStore
from reconciler.state.store import StateStore, merged_first_seen, offered

Connection = psycopg.Connection[tuple[Any, ...]]


REPORT_LOCK = 0x50575270
"""First key of the transaction-scoped advisory lock on one report's export rows ("PWRp")."""


PLANNING_JOBS = (
    # Whole rows from each part, not their seq matched against the table afterwards: PostgreSQL
    # may hash-join such a list against a scan of every job once the list is a fair share of
    # the history, and the read would grow with it. The rows carry seq, so UNION drops only a
    # job found by two parts.
    f"SELECT {JobRecord.COLUMNS} FROM ("
    "  SELECT * FROM jobs WHERE status = 'running'"
    "  UNION SELECT * FROM jobs"
    "    WHERE status = 'failed' AND created_at > %s AND operation = 'Scan'"
    "  UNION SELECT jobs.* FROM unnest(%s::text[], %s::text[]) AS pair (w, o)"
    '    JOIN jobs ON jobs."window" = pair.w AND jobs.opening = pair.o'
    "  UNION SELECT * FROM jobs WHERE status = 'abandoned' AND created_at >="
    "    coalesce((SELECT scans.finished_at FROM instances JOIN scans"
    "      ON scans.id = instances.last_scan_id"
    "      WHERE instances.instance = jobs.instance), '')"
    ") AS jobs ORDER BY created_at, seq"
)
"""The planner's read of the jobs (:meth:`PostgresStore.planning_jobs`), parameters: failed
Scans since, windows, openings. Each part an index search (tests/test_state_postgres.py EXPLAINs
it over a long history)."""


class PostgresStore(SqlStore):
    """The observed-state store on PostgreSQL. Safe to share between the threads of a process."""

    dialect = POSTGRESQL

    def __init__(
        self, conninfo: str, *, writer: Holder | None = None, home: Path | None = None
    ) -> None:
        """``conninfo``: a libpq URL or key=value string; its credentials are never shown.
        ``writer``: as for SQLite's store, this process writes and dispatches, so it holds the
        store's writer lock (an advisory lock) until :meth:`close`. ``home``: this machine's
        directory for what lives beside a store (reports, audit log, Git clones); by default
        SQLite's default directory."""
        self.home = home or StateStore.default_path().parent
        self._conninfo = conninfo  # to reconnect after the server or the network was lost
        self.name = redacted(conninfo) if "://" in conninfo else "the PostgreSQL state store"
        self._lock = threading.Lock()
        self._latest_scans: dict[int, ScanRecord] = {}
        """The instances' newest scans as last read, by id (:meth:`latest_scans`)."""
        self._planning_rows = {}
        self._writer: AdvisoryLock | None = None
        if writer is not None:
            self._writer = AdvisoryLock(conninfo, self.name)
            self._writer.acquire(writer)
        try:
            self._conn: Connection | None = _open(conninfo, self.name)
        except BaseException:
            self._release_writer()
            raise

    @property
    def path(self) -> Path:
        """A name in :attr:`home`: what lives beside the store goes beside it (``path.parent``)."""
        return self.home / "postgresql"

    def take_writer(self, writer: Holder) -> None:
        """Become the writer of a store opened as a reader: a controller replica that shares
        the database with others and has just won the leader Lease (it waited as a standby
        without the lock). :class:`StoreLocked` while another process still holds it."""
        lock = AdvisoryLock(self._conninfo, self.name)
        lock.acquire(writer)
        with self._lock:
            self._release_writer()  # held already: the new session's lock is the one kept
            self._writer = lock

    def schema_version(self) -> int:
        with self._use() as conn:
            return schema_version(conn)

    @contextmanager
    def _use(self) -> Iterator[Connection]:
        """The connection, in one transaction: committed when the block ends, rolled back (and
        nothing of it kept) when it raises."""
        with self._lock:
            if self._conn is None:
                raise StateError(f"the state store {self.name} is closed")
            if self._writer is not None:
                self._writer.check()  # no write, nor a read to act on, without the lock
            if self._conn.broken:
                # A lost session (server restarted, network cut) failed the call that found
                # it; the next call tries a new one, so a running service recovers by itself.
                try:
                    self._conn = _open(self._conninfo, self.name)
                except StoreUnusable as exc:
                    raise StoreWriteFailed(str(exc)) from exc
            try:
                with self._conn.transaction():
                    yield self._conn
            except psycopg.OperationalError as exc:
                # The server gone, the network cut, the disk full: a write that may pass later.
                raise StoreWriteFailed(
                    f"cannot use the state store {self.name}:"
                    f" {' '.join(redacted(str(exc)).split())} (a running service retries by"
                    " itself)"
                ) from exc

    def _write(self) -> AbstractContextManager[Connection]:
        """Every :meth:`_use` is one transaction already; a read-then-write takes its own row
        or table lock (SQLite's ``BEGIN IMMEDIATE`` locks the whole file)."""
        return self._use()

    # Scans and installs: append-only history.

    def record_scan(
        self,
        *,
        instance: str,
        operation: Operation,
        revision: str,
        baseline: str,
        baseline_hash: str,
        job_id: str | None,
        started_at: datetime,
        finished_at: datetime,
        inventory: dict[str, Any],
        evaluation: dict[str, Any],
    ) -> ScanRecord:
        """Append one scan or install, its per-patch states, and the instance's latest facts."""
        operation = Operation(operation)  # callers outside the loop give the value as text
        started, finished = to_text(started_at), to_text(finished_at)
        documents = (to_json(inventory), to_json(evaluation))
        identity = (instance, operation, revision, baseline, baseline_hash, job_id)
        facts = facts_of(inventory, evaluation)
        with self._use() as conn:
            found = conn.execute(
                "INSERT INTO scans (instance, operation, revision, baseline, baseline_hash,"
                " job_id, started_at, finished_at, inventory, evaluation)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (*identity, started, finished, *documents),
            ).fetchone()
            assert found is not None  # INSERT … RETURNING returns the row it inserted
            scan_id = int(found[0])
            history.insert_patch_states(conn, patch_rows(scan_id, instance, evaluation))
            history.upsert_instance(conn, scan_id, instance, finished, facts)
            history.record_first_seen(conn, offered(inventory), finished)
        return ScanRecord.from_row((scan_id, *identity, started, finished, *documents))

    def first_seen(self, keys: Iterable[FirstSeenKey]) -> dict[FirstSeenKey, datetime]:
        """The recorded first-seen time of each of ``keys`` that has one."""
        wanted = list(dict.fromkeys(keys))
        with self._use() as conn:
            rows = conn.execute(
                "SELECT f.name, f.arch, f.version, f.archive, f.first_seen"
                " FROM package_first_seen AS f JOIN unnest(%s::text[], %s::text[], %s::text[],"
                " %s::text[]) AS k (name, arch, version, archive) USING (name, arch, version,"
                " archive)",
                [list(column) for column in zip(*wanted, strict=True)] or [[], [], [], []],
            ).fetchall()
        return {tuple(row[:4]): from_text(row[4]) for row in rows}

    def with_first_seen(self, inventory: Inventory, now: datetime | None) -> Inventory:
        """As SQLite's store: recorded first-seen times, ``now`` for new offers when recording."""
        return merged_first_seen(inventory, now, self.first_seen)

    def latest_scans(self) -> dict[str, ScanRecord]:
        """The newest scan (by ``finished_at``, then id) of every instance: the ones
        ``instances.last_scan_id`` names, kept on that rule as scans are recorded."""
        with self._use() as conn:
            latest = conn.execute(
                "SELECT instance, id FROM scans"
                " WHERE id IN (SELECT last_scan_id FROM instances) ORDER BY instance"
            ).fetchall()
            # observe() runs this after every job: only scans not read before are fetched and
            # decoded (their inventories were most of a plan's time). By id, not "above the
            # highest read" as in SQLite: other processes' scans may commit out of id order.
            known = self._latest_scans
            missing = [scan_id for _, scan_id in latest if scan_id not in known]
            select = f"SELECT {ScanRecord.COLUMNS} FROM scans WHERE id = ANY(%s)"
            rows = conn.execute(select, (missing,)).fetchall() if missing else []
            known |= {row[0]: ScanRecord.from_row(row, shared=True) for row in rows}
            self._latest_scans = {scan_id: known[scan_id] for _, scan_id in latest}
            return {instance: known[scan_id] for instance, scan_id in latest}

    # Jobs, with idempotency keys.

    def latest_jobs(self) -> dict[str, JobRecord]:
        """The newest job of each instance (by creation, then claim order, as :meth:`jobs`)."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT ON (instance) {JobRecord.COLUMNS} FROM jobs"
                " ORDER BY instance, created_at DESC, seq DESC"
            ).fetchall()
        return {record.instance: record for record in map(JobRecord.from_row, rows)}

    # The job queue of many workers (``queue``; docs/state.md, "Workers").

    def enqueue_jobs(self, entries: Iterable[tuple[str, dict[str, Any]]], now: datetime) -> int:
        """Queue each planned action (key, ``asdict(action)``) not queued before; how many."""
        with self._use() as conn:
            return queue.enqueue(conn, entries, now)

    def claim_queued(self, worker: str, *, limit: int, now: datetime) -> list[QueuedJob]:
        """Up to ``limit`` queued entries for ``worker`` (``FOR UPDATE SKIP LOCKED``)."""
        with self._use() as conn:
            return queue.claim(conn, worker, limit, now)

    def reclaim_lapsed(
        self, worker: str, *, lease: timedelta, limit: int, now: datetime
    ) -> list[QueuedJob]:
        """Entries whose worker stopped heartbeating for ``lease``, each for one reclaimer."""
        with self._use() as conn:
            return queue.reclaim(conn, worker, lease, limit, now)

    def heartbeat_queued(self, worker: str, keys: Iterable[str], now: datetime) -> set[str]:
        """Renew ``worker``'s lease on ``keys``; the ones it still holds."""
        with self._use() as conn:
            return queue.heartbeat(conn, worker, keys, now)

    def finish_queued(self, worker: str, key: str, now: datetime) -> bool:
        """``key`` done by ``worker``; False when it was reclaimed from it."""
        with self._use() as conn:
            return queue.done(conn, worker, key, now)

    def queued_states(self, keys: Iterable[str]) -> dict[str, str]:
        """Each queued key's state: the leader's pass sees its entries through to ``done``."""
        with self._use() as conn:
            return queue.states(conn, keys)

    def listen_queue(self, event: str, wake: Callable[[], None]) -> Listener:
        """A started :class:`Listener` calling ``wake`` when the queue announces ``event``
        (``queued``: entries to claim; ``done``: an entry finished), on a session of its own."""
        return Listener(self._conninfo, CHANNELS[event], wake).start()

    def abandon_running_jobs(self, now: datetime) -> list[JobRecord]:
        """Mark every running job abandoned and return them (oldest first); as SQLite's store,
        only for the writer-lock holder between passes. A job waiting for its machine's reboot
        is not lost: the loop resumes it. Nor is a job a worker holds by its queue entry (``patchctl
        worker``): that worker is alive or its lease lapses and another worker reclaims it."""
        finished = to_text(now)
        with self._use() as conn:
            rows = conn.execute(
                f"UPDATE jobs SET status = 'abandoned', finished_at = %s"
                " WHERE status = 'running' AND id NOT IN"
                "   (SELECT job_id FROM job_phases WHERE phase = 'rebooting')"
                " AND key NOT IN (SELECT key FROM job_queue WHERE state = 'claimed')"
                f" RETURNING {JobRecord.COLUMNS}, seq",
                (finished,),
            ).fetchall()
        rows.sort(key=lambda row: (row[11], row[13]))
        # RETURNING gives the rows as updated: abandoned, finished now.
        return [JobRecord.from_row(row[:13]) for row in rows]

    def planning_jobs(
        self, *, openings: Iterable[tuple[str, str]], failed_scans_since: datetime
    ) -> list[JobRecord]:
        """The jobs the planner can still act on, oldest first (the order of :meth:`jobs`):
        running jobs, jobs of the given (window, opening) pairs, failed Scans created after
        ``failed_scans_since``, abandoned jobs created at or after their instance's latest scan;
        each part an index lookup, as in SQLite's store."""
        windows, opening_list = _columns(openings)
        with self._use() as conn:
            rows = conn.execute(
                PLANNING_JOBS, (to_text(failed_scans_since), windows, opening_list)
            ).fetchall()
            return self._planning_records(rows)

    # Maintenance window executions.

    def execution_statuses(
        self, openings: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], ExecutionStatus]:
        """The status of each given (window, opening) that has an execution."""
        with self._use() as conn:
            rows = conn.execute(
                'SELECT e."window", e.opening, e.status FROM unnest(%s::text[], %s::text[])'
                ' AS pair (w, o) JOIN window_executions AS e ON e."window" = pair.w'
                " AND e.opening = pair.o",
                _columns(openings),
            ).fetchall()
        return {(row[0], row[1]): ExecutionStatus(row[2]) for row in rows}

    # Scheduled report exports (record_report_run in SqlStore): PostgreSQL's own steps.

    def _hold_report(self, conn: Connection, report: str) -> None:
        """One report's rows at a time: two writers must not both see the same newest row."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (REPORT_LOCK, report))

    def _insert_id(self, conn: Connection, statement: str, params: Any) -> int | None:
        row = conn.execute(f"{statement} RETURNING id", params).fetchone()
        return None if row is None else int(row[0])

    # Enrolment: each InstanceSource's last good list, replaced on each refresh.

    def record_enrolled(self, enrolled: Mapping[str, Provenance], now: datetime) -> None:
        """``enrolled`` (instance -> where from) are the generated instances now; any other
        instance recorded before is marked no longer listed (its history stays)."""
        rows = [(name, p.source, p.host, to_text(now)) for name, p in enrolled.items()]
        with self._use() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO enrolled_instances AS e (instance, source, host, listed, changed_at)"
                " VALUES (%s, %s, %s, 1, %s) ON CONFLICT (instance) DO UPDATE SET"
                " source = excluded.source, host = excluded.host, listed = 1,"
                " changed_at = excluded.changed_at"
                " WHERE (e.source, e.host, e.listed) <> (excluded.source, excluded.host, 1)",
                rows,
            )
            cursor.execute(
                "UPDATE enrolled_instances SET listed = 0, changed_at = %s"
                " WHERE listed = 1 AND NOT (instance = ANY(%s::text[]))",
                (to_text(now), list(enrolled)),
            )


def _is_a_backend(store: PostgresStore) -> StateBackend:
    """Never called: mypy checks here that PostgresStore is a whole StateBackend."""
    return store


def _columns(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(window, opening) pairs as two arrays, for ``unnest`` (JSON's role in SQLite's store)."""
    listed = list(pairs)
    return [window for window, _ in listed], [opening for _, opening in listed]


def _open(conninfo: str, name: str) -> Connection:
    """A connection to the migrated database, or :class:`StoreUnusable` saying what to do."""
    try:
        conn: Connection = session.connect(conninfo)
    except psycopg.Error as exc:
        raise StoreUnusable(
            f"cannot reach the state store {name}: {' '.join(redacted(str(exc)).split())}"
        ) from None
    try:
        migrate(conn)
    except StoreUnusable as exc:  # a newer schema: name the database
        conn.close()
        raise StoreUnusable(f"{name}: {exc}") from None
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnusable(
            f"cannot set up the state store {name}: {' '.join(redacted(str(exc)).split())}"
            " (the user needs CREATE on the database's schema)"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn
