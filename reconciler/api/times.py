"""Stage: api (the schema). The one text form of an instant that Patchwarden writes: RFC 3339 in
UTC, whole seconds, ``2025-11-09T18:00:00Z`` — in reasons, opening ids, window descriptions and
Kubernetes' ``metav1.Time`` fields. Pure: no I/O, no clock; imports nothing from reconciler."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_stamp(moment: datetime) -> str:
    """``moment`` (timezone-aware) as ``2025-11-09T18:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
