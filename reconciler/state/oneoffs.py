"""Stage: state. Patch now's one-off openings as the store keeps them (table ``one_off_openings``,
migration 8): the record handed out and the SQL the store runs on its connection.

Touches only the connection it is given, in its store's dialect (one set of statements for
SQLite and PostgreSQL, ``state.dialect``); decides nothing (the loop says which status, callers
pass ``now``); imports only ``reconciler.api``, ``state.records`` and ``state.dialect``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from reconciler.api.oneoff import OneOffOpening, OneOffStatus
from reconciler.state.dialect import Connection, Dialect
from reconciler.state.records import JobRecord, from_json, from_text, to_json, to_text


@dataclass(frozen=True)
class OneOffRecord:
    """A one-off opening and where it stands."""

    opening: OneOffOpening
    status: OneOffStatus
    updated_at: datetime

    COLUMNS: ClassVar[str] = "document, status, updated_at"

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> OneOffRecord:
        return cls(
            OneOffOpening.model_validate(from_json(row[0])),
            OneOffStatus(row[1]),
            from_text(row[2]),
        )

    @property
    def id(self) -> str:
        return self.opening.id

    def document(self) -> dict[str, Any]:
        """JSON-ready: the opening's document with its status (``-o json``, the audit log)."""
        return {
            **self.opening.to_wire(),
            "status": str(self.status),
            "updatedAt": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


def insert(
    conn: Connection, dialect: Dialect, opening: OneOffOpening, now: datetime
) -> OneOffRecord:
    document, status, moment = to_json(opening.to_wire()), OneOffStatus.PENDING, to_text(now)
    times = (to_text(opening.created_at), to_text(opening.expires_at))
    dialect.run(
        conn,
        "INSERT INTO one_off_openings (id, document, status, created_at, expires_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (opening.id, document, str(status), *times, moment),
    )
    return OneOffRecord.from_row((document, status, moment))


def select(
    conn: Connection, dialect: Dialect, statuses: Iterable[OneOffStatus] | None, limit: int
) -> list[OneOffRecord]:
    """Newest first; only those in ``statuses`` when given."""
    where, params = (
        ("", ())
        if statuses is None
        else (
            f"WHERE {dialect.in_list('status')}",
            (dialect.listed(statuses),),
        )
    )
    rows = dialect.run(
        conn,
        f"SELECT {OneOffRecord.COLUMNS} FROM one_off_openings {where}"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [OneOffRecord.from_row(row) for row in rows]


def select_one(conn: Connection, dialect: Dialect, opening_id: str) -> OneOffRecord | None:
    row = dialect.run(
        conn, f"SELECT {OneOffRecord.COLUMNS} FROM one_off_openings WHERE id = ?", (opening_id,)
    ).fetchone()
    return None if row is None else OneOffRecord.from_row(row)


def change(
    conn: Connection,
    dialect: Dialect,
    opening_id: str,
    status: OneOffStatus,
    now: datetime,
    only_from: Iterable[OneOffStatus],
) -> bool:
    """Move the opening to ``status`` if it is in one of ``only_from`` now; whether it moved."""
    changed = dialect.run(
        conn,
        "UPDATE one_off_openings SET status = ?, updated_at = ?"
        f" WHERE id = ? AND {dialect.in_list('status')}",
        (str(status), to_text(now), opening_id, dialect.listed(only_from)),
    ).rowcount
    return changed == 1


def jobs_of(conn: Connection, dialect: Dialect, opening_ids: Iterable[str]) -> list[JobRecord]:
    """The jobs of these one-off openings (no window; ``opening`` is the id), oldest first: an
    index lookup on ``jobs_by_window``, however long the history."""
    rows = dialect.run(
        conn,
        f'SELECT {JobRecord.COLUMNS} FROM jobs WHERE "window" IS NULL'
        f" AND {dialect.in_list('opening')} ORDER BY created_at, {dialect.arrival}",
        (dialect.listed(opening_ids),),
    ).fetchall()
    return [JobRecord.from_row(row) for row in rows]
