"""Stage: state. The PostgreSQL side of the state store (issue 16): ``store.PostgresStore``
(its schema and migrator in ``schema``, its dialect's writes in ``history`` and ``oneoffs``)
and its writer lock (:class:`AdvisoryLock`, ``lock``); docs/state.md, "PostgreSQL".

An I/O edge: it talks to the one database it is given and nothing else; the only package of the
project that imports ``psycopg``. It decides nothing.
"""

from reconciler.state.postgres.lock import AdvisoryLock

__all__ = ["AdvisoryLock"]
