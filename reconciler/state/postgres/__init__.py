"""Stage: state. The PostgreSQL side of the state store (issue 16), built up in steps: today the
writer lock (:class:`AdvisoryLock`, :mod:`reconciler.state.postgres.lock`); the store itself comes
next (docs/state.md, "PostgreSQL").

An I/O edge: it talks to the one database it is given and nothing else; the only package of the
project that imports ``psycopg``. It decides nothing.
"""

from reconciler.state.postgres.lock import AdvisoryLock

__all__ = ["AdvisoryLock"]
