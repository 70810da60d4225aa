"""Stage: state. How the PostgreSQL state store opens a session: :func:`connect`, used by the
store (``store``) and its writer lock (``lock``) alike, with TCP keepalives on unless the URL
sets them.

Why keepalives: the writer lock's session is idle while its holder works, and a partition that
sends nothing (no FIN, no RST) would leave it open on this side for hours (the kernel's default
is two hours before the first probe) while the server has dropped the lock. With keepalives
the kernel gives up on a silent peer after about a minute (:data:`KEEPALIVES`), the lock's
check then sees the socket fail and the holder stops as writer.

Touches only the session it opens; libpq reads the rest of the URL (TLS, passwords) itself.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

Connection = psycopg.Connection[tuple[Any, ...]]

KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
"""libpq's keepalive options given when the URL does not set them: first probe after 30 s of
silence, then every 10 s, the session failed after 3 unanswered (about a minute)."""


def connect(conninfo: str, **options: Any) -> Connection:
    """An autocommit session to ``conninfo`` (a libpq URL or key=value string) with
    :data:`KEEPALIVES` where the URL sets none of its own; raises ``psycopg.Error`` (a bad
    URL included) as ``psycopg.connect`` does."""
    given = conninfo_to_dict(conninfo)
    defaults = {name: value for name, value in KEEPALIVES.items() if name not in given}
    return psycopg.connect(make_conninfo(conninfo, **defaults), autocommit=True, **options)
