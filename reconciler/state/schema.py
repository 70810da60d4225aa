"""Stage: state. The SQLite schema as an ordered list of migrations, and the code that applies
them. Touches only the connection it is given; imports nothing from ``reconciler``.

The schema version is SQLite's ``PRAGMA user_version``: it lives in the database header, so it
is written in the same transaction as the DDL it describes and can never disagree with it.
Migration ``n`` (1-based) takes a file at version ``n - 1`` to version ``n``. Released
migrations are never edited: a change of schema is a new function appended to ``MIGRATIONS``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from reconciler.state.records import StoreUnusable

Migration = Callable[[sqlite3.Connection], None]


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction. ``BEGIN IMMEDIATE`` takes SQLite's write lock at the start, so a
    read-then-write inside it cannot be interleaved with another writer (thread or process),
    and waiting for the lock goes through the busy timeout instead of failing mid-way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (disk full, I/O) already rolled back; a second ROLLBACK would hide them.
        # A COMMIT that failed (disk full) may leave the transaction open: roll it back, or
        # every later BEGIN fails with "cannot start a transaction within a transaction".
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    # One execute() per statement: executescript() would COMMIT the migration's transaction.
    for statement in statements:
        conn.execute(statement)


def _append_only(table: str) -> list[str]:
    """Triggers that make a history table refuse updates and deletes, whoever writes to it."""
    return [
        f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
            BEGIN SELECT RAISE(ABORT, '{table} is append-only history'); END""",
        f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
            BEGIN SELECT RAISE(ABORT, '{table} is append-only history'); END""",
    ]


# Migration 1, split by table. The SQL is released: it is never edited, and the lines inside its
# strings keep their first indentation, because SQLite stores that text as written (sqlite_master).
_V1_JOBS: tuple[str, ...] = (
    """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                instance TEXT NOT NULL,
                operation TEXT NOT NULL,
                window TEXT,
                task TEXT,
                opening TEXT,
                revision TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
                payload TEXT NOT NULL,
                result TEXT,
                created_at TEXT NOT NULL,
                finished_at TEXT
            )""",
    "CREATE INDEX jobs_by_status ON jobs (status)",
    "CREATE INDEX jobs_by_instance ON jobs (instance)",
    "CREATE INDEX jobs_by_window ON jobs (window, opening)",
    # A job changes once, from running to finished; its identity never changes.
    """CREATE TRIGGER jobs_finish_once BEFORE UPDATE ON jobs
                WHEN OLD.status <> 'running' OR NEW.id IS NOT OLD.id OR NEW.key IS NOT OLD.key
                BEGIN SELECT RAISE(ABORT, 'a job is finished once and keeps its key'); END""",
    """CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobs
                BEGIN SELECT RAISE(ABORT, 'jobs are history'); END""",
)
_V1_SCANS: tuple[str, ...] = (
    """CREATE TABLE scans (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                instance TEXT NOT NULL,
                operation TEXT NOT NULL CHECK (operation IN ('Scan', 'Install')),
                revision TEXT NOT NULL,
                baseline TEXT NOT NULL,
                baseline_hash TEXT NOT NULL,
                job_id TEXT REFERENCES jobs (id),
                started_at TEXT NOT NULL,
                finished_at TEXT NOT NULL,
                inventory TEXT NOT NULL,
                evaluation TEXT NOT NULL
            )""",
    # Serves latest_scan, latest_scans and scan_history without a sort.
    "CREATE INDEX scans_latest ON scans (instance, finished_at DESC, id DESC)",
    "CREATE INDEX scans_by_job ON scans (job_id)",
    *_append_only("scans"),
)
_V1_WINDOW_EXECUTIONS: tuple[str, ...] = (
    """CREATE TABLE window_executions (
                window TEXT NOT NULL,
                opening TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN
                    ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED', 'TIMED_OUT', 'CANCELLED')),
                started_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (window, opening)
            )""",
)
_V1_REVISIONS: tuple[str, ...] = (
    """CREATE TABLE revisions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                revision TEXT NOT NULL,
                accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
                problems TEXT NOT NULL,
                seen_at TEXT NOT NULL
            )""",
    "CREATE INDEX revisions_by_time ON revisions (seen_at DESC, id DESC)",
    *_append_only("revisions"),
)


def _v1_history(conn: sqlite3.Connection) -> None:
    """Jobs, scan/install history, window executions and source revisions."""
    _run(conn, (*_V1_JOBS, *_V1_SCANS, *_V1_WINDOW_EXECUTIONS, *_V1_REVISIONS))


PATCH_COLUMNS = (
    "name",
    "arch",
    "installed_version",
    "version",
    "state",
    "classification",
    "severity",
    "compliance_level",
    "cves",
    "reason",
)


def _v2_patches_and_instances(conn: sqlite3.Connection) -> None:
    """Per-patch states and per-instance facts as queryable rows, backfilled from v1 scans."""
    _run(
        conn,
        [
            """CREATE TABLE patch_states (
                scan_id INTEGER NOT NULL REFERENCES scans (id),
                instance TEXT NOT NULL,
                name TEXT NOT NULL,
                arch TEXT,
                installed_version TEXT,
                version TEXT,
                state TEXT NOT NULL,
                classification TEXT,
                severity TEXT,
                compliance_level TEXT,
                cves TEXT NOT NULL,
                reason TEXT
            )""",
            "CREATE INDEX patch_states_by_scan ON patch_states (scan_id)",
            "CREATE INDEX patch_states_by_patch ON patch_states (name, state)",
            *_append_only("patch_states"),
            """CREATE TABLE instances (
                instance TEXT PRIMARY KEY,
                facts TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                last_scan_id INTEGER NOT NULL REFERENCES scans (id)
            )""",
        ],
    )
    rows = conn.execute(
        "SELECT id, instance, finished_at, inventory, evaluation FROM scans"
        " ORDER BY finished_at, id"
    ).fetchall()
    for scan_id, instance, finished_at, inventory, evaluation in rows:
        evaluation_doc = json.loads(evaluation)
        facts = facts_of(json.loads(inventory), evaluation_doc)
        insert_patch_states(conn, scan_id, instance, evaluation_doc)
        upsert_instance(conn, scan_id, instance, finished_at, facts)


def facts_of(inventory: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The instance's facts as reported with a scan: the evaluation's, else the inventory's."""
    facts = evaluation.get("facts") or inventory.get("facts")
    return facts if isinstance(facts, dict) else None


def _patch_row(patch: dict[str, Any]) -> tuple[Any, ...]:
    # The -o json CONTRACT spells fields in camelCase; accept snake_case from Python callers too.
    def field(camel: str, snake: str) -> Any:
        return patch.get(camel, patch.get(snake))

    return (
        patch["name"],
        patch.get("arch"),
        field("installedVersion", "installed_version"),
        patch.get("version"),
        patch["state"],
        patch.get("classification"),
        patch.get("severity"),
        field("complianceLevel", "compliance_level"),
        json.dumps(list(patch.get("cves") or [])),
        patch.get("reason"),
    )


def patch_rows(scan_id: int, instance: str, evaluation: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The patch_states rows (``scan_id, instance, *PATCH_COLUMNS``) of ``evaluation["patches"]``,
    every backend's; ValueError for a patch without a name or a state."""
    patches = evaluation.get("patches") or []
    for index, patch in enumerate(patches):
        if not isinstance(patch, dict) or "name" not in patch or "state" not in patch:
            raise ValueError(f"evaluation.patches[{index}] needs at least a name and a state")
    return [(scan_id, instance, *_patch_row(patch)) for patch in patches]


def insert_patch_states(
    conn: sqlite3.Connection, scan_id: int, instance: str, evaluation: dict[str, Any]
) -> None:
    """One patch_states row per entry of ``evaluation["patches"]``."""
    rows = patch_rows(scan_id, instance, evaluation)
    placeholders = ", ".join("?" * (len(PATCH_COLUMNS) + 2))
    conn.executemany(
        f"INSERT INTO patch_states (scan_id, instance, {', '.join(PATCH_COLUMNS)})"
        f" VALUES ({placeholders})",
        rows,
    )


def upsert_instance(
    conn: sqlite3.Connection,
    scan_id: int,
    instance: str,
    finished_at: str,
    facts: dict[str, Any] | None,
) -> None:
    """Keep the facts of the newest scan and the time of the first one.

    Scans can be recorded out of order (parallel workers), so "newest" is decided by
    ``finished_at``, not by arrival; a scan without facts keeps the facts already known.
    """
    conn.execute(
        """INSERT INTO instances (instance, facts, first_seen, last_seen, last_scan_id)
           VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (instance) DO UPDATE SET
             first_seen = min(first_seen, excluded.first_seen),
             facts = CASE WHEN excluded.last_seen >= last_seen AND ? THEN excluded.facts
                          ELSE facts END,
             last_scan_id = CASE WHEN excluded.last_seen >= last_seen
                                 THEN excluded.last_scan_id ELSE last_scan_id END,
             last_seen = max(last_seen, excluded.last_seen)""",
        (
            instance,
            json.dumps(facts or {}, sort_keys=True),
            finished_at,
            finished_at,
            scan_id,
            facts is not None,
        ),
    )


def _v3_report_runs(conn: sqlite3.Connection) -> None:
    """Scheduled report exports: one row per attempt, append-only. At most one SUCCESS per
    (report, opening): the loop exports each opening of a report's schedule once."""
    _run(
        conn,
        [
            """CREATE TABLE report_runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                report TEXT NOT NULL,
                opening TEXT NOT NULL,
                destination TEXT NOT NULL,
                format TEXT NOT NULL,
                revision TEXT,
                status TEXT NOT NULL CHECK (status IN ('SUCCESS', 'FAILED')),
                locations TEXT NOT NULL,
                error TEXT,
                started_at TEXT NOT NULL,
                finished_at TEXT NOT NULL
            )""",
            "CREATE INDEX report_runs_by_report ON report_runs (report, finished_at DESC, id DESC)",
            """CREATE UNIQUE INDEX report_runs_one_success ON report_runs (report, opening)
                WHERE status = 'SUCCESS'""",
            *_append_only("report_runs"),
        ],
    )


def _v4_planning_indexes(conn: sqlite3.Connection) -> None:
    """Indexes for the planner's read of the job history (``StateStore.planning_jobs``): by
    status and time, so running, recently failed and abandoned jobs are found without reading a
    year of finished ones; and by instance and time, so each instance's newest job is one index
    step (``StateStore.latest_jobs``). They replace the status-only and instance-only indexes,
    which they cover."""
    _run(
        conn,
        [
            "CREATE INDEX jobs_by_status_time ON jobs (status, created_at)",
            "DROP INDEX jobs_by_status",
            "CREATE INDEX jobs_by_instance_time ON jobs (instance, created_at)",
            "DROP INDEX jobs_by_instance",
        ],
    )


def _v5_execution_statuses(conn: sqlite3.Connection) -> None:
    """Window executions may be SKIPPED_OVERLAPPING (SSM's status for an opening that began while
    the previous execution still ran). SQLite cannot change a CHECK constraint in place, so the
    table is copied into one that allows it."""
    _run(
        conn,
        [
            """CREATE TABLE window_executions_v5 (
                window TEXT NOT NULL,
                opening TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN
                    ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED', 'TIMED_OUT', 'CANCELLED',
                     'SKIPPED_OVERLAPPING')),
                started_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (window, opening)
            )""",
            "INSERT INTO window_executions_v5 SELECT window, opening, status, started_at,"
            " updated_at FROM window_executions",
            "DROP TABLE window_executions",
            "ALTER TABLE window_executions_v5 RENAME TO window_executions",
        ],
    )


def _v6_package_first_seen(conn: sqlite3.Connection) -> None:
    """The first time any instance's scan saw each package version in each archive (origin and
    suite): apt archives carry no release dates, so a baseline that opts in
    (``approveAfterDaysFrom: FirstSeen``) counts approve-after-days from this moment instead."""
    _run(
        conn,
        [
            """CREATE TABLE package_first_seen (
                name TEXT NOT NULL,
                arch TEXT NOT NULL,
                version TEXT NOT NULL,
                archive TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                PRIMARY KEY (name, arch, version, archive)
            ) WITHOUT ROWID""",
        ],
    )


def record_first_seen(
    conn: sqlite3.Connection, keys: Iterable[tuple[str, str, str, str]], seen_at: str
) -> None:
    """Keep the earliest time each (name, arch, version, archive) was seen: scans arrive out of
    order (parallel workers), so a later arrival with an earlier time moves it earlier, never
    later."""
    conn.executemany(
        "INSERT INTO package_first_seen (name, arch, version, archive, first_seen)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, arch, version, archive)"
        " DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)",
        [(*key, seen_at) for key in keys],
    )


def _v7_job_phases(conn: sqlite3.Connection) -> None:
    """Where a running job is, when it waits for something that outlives a process: today
    ``rebooting`` (the loop rebooted the machine after an install and waits for a new boot id).
    Recorded before the reboot is asked for, so a restarted loop finds the job there, does not
    abandon it, and finishes it (docs/reboots.md). ``boot_id`` is the machine's boot id before
    the reboot; ``detail`` what the job did so far (the install's outcome, as JSON)."""
    _run(
        conn,
        [
            """CREATE TABLE job_phases (
                job_id TEXT PRIMARY KEY REFERENCES jobs (id),
                phase TEXT NOT NULL CHECK (phase IN ('rebooting')),
                boot_id TEXT NOT NULL,
                detail TEXT NOT NULL,
                since TEXT NOT NULL
            )""",
        ],
    )


def _v8_one_off_openings(conn: sqlite3.Connection) -> None:
    """Patch now's one-off openings (``patchctl patch-now``): the document (targets, task, who
    asked, until when it may start) never changes; the status moves from PENDING or IN_PROGRESS
    to one final status, once."""
    _run(
        conn,
        [
            """CREATE TABLE one_off_openings (
                id TEXT PRIMARY KEY,
                document TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('PENDING', 'IN_PROGRESS', 'SUCCESS',
                    'FAILED', 'CANCELLED', 'EXPIRED')),
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX one_off_openings_by_status ON one_off_openings (status, created_at)",
            """CREATE TRIGGER one_off_openings_final BEFORE UPDATE ON one_off_openings
                WHEN OLD.status NOT IN ('PENDING', 'IN_PROGRESS') OR NEW.id IS NOT OLD.id
                  OR NEW.document IS NOT OLD.document
                BEGIN SELECT RAISE(ABORT, 'a one-off opening ends once; its document is kept');
                END""",
            """CREATE TRIGGER one_off_openings_no_delete BEFORE DELETE ON one_off_openings
                BEGIN SELECT RAISE(ABORT, 'one-off openings are history'); END""",
        ],
    )


def _v9_instance_source_lists(conn: sqlite3.Connection) -> None:
    """Each InstanceSource's last good list of machines (JSON), so a restart keeps enrolling them
    while the source cannot be read; the last refresh's error, for ``patchctl sources``; and
    which source generated each instance (``listed`` 0 once its machine left the source).
    One row per source, replaced on each refresh: a list is state, not history (the instances'
    history is in scans and jobs)."""
    _run(
        conn,
        [
            """CREATE TABLE instance_source_lists (
                source TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                spec TEXT NOT NULL,
                hosts TEXT NOT NULL,
                listed_at TEXT,
                error TEXT,
                failed_at TEXT
            )""",
            # Every instance ever generated, with where from: a machine gone from its source
            # keeps its history, and its history still says where it came from.
            """CREATE TABLE enrolled_instances (
                instance TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                host TEXT NOT NULL,
                listed INTEGER NOT NULL CHECK (listed IN (0, 1)),
                changed_at TEXT NOT NULL
            )""",
        ],
    )


ROLLOUT_HISTORY = """CREATE TABLE rollout_history (
    id {key},
    rollout TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('CycleStarted', 'MachineResult', 'Halted',
        'Resumed', 'Approved', 'Aborted')),
    document TEXT NOT NULL,
    at TEXT NOT NULL
)"""
"""Migration 10's table in both dialects (PostgreSQL's migration 10 fills ``key`` its way)."""
ROLLOUT_HISTORY_INDEX = (
    "CREATE INDEX rollout_history_by_rollout ON rollout_history (rollout, event, id)"
)


def _v10_rollout_history(conn: sqlite3.Connection) -> None:
    """Progressive rollouts' recorded state as history (issue 15): a row per change (a cycle
    started with its frozen snapshot, a machine's result, a halt, a resume, a stage's manual
    approval, an abort), never updated or deleted; the state the planner takes is the rows since
    the rollout's latest cycle start."""
    _run(
        conn,
        [
            ROLLOUT_HISTORY.format(key="INTEGER PRIMARY KEY AUTOINCREMENT"),
            ROLLOUT_HISTORY_INDEX,
            *_append_only("rollout_history"),
        ],
    )


MIGRATIONS: tuple[Migration, ...] = (
    _v1_history,
    _v2_patches_and_instances,
    _v3_report_runs,
    _v4_planning_indexes,
    _v5_execution_statuses,
    _v6_package_first_seen,
    _v7_job_phases,
    _v8_one_off_openings,
    _v9_instance_source_lists,
    _v10_rollout_history,
)
LATEST = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the file to ``target`` in one write transaction; returns the version it had.

    ``BEGIN IMMEDIATE`` takes the write lock before the version is read, so two processes
    opening a new file at once cannot both run migration 1: the second waits, then finds
    nothing to do.
    """
    if not 0 <= target <= LATEST:
        raise ValueError(f"schema version {target} does not exist (latest is {LATEST})")
    with immediate(conn):
        found = user_version(conn)
        if found > LATEST:
            raise StoreUnusable(
                f"the state file has schema version {found}, newer than this program's {LATEST}:"
                " upgrade patchwarden rather than risk writing an older schema into it"
            )
        for version in range(found + 1, target + 1):
            MIGRATIONS[version - 1](conn)
        if target > found:
            # PRAGMA takes no parameters; target is an int checked above.
            conn.execute(f"PRAGMA user_version = {int(target)}")
    return found
