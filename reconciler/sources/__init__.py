"""Stage: sources — where snapshots come from: a directory (watched with watchdog) or a Git
repository (file://, git://, http(s)://, ssh://, optionally signature-checked).

A source reads files and hands them to :func:`reconciler.api.build_snapshot`; it never interprets
them itself. I/O lives here. May import ``api`` and ``defaults``.
"""

from typing import TYPE_CHECKING

from reconciler.sources.base import (
    Refusal,
    Revision,
    RevisionInvalid,
    SignatureRefused,
    Source,
    SourceError,
)
from reconciler.sources.directory import DirectorySource, read_inventories, read_snapshot
from reconciler.sources.signatures import SignatureVerification

if TYPE_CHECKING:
    from reconciler.sources.git import GitSource


def __getattr__(name: str) -> object:
    # GitSource on first use: GitPython costs every command that reads no repository its import
    # (tests/test_startup.py), and every command imports this package.
    if name == "GitSource":
        from reconciler.sources.git import GitSource

        return GitSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
