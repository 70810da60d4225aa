"""Stage: report — notifications. Prometheus metrics of the reconcile loop, on their own registry.

``LoopMetrics`` is an observer of the loop's occurrence stream (jobs, refusals, installs,
reboots) and reads the observed-state store for the fleet's compliance (instances by status and
patch group, missing patches by severity; with the snapshot in force, exactly its instances);
``observe_rollouts`` takes each pass's rollout views, ``observe_gates`` its safety gates'
standings;
``serve()`` adds pass durations and the last successful reconcile, and serves ``/metrics``.
Reads results; decides nothing. Names follow Prometheus' conventions: units in the name,
``_total`` added by the client to counters.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.api.enums import JobStatus, Operation
from reconciler.api.snapshot import Snapshot
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.report.views.csvreport import LEVELS
from reconciler.report.views.gates import GateStanding
from reconciler.report.views.rollouts import RolloutView, StageView
from reconciler.rollout import Verdict
from reconciler.state import ScanRecord, StateBackend

NOT_SCANNED = "NOT_SCANNED"
"""``patchwarden_instances``' status of an instance in force without a scan yet."""
STATUSES = ("COMPLIANT", "NON_COMPLIANT", NOT_SCANNED)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)
"""The statuses a job finishes with (``Kind.JOB_FINISHED``)."""
OUTSTANDING = frozenset({"MISSING", "FAILED"})
"""Patch states that still need an install: what ``patchwarden_missing_patches`` counts."""


class LoopMetrics:
    """The loop's metrics; one instance per process (tests make their own).

    Call it with every occurrence (it is an ``Observer``). With a ``store``, each finished job
    re-reads that instance's latest scan, so the compliance gauges follow a rollout job by job
    instead of pass by pass; ``observe_scans`` refreshes the whole fleet (serve() does it after
    each pass)."""

    def __init__(self, store: StateBackend | None = None) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._fleet: dict[str, tuple[str, str, Tally[str]]] = {}
        """instance -> (compliance status, patch group, outstanding patches by level)."""
        self._series: set[tuple[str, str]] = set()
        self._declare_pass_metrics(self.registry)
        self._declare_job_metrics(self.registry)
        self._declare_fleet_metrics(self.registry)
        self._declare_enrolment_metrics(self.registry)
        self._declare_rollout_metrics(self.registry)
        self._rollout_series: set[tuple[str, ...]] = set()
        self._declare_gate_metrics(self.registry)
        self._gate_series: set[tuple[str, str]] = set()
        self._deliveries = _Deliveries()
        self.registry.register(self._deliveries)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Create every labelled series for each known label value, at 0, before any event.

        A labelled series otherwise appears only with its first increment, already at 1, and
        Prometheus' increase() and rate() need an earlier sample to see a rise: the first failed
        job or reboot would never show."""
        for operation in Operation:
            self.jobs_started.labels(operation=operation.value)
            self.job_seconds.labels(operation=operation.value)
            for status in FINISHED:
                self.jobs.labels(operation=operation.value, status=status.value)
        for performed in ("true", "false"):
            self.reboots.labels(performed=performed)
        for level in LEVELS:
            self.missing.labels(severity=level).set(0)

    def _declare_pass_metrics(self, r: CollectorRegistry) -> None:
        """Reconcile passes and the revisions they accepted or refused."""
        self.passes = Counter("patchwarden_reconcile_passes", "Reconcile passes run.", registry=r)
        self.reconcile_seconds = Histogram(
            "patchwarden_reconcile_duration_seconds",
            "Reconcile pass durations.",
            registry=r,
            buckets=(0.1, 1, 5, 30, 120, 600, 3600),
        )
        self.last_success = Gauge(
            "patchwarden_last_successful_reconcile_timestamp_seconds",
            "When the last reconcile pass with a valid snapshot completed (Unix time).",
            registry=r,
        )
        self.accepted = Counter(
            "patchwarden_snapshots_accepted", "Revisions accepted and put in force.", registry=r
        )
        self.refusals = Counter(
            "patchwarden_snapshot_refusals",
            "Revisions refused whole (invalid or unsigned); each refused revision counts once.",
            registry=r,
        )
        self.store_errors = Counter(
            "patchwarden_state_store_errors",
            "Passes ended because the state store could not be written (disk full, I/O error).",
            registry=r,
        )
        self.store_writable = Gauge(
            "patchwarden_state_store_writable",
            "1 while the state store takes writes, 0 since a write failed until one succeeds.",
            registry=r,
        )
        self.store_writable.set(1)

    def _declare_job_metrics(self, r: CollectorRegistry) -> None:
        """Jobs run on machines and what their installs did."""
        self.jobs_started = Counter(
            "patchwarden_jobs_started", "Jobs dispatched to machines.", ["operation"], registry=r
        )
        self.jobs = Counter(
            "patchwarden_jobs",
            "Jobs finished, by operation (Scan, Install) and status (succeeded, failed).",
            ["operation", "status"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "patchwarden_job_duration_seconds",
            "Job durations, from claim to result.",
            ["operation"],
            registry=r,
            buckets=(1, 5, 15, 60, 300, 900, 3600),
        )
        self.patches_installed = Counter(
            "patchwarden_patches_installed",
            "Patches installed by install jobs (pins whose result is INSTALLED; dependencies "
            "pulled in are not counted).",
            registry=r,
        )
        self.reboots = Counter(
            "patchwarden_reboots",
            "Installs that needed a reboot, by whether the reboot was performed.",
            ["performed"],
            registry=r,
        )
        self.reboot_seconds = Histogram(
            "patchwarden_reboot_wait_seconds",
            "Reboots the loop did and awaited: seconds from asking for the reboot to the new "
            "boot id.",
            registry=r,
            buckets=(15, 30, 60, 120, 300, 600, 1800),
        )

    def _declare_enrolment_metrics(self, r: CollectorRegistry) -> None:
        """InstanceSources: what they list and whether they can be read."""
        self.source_hosts = Gauge(
            "patchwarden_instance_source_hosts",
            "Machines an InstanceSource lists (its last good list while refreshes fail).",
            ["source"],
            registry=r,
        )
        self.source_up = Gauge(
            "patchwarden_instance_source_up",
            "1 when the InstanceSource's last refresh worked, 0 while it fails (the last good "
            "list stays in use).",
            ["source"],
            registry=r,
        )
        self.source_failures = Counter(
            "patchwarden_instance_source_refresh_failures",
            "InstanceSource refreshes that failed.",
            ["source"],
            registry=r,
        )

    def _declare_rollout_metrics(self, r: CollectorRegistry) -> None:
        """Progressive rollouts (docs/rollouts.md), per rollout and stage, after each pass."""
        stage = ["rollout", "stage"]
        self.rollout_verdict = Gauge(
            "patchwarden_rollout_stage_verdict",
            "1 for the stage's verdict this pass (Install, Baking, Baked, Waiting, Halted), "
            "0 for the others.",
            [*stage, "verdict"],
            registry=r,
        )
        self.rollout_baked = Gauge(
            "patchwarden_rollout_stage_baked_seconds",
            "Seconds since the stage's last machine installed the snapshot (0 before).",
            stage,
            registry=r,
        )
        self.rollout_failed = Gauge(
            "patchwarden_rollout_stage_failed_machines",
            "The stage's machines that failed the cycle's snapshot (install or health check).",
            stage,
            registry=r,
        )
        self.rollout_halted = Gauge(
            "patchwarden_rollout_halted", "1 while the rollout is halted.", ["rollout"], registry=r
        )
        self.rollout_cycle = Gauge(
            "patchwarden_rollout_cycle",
            "The rollout's current cycle number (0 before its first snapshot).",
            ["rollout"],
            registry=r,
        )

    def _declare_gate_metrics(self, r: CollectorRegistry) -> None:
        """Safety gates (docs/guardrails.md), per gate and the task or stage it guards."""
        labels = ["gate", "scope"]
        self.gate_blocked = Gauge(
            "patchwarden_gate_blocked",
            "1 while the gate blocks the task or rollout stage (scope), 0 while it is open.",
            labels,
            registry=r,
        )
        self.gate_blocked_seconds = Gauge(
            "patchwarden_gate_blocked_seconds",
            "Seconds the gate has blocked the scope in this spell (0 while it is open).",
            labels,
            registry=r,
        )

    def _declare_fleet_metrics(self, r: CollectorRegistry) -> None:
        """The fleet as its latest scans show it."""
        self.instances = Gauge(
            "patchwarden_instances",
            "Instances by compliance status (of the latest scan; NOT_SCANNED before one) and "
            "patch group (empty if none).",
            ["status", "group"],
            registry=r,
        )
        self.missing = Gauge(
            "patchwarden_missing_patches",
            "Approved patches missing or failed on the fleet (latest scans), by compliance "
            "severity (the approving rule's compliance level).",
            ["severity"],
            registry=r,
        )

    # -- the occurrence stream ----------------------------------------------------------------

    def __call__(self, occurrence: Occurrence) -> None:
        detail = occurrence.detail
        if occurrence.kind is Kind.SNAPSHOT_ACCEPTED:
            self.accepted.inc()
        elif occurrence.kind is Kind.SNAPSHOT_REFUSED:
            # The loop emits a refusal once per refused revision, not once per pass.
            self.refusals.inc()
        elif occurrence.kind is Kind.JOB_DISPATCHED:
            self.jobs_started.labels(operation=str(detail.get("operation"))).inc()
        elif occurrence.kind is Kind.JOB_FINISHED:
            operation = str(detail.get("operation"))
            self.jobs.labels(operation=operation, status=str(detail.get("status"))).inc()
            seconds = detail.get("seconds")
            if isinstance(seconds, int | float):
                self.job_seconds.labels(operation=operation).observe(seconds)
            if self.store is not None and occurrence.instance is not None:
                self._refresh_instance(occurrence.instance)
        elif occurrence.kind is Kind.PATCHES_INSTALLED:
            installed = [p for p in detail.get("patches") or () if _installed(p)]
            self.patches_installed.inc(len(installed))
        elif occurrence.kind is Kind.REBOOT:
            performed = "true" if detail.get("performed") else "false"
            self.reboots.labels(performed=performed).inc()
            seconds = detail.get("seconds")
            if detail.get("awaited") and isinstance(seconds, int | float):
                self.reboot_seconds.observe(seconds)
        elif occurrence.kind in (Kind.INSTANCE_SOURCE_LISTED, Kind.INSTANCE_SOURCE_FAILED):
            self._instance_source(occurrence)

    def _instance_source(self, occurrence: Occurrence) -> None:
        """Enrolment: each InstanceSource's machines, and whether its last refresh worked."""
        source = str(occurrence.detail.get("source"))
        failed = occurrence.kind is Kind.INSTANCE_SOURCE_FAILED
        hosts = occurrence.detail.get("hosts")
        self.source_hosts.labels(source=source).set(hosts if isinstance(hosts, int) else 0)
        self.source_up.labels(source=source).set(0 if failed else 1)
        if failed:
            self.source_failures.labels(source=source).inc()

    def track_event_sinks(self, sinks: Sequence[DeliveryCounts]) -> None:
        """Export the event sinks' own counters (read at scrape time, so the sinks stay free of
        metrics code)."""
        self._deliveries.sinks = list(sinks)

    # -- rollouts, from the pass's views ------------------------------------------------------

    def observe_rollouts(self, views: Sequence[RolloutView]) -> None:
        """Every rollout's stages after a pass; a rollout or stage no longer there is removed
        (not left at its last value)."""
        with self._lock:
            series: set[tuple[str, ...]] = set()
            for view in views:
                series.add((view.rollout,))
                self.rollout_halted.labels(view.rollout).set(1 if view.halted else 0)
                self.rollout_cycle.labels(view.rollout).set(view.cycle)
                for stage in view.stages:
                    series.add((view.rollout, stage.name))
                    self._stage(view.rollout, stage)
            for gone in self._rollout_series - series:
                self._forget(gone)
            self._rollout_series = series

    def _stage(self, rollout: str, stage: StageView) -> None:
        for verdict in Verdict:
            value = 1 if stage.verdict is verdict else 0
            self.rollout_verdict.labels(rollout, stage.name, str(verdict)).set(value)
        self.rollout_baked.labels(rollout, stage.name).set(stage.baked_seconds)
        self.rollout_failed.labels(rollout, stage.name).set(stage.failed)

    def _forget(self, labels: tuple[str, ...]) -> None:
        if len(labels) == 1:
            self.rollout_halted.remove(*labels)
            self.rollout_cycle.remove(*labels)
            return
        for verdict in Verdict:
            self.rollout_verdict.remove(*labels, str(verdict))
        self.rollout_baked.remove(*labels)
        self.rollout_failed.remove(*labels)

    # -- safety gates, from the pass's standings ---------------------------------------------

    def observe_gates(self, standings: Sequence[GateStanding]) -> None:
        """Every gate of every task and stage after a pass; a gate no longer there is removed."""
        with self._lock:
            series = set()
            for standing in standings:
                labels = (standing.gate, standing.scope)
                series.add(labels)
                self.gate_blocked.labels(*labels).set(1 if standing.blocking else 0)
                self.gate_blocked_seconds.labels(*labels).set(standing.blocked_seconds)
            for gone in self._gate_series - series:
                self.gate_blocked.remove(*gone)
                self.gate_blocked_seconds.remove(*gone)
            self._gate_series = series

    # -- the fleet, from the store ------------------------------------------------------------

    def observe_scans(self, evaluations: Mapping[str, Mapping[str, Any]]) -> None:
        """The whole fleet from the latest evaluation of each instance (the store's
        ``latest_scans()``, evaluations only)."""
        fleet = {name: _standing(evaluation) for name, evaluation in evaluations.items()}
        with self._lock:
            self._fleet = fleet
            self._publish()

    def refresh(self, in_force: Snapshot | None = None) -> None:
        """Re-read the whole fleet from the store. With ``in_force`` (the snapshot in force) the
        fleet is its instances: one not scanned yet (a Node mirrored while its scan Job waits
        for a pod, a machine not reachable yet) counts as NOT_SCANNED in its patch group, and one
        no longer in force is not counted, though its history stays in the store."""
        if self.store is None:
            return
        latest = {name: scan.evaluation for name, scan in self.store.latest_scans().items()}
        if in_force is None:
            self.observe_scans(latest)
            return
        fleet = {
            name: _standing(latest[name]) if name in latest else _not_scanned(in_force, name)
            for name in in_force.instances
        }
        with self._lock:
            self._fleet = fleet
            self._publish()

    def _refresh_instance(self, instance: str) -> None:
        assert self.store is not None
        record: ScanRecord | None = self.store.latest_scan(instance)
        if record is None:
            return
        with self._lock:
            self._fleet[instance] = _standing(record.evaluation)
            self._publish()

    def _publish(self) -> None:
        """Set every gauge from ``_fleet``; a series that no longer has instances goes to 0
        rather than keeping its last value (held: ``_lock``)."""
        instances: Tally[tuple[str, str]] = Tally()
        missing: Tally[str] = Tally()
        for status, group, outstanding in self._fleet.values():
            instances[(status, group)] += 1
            missing.update(outstanding)
        groups = {group for _, group in instances} | {group for _, group in self._series}
        series = {(status, group) for status in STATUSES for group in groups} | set(instances)
        for status, group in sorted(series):
            self.instances.labels(status=status, group=group).set(instances[(status, group)])
        self._series = series
        for level in {*LEVELS, *missing}:
            self.missing.labels(severity=level).set(missing[level])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _standing(evaluation: Mapping[str, Any]) -> tuple[str, str, Tally[str]]:
    summary = evaluation.get("summary") or {}
    outstanding: Tally[str] = Tally(
        str(patch.get("complianceLevel") or "UNSPECIFIED")
        for patch in evaluation.get("patches") or ()
        if patch.get("state") in OUTSTANDING
    )
    return (
        str(summary.get("complianceStatus") or "UNKNOWN"),
        str(evaluation.get("patchGroup") or ""),
        outstanding,
    )


def _not_scanned(snapshot: Snapshot, name: str) -> tuple[str, str, Tally[str]]:
    groups = snapshot.groups_of(snapshot.instances[name].metadata.labels)
    return NOT_SCANNED, groups[0].metadata.name if groups else "", Tally()


def _installed(patch: Any) -> bool:
    return isinstance(patch, Mapping) and patch.get("result") == "INSTALLED"


class DeliveryCounts(Protocol):
    """What an event sink counts (``reconciler.report.notify.events.Sink``)."""

    name: str
    sent: int
    failed: int
    dropped: int

    @property
    def queued(self) -> int: ...


class _Deliveries(Collector):
    """``patchwarden_event_deliveries_total{sink,result}`` and the queue depth per sink."""

    def __init__(self) -> None:
        self.sinks: list[DeliveryCounts] = []

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "patchwarden_event_deliveries",
            "Events handed to a sink (eventbridge, webhook), by result: delivered, failed "
            "(gave up after retries) or dropped (the bounded queue was full).",
            labels=["sink", "result"],
        )
        queued = GaugeMetricFamily(
            "patchwarden_event_queue_depth", "Events waiting in a sink's queue.", labels=["sink"]
        )
        for sink in self.sinks:
            for result, value in (
                ("delivered", sink.sent),
                ("failed", sink.failed),
                ("dropped", sink.dropped),
            ):
                total.add_metric([sink.name, result], value)
            queued.add_metric([sink.name], sink.queued)
        yield total
        yield queued
