"""Stage: sources (enrolment). What every kind of InstanceSource shares: the errors a discovery
may raise, the repository files it may read, and the signature of a discovery function.

A discovery function is I/O (it reads an inventory, asks an API) and returns the machines its
source lists as :class:`~reconciler.api.enrolment.DiscoveredHost`; turning them into
ManagedInstances is :mod:`reconciler.api.enrolment`'s job. May not plan, dispatch or write state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.api.enrolment import DiscoveredHost
from reconciler.api.yamldocs import MAX_BYTES
from reconciler.errors import RefusedInput, TemporaryError
from reconciler.paths import OutsideDirectory, confine


class DiscoveryFailed(TemporaryError):
    """The source could not be read now (unreachable, throttled, timed out): tried again at the
    next refresh; the last good list stays in use."""


class DiscoveryRefused(RefusedInput):
    """What the source lists is wrong (an inventory that does not parse, a become method other
    than sudo): the last good list stays in use until it is fixed."""


class Repository(Protocol):
    """The files of the revision in force (a directory, or a Git commit's tree)."""

    def read(self, relpath: str) -> bytes:
        """A regular file's content; DiscoveryRefused when there is none at ``relpath``."""
        ...

    def files_under(self, folder: str) -> list[str]:
        """The regular files under ``folder`` (relative to the root), recursively; [] if none."""
        ...


@dataclass(frozen=True)
class Context:
    """What a discovery function may use besides its own spec."""

    source: str
    """The InstanceSource's name, for messages."""
    repository: Repository | None
    """None when the resources come from Kubernetes: there is no repository to read files in."""
    ec2_endpoint_url: str | None = None
    """``--ec2-endpoint-url``: EC2's endpoint when not the AWS configuration's (an emulator)."""


Discover = Callable[[Any, Context], list[DiscoveredHost]]
"""A kind's discovery function: (its spec model, the context) -> the machines listed."""


class DirectoryFiles:
    """A directory's files as a :class:`Repository`: nothing outside it is read, even through a
    symbolic link."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, relpath: str) -> bytes:
        try:
            path = confine(relpath, self.root)
        except OutsideDirectory:
            raise DiscoveryRefused(f"{relpath}: outside the source directory") from None
        if not path.is_file():
            raise DiscoveryRefused(f"{relpath}: no such file in the source directory")
        with path.open("rb") as handle:
            return handle.read(MAX_BYTES + 1)

    def files_under(self, folder: str) -> list[str]:
        try:
            base = confine(folder, self.root)
        except OutsideDirectory:
            return []
        root = os.path.realpath(self.root)
        found = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                relpath = os.path.relpath(os.path.join(dirpath, name), root)
                found.append(Path(relpath).as_posix())
        return sorted(found)
