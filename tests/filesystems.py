"""Small real file systems for tests of what a user meets when the disk under the state store is
full or read-only: a tmpfs mounted for the test (the tests run as root, as CI runs them), and a
ballast file that fills it to the last page. Nothing here touches the host's own file systems.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount: Path, size: str = "4m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` at ``mount`` (created), unmounted afterwards; the test is
    skipped where mounting is not allowed (not root)."""
    mount.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs (the tests run as root on CI): {mounted.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def remount_read_only(mount: Path) -> None:
    """Remount ``mount`` read-only: root may write any file, so a file mode stops nobody."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def fill(mount: Path) -> Path:
    """Fill the file system to its last page with a ballast file, and return it (delete it to
    give the space back)."""
    ballast = mount / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return ballast
