"""Stage: state. :class:`PostgresStore`, the observed state in a PostgreSQL database (issue 16):
a whole :class:`~reconciler.state.backend.StateBackend`, method for method what SQLite's
:class:`~reconciler.state.store.StateStore` does (tests/test_state.py runs on both). Not chosen
by ``patchctl`` yet (docs/state.md, "PostgreSQL").

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
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg

from reconciler.api.enrolment import Listed, Provenance
from reconciler.api.enums import ExecutionStatus, JobStatus, Operation, ReportRunStatus
from reconciler.api.inventory import FirstSeenKey, Inventory
from reconciler.api.oneoff import OneOffOpening, OneOffStatus
from reconciler.redaction import redacted
from reconciler.state.backend import StateBackend
from reconciler.state.dialect import POSTGRESQL
from reconciler.state.lock import Holder
from reconciler.state.oneoffs import OneOffRecord
from reconciler.state.postgres import history, oneoffs
from reconciler.state.postgres.lock import AdvisoryLock
from reconciler.state.postgres.schema import migrate, schema_version
from reconciler.state.records import (
    InstanceRecord,
    JobNotRunning,
    JobPhase,
    JobRecord,
    PatchStateRecord,
    ReportRunRecord,
    RevisionRecord,
    ScanRecord,
    StateError,
    StoreUnusable,
    StoreWriteFailed,
    UnknownJob,
    WindowExecution,
    check_finish_status,
    check_job_status,
    check_report_run_status,
    check_window_status,
    from_text,
    to_json,
    to_text,
    window_execution,
)
from reconciler.state.schema import facts_of, patch_rows
from reconciler.state.shared import SqlStore
from reconciler.state.store import (
    JOB_FILTERS,
    StateStore,
    listed,
    merged_first_seen,
    offered,
)

Connection = psycopg.Connection[tuple[Any, ...]]

# WINDOW is a reserved word in PostgreSQL (SQLite lets it pass): quoted in every statement.
JOB_COLUMNS = oneoffs.JOB_COLUMNS

REPORT_LOCK = 0x50575270
"""First key of the transaction-scoped advisory lock on one report's export rows ("PWRp")."""


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

    def schema_version(self) -> int:
        with self._use() as conn:
            return schema_version(conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_writer()

    def _release_writer(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _use(self) -> Iterator[Connection]:
        """The connection, in one transaction: committed when the block ends, rolled back (and
        nothing of it kept) when it raises."""
        with self._lock:
            if self._conn is None:
                raise StateError(f"the state store {self.name} is closed")
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

    def latest_scan(self, instance: str) -> ScanRecord | None:
        history = self.scan_history(instance, limit=1)
        return history[0] if history else None

    def latest_scans(self) -> dict[str, ScanRecord]:
        """The newest scan (by ``finished_at``, then id) of every instance: the ones
        ``instances.last_scan_id`` names, kept on that rule as scans are recorded."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {ScanRecord.COLUMNS} FROM scans"
                " WHERE id IN (SELECT last_scan_id FROM instances) ORDER BY instance"
            ).fetchall()
        return {record.instance: record for record in map(ScanRecord.from_row, rows)}

    def scan_history(self, instance: str, limit: int = 100) -> list[ScanRecord]:
        """The instance's scans and installs, newest first."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {ScanRecord.COLUMNS} FROM scans WHERE instance = %s"
                " ORDER BY finished_at DESC, id DESC LIMIT %s",
                (instance, limit),
            ).fetchall()
        return [ScanRecord.from_row(row) for row in rows]

    def patch_states(self, scan_id: int) -> list[PatchStateRecord]:
        """The per-patch rows stored with one scan, in the evaluation's order."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {PatchStateRecord.COLUMNS} FROM patch_states WHERE scan_id = %s"
                " ORDER BY seq",
                (scan_id,),
            ).fetchall()
        return [PatchStateRecord.from_row(row) for row in rows]

    def instance(self, instance: str) -> InstanceRecord | None:
        with self._use() as conn:
            row = conn.execute(
                f"SELECT {InstanceRecord.COLUMNS} FROM instances WHERE instance = %s", (instance,)
            ).fetchone()
        return None if row is None else InstanceRecord.from_row(row)

    def instances(self) -> list[InstanceRecord]:
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {InstanceRecord.COLUMNS} FROM instances ORDER BY instance"
            ).fetchall()
        return [InstanceRecord.from_row(row) for row in rows]

    # Jobs, with idempotency keys.

    def claim_job(
        self,
        *,
        key: str,
        instance: str,
        operation: Operation,
        window: str | None,
        task: str | None,
        opening: str | None,
        revision: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> JobRecord | None:
        """Insert a running job for ``key``, or return None when the key was ever claimed: the
        UNIQUE key decides inside the server, across processes and hosts alike."""
        job_id, created, payload_text = uuid.uuid4().hex, to_text(now), to_json(payload)
        row = (job_id, key, instance, operation, window, task, opening, revision, JobStatus.RUNNING)
        with self._use() as conn:
            inserted = conn.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (key) DO NOTHING",
                (*row, payload_text, None, created, None),
            ).rowcount
        if inserted != 1:
            return None
        return JobRecord.from_row((*row, payload_text, None, created, None))

    def finish_job(
        self, job_id: str, *, status: JobStatus, result: dict[str, Any], now: datetime
    ) -> JobRecord:
        """Record a running job's outcome; a finished job's outcome is never replaced."""
        check_finish_status(status)
        with self._use() as conn:
            changed = conn.execute(
                "UPDATE jobs SET status = %s, result = %s, finished_at = %s"
                " WHERE id = %s AND status = 'running'",
                (status, to_json(result), to_text(now), job_id),
            ).rowcount
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        if row is None:
            raise UnknownJob(f"no job has id {job_id!r}")
        if changed != 1:
            raise JobNotRunning(f"job {job_id} already finished as {row[8]!r}")
        return JobRecord.from_row(row)

    def job(self, job_id: str) -> JobRecord | None:
        return self._one_job("id", job_id)

    def job_by_key(self, key: str) -> JobRecord | None:
        return self._one_job("key", key)

    def _one_job(self, column: str, value: str) -> JobRecord | None:
        with self._use() as conn:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {column} = %s", (value,)
            ).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def jobs(
        self,
        *,
        status: str | None = None,
        instance: str | None = None,
        window: str | None = None,
        task: str | None = None,
        opening: str | None = None,
    ) -> list[JobRecord]:
        """Jobs matching every given filter, oldest first (ties in claim order)."""
        check_job_status(status)
        given = dict(zip(JOB_FILTERS, (status, instance, window, task, opening), strict=True))
        wanted = {column: value for column, value in given.items() if value is not None}
        # Column names come from JOB_FILTERS, never from the caller; values are parameters.
        where = " AND ".join(f'"{column}" = %s' for column in wanted) or "TRUE"
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at, seq",
                tuple(wanted.values()),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def latest_jobs(self) -> dict[str, JobRecord]:
        """The newest job of each instance (by creation, then claim order, as :meth:`jobs`)."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT ON (instance) {JOB_COLUMNS} FROM jobs"
                " ORDER BY instance, created_at DESC, seq DESC"
            ).fetchall()
        return {record.instance: record for record in map(JobRecord.from_row, rows)}

    def claimed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` were ever claimed, checked in SQL (the UNIQUE index on ``key``)."""
        with self._use() as conn:
            rows = conn.execute(
                "SELECT key FROM jobs WHERE key = ANY(%s)", (list(keys),)
            ).fetchall()
        return {row[0] for row in rows}

    def abandon_running_jobs(self, now: datetime) -> list[JobRecord]:
        """Mark every running job abandoned and return them (oldest first); as SQLite's store,
        only for the writer-lock holder between passes. A job waiting for its machine's reboot
        is not lost: the loop resumes it."""
        finished = to_text(now)
        with self._use() as conn:
            rows = conn.execute(
                f"UPDATE jobs SET status = 'abandoned', finished_at = %s"
                " WHERE status = 'running' AND id NOT IN"
                "   (SELECT job_id FROM job_phases WHERE phase = 'rebooting')"
                f" RETURNING {JOB_COLUMNS}, seq",
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
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE seq IN ("
                "  SELECT seq FROM jobs WHERE status = 'running'"
                "  UNION SELECT seq FROM jobs"
                "    WHERE status = 'failed' AND created_at > %s AND operation = 'Scan'"
                "  UNION SELECT jobs.seq FROM unnest(%s::text[], %s::text[]) AS pair (w, o)"
                '    JOIN jobs ON jobs."window" = pair.w AND jobs.opening = pair.o'
                "  UNION SELECT seq FROM jobs WHERE status = 'abandoned' AND created_at >="
                "    coalesce((SELECT scans.finished_at FROM instances JOIN scans"
                "      ON scans.id = instances.last_scan_id"
                "      WHERE instances.instance = jobs.instance), '')"
                ") ORDER BY created_at, seq",
                (to_text(failed_scans_since), windows, opening_list),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def record_phase(
        self, job_id: str, *, phase: str, boot_id: str, detail: dict[str, Any], now: datetime
    ) -> JobPhase:
        """Record that the running job ``job_id`` is now in ``phase`` (before it starts it)."""
        row = (job_id, phase, boot_id, to_json(detail), to_text(now))
        with self._use() as conn:
            # FOR UPDATE: the job cannot finish between this check and the insert.
            status = conn.execute(
                "SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if status is None:
                raise UnknownJob(f"no job has id {job_id!r}")
            if status[0] != JobStatus.RUNNING:
                raise JobNotRunning(f"job {job_id} already finished as {status[0]!r}")
            conn.execute(
                f"INSERT INTO job_phases ({JobPhase.COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (job_id) DO UPDATE SET phase = excluded.phase,"
                " boot_id = excluded.boot_id, detail = excluded.detail, since = excluded.since",
                row,
            )
        return JobPhase.from_row(row)

    def rebooting_jobs(self) -> list[tuple[JobRecord, JobPhase]]:
        """Running jobs whose machine was asked to reboot, oldest first."""
        columns = ", ".join(f"jobs.{c.strip()}" for c in JOB_COLUMNS.split(","))
        phase = ", ".join(f"job_phases.{c.strip()}" for c in JobPhase.COLUMNS.split(","))
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {columns}, {phase} FROM jobs"
                " JOIN job_phases ON job_phases.job_id = jobs.id"
                " WHERE jobs.status = 'running' AND job_phases.phase = 'rebooting'"
                " ORDER BY jobs.created_at, jobs.seq"
            ).fetchall()
        width = len(JOB_COLUMNS.split(","))
        return [(JobRecord.from_row(r[:width]), JobPhase.from_row(r[width:])) for r in rows]

    # Maintenance window executions.

    def record_window_execution(
        self, *, window: str, opening: str, status: ExecutionStatus, now: datetime
    ) -> None:
        """Set the status of one opening of a window; the first record's time stays its start."""
        check_window_status(status)
        moment = to_text(now)
        with self._use() as conn:
            conn.execute(
                'INSERT INTO window_executions ("window", opening, status, started_at,'
                ' updated_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT ("window", opening)'
                " DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
                (window, opening, status, moment, moment),
            )

    def window_executions(self, window: str | None = None) -> list[WindowExecution]:
        """Every execution (of ``window``), oldest first."""
        where, params = ('WHERE "window" = %s', (window,)) if window is not None else ("", ())
        with self._use() as conn:
            rows = conn.execute(
                'SELECT "window", opening, status, started_at, updated_at FROM window_executions'
                f' {where} ORDER BY started_at, "window", opening',
                params,
            ).fetchall()
        return [window_execution(row) for row in rows]

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

    # Patch now's one-off openings (state.postgres.oneoffs).

    def record_one_off(self, opening: OneOffOpening, *, now: datetime) -> OneOffRecord:
        """Record a new one-off opening, PENDING; its id must be new."""
        with self._use() as conn:
            return oneoffs.insert(conn, opening, now)

    def one_offs(
        self, statuses: Iterable[OneOffStatus] | None = None, limit: int = 100
    ) -> list[OneOffRecord]:
        """One-off openings (in ``statuses``, when given), newest first."""
        with self._use() as conn:
            return oneoffs.select(conn, statuses, limit)

    def one_off(self, opening_id: str) -> OneOffRecord | None:
        with self._use() as conn:
            return oneoffs.select_one(conn, opening_id)

    def change_one_off(
        self,
        opening_id: str,
        *,
        status: OneOffStatus,
        now: datetime,
        only_from: Iterable[OneOffStatus],
    ) -> bool:
        """Move a one-off opening to ``status`` when it is in one of ``only_from``."""
        with self._use() as conn:
            return oneoffs.change(conn, opening_id, status, now, tuple(only_from))

    def one_off_jobs(self, opening_ids: Iterable[str]) -> list[JobRecord]:
        """Every job of these one-off openings, oldest first."""
        with self._use() as conn:
            return oneoffs.jobs_of(conn, opening_ids)

    # Source revisions.

    def record_revision(
        self, *, revision: str, accepted: bool, problems: list[str], now: datetime
    ) -> None:
        """Append the verdict on a revision, unless it repeats the newest one."""
        entry = (revision, int(accepted), to_json(list(problems)))
        with self._use() as conn:
            # Two writers would both see the same newest row and both append: one at a time.
            conn.execute("LOCK TABLE revisions IN SHARE ROW EXCLUSIVE MODE")
            newest = conn.execute(
                "SELECT revision, accepted, problems FROM revisions"
                " ORDER BY seen_at DESC, id DESC LIMIT 1"
            ).fetchone()
            if newest != entry:
                conn.execute(
                    "INSERT INTO revisions (revision, accepted, problems, seen_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (*entry, to_text(now)),
                )

    def last_good_revision(self) -> RevisionRecord | None:
        """The newest accepted revision: the one the loop acts on while newer ones are refused."""
        with self._use() as conn:
            row = conn.execute(
                f"SELECT {RevisionRecord.COLUMNS} FROM revisions WHERE accepted = 1"
                " ORDER BY seen_at DESC, id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else RevisionRecord.from_row(row)

    def revisions(self, limit: int = 50) -> list[RevisionRecord]:
        """Revisions seen, newest first."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {RevisionRecord.COLUMNS} FROM revisions"
                " ORDER BY seen_at DESC, id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [RevisionRecord.from_row(row) for row in rows]

    # Scheduled report exports: append-only history.

    def record_report_run(
        self,
        *,
        report: str,
        opening: str,
        destination: str,
        format: str,
        revision: str | None,
        status: ReportRunStatus,
        locations: list[str],
        error: str | None,
        started_at: datetime,
        finished_at: datetime,
    ) -> ReportRunRecord | None:
        """Append one export attempt; None when nothing was appended (a second SUCCESS of the
        same opening, or a failure repeating the report's newest row), as SQLite's store."""
        check_report_run_status(status)
        entry = (report, opening, destination, format, revision, status, to_json(list(locations)))
        times = (to_text(started_at), to_text(finished_at))
        with self._use() as conn:
            # One report's rows at a time: two writers must not both see the same newest row.
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (REPORT_LOCK, report))
            newest = conn.execute(
                "SELECT opening, destination, status, error FROM report_runs WHERE report = %s"
                " ORDER BY finished_at DESC, id DESC LIMIT 1",
                (report,),
            ).fetchone()
            if status == "FAILED" and newest == (opening, destination, status, error):
                return None
            row = conn.execute(
                "INSERT INTO report_runs (report, opening, destination, format, revision,"
                " status, locations, error, started_at, finished_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                " RETURNING id",
                (*entry, error, *times),
            ).fetchone()
        return None if row is None else ReportRunRecord.from_row((row[0], *entry, error, *times))

    def report_runs(self, report: str | None = None, limit: int = 100) -> list[ReportRunRecord]:
        """Export attempts (of one report, or all), newest first."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {ReportRunRecord.COLUMNS} FROM report_runs"
                " WHERE %s::text IS NULL OR report = %s"
                " ORDER BY finished_at DESC, id DESC LIMIT %s",
                (report, report, limit),
            ).fetchall()
        return [ReportRunRecord.from_row(row) for row in rows]

    def last_exported_openings(self) -> dict[str, str]:
        """Per report, the latest opening exported successfully."""
        with self._use() as conn:
            rows = conn.execute(
                "SELECT report, max(opening) FROM report_runs WHERE status = 'SUCCESS'"
                " GROUP BY report"
            ).fetchall()
        return {report: opening for report, opening in rows}

    # Enrolment: each InstanceSource's last good list, replaced on each refresh.

    def source_lists(self) -> dict[str, Listed]:
        """source -> its last good list (sources that never listed anything are left out)."""
        with self._use() as conn:
            rows = conn.execute(
                "SELECT source, kind, spec, hosts, listed_at FROM instance_source_lists"
                " WHERE listed_at IS NOT NULL"
            ).fetchall()
        return {row[0]: listed(row) for row in rows}

    def save_source_list(self, source: str, listed: Listed) -> None:
        """Keep ``listed`` as ``source``'s last good list; its last error is cleared."""
        hosts = to_json([host.to_json() for host in listed.hosts])
        with self._use() as conn:
            conn.execute(
                "INSERT INTO instance_source_lists"
                " (source, kind, spec, hosts, listed_at, error, failed_at)"
                " VALUES (%s, %s, %s, %s, %s, NULL, NULL) ON CONFLICT (source) DO UPDATE SET"
                " kind = excluded.kind, spec = excluded.spec, hosts = excluded.hosts,"
                " listed_at = excluded.listed_at, error = NULL, failed_at = NULL",
                (source, listed.kind, listed.spec, hosts, to_text(listed.at)),
            )

    def record_source_failure(self, source: str, kind: str, error: str, now: datetime) -> None:
        """A refresh of ``source`` failed; its last good list (if any) is kept."""
        with self._use() as conn:
            conn.execute(
                "INSERT INTO instance_source_lists (source, kind, spec, hosts, error, failed_at)"
                " VALUES (%s, %s, '', '[]', %s, %s) ON CONFLICT (source)"
                " DO UPDATE SET error = excluded.error, failed_at = excluded.failed_at",
                (source, kind, error, to_text(now)),
            )

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

    def enrolled(self) -> dict[str, tuple[Provenance, bool]]:
        """instance -> (where it was generated from, whether its source still lists it)."""
        with self._use() as conn:
            rows = conn.execute(
                "SELECT instance, source, host, listed FROM enrolled_instances"
            ).fetchall()
        return {
            name: (Provenance(source, host), bool(listed)) for name, source, host, listed in rows
        }

    def source_failures(self) -> dict[str, tuple[str, datetime]]:
        """source -> (the last refresh's error, when), for sources whose last refresh failed."""
        with self._use() as conn:
            rows = conn.execute(
                "SELECT source, error, failed_at FROM instance_source_lists WHERE error IS NOT NULL"
            ).fetchall()
        return {source: (error, from_text(at)) for source, error, at in rows}


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
        conn: Connection = psycopg.connect(conninfo, autocommit=True)
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
