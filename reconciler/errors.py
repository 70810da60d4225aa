"""Stage: none (shared by every stage). The one error taxonomy: what a failure means for what
happens next. Imports nothing; it may not import any stage, so every stage may import it.

::

    PatchwardenError
    ├── TemporaryError   the same request may succeed later, unchanged: a source or an API that
    │   │                does not answer, a report destination that is down. Tried again on a
    │   │                later pass.
    │   ├── SourceError          (sources: unreachable, unknown ref)
    │   └── PublishError         (report: the destination refused or did not answer)
    ├── PermanentError   the same request fails the same way until something changes: the agent
    │   │                refused or failed, no baseline applies. The job ends failed with the
    │   │                error's code; the planner's retry rules say when it is tried again.
    │   ├── AgentFailed          (dispatch)
    │   └── ReportError          (report: the report asked for cannot be built)
    └── RefusedInput     the desired state offered is refused whole (invalid resources, a commit
        │                not signed by a trusted key): nothing of it applies, the last good
        │                revision stays in force, and people are told once.
        ├── SnapshotInvalid, RevisionInvalid   (api, sources)
        └── SignatureRefused                   (sources; also a SourceError)

Anything else raised is a bug: the loop logs it with its traceback at the one boundary that
isolates it (a job, an export, an observer) and goes on. Errors are mapped to outcomes (a refused
revision, a failed job's error, a failed export) in one module, :mod:`reconciler.loop.failures`.
"""

from __future__ import annotations


class PatchwardenError(Exception):
    """Every failure Patchwarden expects; its branch says what happens next."""

    def reasons(self) -> list[str]:
        """The failure as lines for people (one, unless the error has several problems)."""
        return [str(self)]


class TemporaryError(PatchwardenError):
    """May succeed when tried again unchanged: the loop tries again on a later pass."""


class PermanentError(PatchwardenError):
    """Fails the same way until something changes; a job that meets it ends failed."""


class RefusedInput(PatchwardenError):
    """Desired state refused whole; the last good one stays in force."""
