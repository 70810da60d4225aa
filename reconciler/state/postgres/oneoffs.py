"""Stage: state. Patch now's one-off openings in PostgreSQL's dialect (SQLite's are in
``state.oneoffs``; both decode rows with its :class:`~reconciler.state.oneoffs.OneOffRecord`).
Touches only the connection it is given, inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from reconciler.api.oneoff import OneOffOpening, OneOffStatus
from reconciler.state.oneoffs import OneOffRecord
from reconciler.state.records import JobRecord, to_json, to_text
from reconciler.state.shared import JOB_COLUMNS

Connection = psycopg.Connection[tuple[Any, ...]]


def insert(conn: Connection, opening: OneOffOpening, now: datetime) -> OneOffRecord:
    document, status, moment = to_json(opening.to_wire()), OneOffStatus.PENDING, to_text(now)
    times = (to_text(opening.created_at), to_text(opening.expires_at))
    conn.execute(
        "INSERT INTO one_off_openings (id, document, status, created_at, expires_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (opening.id, document, str(status), *times, moment),
    )
    return OneOffRecord.from_row((document, status, moment))


def select(
    conn: Connection, statuses: Iterable[OneOffStatus] | None, limit: int
) -> list[OneOffRecord]:
    """Newest first; only those in ``statuses`` when given."""
    wanted = None if statuses is None else [str(s) for s in statuses]
    rows = conn.execute(
        f"SELECT {OneOffRecord.COLUMNS} FROM one_off_openings"
        " WHERE %s::text[] IS NULL OR status = ANY(%s::text[])"
        " ORDER BY created_at DESC, id DESC LIMIT %s",
        (wanted, wanted, limit),
    ).fetchall()
    return [OneOffRecord.from_row(row) for row in rows]


def select_one(conn: Connection, opening_id: str) -> OneOffRecord | None:
    row = conn.execute(
        f"SELECT {OneOffRecord.COLUMNS} FROM one_off_openings WHERE id = %s", (opening_id,)
    ).fetchone()
    return None if row is None else OneOffRecord.from_row(row)


def change(
    conn: Connection,
    opening_id: str,
    status: OneOffStatus,
    now: datetime,
    only_from: Iterable[OneOffStatus],
) -> bool:
    """Move the opening to ``status`` if it is in one of ``only_from`` now; whether it moved."""
    changed = conn.execute(
        "UPDATE one_off_openings SET status = %s, updated_at = %s"
        " WHERE id = %s AND status = ANY(%s::text[])",
        (str(status), to_text(now), opening_id, [str(s) for s in only_from]),
    ).rowcount
    return changed == 1


def jobs_of(conn: Connection, opening_ids: Iterable[str]) -> list[JobRecord]:
    """The jobs of these one-off openings (no window; ``opening`` is the id), oldest first."""
    rows = conn.execute(
        f'SELECT {JOB_COLUMNS} FROM jobs WHERE "window" IS NULL'
        " AND opening = ANY(%s::text[]) ORDER BY created_at, seq",
        (list(opening_ids),),
    ).fetchall()
    return [JobRecord.from_row(row) for row in rows]
