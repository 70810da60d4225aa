"""Stage: sources — where snapshots come from: a directory (watched with watchdog) or a Git
repository (file://, git://, http(s)://, ssh://, optionally signature-checked).

A source reads files and hands them to :func:`reconciler.api.build_snapshot`; it never interprets
them itself. I/O lives here. May import ``api`` and ``defaults``.
"""

from reconciler.sources.base import (
    Refusal,
    Revision,
    RevisionInvalid,
    SignatureRefused,
    Source,
    SourceError,
)
from reconciler.sources.directory import DirectorySource, read_inventories, read_snapshot
from reconciler.sources.git import GitSource
from reconciler.sources.signatures import SignatureVerification

__all__ = [
    "DirectorySource",
    "GitSource",
    "Refusal",
    "Revision",
    "RevisionInvalid",
    "SignatureRefused",
    "SignatureVerification",
    "Source",
    "SourceError",
    "read_inventories",
    "read_snapshot",
]
