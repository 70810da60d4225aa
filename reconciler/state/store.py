"""Stage: state. :class:`StateStore`, the observed state in one SQLite file: scan and install
history, jobs with idempotency keys, window executions and source revisions. What it does as
the PostgreSQL store does is written once in their base (``state.shared.SqlStore``, run in
:data:`~reconciler.state.dialect.SQLITE`); this class keeps what is SQLite's own.

An I/O edge: it reads and writes its own file and nothing else. It decides nothing (callers pass
``now`` and every value) and imports only ``reconciler.api`` and the rollout planner's value
types (``reconciler.rollout``, which it stores) from the rest of the project.

Concurrency. One connection per store, shared by the threads of the process and serialised by a
lock: SQLite serialises writers anyway, the store's calls are short, and one connection is one
thing to close (per-thread connections would outlive their threads). Between processes, SQLite's
own file locks do the work: WAL lets readers run beside the one writer, every read-then-write
runs in ``BEGIN IMMEDIATE`` (the write lock is taken first, so nothing interleaves), and a busy
timeout makes a second process wait instead of failing. Job claiming rests on a UNIQUE key, so
it is exclusive across threads, processes and restarts alike. Do not share a store across
``fork()``; open one per process.

One writer. SQLite's locks make each write safe, not two dispatching processes: a process that
writes and dispatches opens the store with ``writer=`` and holds its writer lock
(:mod:`reconciler.state.lock`) until it closes it. Errors. Opening a file SQLite cannot use
raises :class:`StoreUnusable` saying what to do; a write that fails for a reason that passes
(a full disk) raises :class:`StoreWriteFailed` and keeps nothing of that write.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.api.enrolment import Provenance
from reconciler.api.enums import ExecutionStatus, JobStatus, Operation
from reconciler.api.inventory import (
    FirstSeenKey,
    Inventory,
    first_seen_keys,
    package_first_seen_keys,
    with_first_seen,
)
from reconciler.state.dialect import SQLITE
from reconciler.state.lock import FileLock, Holder, WriterLock, lock_path
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
from reconciler.state.schema import (
    facts_of,
    immediate,
    insert_patch_states,
    migrate,
    record_first_seen,
    upsert_instance,
    user_version,
)
from reconciler.state.shared import SqlStore

BUSY_TIMEOUT = 30.0
"""Seconds a write waits for another process's write lock before giving up."""


class StateStore(SqlStore):
    """The observed-state store. Safe to share between the threads of one process."""

    dialect = SQLITE

    def __init__(self, path: str | Path, *, writer: Holder | None = None) -> None:
        """``writer``: this process writes and dispatches, so it takes the store's writer lock
        first (:mod:`reconciler.state.lock`) and holds it until :meth:`close`; a second writer
        is refused with :class:`StoreLocked`. Readers pass None and read beside the writer."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._latest_scans: dict[int, ScanRecord] = {}
        """The instances' newest scans as last read, by id (:meth:`latest_scans`)."""
        self._planning_rows = {}
        self._writer: WriterLock | None = None
        _check_place(self.path)
        if writer is not None:
            self._writer = FileLock(lock_path(self.path), str(self.path))
            self._writer.acquire(writer)
        try:
            self._conn: sqlite3.Connection | None = _open(self.path)
        except BaseException:
            self._release_writer()
            raise

    @staticmethod
    def default_path() -> Path:
        """``$XDG_STATE_HOME/patchwarden/state.db``, else ``~/.local/state/patchwarden/...``."""
        base = os.environ.get("XDG_STATE_HOME", "")
        # The XDG spec says a relative value is invalid and must be ignored.
        root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
        return root / "patchwarden" / "state.db"

    def schema_version(self) -> int:
        with self._use() as conn:
            return user_version(conn)

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StateError(f"the state store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                if _primary(exc) not in TRANSIENT:
                    raise
                raise StoreWriteFailed(
                    f"cannot write the state store {self.path}: {exc} (free space on its file"
                    " system, or fix it, and try again; a running service retries by itself)"
                ) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._use() as conn, immediate(conn):
            yield conn

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
        inventory_text, evaluation_text = to_json(inventory), to_json(evaluation)
        identity = (instance, operation, revision, baseline, baseline_hash, job_id)
        with self._write() as conn:
            scan_id = conn.execute(
                "INSERT INTO scans (instance, operation, revision, baseline, baseline_hash,"
                " job_id, started_at, finished_at, inventory, evaluation)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*identity, started, finished, inventory_text, evaluation_text),
            ).lastrowid
            assert scan_id is not None  # an INSERT into a rowid table always has one
            insert_patch_states(conn, scan_id, instance, evaluation)
            upsert_instance(conn, scan_id, instance, finished, facts_of(inventory, evaluation))
            record_first_seen(conn, offered(inventory), finished)
        # Built from the stored text, so the record equals what a later read returns.
        row = (scan_id, *identity, started, finished, inventory_text, evaluation_text)
        return ScanRecord.from_row(row)

    def first_seen(self, keys: Iterable[FirstSeenKey]) -> dict[FirstSeenKey, datetime]:
        """The recorded first-seen time of each of ``keys`` that has one (``record_scan`` writes
        them: the earliest scan of any instance that offered the version in that archive)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[FirstSeenKey, datetime] = {}
        with self._use() as conn:
            for start in range(0, len(wanted), 200):  # SQLite's bound on parameters
                chunk = wanted[start : start + 200]
                rows = conn.execute(
                    "SELECT name, arch, version, archive, first_seen FROM package_first_seen"
                    " WHERE (name, arch, version, archive) IN (VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                    + ")",
                    [part for key in chunk for part in key],
                ).fetchall()
                found.update({tuple(row[:4]): from_text(row[4]) for row in rows})
        return found

    def with_first_seen(self, inventory: Inventory, now: datetime | None) -> Inventory:
        """``inventory`` with each version's recorded first-seen time. A scan being recorded at
        ``now`` gives ``now`` to the offered versions no scan recorded yet (it records them);
        a reader (``now`` None) leaves them without one."""
        return merged_first_seen(inventory, now, self.first_seen)

    def latest_scans(self) -> dict[str, ScanRecord]:
        """The newest scan (by ``finished_at``, then id) of every instance, in one query.

        ``instances.last_scan_id`` is kept on exactly that rule as scans are recorded, so this
        reads one scan per instance instead of ranking the whole history (observe() runs it
        after every job)."""
        with self._use() as conn:
            latest = conn.execute(
                "SELECT instance, id FROM scans"
                " WHERE id IN (SELECT last_scan_id FROM instances) ORDER BY instance"
            ).fetchall()
            # Scans are append-only with ever-growing ids, and a scan becomes an instance's
            # newest only when it is recorded: the ones not decoded yet are those above the
            # highest decoded, and decoding their JSON was most of every plan's time.
            known = self._latest_scans
            rows = conn.execute(
                f"SELECT {ScanRecord.COLUMNS} FROM scans"
                " WHERE id IN (SELECT last_scan_id FROM instances) AND id > ?",
                (max(known, default=0),),
            ).fetchall()
            known |= {row[0]: ScanRecord.from_row(row, shared=True) for row in rows}
            self._latest_scans = {scan_id: known[scan_id] for _, scan_id in latest}
            return {instance: known[scan_id] for instance, scan_id in latest}

    # Jobs, with idempotency keys.

    def planning_jobs(
        self, *, openings: Iterable[tuple[str, str]], failed_scans_since: datetime
    ) -> list[JobRecord]:
        """The jobs the planner can still act on, oldest first (the order of :meth:`jobs`).

        Every running job; every job of the given (window, opening) pairs; failed Scans created
        after ``failed_scans_since``; abandoned jobs created at or after their instance's latest
        scan. Each part is an index lookup (``jobs_by_status_time``, ``jobs_by_window``), so the
        cost follows what is current, not how long the history is (``plan.HistoryScope``).
        """
        pairs = json.dumps([[window, opening] for window, opening in openings])
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE rowid IN ("
                "  SELECT rowid FROM jobs WHERE status = 'running'"
                "  UNION SELECT rowid FROM jobs"
                "    WHERE status = 'failed' AND created_at > ? AND operation = 'Scan'"
                "  UNION SELECT jobs.rowid FROM json_each(?) AS pair JOIN jobs"
                "    ON jobs.window = json_extract(pair.value, '$[0]')"
                "    AND jobs.opening = json_extract(pair.value, '$[1]')"
                "  UNION SELECT rowid FROM jobs WHERE status = 'abandoned' AND created_at >="
                "    coalesce((SELECT scans.finished_at FROM instances JOIN scans"
                "      ON scans.id = instances.last_scan_id"
                "      WHERE instances.instance = jobs.instance), '')"
                ") ORDER BY created_at, rowid",
                (to_text(failed_scans_since), pairs),
            ).fetchall()
            return self._planning_records(rows)

    def latest_jobs(self) -> dict[str, JobRecord]:
        """The newest job of each instance (by creation, as :meth:`jobs` orders them), without
        reading the history: one ``jobs_by_instance_time`` step per instance."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE rowid IN ("
                "  SELECT (SELECT rowid FROM jobs AS newest WHERE newest.instance = i.instance"
                "          ORDER BY newest.created_at DESC, newest.rowid DESC LIMIT 1)"
                "  FROM (SELECT DISTINCT instance FROM jobs) AS i)"
                " ORDER BY instance"
            ).fetchall()
        return {record.instance: record for record in map(JobRecord.from_row, rows)}

    def abandon_running_jobs(self, now: datetime) -> list[JobRecord]:
        """Mark every running job abandoned and return them (oldest first).

        For start-up after a crash: their outcome is unknown, and their keys stay taken so the
        planner decides afresh rather than re-dispatching blindly. Only call it while no other
        process runs jobs from this file (it cannot tell their jobs from a dead process's): as
        the holder of the writer lock, between passes.
        """
        finished = to_text(now)
        # A job waiting for its machine's reboot is not lost: the loop resumes it (rebooting_jobs).
        resumable = "id NOT IN (SELECT job_id FROM job_phases WHERE phase = 'rebooting')"
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE status = 'running' AND {resumable}"
                " ORDER BY created_at, rowid"
            ).fetchall()
            conn.execute(
                "UPDATE jobs SET status = 'abandoned', finished_at = ?"
                f" WHERE status = 'running' AND {resumable}",
                (finished,),
            )
        # The write lock was held from the SELECT to the UPDATE: these are exactly the rows.
        return [
            replace(
                JobRecord.from_row(row), status=JobStatus.ABANDONED, finished_at=from_text(finished)
            )
            for row in rows
        ]

    # Maintenance window executions.

    def execution_statuses(
        self, openings: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], ExecutionStatus]:
        """The status of each given (window, opening) that has an execution: one primary-key
        lookup per pair, however long the history."""
        pairs = json.dumps([[window, opening] for window, opening in openings])
        with self._use() as conn:
            rows = conn.execute(
                "SELECT window, opening, status FROM json_each(?) AS pair JOIN window_executions"
                " ON window = json_extract(pair.value, '$[0]')"
                " AND opening = json_extract(pair.value, '$[1]')",
                (pairs,),
            ).fetchall()
        return {(row[0], row[1]): ExecutionStatus(row[2]) for row in rows}

    # Scheduled report exports (record_report_run in SqlStore): SQLite's own steps.

    def _hold_report(self, conn: sqlite3.Connection, report: str) -> None:
        """Nothing: ``_write``'s ``BEGIN IMMEDIATE`` holds the whole file already."""

    def _insert_id(self, conn: sqlite3.Connection, statement: str, params: Any) -> int | None:
        # lastrowid, not RETURNING: SQLite before 3.35 (still shipped by some distributions)
        # has no RETURNING.
        cursor = conn.execute(statement, params)
        return cursor.lastrowid if cursor.rowcount == 1 else None

    # Enrolment: each InstanceSource's last good list, replaced on each refresh.

    def record_enrolled(self, enrolled: Mapping[str, Provenance], now: datetime) -> None:
        """``enrolled`` (instance -> where from) are the generated instances now; any other
        instance recorded before is marked no longer listed (its history stays)."""
        rows = [(name, p.source, p.host, to_text(now)) for name, p in enrolled.items()]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO enrolled_instances (instance, source, host, listed, changed_at)"
                " VALUES (?, ?, ?, 1, ?) ON CONFLICT (instance) DO UPDATE SET"
                " source = excluded.source, host = excluded.host, listed = 1,"
                " changed_at = excluded.changed_at"
                " WHERE (source, host, listed) != (excluded.source, excluded.host, 1)",
                rows,
            )
            marks = ",".join("?" * len(rows))
            conn.execute(
                "UPDATE enrolled_instances SET listed = 0, changed_at = ?"
                f" WHERE listed = 1 AND instance NOT IN ({marks})",
                (to_text(now), *enrolled),
            )


TRANSIENT = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_BUSY}
)
"""SQLite's primary result codes for a write that may succeed later, unchanged: a full disk, an
I/O error, a file system remounted read-only, another process's write lock held too long."""


def merged_first_seen(
    inventory: Inventory,
    now: datetime | None,
    lookup: Callable[[Iterable[FirstSeenKey]], dict[FirstSeenKey, datetime]],
) -> Inventory:
    """``with_first_seen`` of every backend, given its ``first_seen`` as ``lookup``."""
    packages = (*inventory.updates, *inventory.installed)
    found = lookup(key for pkg in packages for key in package_first_seen_keys(pkg))
    if now is None:
        return with_first_seen(inventory, found)
    offered = {key for pkg in inventory.updates for key in package_first_seen_keys(pkg)}
    return with_first_seen(inventory, {k: found.get(k, now) for k in offered} | found)


def offered(inventory: dict[str, Any]) -> list[FirstSeenKey]:
    """The (name, arch, version, archive) keys of the updates an inventory document offers."""
    keys: list[FirstSeenKey] = []
    for update in inventory.get("updates") or []:
        origins = [(o.get("origin"), o.get("suite")) for o in update.get("origins") or []]
        arch = update.get("arch") or ""
        keys += first_seen_keys(update["name"], arch, update["version"], origins)
    return keys


def _primary(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (the low byte of its extended code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _make_parent(path: Path) -> None:
    try:
        # 0700: the XDG state directory is private to the user; existing parents are left alone.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
        raise StoreUnusable(
            f"cannot create the state store's directory {path.parent}: {why}"
            " (give --state a file in a directory this user may write)"
        ) from None


def _check_place(path: Path) -> None:
    """The database's directory exists (made if need be) and the path is not a directory."""
    _make_parent(path)
    if path.is_dir():
        raise StoreUnusable(
            f"the state store {path} is a directory: --state takes the database file"
            f" (e.g. {path / 'state.db'})"
        )


def _create_private(path: Path) -> None:
    """A new store starts as an empty 0600 file whatever the umask: it holds every machine's
    inventory and job errors, and SQLite gives its -wal and -shm files the database's mode."""
    # Any failure (it exists, a read-only file system...) is left for SQLite to report.
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)  # os.open's mode passes through the umask


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the migrated store, or :class:`StoreUnusable` saying what to do."""
    try:
        _create_private(path)
        conn = _connect(path)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    try:
        migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise _unusable(path, exc) from None
    except StoreUnusable as exc:  # a newer schema: name the file
        conn.close()
        raise StoreUnusable(f"{path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _unusable(path: Path, exc: sqlite3.Error) -> StoreUnusable:
    """Why SQLite cannot open or migrate ``path``, and what to do about it."""
    code = _primary(exc)
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        what = (
            "is not a Patchwarden state database, or is damaged: restore it from a backup, or"
            " move it aside to start a new history"
        )
    elif code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        what = (
            "cannot be opened for writing: give this user write access to the file and its"
            " directory (SQLite keeps -wal and -shm files beside it), or another --state"
        )
    elif code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        # Opening a store on a full file system fails creating its -shm file, as an I/O error.
        what = (
            "cannot be written: its file system is full or failing; free space (or fix it)"
            " and try again"
        )
    elif code == sqlite3.SQLITE_BUSY:
        what = "is locked by another process for too long: try again when it is done"
    else:
        what = "cannot be opened: check the file and the file system under it"
    return StoreUnusable(f"the state store {path} {what} (SQLite: {exc})")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the store writes BEGIN/COMMIT itself (see schema.immediate) instead
    # of the sqlite3 module's implicit deferred transactions, which can fail with SQLITE_BUSY
    # mid-transaction under WAL. check_same_thread=False: the store's lock serialises use.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        _enable_wal(conn, path)
        # Per connection, not stored in the file: must be set every time.
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL rather than WAL's usual NORMAL: a claimed job must survive a power cut too,
        # or it could be dispatched again after the reboot. Writes here are few.
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            # SQLite does not call the busy handler for this switch: when another process is
            # switching a new file to WAL at the same moment, it fails at once with SQLITE_BUSY.
            # Found by the test that opens one new file from several processes at once.
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise StoreUnusable(
            f"the state store {path}: SQLite refused WAL mode (journal_mode is {mode!r}):"
            " put the state on a local file system this user may write"
        )
