"""Stage: sources. What every snapshot source shares: revisions, errors, and which files count.

A source turns "where the desired state lives" (a directory, a Git URL) into the files of one
revision, and those into a validated :class:`~reconciler.api.snapshot.Snapshot`. Only I/O lives
here; what is valid is decided by :mod:`reconciler.api` (and, for schedules,
:mod:`reconciler.schedule`). May import ``api``, ``defaults`` and ``schedule``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from reconciler.api.snapshot import (
    ICALENDAR_SUFFIX,
    Problem,
    Snapshot,
    SnapshotInvalid,
    build_snapshot,
    format_path,
)
from reconciler.defaults import predefined_baselines
from reconciler.errors import RefusedInput, TemporaryError
from reconciler.schedule import parse_schedule, parse_window_schedule
from reconciler.schedule.ical import parse_icalendar

if TYPE_CHECKING:
    from reconciler.sources.enrol.base import Repository

YAML_SUFFIXES = (".yaml", ".yml")
SNAPSHOT_SUFFIXES = (*YAML_SUFFIXES, ICALENDAR_SUFFIX)
"""What a revision's snapshot is built from: resources, and the iCalendar files calendars name."""

Files = list[tuple[str, bytes]]
"""(relative posix path, content) of every resource file of one revision, in walk order."""

# A hex digest's length names its algorithm; Git's SHA-256 object format gives 64 too.
_ALGORITHMS = {40: "sha1", 64: "sha256"}


@dataclass(frozen=True)
class Revision:
    """Which content a snapshot was built from: ``main@sha1:<commit>`` or ``dir@sha256:<digest>``.

    ``source`` says where (a URL without credentials, or a directory), ``ref`` what was asked for
    (a branch, tag or commit; ``dir`` for directories), ``sha`` the content's hex digest.
    """

    source: str
    ref: str
    sha: str
    author: str = field(default="", compare=False)
    """Who made the revision (a Git commit's author as ``Name <email>``); empty when unknown."""

    def __str__(self) -> str:
        algorithm = _ALGORITHMS.get(len(self.sha))
        return f"{self.ref}@{algorithm}:{self.sha}" if algorithm else f"{self.ref}@{self.sha}"


class SourceError(TemporaryError):
    """The source could not be read: unreachable, refused, unknown ref. Nothing was fetched."""


class Refusal(StrEnum):
    """Why a revision's signature was not accepted; each needs a different fix."""

    UNSIGNED = "unsigned"
    UNTRUSTED_KEY = "signed by a key that is not trusted"
    BAD_SIGNATURE = "bad signature"
    EXPIRED_OR_REVOKED = "signed by an expired or revoked key"
    WRONG_FORMAT = "signature format does not match the verification mode"
    CANNOT_CHECK = "signature could not be checked"


class SignatureRefused(RefusedInput, SourceError):
    """The revision was fetched but its head commit is not signed by a trusted key."""

    def __init__(self, revision: Revision, reason: Refusal, detail: str = "") -> None:
        self.revision = revision
        self.reason = reason
        self.detail = detail
        message = f"{revision} refused: {reason.value}"
        super().__init__(f"{message} ({detail})" if detail else message)


class RevisionInvalid(SnapshotInvalid):
    """A SnapshotInvalid that also says which revision was refused, for the loop's report."""

    def __init__(self, revision: Revision, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.revision = revision


class Source(Protocol):
    """Where snapshots come from. Each call reads the source's *current* revision."""

    def fetch(self) -> tuple[Revision, Files]:
        """The resource files of the current revision; SourceError when it cannot be read."""
        ...

    def snapshot(self) -> tuple[Revision, Snapshot]:
        """The current revision, validated; SnapshotInvalid (a RevisionInvalid) when it is not."""
        ...

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change`` when the current revision may have changed; returns ``stop()``.
        A source that cannot tell (Git: it is fetched on every pass) never calls it."""
        ...


@runtime_checkable
class HasRepository(Protocol):
    """A source whose revisions are a repository's files (a directory, Git): enrolment reads an
    InstanceSource's Ansible inventory there. Kubernetes resources have none."""

    def repository(self, revision: Revision) -> Repository:
        """The files of ``revision``."""
        ...


def is_resource(relpath: str, suffixes: tuple[str, ...] = SNAPSHOT_SUFFIXES) -> bool:
    """Whether a file at ``relpath`` (posix, relative to the source root) belongs to a snapshot.

    The one rule for every source: the suffix matches, and no part is hidden, so ``.git``,
    ``.github`` and editors' ``.foo.yaml.swp`` never become resources.
    """
    path = PurePosixPath(relpath)
    return (
        bool(path.parts)
        and not any(part.startswith(".") for part in path.parts)
        and path.suffix in suffixes
    )


def walk_order(relpath: str) -> tuple[str, ...]:
    """Sort key giving every source the same file order (by path parts, as pathlib sorts)."""
    return PurePosixPath(relpath).parts


def validated(revision: Revision, files: Iterable[tuple[str, bytes]]) -> tuple[Revision, Snapshot]:
    """Build the snapshot of ``files`` with the predefined baselines, or refuse it whole."""
    try:
        return revision, snapshot_of(files)
    except SnapshotInvalid as exc:
        raise RevisionInvalid(revision, exc.problems) from None


def snapshot_of(files: Iterable[tuple[str, bytes]]) -> Snapshot:
    """The one way every source validates files: the api's checks, then every schedule parsed by
    the schedule engine (the schema only checks a schedule's shape), each problem at file:line."""
    snapshot = build_snapshot(files, predefined_baselines())
    problems = [
        *_schedule_problems(snapshot, "MaintenanceWindow", snapshot.windows, parse_window_schedule),
        *_schedule_problems(snapshot, "ComplianceReport", snapshot.reports, parse_schedule),
        *_icalendar_problems(snapshot),
    ]
    if problems:
        raise SnapshotInvalid(problems)
    return snapshot


def _icalendar_problems(snapshot: Snapshot) -> list[Problem]:
    """Each calendar's iCalendar file parsed by the iCalendar library now, so a broken file is
    refused with the revision rather than closing the calendar later."""
    problems = []
    for name in sorted(snapshot.calendars):
        path = snapshot.calendar_file(name)
        data = snapshot.icalendar_files.get(path) if path is not None else None
        if data is None:
            continue  # none named, or a missing file the api's checks reported
        try:
            parse_icalendar(data)
        except ValueError as exc:
            where = snapshot.locations[("ChangeCalendar", name)]
            field_path = ("spec", "icalendar", "file")
            line = snapshot.documents[("ChangeCalendar", name)].line_of(field_path)
            problems.append(Problem(where.file, line, format_path(field_path), f"{path}: {exc}"))
    return problems


def _schedule_problems(
    snapshot: Snapshot, kind: str, resources: Mapping[str, Any], parse: Callable[[str], object]
) -> list[Problem]:
    # SSM's 5-minute floor for cron is a maintenance-window rule; AWS schedules report exports
    # with EventBridge, whose cron floor is one minute, so a report's cron is not held to it.
    problems = []
    for name, resource in resources.items():
        try:
            parse(resource.spec.schedule)
        except ValueError as exc:
            where = snapshot.locations[(kind, name)]
            path = ("spec", "schedule")
            line = snapshot.documents[(kind, name)].line_of(path)
            problems.append(Problem(where.file, line, format_path(path), str(exc)))
    return problems
