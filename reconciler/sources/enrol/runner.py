"""Stage: sources (enrolment). Keeps every InstanceSource's list of machines: discovers in the
background on each source's interval, keeps the last good list when a refresh fails, and adds
the generated ManagedInstances to each snapshot (:meth:`Enrolment.apply`).

Discovery runs on its own threads so a slow source never holds the reconcile loop; results are
taken in (and persisted through ``lists``) on the caller's thread only. A source never listed
yet, or whose spec changed, is waited for (up to ``first_wait`` seconds) so that a one-shot
``patchctl reconcile`` enrols it. May not plan, dispatch or decide what a list means: that is
:mod:`reconciler.api.enrolment`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from reconciler.api.enrolment import (
    DiscoveredHost,
    Enrolled,
    Listed,
    Provenance,
    enrol,
    provenance,
    with_enrolled,
)
from reconciler.api.resources import SOURCE_ANNOTATION, InstanceSource
from reconciler.api.snapshot import Located, Problem, Snapshot, SnapshotInvalid, format_path
from reconciler.errors import PatchwardenError
from reconciler.sources.base import Revision
from reconciler.sources.enrol.base import Context, DirectoryFiles, Discover, Repository


@dataclass(frozen=True)
class SourceStatus:
    """What ``patchctl sources`` and the CRD status say about one InstanceSource."""

    source: str
    kind: str
    listed: Listed | None = None
    error: str | None = None
    """Why the last refresh failed; None when it succeeded."""
    failed_at: datetime | None = None
    instances: tuple[str, ...] = ()
    """The names of the ManagedInstances it generates now."""
    problems: tuple[str, ...] = ()
    """Machines left out, and names another instance won."""


@dataclass(frozen=True)
class Refreshed:
    """One refresh's outcome, for events, metrics and logs."""

    source: str
    kind: str
    hosts: int
    error: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept_from: datetime | None = None
    """On failure: when the list still in use was taken (None: no list at all)."""


class SourceLists(Protocol):
    """Where last good lists survive a restart (the state store)."""

    def source_lists(self) -> Mapping[str, Listed]: ...

    def save_source_list(self, source: str, listed: Listed) -> None: ...

    def record_source_failure(self, source: str, kind: str, error: str, now: datetime) -> None: ...

    def record_enrolled(self, enrolled: Mapping[str, Provenance], now: datetime) -> None: ...


@dataclass
class _Attempt:
    spec: str
    revision: str
    at: datetime
    future: Future[list[DiscoveredHost]]
    awaited: bool
    """Started for new content (a first list, a changed spec or revision), not for the
    interval: the snapshot waits for it, so what it shows matches its revision."""
    taken: bool = False
    """Its result was taken in; its time still says when the next one is due."""


@dataclass
class _State:
    listed: dict[str, Listed] = field(default_factory=dict)
    status: dict[str, SourceStatus] = field(default_factory=dict)
    attempts: dict[str, _Attempt] = field(default_factory=dict)
    recorded: dict[str, Provenance] | None = None


class Enrolment:
    """Every InstanceSource's machines, refreshed on its interval (see the module docstring)."""

    def __init__(
        self,
        discoverers: Mapping[type, Discover],
        *,
        clock: Callable[[], datetime],
        repository: Callable[[Revision], Repository] | None = None,
        lists: SourceLists | None = None,
        report: Callable[[Refreshed], None] = lambda _: None,
        first_wait: float = 120.0,
        ec2_endpoint_url: str | None = None,
    ) -> None:
        self.discoverers, self.clock, self.repository = discoverers, clock, repository
        self.lists, self.report, self.first_wait = lists, report, first_wait
        self.ec2_endpoint_url = ec2_endpoint_url
        self._state = _State(listed=dict(lists.source_lists()) if lists else {})
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="enrol")
        self._lock = threading.Lock()

    def apply(self, revision: Revision, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with the machines of its InstanceSources as ManagedInstances."""
        with self._lock:
            sources = snapshot.instance_sources
            for name, source in sources.items():
                self._start_if_due(name, source, revision)
            self._wait_for_new(sources)
            self._take_finished(sources)
            enrolled = [self._enrolled(name, src) for name, src in sorted(sources.items())]
            merged, notes = with_enrolled(snapshot, [e for e in enrolled if e is not None])
            self._settle_status(sources, merged, notes)
            self._remember(merged)
            return merged

    def _remember(self, merged: Snapshot) -> None:
        """Record which instances are generated, when that changed (history keeps provenance)."""
        enrolled = {
            name: origin
            for name, instance in merged.instances.items()
            if (origin := provenance(instance)) is not None
        }
        if self.lists is not None and enrolled != self._state.recorded:
            self.lists.record_enrolled(enrolled, self.clock())
            self._state.recorded = enrolled

    def statuses(self) -> list[SourceStatus]:
        """Each InstanceSource of the last snapshot applied, by name."""
        return [self._state.status[name] for name in sorted(self._state.status)]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start_if_due(self, name: str, source: InstanceSource, revision: Revision) -> None:
        spec, now = fingerprint(source), self.clock()
        attempt = self._state.attempts.get(name)
        if attempt is not None and not attempt.future.done():
            return
        interval = timedelta(minutes=source.spec.refresh_minutes)
        # A new revision may change what the source reads (an inventory file): listed again.
        same = attempt is not None and (attempt.spec, attempt.revision) == (spec, str(revision))
        if attempt is not None and same and now < attempt.at + interval:
            return
        listed = self._state.listed.get(name)
        restored = attempt is None and listed is not None and listed.spec == spec
        if restored and listed is not None and now < listed.at + interval:
            return  # restored after a restart and still fresh
        kind, given = source.spec.discovery()
        discover = self.discoverers.get(type(given))
        if discover is None:
            raise NotImplementedError(f"no discovery function for InstanceSource kind {kind}")
        future = self._pool.submit(self._discover, discover, given, name, revision)
        listed_now = listed is not None and listed.spec == spec
        awaited = not listed_now or (attempt is not None and not same)
        self._state.attempts[name] = _Attempt(spec, str(revision), now, future, awaited)

    def _discover(
        self, discover: Discover, given: object, name: str, revision: Revision
    ) -> list[DiscoveredHost]:
        """On a discovery thread: even opening the revision's files (a Git clone) is I/O."""
        repository = self.repository(revision) if self.repository else None
        return discover(given, Context(name, repository, self.ec2_endpoint_url))

    def _wait_for_new(self, sources: Mapping[str, InstanceSource]) -> None:
        """Wait (at most ``first_wait``) for the listings of new content."""
        pending = [
            attempt.future
            for name, attempt in self._state.attempts.items()
            if name in sources and attempt.awaited and not attempt.future.done()
        ]
        if pending:
            wait_for(pending, timeout=self.first_wait)

    def _take_finished(self, sources: Mapping[str, InstanceSource]) -> None:
        for name, attempt in list(self._state.attempts.items()):
            if attempt.taken or not attempt.future.done() or name not in sources:
                continue
            kind = sources[name].spec.discovery()[0]
            try:
                hosts = attempt.future.result()
            except PatchwardenError as exc:
                self._failed(name, kind, str(exc))
            except Exception as exc:  # a discovery's bug: one source fails, the loop goes on
                self._failed(name, kind, f"{type(exc).__name__}: {exc}")
            else:
                self._listed(name, Listed(kind, attempt.spec, tuple(hosts), attempt.at))
            attempt.taken = True

    def _listed(self, name: str, listed: Listed) -> None:
        before = self._state.listed.get(name)
        old = {h.id for h in before.hosts} if before else set()
        new = {h.id for h in listed.hosts}
        self._state.listed[name] = listed
        status = self._state.status.get(name, SourceStatus(name, listed.kind))
        self._state.status[name] = replace(status, listed=listed, error=None, failed_at=None)
        if self.lists is not None:
            self.lists.save_source_list(name, listed)
        self.report(
            Refreshed(
                name,
                listed.kind,
                len(listed.hosts),
                added=tuple(sorted(new - old)),
                removed=tuple(sorted(old - new)),
            )
        )

    def _failed(self, name: str, kind: str, error: str) -> None:
        listed = self._state.listed.get(name)
        status = self._state.status.get(name, SourceStatus(name, kind))
        now = self.clock()
        self._state.status[name] = replace(status, error=error, failed_at=now)
        if self.lists is not None:
            self.lists.record_source_failure(name, kind, error, now)
        hosts = len(listed.hosts) if listed else 0
        self.report(
            Refreshed(name, kind, hosts, error=error, kept_from=listed.at if listed else None)
        )

    def _enrolled(self, name: str, source: InstanceSource) -> Enrolled | None:
        listed = self._state.listed.get(name)
        return None if listed is None else enrol(source, listed.hosts)

    def _settle_status(
        self, sources: Mapping[str, InstanceSource], merged: Snapshot, notes: list[str]
    ) -> None:
        statuses: dict[str, SourceStatus] = {}
        for name, source in sources.items():
            kind = source.spec.discovery()[0]
            status = self._state.status.get(name, SourceStatus(name, kind))
            enrolled = self._enrolled(name, source)
            mine = tuple(
                iname
                for iname, instance in merged.instances.items()
                if instance.metadata.annotations.get(SOURCE_ANNOTATION) == name
            )
            problems = (*(enrolled.problems if enrolled else ()), *_notes_of(name, notes))
            statuses[name] = replace(
                status,
                kind=kind,
                listed=self._state.listed.get(name),
                instances=mine,
                problems=problems,
            )
        self._state.status = statuses


def _notes_of(source: str, notes: list[str]) -> list[str]:
    return [note for note in notes if f"InstanceSource {source}," in note]


def fingerprint(source: InstanceSource) -> str:
    """The spec's digest: a changed spec is listed again at once."""
    text = json.dumps(source.spec.to_wire(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def enrol_once(
    root: Path,
    snapshot: Snapshot,
    clock: Callable[[], datetime],
    *,
    ec2_endpoint_url: str | None = None,
) -> EnrolledOnce:
    """Every InstanceSource of a directory's ``snapshot`` listed now, once (``patchctl validate``
    and the other one-shot commands that read a directory): SnapshotInvalid names the sources
    that could not be listed and the machines left out, at the InstanceSource's line."""
    folder = root if root.is_dir() else root.parent
    revision = Revision(str(root), "dir", "")
    return enrol_revision(
        revision,
        snapshot,
        lambda _revision: DirectoryFiles(folder),
        clock,
        ec2_endpoint_url=ec2_endpoint_url,
    )


def enrol_revision(
    revision: Revision,
    snapshot: Snapshot,
    repository: Callable[[Revision], Repository],
    clock: Callable[[], datetime],
    *,
    ec2_endpoint_url: str | None = None,
) -> EnrolledOnce:
    """:func:`enrol_once` for any revision whose files ``repository`` reads (a Git commit:
    ``patchctl diff``)."""
    # Local import: the registry imports this module.
    from reconciler.sources.enrol import DISCOVERERS

    enrolment = Enrolment(
        DISCOVERERS, clock=clock, repository=repository, ec2_endpoint_url=ec2_endpoint_url
    )
    try:
        merged = enrolment.apply(revision, snapshot)
    finally:
        enrolment.close()
    statuses = enrolment.statuses()
    problems = [
        Problem(where.file, line, path, message)
        for status in statuses
        for where, line, path, message in _located(snapshot, status)
    ]
    if problems:
        raise SnapshotInvalid(problems)
    return EnrolledOnce(merged, statuses)


@dataclass(frozen=True)
class EnrolledOnce:
    snapshot: Snapshot
    statuses: list[SourceStatus]


def _located(snapshot: Snapshot, status: SourceStatus) -> list[tuple[Located, int, str, str]]:
    """The status's error and left-out machines, at the InstanceSource's ``spec.<kind>``."""
    key = ("InstanceSource", status.source)
    path = ("spec", status.kind)
    where, line = snapshot.locations[key], snapshot.documents[key].line_of(path)
    messages = [status.error] if status.error else []
    messages += [p for p in status.problems if p.startswith("host ")]
    return [(where, line, format_path(path), message) for message in messages]
