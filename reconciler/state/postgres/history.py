"""Stage: state. The writes that go with every recorded scan, in PostgreSQL's dialect: its patch
rows, the instance's newest facts, and packages' first-seen times (SQLite's are in
``state.schema``; the rows themselves come from the same ``schema.patch_rows``). Touches only
the connection it is given, inside the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg

from reconciler.state.schema import PATCH_COLUMNS

Connection = psycopg.Connection[tuple[Any, ...]]


def insert_patch_states(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """The rows of ``schema.patch_rows``, in their order (``seq`` keeps it)."""
    placeholders = ", ".join(["%s"] * (len(PATCH_COLUMNS) + 2))
    with conn.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO patch_states (scan_id, instance, {', '.join(PATCH_COLUMNS)})"
            f" VALUES ({placeholders})",
            rows,
        )


def upsert_instance(
    conn: Connection, scan_id: int, instance: str, finished_at: str, facts: dict[str, Any] | None
) -> None:
    """Keep the facts of the newest scan (by ``finished_at``, not arrival: workers finish out of
    order) and the time of the first one; a scan without facts keeps the facts known."""
    conn.execute(
        """INSERT INTO instances AS i (instance, facts, first_seen, last_seen, last_scan_id)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (instance) DO UPDATE SET
             first_seen = LEAST(i.first_seen, excluded.first_seen),
             facts = CASE WHEN excluded.last_seen >= i.last_seen AND %s THEN excluded.facts
                          ELSE i.facts END,
             last_scan_id = CASE WHEN excluded.last_seen >= i.last_seen
                                 THEN excluded.last_scan_id ELSE i.last_scan_id END,
             last_seen = GREATEST(i.last_seen, excluded.last_seen)""",
        (
            instance,
            json.dumps(facts or {}, sort_keys=True),
            finished_at,
            finished_at,
            scan_id,
            facts is not None,
        ),
    )


def record_first_seen(
    conn: Connection, keys: Iterable[tuple[str, str, str, str]], seen_at: str
) -> None:
    """Keep the earliest time each (name, arch, version, archive) was seen, never a later one."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO package_first_seen AS f (name, arch, version, archive, first_seen)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name, arch, version, archive)"
            " DO UPDATE SET first_seen = LEAST(f.first_seen, excluded.first_seen)",
            [(*key, seen_at) for key in keys],
        )
