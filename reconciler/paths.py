"""Stage: none (shared by api, dispatch and loop). Which files a resource may name.

A resource (a ManagedInstance's ``knownHostsFile`` and ``identityFile``, a ComplianceReport's
directory ``destination``) comes from whoever may commit to the configuration; the controller
reads or writes those files with its own rights. So a name is resolved only inside a directory
the operator chose (``--ssh-dir``, ``--report-dir``): a relative name inside it, an absolute one
only when it is inside it after symlinks and ``..`` are resolved. The checks that need no file
system (control characters, ``..``) are also made at validation, where the directories are not
known. Reads symlinks only, never a file's content; imports nothing from ``reconciler``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OutsideDirectory(ValueError):
    """A name that resolves outside the directory it must stay in."""


def control_character(text: str) -> str | None:
    """The first control character (U+0000-U+001F, U+007F) in ``text`` as ``\\xNN``, or None."""
    found = _CONTROL.search(text)
    return None if found is None else f"\\x{ord(found.group()):02x}"


def climbs(path: str) -> bool:
    """True when ``path`` has a ``..`` component (it could leave any directory it is read in)."""
    return ".." in PurePosixPath(path).parts


def confine(path: str, directory: Path) -> Path:
    """``path`` resolved inside ``directory``: relative names are read there, absolute ones must
    lie there once symlinks and ``..`` are resolved; OutsideDirectory otherwise."""
    root = os.path.realpath(directory)
    resolved = os.path.realpath(os.path.join(root, path))
    if climbs(path) or os.path.commonpath([root, resolved]) != root:
        raise OutsideDirectory(f"{path} is outside {root}")
    return Path(resolved)
