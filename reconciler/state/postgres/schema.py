"""Stage: state. The PostgreSQL schema and its migrator: the project's own migrator, as for SQLite
(``reconciler.state.schema``), in PostgreSQL's dialect (docs/state.md, "PostgreSQL": why not
Alembic). Touches only the connection it is given.

Same version numbers as SQLite's ``MIGRATIONS``: no PostgreSQL database predates version 9, so
:data:`MIGRATIONS` starts there with the version-9 schema whole, and every later migration is
added to both modules under the same number. The columns keep SQLite's types (times as the same
fixed-width UTC text, documents as JSON text), so one set of records (``state.records``) decodes
both backends' rows alike. The version is one row of ``schema_version``, written in the
transaction of the DDL it describes (PostgreSQL's DDL is transactional).
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from reconciler.state.records import StoreUnusable
from reconciler.state.schema import ROLLOUT_HISTORY, ROLLOUT_HISTORY_INDEX

Migration = Callable[[psycopg.Connection[tuple[object, ...]]], None]

FIRST = 9
"""The version of a new PostgreSQL database's first migration (SQLite's 1-9 at once)."""

MIGRATION_LOCK = 0x5057_4D69
"""``pg_advisory_xact_lock`` key ("PWMi") held while migrating: two processes opening a new
database at once do not both create the schema; the second waits, then finds nothing to do."""


def _append_only(table: str, what: str) -> list[str]:
    """A trigger that refuses updates and deletes of a history table, whoever writes to it."""
    return [
        f"""CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '{what}' USING ERRCODE = 'integrity_constraint_violation';
            END $$""",
        f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_append_only()""",
    ]


_JOBS = (
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        instance TEXT NOT NULL,
        operation TEXT NOT NULL,
        "window" TEXT,
        task TEXT,
        opening TEXT,
        revision TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
        payload TEXT NOT NULL,
        result TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        seq BIGSERIAL NOT NULL UNIQUE
    )""",
    "CREATE INDEX jobs_by_status_time ON jobs (status, created_at)",
    "CREATE INDEX jobs_by_instance_time ON jobs (instance, created_at)",
    'CREATE INDEX jobs_by_window ON jobs ("window", opening)',
    # A job changes once, from running to finished; its identity never changes.
    """CREATE FUNCTION jobs_finish_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'jobs are history' USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          IF OLD.status <> 'running' OR NEW.id IS DISTINCT FROM OLD.id
             OR NEW.key IS DISTINCT FROM OLD.key THEN
            RAISE EXCEPTION 'a job is finished once and keeps its key'
              USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          RETURN NEW;
        END $$""",
    """CREATE TRIGGER jobs_finish_once BEFORE UPDATE OR DELETE ON jobs
        FOR EACH ROW EXECUTE FUNCTION jobs_finish_once()""",
)
_SCANS = (
    """CREATE TABLE scans (
        id BIGSERIAL PRIMARY KEY,
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
    "CREATE INDEX scans_latest ON scans (instance, finished_at DESC, id DESC)",
    "CREATE INDEX scans_by_job ON scans (job_id)",
    *_append_only("scans", "scans is append-only history"),
    """CREATE TABLE patch_states (
        seq BIGSERIAL PRIMARY KEY,
        scan_id BIGINT NOT NULL REFERENCES scans (id),
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
    *_append_only("patch_states", "patch_states is append-only history"),
    """CREATE TABLE instances (
        instance TEXT PRIMARY KEY,
        facts TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        last_scan_id BIGINT NOT NULL REFERENCES scans (id)
    )""",
    """CREATE TABLE package_first_seen (
        name TEXT NOT NULL,
        arch TEXT NOT NULL,
        version TEXT NOT NULL,
        archive TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        PRIMARY KEY (name, arch, version, archive)
    )""",
    """CREATE TABLE job_phases (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id),
        phase TEXT NOT NULL CHECK (phase IN ('rebooting')),
        boot_id TEXT NOT NULL,
        detail TEXT NOT NULL,
        since TEXT NOT NULL
    )""",
)
_WINDOWS_AND_REVISIONS = (
    """CREATE TABLE window_executions (
        "window" TEXT NOT NULL,
        opening TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('PENDING', 'IN_PROGRESS', 'SUCCESS', 'FAILED', 'TIMED_OUT', 'CANCELLED',
             'SKIPPED_OVERLAPPING')),
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY ("window", opening)
    )""",
    """CREATE TABLE revisions (
        id BIGSERIAL PRIMARY KEY,
        revision TEXT NOT NULL,
        accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
        problems TEXT NOT NULL,
        seen_at TEXT NOT NULL
    )""",
    "CREATE INDEX revisions_by_time ON revisions (seen_at DESC, id DESC)",
    *_append_only("revisions", "revisions is append-only history"),
    """CREATE TABLE report_runs (
        id BIGSERIAL PRIMARY KEY,
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
    *_append_only("report_runs", "report_runs is append-only history"),
)
_ONE_OFFS_AND_ENROLMENT = (
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
    """CREATE FUNCTION one_off_openings_final() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'one-off openings are history'
              USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          IF OLD.status NOT IN ('PENDING', 'IN_PROGRESS') OR NEW.id IS DISTINCT FROM OLD.id
             OR NEW.document IS DISTINCT FROM OLD.document THEN
            RAISE EXCEPTION 'a one-off opening ends once; its document is kept'
              USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          RETURN NEW;
        END $$""",
    """CREATE TRIGGER one_off_openings_final BEFORE UPDATE OR DELETE ON one_off_openings
        FOR EACH ROW EXECUTE FUNCTION one_off_openings_final()""",
    """CREATE TABLE instance_source_lists (
        source TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,
        hosts TEXT NOT NULL,
        listed_at TEXT,
        error TEXT,
        failed_at TEXT
    )""",
    """CREATE TABLE enrolled_instances (
        instance TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        host TEXT NOT NULL,
        listed INTEGER NOT NULL CHECK (listed IN (0, 1)),
        changed_at TEXT NOT NULL
    )""",
)


def _v9_whole(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """SQLite's versions 1-9 at once. ``seq`` columns stand in for SQLite's rowid, which the
    SQLite store orders ties by (jobs created at the same time, patches of one scan)."""
    for statement in (*_JOBS, *_SCANS, *_WINDOWS_AND_REVISIONS, *_ONE_OFFS_AND_ENROLMENT):
        conn.execute(statement.encode())


def _v10_rollout_history(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """SQLite's migration 10: progressive rollouts' recorded state, a row per change, never
    updated or deleted (``state.rollouts`` writes and folds it for both backends)."""
    for statement in (
        ROLLOUT_HISTORY.format(key="BIGSERIAL PRIMARY KEY"),
        ROLLOUT_HISTORY_INDEX,
        *_append_only("rollout_history", "rollout_history is append-only history"),
    ):
        conn.execute(statement.encode())


# 11 is reserved for job claims (branch pg-workers).
MIGRATIONS: dict[int, Migration] = {9: _v9_whole, 10: _v10_rollout_history}
LATEST = max(MIGRATIONS)


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The database's version; 0 for a new one (no ``schema_version`` table yet)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return 0
    found = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(str(found[0])) if found else 0


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Bring the database to :data:`LATEST` in one transaction; returns the version it had.
    A database from a newer program is refused rather than written with an older schema."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = schema_version(conn)
        if found > LATEST:
            raise StoreUnusable(
                f"the state database has schema version {found}, newer than this program's"
                f" {LATEST}: upgrade patchwarden rather than risk writing an older schema into it"
            )
        for version in sorted(MIGRATIONS):
            if version > found:
                MIGRATIONS[version](conn)
        if found == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (%s)", (LATEST,))
        elif found < LATEST:
            conn.execute("UPDATE schema_version SET version = %s", (LATEST,))
    return found
