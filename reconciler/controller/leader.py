"""Stage: controller. Leader election with a ``coordination.k8s.io/v1`` Lease, so that of several
controller replicas exactly one reconciles.

The rules are client-go's: a candidate takes the Lease when it is free (no holder) or when the
holder's record has not changed for ``leaseDurationSeconds`` *as this candidate observed it* (its
own monotonic clock, so clock skew between machines does not matter); the leader renews every
``retry_period`` and gives up leading when it could not renew for ``renew_deadline`` (shorter than
the lease duration, so it stops before anyone else may take over). Every write is a replace
guarded by the Lease's resourceVersion: of two candidates racing, one gets 409 and stays a
follower. A leader stopping cleanly releases the Lease (empty holder) so a standby takes over at
once instead of after the lease duration.

Why not ``kubernetes.leaderelection``: it reads the client's global configuration (no ApiClient
can be passed), its follower loop cannot be stopped (SIGTERM while waiting), and it never releases
the lease. The decision (:func:`may_acquire`) is pure and unit-tested; the rest is I/O.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog

from reconciler.kube import API_FAILURES, ApiClient, ApiException, Kube

log = structlog.get_logger("patchwarden")


def default_identity() -> str:
    """The Pod's name (the chart passes POD_NAME) or the host name, and the process id: two
    processes on one host never share an identity."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    """Seconds a standby waits, after the holder's last renewal it saw, before taking over."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it stops leading (< lease_duration)."""
    retry_period: float = 2.0
    """Seconds between attempts (to acquire, or to renew)."""
    owners: tuple[dict[str, Any], ...] = ()
    """ownerReferences the Lease carries (the controller's Deployment: removed with it)."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration "
                f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


@dataclass(frozen=True)
class Holder:
    """The Lease's record as read."""

    identity: str
    duration: float
    renew_time: str
    acquire_time: str
    transitions: int
    resource_version: str


def may_acquire(holder: Holder | None, identity: str, observed_at: float, now: float) -> bool:
    """Whether ``identity`` may write the Lease now: nobody holds it, it holds it already, or the
    record has not changed for the lease duration since it was first seen unchanged
    (``observed_at``, on this process's monotonic clock)."""
    if holder is None or not holder.identity or holder.identity == identity:
        return True
    return now - observed_at >= holder.duration


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, keep and release one Lease."""

    def __init__(
        self,
        api: ApiClient,
        config: LeaseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = Kube(api)
        self.config = config
        self.collection = (
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(config.namespace)}/leases"
        )
        self.path = f"{self.collection}/{quote(config.name)}"
        self.clock, self.wall = clock, wall
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: threading.Thread | None = None
        self._renewed_at: float | None = None
        """When (this process's monotonic clock) the last successful attempt began."""
        self._other = ""
        """The other holder the last attempt found in the Lease ("" when none)."""

    # -- one attempt ------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; False when another holds it or won a race."""
        config = self.config
        try:
            holder = self._read()
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        key = (holder.identity, holder.renew_time)
        if key != self._observed:
            self._observed, self._observed_at = key, self.clock()
        mine = holder.identity == config.identity
        self._other = "" if mine or not holder.identity else holder.identity
        if not may_acquire(holder, config.identity, self._observed_at, self.clock()):
            return False
        now = micro_time(self.wall())
        spec = {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": math.ceil(config.lease_duration),
            "acquireTime": holder.acquire_time if mine and holder.acquire_time else now,
            "renewTime": now,
            "leaseTransitions": holder.transitions if mine else holder.transitions + 1,
        }
        try:
            self._replace(spec, holder.resource_version)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another candidate wrote first
            raise
        if not mine:
            log.info("acquired lease", lease=config.name, identity=config.identity)
        self._observed, self._observed_at = (config.identity, now), self.clock()
        return True

    def _read(self) -> Holder:
        lease = self.kube.request("GET", self.path)
        spec = lease.get("spec") or {}
        return Holder(
            identity=spec.get("holderIdentity") or "",
            duration=float(spec.get("leaseDurationSeconds") or self.config.lease_duration),
            renew_time=spec.get("renewTime") or "",
            acquire_time=spec.get("acquireTime") or "",
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=lease["metadata"]["resourceVersion"],
        )

    def _create(self) -> bool:
        now = micro_time(self.wall())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": self._metadata(),
            "spec": {
                "holderIdentity": self.config.identity,
                "leaseDurationSeconds": math.ceil(self.config.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self.kube.create(self.collection, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        log.info(
            "created and acquired lease", lease=self.config.name, identity=self.config.identity
        )
        self._observed, self._observed_at = (self.config.identity, now), self.clock()
        return True

    def _replace(self, spec: dict[str, Any], resource_version: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**self._metadata(), "resourceVersion": resource_version},
            "spec": spec,
        }
        self.kube.request("PUT", self.path, body=body)

    def _metadata(self) -> dict[str, Any]:
        """Every write carries the owners: a PUT without them would drop them (and a Lease an
        older controller made gets them at its next renewal)."""
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if self.config.owners:
            metadata["ownerReferences"] = [dict(o) for o in self.config.owners]
        return metadata

    def _attempt(self) -> bool:
        """An attempt where the API being away counts as a failure, not a crash."""
        try:
            return self.try_acquire_or_renew()
        except API_FAILURES as exc:
            log.warning("lease attempt failed", lease=self.config.name, error=str(exc))
            return False

    def _attempt_within(self, seconds: float) -> bool:
        """``_attempt`` in a thread, given up (False) after ``seconds``; one that is still
        running is not started again."""
        if self._pending is not None and self._pending.is_alive():
            self._pending.join(max(0.0, seconds))
            return False
        outcome: list[bool] = []
        self._pending = threading.Thread(
            target=lambda: outcome.append(self._attempt()), name="lease-attempt", daemon=True
        )
        self._pending.start()
        self._pending.join(max(0.0, seconds))
        return bool(outcome and outcome[0])

    # -- the lifecycle -------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process leads (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            started = self.clock()
            if self._attempt():
                self._renewed_at = started
                self.leading.set()
                return True
            stop.wait(self.config.retry_period)
        return False

    def may_act(self) -> bool:
        """Whether this process may still start a step that must happen under one leader (a
        cordon, a drain, a node Job): it leads, and its last renewal began less than the renew
        deadline ago. The second half does not wait for the renewing thread to notice: a process
        that was frozen (SIGSTOP, a stalled VM) past the deadline refuses the moment it runs
        again, even if its first thread to run is the one about to drain a node."""
        renewed = self._renewed_at
        return (
            self.leading.is_set()
            and renewed is not None
            and self.clock() - renewed < self.config.renew_deadline
        )

    def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew in the background; call ``on_lost`` once when renewing failed for the renew
        deadline, or at once when another holder is seen in the Lease."""

        def renew() -> None:
            if self._renewed_at is None:
                self._renewed_at = self.clock()
            while not self._stop.wait(self.config.retry_period):
                why = self._renew_once(self._renewed_at)
                if why is not None:
                    log.error(f"lost lease: {why}", lease=self.config.name)
                    self.leading.clear()
                    self.lost.set()
                    on_lost()
                    return

        self._thread = threading.Thread(target=renew, name="lease", daemon=True)
        self._thread.start()

    def _renew_once(self, last: float) -> str | None:
        """One renewal; why leading is over (None: it is not)."""
        # An attempt may hang far longer than the lease lasts (the request timeout, and urllib3's
        # retries of it): wait for it only until the renew deadline, so this leader stops before
        # a standby may take over. A renewal counts from when its attempt began (the server may
        # have written it any time after that).
        started = self.clock()
        self._other = ""
        if self._attempt_within(last + self.config.renew_deadline - started):
            self._renewed_at = started
            return None
        if self._other:
            # Someone else holds it now (taken over after this process stalled, or by hand):
            # waiting out the deadline would let two leaders act meanwhile.
            return f"now held by {self._other}"
        if self.clock() - last >= self.config.renew_deadline:
            return f"not renewed within the renew deadline ({self.config.renew_deadline:g} s)"
        return None

    def release(self) -> None:
        """Stop renewing and, when still the holder, free the Lease for a standby."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.retry_period + 5)
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            holder = self._read()
            if holder.identity != self.config.identity:
                return
            spec = {
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "acquireTime": holder.acquire_time or None,
                "renewTime": micro_time(self.wall()),
                "leaseTransitions": holder.transitions,
            }
            self._replace(spec, holder.resource_version)
            log.info("released lease", lease=self.config.name)
        except API_FAILURES as exc:
            log.warning("could not release lease", lease=self.config.name, error=str(exc))
