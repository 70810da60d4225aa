"""Stage: state. :class:`SqlStore`, the methods whose logic is the same on SQLite and
PostgreSQL, written once with ``?`` placeholders and run in the store's dialect
(:class:`~reconciler.state.dialect.Dialect`; docs/state.md, "Two backends, one store").

Touches only the connection a store gives it; decides nothing; imports no database driver (each
store brings its own connection) and of the project only the state package's own modules and the
rollout planner's value types.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self

from reconciler.api.enrolment import DiscoveredHost, Listed, Provenance
from reconciler.api.enums import ExecutionStatus, JobStatus, Operation, ReportRunStatus
from reconciler.api.oneoff import OneOffOpening, OneOffStatus
from reconciler.rollout import MachineResult, RolloutRecord, RolloutSnapshot
from reconciler.state import oneoffs, rollouts
from reconciler.state.dialect import Dialect
from reconciler.state.lock import WriterLock
from reconciler.state.oneoffs import OneOffRecord
from reconciler.state.records import (
    InstanceRecord,
    JobNotRunning,
    JobPhase,
    JobRecord,
    PatchStateRecord,
    ReportRunRecord,
    RevisionRecord,
    ScanRecord,
    UnknownJob,
    WindowExecution,
    check_finish_status,
    check_job_status,
    check_report_run_status,
    check_window_status,
    from_json,
    from_text,
    to_json,
    to_text,
    window_execution,
)
from reconciler.state.rollouts import RolloutEvent

JOB_FILTERS = ("status", "instance", "window", "task", "opening")


class SqlStore:
    """The methods both stores share. A store names its :attr:`dialect` and gives ``_use`` (one
    connection for a read or a single write) and ``_write`` (a read-then-write in one
    transaction that holds the write lock)."""

    dialect: ClassVar[Dialect]

    def _use(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    # Lifetime: both stores hold one connection and, as writer, one writer lock.

    _lock: threading.Lock
    _conn: Any
    _writer: WriterLock | None
    _planning_rows: dict[tuple[Any, ...], JobRecord]
    """The last planning read's rows and their records (:meth:`_planning_records`)."""

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

    def _planning_records(self, rows: Iterable[tuple[Any, ...]]) -> list[JobRecord]:
        """``rows`` (``JobRecord.COLUMNS``) as records, reusing the previous planning read's
        record of a row whose every column is unchanged: observe() reads after each completion
        and a window's jobs stay in that read until its opening ends, so decoding their JSON
        again was most of a plan's read. Only the last read's rows are kept."""
        known = self._planning_rows
        fresh = {row: known.get(row) or JobRecord.from_row(row) for row in map(tuple, rows)}
        self._planning_rows = fresh
        return list(fresh.values())

    # Scans and installs: reads.

    def latest_scan(self, instance: str) -> ScanRecord | None:
        history = self.scan_history(instance, limit=1)
        return history[0] if history else None

    def scan_history(self, instance: str, limit: int = 100) -> list[ScanRecord]:
        """The instance's scans and installs, newest first."""
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT {ScanRecord.COLUMNS} FROM scans WHERE instance = ?"
                " ORDER BY finished_at DESC, id DESC LIMIT ?",
                (instance, limit),
            ).fetchall()
        return [ScanRecord.from_row(row) for row in rows]

    def patch_states(self, scan_id: int) -> list[PatchStateRecord]:
        """The per-patch rows stored with one scan, in the evaluation's order."""
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT {PatchStateRecord.COLUMNS} FROM patch_states WHERE scan_id = ?"
                f" ORDER BY {self.dialect.arrival}",
                (scan_id,),
            ).fetchall()
        return [PatchStateRecord.from_row(row) for row in rows]

    def instance(self, instance: str) -> InstanceRecord | None:
        with self._use() as conn:
            row = self.dialect.run(
                conn,
                f"SELECT {InstanceRecord.COLUMNS} FROM instances WHERE instance = ?",
                (instance,),
            ).fetchone()
        return None if row is None else InstanceRecord.from_row(row)

    def instances(self) -> list[InstanceRecord]:
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {InstanceRecord.COLUMNS} FROM instances ORDER BY instance"
            ).fetchall()
        return [InstanceRecord.from_row(row) for row in rows]

    # Jobs.

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
        """Insert a running job for ``key``, or return None when the key was ever claimed.

        The UNIQUE constraint on ``key`` decides, inside the database: of any number of
        threads, processes or hosts claiming one key, exactly one inserts. A key stays taken
        whatever becomes of its job (even abandoned), so a job is never dispatched twice for
        it; retrying means a new key.
        """
        job_id, created, payload_text = uuid.uuid4().hex, to_text(now), to_json(payload)
        row = (job_id, key, instance, operation, window, task, opening, revision, JobStatus.RUNNING)
        with self._use() as conn:
            inserted = self.dialect.run(
                conn,
                f"INSERT INTO jobs ({JobRecord.COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        result_text, finished = to_json(result), to_text(now)
        with self._write() as conn:
            changed = self.dialect.run(
                conn,
                "UPDATE jobs SET status = ?, result = ?, finished_at = ?"
                " WHERE id = ? AND status = 'running'",
                (status, result_text, finished, job_id),
            ).rowcount
            row = self.dialect.run(
                conn, f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE id = ?", (job_id,)
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
            row = self.dialect.run(
                conn, f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE {column} = ?", (value,)
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
        where = " AND ".join(f'"{column}" = ?' for column in wanted) or "TRUE"
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE {where}"
                f" ORDER BY created_at, {self.dialect.arrival}",
                tuple(wanted.values()),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def install_jobs_since(self, instances: Iterable[str], since: datetime) -> list[JobRecord]:
        """The finished Install jobs of ``instances`` created at or after ``since``, oldest first:
        a ``jobs_by_instance_time`` range per instance, so a rollout pass reads its cycle's jobs
        only, however long the history."""
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE {self.dialect.in_list('instance')}"
                " AND created_at >= ? AND operation = 'Install'"
                " AND status IN ('succeeded', 'failed')"
                f" ORDER BY created_at, {self.dialect.arrival}",
                (self.dialect.listed(instances), to_text(since)),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def claimed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` were ever claimed, checked in SQL (the UNIQUE index on ``key``)."""
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT key FROM jobs WHERE {self.dialect.in_list('key')}",
                (self.dialect.listed(keys),),
            ).fetchall()
        return {row[0] for row in rows}

    # Job phases: a running job waiting for its machine's reboot.

    def record_phase(
        self, job_id: str, *, phase: str, boot_id: str, detail: dict[str, Any], now: datetime
    ) -> JobPhase:
        """Record that the running job ``job_id`` is now in ``phase`` (before it starts it)."""
        row = (job_id, phase, boot_id, to_json(detail), to_text(now))
        with self._write() as conn:
            # The job cannot finish between this check and the insert (lock_rows).
            status = self.dialect.run(
                conn, f"SELECT status FROM jobs WHERE id = ?{self.dialect.lock_rows}", (job_id,)
            ).fetchone()
            if status is None:
                raise UnknownJob(f"no job has id {job_id!r}")
            if status[0] != JobStatus.RUNNING:
                raise JobNotRunning(f"job {job_id} already finished as {status[0]!r}")
            self.dialect.run(
                conn,
                f"INSERT INTO job_phases ({JobPhase.COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET phase = excluded.phase,"
                " boot_id = excluded.boot_id, detail = excluded.detail, since = excluded.since",
                row,
            )
        return JobPhase.from_row(row)

    def rebooting_jobs(self) -> list[tuple[JobRecord, JobPhase]]:
        """Running jobs whose machine was asked to reboot, oldest first: what a restarted loop
        resumes (waits for the new boot id, rescans, finishes) instead of abandoning."""
        columns = ", ".join(f"jobs.{c.strip()}" for c in JobRecord.COLUMNS.split(","))
        phase = ", ".join(f"job_phases.{c.strip()}" for c in JobPhase.COLUMNS.split(","))
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {columns}, {phase} FROM jobs"
                " JOIN job_phases ON job_phases.job_id = jobs.id"
                " WHERE jobs.status = 'running' AND job_phases.phase = 'rebooting'"
                f" ORDER BY jobs.created_at, jobs.{self.dialect.arrival}"
            ).fetchall()
        width = len(JobRecord.COLUMNS.split(","))
        return [(JobRecord.from_row(r[:width]), JobPhase.from_row(r[width:])) for r in rows]

    # Patch now's one-off openings (state.oneoffs).

    def record_one_off(self, opening: OneOffOpening, *, now: datetime) -> OneOffRecord:
        """Record a new one-off opening, PENDING; its id must be new."""
        with self._write() as conn:
            return oneoffs.insert(conn, self.dialect, opening, now)

    def one_offs(
        self, statuses: Iterable[OneOffStatus] | None = None, limit: int = 100
    ) -> list[OneOffRecord]:
        """One-off openings (in ``statuses``, when given), newest first."""
        with self._use() as conn:
            return oneoffs.select(conn, self.dialect, statuses, limit)

    def one_off(self, opening_id: str) -> OneOffRecord | None:
        with self._use() as conn:
            return oneoffs.select_one(conn, self.dialect, opening_id)

    def change_one_off(
        self,
        opening_id: str,
        *,
        status: OneOffStatus,
        now: datetime,
        only_from: Iterable[OneOffStatus],
    ) -> bool:
        """Move a one-off opening to ``status`` when it is in one of ``only_from`` (checked and
        written in one transaction); whether it moved."""
        with self._write() as conn:
            return oneoffs.change(conn, self.dialect, opening_id, status, now, tuple(only_from))

    def one_off_jobs(self, opening_ids: Iterable[str]) -> list[JobRecord]:
        """Every job of these one-off openings, oldest first."""
        with self._use() as conn:
            return oneoffs.jobs_of(conn, self.dialect, opening_ids)

    # Maintenance window executions.

    def record_window_execution(
        self, *, window: str, opening: str, status: ExecutionStatus, now: datetime
    ) -> None:
        """Set the status of one opening of a window; the first record's time stays its start."""
        check_window_status(status)
        moment = to_text(now)
        with self._use() as conn:
            self.dialect.run(
                conn,
                'INSERT INTO window_executions ("window", opening, status, started_at,'
                ' updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT ("window", opening)'
                " DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
                (window, opening, status, moment, moment),
            )

    def window_executions(self, window: str | None = None) -> list[WindowExecution]:
        """Every execution (of ``window``), oldest first."""
        where, params = ('WHERE "window" = ?', (window,)) if window is not None else ("", ())
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                'SELECT "window", opening, status, started_at, updated_at FROM window_executions'
                f' {where} ORDER BY started_at, "window", opening',
                params,
            ).fetchall()
        return [window_execution(row) for row in rows]

    # Source revisions: reads.

    def record_revision(
        self, *, revision: str, accepted: bool, problems: list[str], now: datetime
    ) -> None:
        """Append the verdict on a revision, unless it repeats the newest one.

        The loop re-reads its source every tick; repeating the same verdict would bury the
        history in copies, so ``seen_at`` is when the revision became current.
        """
        entry = (revision, int(accepted), to_json(list(problems)))
        with self._write() as conn:
            # Two writers would both see the same newest row and both append: one at a time.
            if self.dialect.lock_table:
                conn.execute(self.dialect.lock_table.format(table="revisions"))
            newest = conn.execute(
                "SELECT revision, accepted, problems FROM revisions"
                " ORDER BY seen_at DESC, id DESC LIMIT 1"
            ).fetchone()
            if newest != entry:
                self.dialect.run(
                    conn,
                    "INSERT INTO revisions (revision, accepted, problems, seen_at)"
                    " VALUES (?, ?, ?, ?)",
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
            rows = self.dialect.run(
                conn,
                f"SELECT {RevisionRecord.COLUMNS} FROM revisions"
                " ORDER BY seen_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RevisionRecord.from_row(row) for row in rows]

    # Scheduled report exports: reads.

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
        """Append one export attempt; returns None when nothing was appended.

        A second SUCCESS for the same (report, opening) is not appended (another process
        exported that opening already), and neither is a failure that repeats the report's
        newest row exactly (same opening, destination and error): the loop retries every pass,
        and copies of one failure would bury the history, as with revisions.
        """
        check_report_run_status(status)
        entry = (report, opening, destination, format, revision, status, to_json(list(locations)))
        times = (to_text(started_at), to_text(finished_at))
        with self._write() as conn:
            self._hold_report(conn, report)
            newest = self.dialect.run(
                conn,
                "SELECT opening, destination, status, error FROM report_runs WHERE report = ?"
                " ORDER BY finished_at DESC, id DESC LIMIT 1",
                (report,),
            ).fetchone()
            if status == "FAILED" and newest == (opening, destination, status, error):
                return None
            row_id = self._insert_id(
                conn,
                self.dialect.sql(
                    "INSERT INTO report_runs (report, opening, destination, format, revision,"
                    " status, locations, error, started_at, finished_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                (*entry, error, *times),
            )
        if row_id is None:
            return None
        return ReportRunRecord.from_row((row_id, *entry, error, *times))

    def _hold_report(self, conn: Any, report: str) -> None:
        """Keep other writers from ``report``'s rows until the transaction ends."""
        raise NotImplementedError

    def _insert_id(self, conn: Any, statement: str, params: Any) -> int | None:
        """Run ``statement`` (an INSERT of one row that may do nothing on a conflict); the new
        row's id, or None when nothing was inserted."""
        raise NotImplementedError

    def report_runs(self, report: str | None = None, limit: int = 100) -> list[ReportRunRecord]:
        """Export attempts (of one report, or all), newest first."""
        where, params = ("WHERE report = ?", (report,)) if report is not None else ("", ())
        with self._use() as conn:
            rows = self.dialect.run(
                conn,
                f"SELECT {ReportRunRecord.COLUMNS} FROM report_runs {where}"
                " ORDER BY finished_at DESC, id DESC LIMIT ?",
                (*params, limit),
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

    # Enrolment: each InstanceSource's last good list.

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
        with self._write() as conn:
            self.dialect.run(
                conn,
                "INSERT INTO instance_source_lists"
                " (source, kind, spec, hosts, listed_at, error, failed_at)"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (source) DO UPDATE SET"
                " kind = excluded.kind, spec = excluded.spec, hosts = excluded.hosts,"
                " listed_at = excluded.listed_at, error = NULL, failed_at = NULL",
                (source, listed.kind, listed.spec, hosts, to_text(listed.at)),
            )

    def record_source_failure(self, source: str, kind: str, error: str, now: datetime) -> None:
        """A refresh of ``source`` failed; its last good list (if any) is kept."""
        with self._write() as conn:
            self.dialect.run(
                conn,
                "INSERT INTO instance_source_lists (source, kind, spec, hosts, error, failed_at)"
                " VALUES (?, ?, '', '[]', ?, ?) ON CONFLICT (source)"
                " DO UPDATE SET error = excluded.error, failed_at = excluded.failed_at",
                (source, kind, error, to_text(now)),
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

    # Progressive rollouts' recorded state (state.rollouts): history, folded on read.

    def rollout_record(self, rollout: str) -> RolloutRecord:
        """What the rollout planner takes: the current cycle's snapshot, results and halt."""
        with self._use() as conn:
            return rollouts.record_of(conn, self.dialect, rollout)

    def record_rollout_cycle(
        self, rollout: str, snapshot: RolloutSnapshot, *, now: datetime
    ) -> None:
        """A new cycle with its frozen snapshot: earlier results and halts no longer count."""
        document = rollouts.snapshot_document(snapshot)
        self._append_rollout(rollout, RolloutEvent.CYCLE_STARTED, document, now)

    def record_rollout_result(
        self, rollout: str, instance: str, result: MachineResult, *, now: datetime
    ) -> None:
        document = rollouts.result_document(instance, result)
        self._append_rollout(rollout, RolloutEvent.MACHINE_RESULT, document, now)

    def record_rollout_halt(
        self, rollout: str, reason: str, *, now: datetime, resume_token: str | None = None
    ) -> None:
        """``resume_token``: the decision's (the Rollout's ``resumeToken`` then, "" for none), so
        a commit that changes it resumes; without it only ``patchctl rollout resume`` does."""
        document = {"reason": reason, "resumeToken": resume_token}
        self._append_rollout(rollout, RolloutEvent.HALTED, document, now)

    def record_rollout_resume(
        self, rollout: str, *, now: datetime, by: dict[str, Any] | None = None
    ) -> None:
        self._append_rollout(rollout, RolloutEvent.RESUMED, by or {}, now)

    def record_rollout_approval(
        self, rollout: str, stage: str, digest: str, *, now: datetime, by: dict[str, Any]
    ) -> None:
        """A stage approved by hand for the snapshot ``digest`` (this cycle's only)."""
        document = {"stage": stage, "snapshot": digest, **by}
        self._append_rollout(rollout, RolloutEvent.APPROVED, document, now)

    def record_rollout_abort(self, rollout: str, *, now: datetime, by: dict[str, Any]) -> None:
        self._append_rollout(rollout, RolloutEvent.ABORTED, by, now)

    def rollouts_known(self) -> list[str]:
        """The rollouts the store has history of."""
        with self._use() as conn:
            return rollouts.known(conn, self.dialect)

    def _append_rollout(
        self, rollout: str, event: RolloutEvent, document: dict[str, Any], now: datetime
    ) -> None:
        with self._write() as conn:
            rollouts.append(conn, self.dialect, rollout, event, document, now)


def listed(row: tuple[Any, ...]) -> Listed:
    """An ``instance_source_lists`` row (source, kind, spec, hosts, listed_at) as its list."""
    _, kind, spec, hosts, listed_at = row
    return Listed(
        kind,
        spec,
        tuple(DiscoveredHost.from_json(h) for h in from_json(hosts)),
        from_text(listed_at),
    )
