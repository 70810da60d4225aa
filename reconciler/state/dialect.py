"""Stage: state. :class:`Dialect`, the small value saying how a backend's SQL differs from the
statements the SQLite and PostgreSQL stores share (written once with ``?`` placeholders,
``state.shared``), and :class:`Connection`, what both drivers' connections offer.

Touches only the connection it is given; imports nothing of the project and no database driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Cursor(Protocol):
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

    def sql(self, statement: str) -> str:
        """``statement``, written with ``?`` for its parameters, in this dialect. The shared
        statements hold no ``?`` or ``%`` in literals, so the substitution is exact."""
        return statement.replace("?", self.placeholder)

    def run(self, conn: Connection, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return conn.execute(self.sql(statement), params)


SQLITE = Dialect("sqlite", "?")
POSTGRESQL = Dialect("postgresql", "%s")
