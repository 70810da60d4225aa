"""Stage: state. :class:`Dialect`, the small value saying how a backend's SQL differs from the
statements the SQLite and PostgreSQL stores share (written once with ``?`` placeholders,
``state.shared``), and :class:`Connection`, what both drivers' connections offer.

Touches only the connection it is given; imports nothing of the project and no database driver.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What both drivers' connections offer: ``execute(statement, parameters)``."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Cursor: ...


@dataclass(frozen=True)
class Dialect:
    """How one backend's SQL differs from the statements written here."""

    name: str
    placeholder: str
    """What stands for a parameter: SQLite's ``?``, psycopg's ``%s``."""
    arrival: str
    """The column that orders a table's rows as they were inserted, for ties: SQLite's
    ``rowid``, the ``seq`` column PostgreSQL's tables carry for it."""

    member: str
    """``{column}`` is one of a list given as one parameter (:meth:`in_list`, :meth:`listed`):
    SQLite reads a JSON array with ``json_each``, PostgreSQL takes an array."""

    lock_rows: str
    """What a read-then-write's read ends with to keep its rows until the write: PostgreSQL's
    ``FOR UPDATE``; nothing in SQLite, whose ``BEGIN IMMEDIATE`` holds the whole file."""

    lock_table: str
    """A statement that holds ``{table}`` against other writers until the transaction ends,
    for a read-then-write that adds rows; empty for SQLite, as :attr:`lock_rows`."""

    def in_list(self, column: str) -> str:
        return self.member.format(column=column)

    def listed(self, values: Iterable[str]) -> Any:
        """``values`` as the one parameter :meth:`in_list` takes."""
        items = [str(value) for value in values]
        return json.dumps(items) if self.name == "sqlite" else items

    def sql(self, statement: str) -> str:
        """``statement``, written with ``?`` for its parameters, in this dialect. The shared
        statements hold no ``?`` or ``%`` in literals, so the substitution is exact."""
        return statement.replace("?", self.placeholder)

    def run(self, conn: Connection, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return conn.execute(self.sql(statement), params)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    arrival="rowid",
    member="{column} IN (SELECT value FROM json_each(?))",
    lock_rows="",
    lock_table="",
)
POSTGRESQL = Dialect(
    name="postgresql",
    placeholder="%s",
    arrival="seq",
    member="{column} = ANY(?::text[])",
    lock_rows=" FOR UPDATE",
    lock_table="LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE",
)
