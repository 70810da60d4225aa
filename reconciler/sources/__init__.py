"""Stage: sources — where snapshots come from (a directory now; Git and Kubernetes later).

A source reads files and hands them to :func:`reconciler.api.build_snapshot`; it never interprets
them itself. I/O lives here. May import ``api``, ``defaults`` and ``evaluation``.
"""

from reconciler.sources.directory import read_inventories, read_snapshot

__all__ = ["read_inventories", "read_snapshot"]
