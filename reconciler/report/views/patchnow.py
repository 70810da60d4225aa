"""Stage: report — views. ``patchctl patch-now``'s output: a one-off opening as recorded, the list
of them, and the outcome of one with its jobs; tables for people, JSON or YAML for machines.

Pure rendering of what it is given: no store, no clock; may not import publish or notify.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from reconciler.report.views import render
from reconciler.state import JobRecord, OneOffRecord


def _time(moment: Any) -> str:
    return str(moment.isoformat(timespec="seconds")).replace("+00:00", "Z")


def summary_row(record: OneOffRecord) -> dict[str, Any]:
    """One opening as a flat row (``--list``'s table)."""
    opening = record.opening
    asked = opening.requested_by
    if opening.os_user != asked:
        asked += f" (as {opening.os_user})"
    return {
        "id": opening.id,
        "status": str(record.status),
        "operation": str(opening.task.operation)
        + (f" {opening.emergency.cve}" if opening.emergency else ""),
        "targets": opening.targets.describe(),
        "requested by": asked,
        "created": _time(opening.created_at),
        "expires": _time(opening.expires_at),
        "note": opening.note,
    }


def listing(records: Sequence[OneOffRecord], fmt: str, out: IO[str]) -> None:
    """``patch-now --list``: newest first."""
    if fmt == "table":
        render.rows([summary_row(r) for r in records], fmt, out, title="One-off openings")
    else:
        render.dump([r.document() for r in records], fmt, out)


def recorded(record: OneOffRecord, instances: Sequence[str], fmt: str, out: IO[str]) -> None:
    """A request just recorded, with the instances it targets now."""
    if fmt != "table":
        render.dump({**record.document(), "instances": list(instances)}, fmt, out)
        return
    opening = record.opening
    out.write(
        render.visible(
            f"Recorded {opening.id}: {opening.task.operation} on {opening.targets.describe()} "
            f"({len(instances)} instance(s): {', '.join(instances)}), asked by "
            f"{opening.requested_by}.{_fixes(record)}\nThe loop starts it by "
            f"{_time(opening.expires_at)} or "
            f"drops it; cancel it with: patchctl patch-now --cancel {opening.id}"
        )
        + "\n"
    )


def _fixes(record: OneOffRecord) -> str:
    """An emergency run's CVE and frozen versions (empty for patch-now's openings)."""
    fix = record.opening.emergency
    if fix is None:
        return ""
    pins = sorted({pin for listed in fix.versions.values() for pin in listed})
    return f"\nEmergency {fix.cve}, snapshot {fix.digest[:19]}: {', '.join(pins)}"


def outcome(record: OneOffRecord, jobs: Sequence[JobRecord], fmt: str, out: IO[str]) -> None:
    """Where an opening ended (or stands), and each of its jobs."""
    rows = [_job_row(job) for job in jobs]
    if fmt != "table":
        render.dump({**record.document(), "jobs": rows}, fmt, out)
        return
    opening = record.opening
    out.write(
        render.visible(
            f"{opening.id}: {record.status} ({opening.task.operation} on "
            f"{opening.targets.describe()}, asked by {opening.requested_by})"
        )
        + "\n"
    )
    render.rows(rows, fmt, out, title=f"Jobs of {opening.id}")


def _job_row(job: JobRecord) -> dict[str, Any]:
    error = job.error
    return {
        "instance": job.instance,
        "operation": str(job.operation),
        "status": str(job.status),
        "error": f"{error['code']}: {error['message']}" if error else None,
    }
