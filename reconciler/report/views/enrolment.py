"""Stage: report — views. What ``patchctl validate`` and ``patchctl sources`` say about each
InstanceSource: what it lists, what it generates, which instance won a contested name, and
why a refresh failed. Pure: statuses in, lines and documents out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from reconciler.sources.enrol import SourceStatus


def enrolment_lines(statuses: Iterable[SourceStatus]) -> Iterator[str]:
    """One line per InstanceSource, then one per note (a name another instance won)."""
    for status in statuses:
        hosts = len(status.listed.hosts) if status.listed else 0
        line = (
            f"InstanceSource {status.source} ({status.kind}): {hosts} machine(s), "
            f"{len(status.instances)} ManagedInstance(s) generated"
        )
        if status.error:
            kept = f"since {status.listed.at.isoformat()}" if status.listed else "none"
            line += f"; refresh failed: {status.error} (last good list kept: {kept})"
        yield line
        for note in status.problems:
            yield f"  {note}"


def status_document(status: SourceStatus) -> dict[str, Any]:
    """JSON-ready, for -o json/yaml and the InstanceSource's status."""
    listed = status.listed
    return {
        "source": status.source,
        "kind": status.kind,
        "machines": len(listed.hosts) if listed else 0,
        "listedAt": listed.at.isoformat() if listed else None,
        "instances": list(status.instances),
        "error": status.error,
        "failedAt": status.failed_at.isoformat() if status.failed_at else None,
        "notes": list(status.problems),
    }
