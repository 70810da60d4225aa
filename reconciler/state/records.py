"""Stage: state. The values the store hands out (frozen records), its errors, and the encoding of
times and documents in SQLite. Pure: no I/O and nothing from ``reconciler`` outside ``state`` but
the schema's enumerations (``api.enums``) and the error taxonomy (``errors``).

Times are stored as UTC ISO 8601 text with microseconds (``2024-05-01T12:00:00.000000+00:00``):
every value has the same width, so SQLite's text order is time order and ``ORDER BY`` and
``min``/``max`` on these columns are correct. Documents are stored as JSON text.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn, TypedDict, cast

import yaml

from reconciler.api.enums import (
    ExecutionStatus,
    JobStatus,
    OperatingSystem,
    Operation,
    ReportRunStatus,
)
from reconciler.errors import PermanentError, TemporaryError

JOB_STATUSES = tuple(status.value for status in JobStatus)
FINISHED_STATUSES = tuple(s.value for s in JobStatus if s is not JobStatus.RUNNING)


def check_finish_status(status: str) -> None:
    """A job finishes as one of :data:`FINISHED_STATUSES`: every backend refuses another alike."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status {status!r}: a job finishes as one of {FINISHED_STATUSES}")


def check_report_run_status(status: str) -> None:
    """An export attempt is one of :data:`REPORT_RUN_STATUSES`, on every backend."""
    if status not in REPORT_RUN_STATUSES:
        raise ValueError(f"status {status!r}: one of {REPORT_RUN_STATUSES}")


def check_job_status(status: str | None) -> None:
    """A filter on jobs' status names one of :data:`JOB_STATUSES` (or None: any)."""
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"status {status!r}: one of {JOB_STATUSES}")


WINDOW_STATUSES = tuple(status.value for status in ExecutionStatus)
REPORT_RUN_STATUSES = tuple(status.value for status in ReportRunStatus)


class StateError(Exception):
    """The state store cannot do what was asked (the file, or the history, forbids it)."""


class StoreUnusable(StateError, PermanentError):
    """The store cannot be used as asked until somebody acts (a corrupt or read-only file, a
    newer schema, a lock held by another process); the message says what to do, in one line."""


class StoreLocked(StoreUnusable):
    """Another process holds the store's writer lock (:mod:`reconciler.state.lock`)."""


class WriterLost(StoreUnusable):
    """This process held the store's writer lock and lost it (PostgreSQL ended the lock's
    session): another process may be the writer now, so this one writes no more and stops."""


class StoreWriteFailed(StateError, TemporaryError):
    """A write failed for a reason that passes (a full disk, an I/O error): nothing of it was
    written, and the same write may succeed later. The service backs off and retries."""


class UnknownJob(StateError, LookupError):
    """No job has this id."""


class JobNotRunning(StateError):
    """The job already finished: its outcome is history and is not overwritten."""


def to_text(moment: datetime) -> str:
    """A tz-aware datetime as sortable UTC text; naive datetimes are refused, not guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass a tz-aware (UTC) time")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def maybe_from_text(text: str | None) -> datetime | None:
    return None if text is None else from_text(text)


def to_json(document: Any) -> str:
    """JSON text; raises TypeError/ValueError before anything is written when it is not JSON."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def from_json(text: str) -> Any:
    return json.loads(text)


def _read_only(*_args: object, **_kwargs: object) -> NoReturn:
    raise TypeError(
        "a stored record is read-only (the store hands the same one to every reader): "
        "change a copy (dict(x), list(x), copy.deepcopy(x))"
    )


class FrozenDict(dict[str, Any]):
    """A decoded JSON object no reader can change: the stores share the records they hand out
    (``latest_scans`` keeps them between calls), so a change by one caller would be what every
    later caller reads. Reads, ``==`` and ``json.dumps`` work as on a dict; ``dict(x)``,
    ``{**x}`` and ``copy.deepcopy(x)`` are mutable copies."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)


class FrozenList(list[Any]):
    """A decoded JSON array no reader can change (see :class:`FrozenDict`); ``list(x)`` and
    ``copy.deepcopy(x)`` are mutable copies."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]

    def __reduce__(self) -> tuple[type[list[Any]], tuple[list[Any]]]:
        return list, (list(self),)


# YAML output (-o yaml) writes them as the dict and list they are.
yaml.SafeDumper.add_representer(FrozenDict, yaml.SafeDumper.represent_dict)
yaml.SafeDumper.add_representer(FrozenList, yaml.SafeDumper.represent_list)


def frozen(value: Any) -> Any:
    """``value`` (decoded JSON) with every object and array read-only, all the way down."""
    if isinstance(value, dict):
        return FrozenDict({key: frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList([frozen(item) for item in value])
    return value


class StoredSummary(TypedDict, total=False):
    """A scan's summary as stored (``evaluation.Summary.to_dict``): SSM's counts and status."""

    installedCount: int
    installedOtherCount: int
    installedPendingRebootCount: int
    installedRejectedCount: int
    missingCount: int
    failedCount: int
    notApplicableCount: int
    unreportedNotApplicableCount: int
    availableSecurityUpdateCount: int
    criticalNonCompliantCount: int
    securityNonCompliantCount: int
    otherNonCompliantCount: int
    complianceStatus: str
    complianceSeverity: str | None


class StoredPatch(TypedDict, total=False):
    """One patch's verdict as stored (``evaluation.PatchResult.to_dict``)."""

    name: str
    arch: str
    installedVersion: str | None
    version: str
    state: str
    classification: str
    severity: str
    complianceLevel: str
    cves: list[str]
    reason: str


class StoredEvaluation(TypedDict, total=False):
    """A scan's evaluation as stored: ``InstanceEvaluation.to_dict`` and the pins it yields."""

    instanceId: str
    operatingSystem: str
    baseline: str
    patchGroup: str | None
    operation: str
    evaluatedAt: str
    patches: list[StoredPatch]
    summary: StoredSummary
    pins: list[str]
    lastNoRebootInstallOperationTime: str
    held: list[dict[str, Any]]
    """HeldPatch.to_dict() of each held update; absent when nothing is held."""


class JobError(TypedDict):
    """Why a job failed: the agent's code (or the exception's type) and message."""

    code: str
    message: str


class JobResult(TypedDict, total=False):
    """A finished job's result: its error, or the scan's summary (and what an install did, see
    ``api.install.InstallResult.stored``)."""

    error: JobError
    install: dict[str, Any]
    summary: StoredSummary
    hooks: list[dict[str, Any]]
    """What the window task's hooks and health checks did (docs/hooks.md)."""


class WindowExecution(TypedDict):
    """The execution of one window opening."""

    window: str
    opening: str
    status: ExecutionStatus
    started_at: datetime
    """When the opening's first job made it IN_PROGRESS."""
    updated_at: datetime


def window_execution(row: tuple[Any, ...]) -> WindowExecution:
    """A ``window_executions`` row (window, opening, status, started_at, updated_at), decoded."""
    return WindowExecution(
        window=row[0],
        opening=row[1],
        status=ExecutionStatus(row[2]),
        started_at=from_text(row[3]),
        updated_at=from_text(row[4]),
    )


def check_window_status(status: str) -> None:
    """A window execution's status is one of :data:`WINDOW_STATUSES`, on every backend."""
    if status not in WINDOW_STATUSES:
        raise ValueError(f"status {status!r}: one of {WINDOW_STATUSES}")


@dataclass(frozen=True)
class ScanRecord:
    """One scan or install of one instance, as evaluated: a row of append-only history."""

    id: int
    instance: str
    operation: Operation
    revision: str
    baseline: str
    baseline_hash: str
    job_id: str | None
    started_at: datetime
    finished_at: datetime
    inventory: dict[str, Any]
    evaluation: StoredEvaluation

    COLUMNS: ClassVar[str] = (
        "id, instance, operation, revision, baseline, baseline_hash, job_id,"
        " started_at, finished_at, inventory, evaluation"
    )

    @classmethod
    def from_row(cls, row: tuple[Any, ...], *, shared: bool = False) -> ScanRecord:
        """A ``scans`` row, decoded. ``shared``: the store keeps the record and hands it to every
        caller (``latest_scans``), so its documents are made read-only all the way down (the
        others are the caller's own, and freezing doubles the decoding time)."""
        scan_id, instance, operation, revision, baseline, baseline_hash, job_id = row[:7]
        decode = (lambda text: frozen(from_json(text))) if shared else from_json
        return cls(
            id=scan_id,
            instance=instance,
            operation=Operation(operation),
            revision=revision,
            baseline=baseline,
            baseline_hash=baseline_hash,
            job_id=job_id,
            started_at=from_text(row[7]),
            finished_at=from_text(row[8]),
            inventory=decode(row[9]),
            evaluation=decode(row[10]),
        )

    @property
    def summary(self) -> StoredSummary:
        return self.evaluation.get("summary", {})

    @property
    def compliance_status(self) -> str | None:
        return self.summary.get("complianceStatus")

    @property
    def patch_group(self) -> str | None:
        return self.evaluation.get("patchGroup")

    @property
    def patches(self) -> list[StoredPatch]:
        return self.evaluation.get("patches", [])

    @property
    def pins(self) -> tuple[str, ...]:
        """What an install after this scan would pin (``name[:arch]=version``)."""
        return tuple(self.evaluation.get("pins", ()))

    @property
    def held(self) -> tuple[str, ...]:
        """The packages whose updates a hold kept out of ``pins`` (docs/guardrails.md)."""
        return tuple(sorted({str(h.get("name")) for h in self.evaluation.get("held", [])}))

    def count(self, name: str) -> int:
        """One of the summary's counts by its stored name (0 when absent)."""
        summary: Mapping[str, Any] = cast(Mapping[str, Any], self.summary)
        return int(summary.get(name) or 0)

    @property
    def installed(self) -> list[dict[str, Any]]:
        """The packages the scanned inventory lists as installed."""
        installed: list[dict[str, Any]] = self.inventory.get("installed", [])
        return installed

    @property
    def agent_version(self) -> str:
        return str(self.inventory.get("agentVersion") or "")

    @property
    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = self.inventory.get("facts", {})
        return facts

    @property
    def operating_system(self) -> OperatingSystem | None:
        """None when the stored inventory names none this version knows (a damaged record)."""
        try:
            return OperatingSystem(self.facts["operatingSystem"])
        except (KeyError, ValueError, TypeError):  # unreadable: callers treat it as unscanned
            return None


@dataclass(frozen=True)
class JobRecord:
    """A dispatched scan or install, keyed by its idempotency key."""

    id: str
    key: str
    instance: str
    operation: Operation
    window: str | None
    task: str | None
    opening: str | None
    revision: str
    status: JobStatus
    payload: dict[str, Any]
    result: JobResult | None
    created_at: datetime
    finished_at: datetime | None

    COLUMNS: ClassVar[str] = (
        # "window" quoted: a reserved word in PostgreSQL (SQLite takes it either way).
        'id, key, instance, operation, "window", task, opening, revision, status,'
        " payload, result, created_at, finished_at"
    )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        job_id, key, instance, operation, window, task, opening, revision, status = row[:9]
        return cls(
            id=job_id,
            key=key,
            instance=instance,
            operation=Operation(operation),
            window=window,
            task=task,
            opening=opening,
            revision=revision,
            status=JobStatus(status),
            payload=from_json(row[9]),
            result=None if row[10] is None else from_json(row[10]),
            created_at=from_text(row[11]),
            finished_at=maybe_from_text(row[12]),
        )

    @property
    def error(self) -> JobError | None:
        """Why the job failed (None when it did not, or nothing was recorded)."""
        return (self.result or {}).get("error") or None


@dataclass(frozen=True)
class JobPhase:
    """Where a running job waits for something that outlives a process (``rebooting``): the
    machine's boot id before, what the job did so far, and since when."""

    job_id: str
    phase: str
    boot_id: str
    detail: dict[str, Any]
    since: datetime

    COLUMNS: ClassVar[str] = "job_id, phase, boot_id, detail, since"

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobPhase:
        job_id, phase, boot_id, detail, since = row
        return cls(job_id, phase, boot_id, from_json(detail), from_text(since))


@dataclass(frozen=True)
class RevisionRecord:
    """A source revision the loop saw, and whether its snapshot was accepted."""

    revision: str
    accepted: bool
    problems: list[str]
    seen_at: datetime

    COLUMNS: ClassVar[str] = "revision, accepted, problems, seen_at"

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RevisionRecord:
        return cls(row[0], bool(row[1]), from_json(row[2]), from_text(row[3]))


@dataclass(frozen=True)
class PatchStateRecord:
    """One patch of one recorded scan (a row of ``evaluation["patches"]``)."""

    scan_id: int
    instance: str
    name: str
    arch: str | None
    installed_version: str | None
    version: str | None
    state: str
    classification: str | None
    severity: str | None
    compliance_level: str | None
    cves: list[str]
    reason: str | None

    COLUMNS: ClassVar[str] = (
        "scan_id, instance, name, arch, installed_version, version, state,"
        " classification, severity, compliance_level, cves, reason"
    )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> PatchStateRecord:
        scan_id, instance, name, arch, installed_version, version, state = row[:7]
        return cls(
            scan_id=scan_id,
            instance=instance,
            name=name,
            arch=arch,
            installed_version=installed_version,
            version=version,
            state=state,
            classification=row[7],
            severity=row[8],
            compliance_level=row[9],
            cves=from_json(row[10]),
            reason=row[11],
        )


@dataclass(frozen=True)
class InstanceRecord:
    """An instance's latest reported facts, and when it was first and last scanned."""

    instance: str
    facts: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    last_scan_id: int

    COLUMNS: ClassVar[str] = "instance, facts, first_seen, last_seen, last_scan_id"

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> InstanceRecord:
        return cls(row[0], from_json(row[1]), from_text(row[2]), from_text(row[3]), row[4])


@dataclass(frozen=True)
class ReportRunRecord:
    """One attempt to export a scheduled ComplianceReport for one opening of its schedule."""

    id: int
    report: str
    opening: str
    """The opening's id: its start in UTC, ``2026-11-28T06:00:00Z``."""
    destination: str
    format: str
    revision: str | None
    """The revision in force when the report was built."""
    status: ReportRunStatus
    locations: tuple[str, ...]
    """Where the files were written (paths or s3:// URLs); empty when the run failed."""
    error: str | None
    started_at: datetime
    finished_at: datetime

    COLUMNS: ClassVar[str] = (
        "id, report, opening, destination, format, revision, status, locations, error,"
        " started_at, finished_at"
    )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ReportRunRecord:
        return cls(
            id=row[0],
            report=row[1],
            opening=row[2],
            destination=row[3],
            format=row[4],
            revision=row[5],
            status=ReportRunStatus(row[6]),
            locations=tuple(from_json(row[7])),
            error=row[8],
            started_at=from_text(row[9]),
            finished_at=from_text(row[10]),
        )
