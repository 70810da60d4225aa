"""Stage: report, shared by ``publish`` and ``notify``: making what they write durable.

Both publish report files (temporary files linked into place) and append the audit log; a new name
in a directory survives a power cut only once the directory itself is flushed. No decisions here,
and nothing of views, publish or notify.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """Ensures the names created or renamed in ``directory`` are on disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
