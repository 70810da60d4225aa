"""Stage: loop, step ``refresh``. Desired state: fetch the source; a new revision is accepted
whole or refused whole, and the last good one stays in force.

Reads the source (and, after a restart, the last good revision again), records each revision in
the store; may not plan, dispatch or touch transports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.api.snapshot import Snapshot
from reconciler.errors import RefusedInput, TemporaryError
from reconciler.loop.common import Clock, Emitter, InForce, Log, PassSummary
from reconciler.loop.failures import Refusal, refusal
from reconciler.report.notify.occurrences import Kind
from reconciler.sources.base import Revision, Source
from reconciler.sources.enrol import Enrolment, Refreshed
from reconciler.state import StateBackend

Pinned = Callable[[str], Source]
"""A source reading exactly one earlier revision (a Git commit)."""


class Refresher:
    """Keeps :class:`InForce` up to date with the source."""

    def __init__(
        self,
        source: Source,
        store: StateBackend,
        in_force: InForce,
        *,
        pinned: Pinned | None,
        clock: Clock,
        log: Log,
        emit: Emitter,
        enrolment: Enrolment | None = None,
    ) -> None:
        """``pinned(revision)``: after a restart, it brings back the last good revision when the
        current one is refused. ``enrolment`` adds the machines of InstanceSources."""
        self.source, self.store, self.in_force, self.pinned = source, store, in_force, pinned
        self.clock, self.log, self.emit = clock, log, emit
        self.enrolment = enrolment

    def refresh(self, summary: PassSummary | None = None) -> None:
        """Fetch the source; accept the new revision whole or keep the last good one."""
        try:
            revision, snapshot = self.source.snapshot()
        except (RefusedInput, TemporaryError) as exc:  # refused or unreachable: last good stays
            self._restore_last_good()
            self._refuse(refusal(exc), summary)
            return
        snapshot = self._enrolled(revision, snapshot)
        in_force = self.in_force
        if str(revision) != in_force.revision and not self._already_accepted(str(revision)):
            self._accept(revision, snapshot)
        in_force.revision, in_force.snapshot = str(revision), snapshot
        in_force.author = revision.author
        in_force.last_refused = None  # a refusal seen again after a good revision is news again

    def _accept(self, revision: Revision, snapshot: Snapshot) -> None:
        self.store.record_revision(
            revision=str(revision), accepted=True, problems=[], now=self.clock()
        )
        self.log.info(
            "snapshot accepted", revision=str(revision), instances=len(snapshot.instances)
        )
        self.emit(
            Kind.SNAPSHOT_ACCEPTED,
            revision=str(revision),
            author=revision.author,
            previous=self.in_force.revision,
            instances=len(snapshot.instances),
        )

    def _already_accepted(self, revision: str) -> bool:
        """A restarted process meets the revision its predecessor accepted: not news."""
        newest = self.store.revisions(limit=1)
        return bool(newest) and newest[0].revision == revision and newest[0].accepted

    def _restore_last_good(self) -> None:
        """A fresh process (``patchctl reconcile``, a restarted ``run``) has no good snapshot in
        memory when the current revision is refused: read the store's last good one again."""
        if self.in_force.snapshot is not None or self.pinned is None:
            return
        good = self.store.last_good_revision()
        if good is None:
            return
        try:
            revision, snapshot = self.pinned(good.revision).snapshot()
        except (RefusedInput, TemporaryError) as exc:  # no fallback then: nothing is in force
            self.log.warning(
                "last good revision unavailable", revision=good.revision, error=str(exc)
            )
            return
        if revision.sha != good.revision.rpartition(":")[2]:
            self.log.warning(
                "last good revision unavailable", revision=good.revision, got=str(revision)
            )
            return
        self.in_force.revision = good.revision
        self.in_force.snapshot = self._enrolled(revision, snapshot)
        self.log.info("last good revision restored", revision=good.revision)

    def _enrolled(self, revision: Revision, snapshot: Snapshot) -> Snapshot:
        return snapshot if self.enrolment is None else self.enrolment.apply(revision, snapshot)

    def _refuse(self, refused: Refusal, summary: PassSummary | None) -> None:
        revision, problems = refused.revision, list(refused.problems)
        keeping = self.in_force.revision
        if revision != self.in_force.last_refused:
            # A refused revision stays current until the next commit: tell people once.
            self.in_force.last_refused = revision
            self.emit(
                Kind.SNAPSHOT_REFUSED,
                revision=revision,
                author=refused.author,
                keeping=keeping,
                problems=problems[:50],
            )
        self.store.record_revision(
            revision=revision, accepted=False, problems=problems, now=self.clock()
        )
        self.log.warning(
            "snapshot refused", refused=revision, keeping=keeping, problems=problems[:20]
        )
        if summary is not None:
            summary.refused.append(revision)


def enrolment_report(emit: Emitter, log: Log) -> Callable[[Refreshed], None]:
    """What the loop says about each InstanceSource refresh: a failure is logged and is an
    event (the last good list stays in use); a changed list is audited."""

    def report(refreshed: Refreshed) -> None:
        detail: dict[str, Any] = {
            "source": refreshed.source,
            "sourceKind": refreshed.kind,
            "hosts": refreshed.hosts,
        }
        if refreshed.error is not None:
            kept = refreshed.kept_from.isoformat() if refreshed.kept_from else None
            log.warning("instance source refresh failed", error=refreshed.error, **detail)
            emit(Kind.INSTANCE_SOURCE_FAILED, error=refreshed.error, keptFrom=kept, **detail)
        elif refreshed.added or refreshed.removed:
            log.info("instance source listed", added=len(refreshed.added), **detail)
            emit(
                Kind.INSTANCE_SOURCE_LISTED,
                added=list(refreshed.added),
                removed=list(refreshed.removed),
                **detail,
            )

    return report
