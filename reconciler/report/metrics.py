"""Stage: report. Prometheus metrics of the reconcile loop, on their own registry.

Counters and gauges are updated by the loop's callbacks; ``/metrics`` serves them. Reads results;
decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class LoopMetrics:
    """The loop's metrics; one instance per process (tests make their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.passes = Counter(
            "patchwarden_reconcile_passes", "Reconcile passes run.", registry=self.registry
        )
        self.jobs = Counter(
            "patchwarden_jobs", "Jobs finished.", ["operation", "status"], registry=self.registry
        )
        self.job_seconds = Histogram(
            "patchwarden_job_duration_seconds",
            "Job durations.",
            ["operation"],
            registry=self.registry,
            buckets=(1, 5, 15, 60, 300, 900, 3600),
        )
        self.reconcile_seconds = Histogram(
            "patchwarden_reconcile_duration_seconds",
            "Reconcile pass durations.",
            registry=self.registry,
            buckets=(0.1, 1, 5, 30, 120, 600, 3600),
        )
        self.last_success = Gauge(
            "patchwarden_last_successful_reconcile_timestamp_seconds",
            "When the last reconcile pass completed.",
            registry=self.registry,
        )
        self.refusals = Counter(
            "patchwarden_snapshot_refusals", "Snapshots refused.", registry=self.registry
        )
        self.instances = Gauge(
            "patchwarden_instances",
            "Instances by compliance status.",
            ["status"],
            registry=self.registry,
        )

    def observe_scans(self, evaluations: Mapping[str, Mapping[str, Any]]) -> None:
        counts: dict[str, int] = {"COMPLIANT": 0, "NON_COMPLIANT": 0}
        for evaluation in evaluations.values():
            status = str(evaluation.get("summary", {}).get("complianceStatus", "UNKNOWN"))
            counts[status] = counts.get(status, 0) + 1
        for status, count in counts.items():
            self.instances.labels(status=status).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
