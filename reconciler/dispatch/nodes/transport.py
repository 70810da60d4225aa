"""Stage: dispatch — an I/O edge (the Kubernetes API). The ``kubernetes`` transport: a Node is
a machine; the agent runs in a Job pinned to it. An install cordons and drains the node, runs
the install Job, waits for the reboot the agent started (when it did), and uncordons the node.
Each step is recorded on the Node before it starts, so ``resume_nodes`` can finish or roll back
whatever a controller that died mid-way left behind. Decides nothing about patches.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import structlog

from reconciler.api.enums import Operation
from reconciler.api.hooks import HookCommand, StageRun
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.dispatch.base import (
    AgentFailed,
    BaselineSource,
    InstallRequest,
    boot_id_of,
    install_args,
    install_result_of,
    inventory_of,
    scan_args,
)
from reconciler.dispatch.nodes import drain, jobs
from reconciler.dispatch.nodes.model import (
    ANNOTATION_NODE,
    BOOT_ID_OPERATION,
    COMPONENT,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    NodeSettings,
    NodeState,
    NotLeading,
    back_without_boot_id,
    boot_id,
    document_of,
    job_finished,
    job_name,
    node_ready,
    node_state,
    rebooted,
)
from reconciler.kube import ApiClient, ApiException, JsonObject, Kube, status_message

_log = structlog.get_logger("patchwarden")
_REFUSED = (400, 403, 422)
"""Answers that say the Job was not created (bad Job settings, RBAC), so no install runs."""


class NodeLocks:
    """One operation per node at a time, which nodes are being worked on, and whether this
    process may still act on nodes at all. Every transport of a process and its
    ``resume_nodes`` must share one (the loop never asks for two operations on a node; this
    keeps two callers from reading and removing each other's Job, and resume from rolling back
    a node a transport is patching)."""

    def __init__(self, may_act: Callable[[], bool] = lambda: True) -> None:
        """``may_act``: whether this process still leads (the controller's Lease); checked
        before every step on a node, so that a replica that lost the Lease starts none."""
        self._locks: dict[str, threading.Lock] = {}
        self._active: set[str] = set()
        self._registry = threading.Lock()
        self.may_act = may_act

    def fence(self, node: str, step: str) -> None:
        """Raise NotLeading, before ``step`` on ``node``, once this process may not act."""
        if not self.may_act():
            _log.warning("not leading: leaving the node to the new leader", node=node, before=step)
            raise NotLeading(node, step)

    @contextlib.contextmanager
    def holding(self, node: str) -> Iterator[None]:
        with self._registry:
            lock = self._locks.setdefault(node, threading.Lock())
        with lock:
            with self._registry:
                self._active.add(node)
            try:
                yield
            finally:
                with self._registry:
                    self._active.discard(node)

    def busy(self, node: str | None) -> bool:
        """Whether a transport sharing these locks is working on ``node`` now."""
        with self._registry:
            return node in self._active


PROCESS_LOCKS = NodeLocks()
"""The locks of callers that give none: one set per process, so that they still exclude each
other (a program wiring its parts itself passes its own to every transport and to resume)."""


@contextlib.contextmanager
def _api_errors(node: str) -> Iterator[None]:
    """An API failure is this job's failure, said in the API's words."""
    try:
        yield
    except ApiException as exc:
        raise AgentFailed(
            "KubernetesApiError", f"node {node}: {exc.status}: {status_message(exc)}"
        ) from None


def _no_hooks(node: str) -> AgentFailed:
    # A node's agent runs in a Job's pod: hooks there are not built yet, and must not be
    # accepted and then skipped.
    return AgentFailed(
        "HooksUnsupported",
        f"node {node}: hooks and command health checks do not run on Kubernetes nodes yet; "
        "use http health checks, or remove them from the window task",
    )


class NodeTransport:
    """Runs the agent on the Kubernetes Node ``node`` (see docs/nodes.md). Blocking; safe to
    use from threads (one install per node at a time in a process)."""

    def __init__(
        self,
        api_client: ApiClient,
        node: str,
        settings: NodeSettings = NodeSettings(),  # noqa: B008 - frozen value
        locks: NodeLocks | None = None,
    ) -> None:
        """``locks``: shared with the caller's other node transports and ``resume_nodes``."""
        self.kube = Kube(api_client)
        self.node = node
        self.settings = settings
        self.locks = locks or PROCESS_LOCKS

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        args = scan_args(instance_id or self.node, refresh, sources)
        name = job_name(Operation.SCAN, self.node, args)
        with _api_errors(self.node), self.locks.holding(self.node):
            self._require_ready(drain.read_node(self.kube, self.node))
            self._fence("creating the scan Job")
            document = jobs.run(self.kube, Operation.SCAN, self.node, args, self.settings, name)
            return inventory_of(document)

    def install(self, request: InstallRequest) -> InstallResult:
        if request.hooked:
            raise _no_hooks(self.node)
        args = install_args(request)
        name = job_name(Operation.INSTALL, self.node, args)
        with _api_errors(self.node), self.locks.holding(self.node):
            if request.simulate:  # changes nothing: no reason to disturb the node's pods
                self._require_ready(drain.read_node(self.kube, self.node))
                self._fence("creating the simulated install Job")
                document = jobs.run(
                    self.kube, Operation.INSTALL, self.node, args, self.settings, name
                )
            else:
                document = self._patch(name, args)
        # Read only once the node is back in service: an unreadable result fails the job, it
        # must not also leave the node cordoned.
        return install_result_of(document)

    def run_stage(self, stage: str, commands: Sequence[HookCommand]) -> StageRun:
        raise _no_hooks(self.node)

    # -- the node's lifecycle ------------------------------------------------------------------

    def _patch(self, name: str, args: Sequence[str]) -> dict[str, Any]:
        kube, node, settings = self.kube, self.node, self.settings
        current = drain.read_node(kube, node)
        state = node_state(current)
        if state.phase is not None and not (state.phase == "patching" and state.job == name):
            raise AgentFailed(
                "NodeBusy",
                f"node {node} is still in phase {state.phase!r} of an earlier run "
                f"(job {state.job or '-'}); resume_nodes finishes it first",
            )
        if state.phase is None:  # a fresh start; otherwise attach to the same install
            self._require_ready(current)
            self._prepare(name)
        try:
            self._fence("creating the install Job")
            try:
                jobs.start(kube, name, Operation.INSTALL, node, args, settings)
            except ApiException as exc:
                if exc.status in _REFUSED:  # no Job exists: roll back now, not a pass later
                    raise AgentFailed(
                        "KubernetesApiError", f"node {node}: {exc.status}: {status_message(exc)}"
                    ) from None
                raise  # the Job may exist: resume_nodes finds out
            document = jobs.collect(kube, name, node, settings, fence=self._fence)
        except AgentFailed:
            # Nothing more will run on the node: put it back as it was, unless another run
            # (a new leader attached to the same Job) has moved it on to rebooting meanwhile,
            # or this process no longer leads (the new leader's resume_nodes does it then).
            self._fence("rolling back")
            jobs.remove(kube, name, settings)
            drain.uncordon(kube, node, job=name)
            raise
        return self._after(name, document)

    def _back(self, before: NodeState) -> bool:
        """Wait for the node to come back from the reboot ``before`` recorded: Ready with a new
        bootID, or, where the kubelet reports none, NotReady then Ready and the agent's boot id
        changed (a NotReady that was no reboot is waited past)."""
        kube, node, timeout = self.kube, self.node, self.settings.reboot_timeout
        if before.boot_id:
            return drain.wait_rebooted(kube, node, before.boot_id, timeout, fence=self._fence)
        deadline = time.monotonic() + max(0.0, timeout)
        seen_down = before.seen_down
        while drain.wait_down_and_up(kube, node, seen_down, deadline, fence=self._fence):
            current = drain.read_node(kube, node)
            if back_without_boot_id(current, node_state(current), self._agent_boot_id()):
                return True
            seen_down = False  # Ready again without a reboot: wait for the real one
        return False

    def _agent_boot_id(self) -> str:
        return agent_boot_id(self.kube, self.node, self.settings)

    def _fence(self, step: str) -> None:
        """NotLeading before ``step`` once this process lost the leader Lease."""
        self.locks.fence(self.node, step)

    def _require_ready(self, node: JsonObject) -> None:
        """A node that is not Ready would never run the Job: say so now, before disturbing it,
        rather than after the Job's deadline."""
        if not node_ready(node):
            raise AgentFailed("NodeNotReady", f"node {self.node} is not Ready")

    def _prepare(self, name: str) -> None:
        """Cordon, drain, and record the boot ID and the Job before it is created: the agent may
        reboot the host any time after it starts."""
        kube, node, settings = self.kube, self.node, self.settings
        self._fence("cordoning")
        drain.cordon(kube, node)
        try:
            self._fence("draining")
            drain.set_phase(kube, node, "draining")
            drain.drain(kube, node, settings, fence=self._fence)
            # Without a bootID from the kubelet, the agent's own boot id tells a reboot apart.
            agent_boot = "" if boot_id(drain.read_node(kube, node)) else self._agent_boot_id()
            self._fence("recording the install Job")
            drain.start_patching(kube, node, name, agent_boot)
        except BaseException:
            self._fence("rolling back the cordon")  # a new leader rolls it back then
            drain.uncordon(kube, node)  # no Job was created: roll back
            raise

    def _after(self, name: str, document: dict[str, Any]) -> dict[str, Any]:
        kube, node, settings = self.kube, self.node, self.settings
        reboot = document.get("reboot") or {}
        self._fence("finishing the install")  # the new leader reads the Job's result itself
        if reboot.get("performed"):
            before = node_state(drain.set_phase(kube, node, "rebooting"))
            jobs.remove(kube, name, settings)
            if not self._back(before):
                # Left cordoned and recorded: resume_nodes uncordons it once it is back.
                raise AgentFailed(
                    "RebootTimeout",
                    f"node {node} did not come back Ready with a new boot ID within "
                    f"{settings.reboot_timeout:.0f}s after the reboot; it stays cordoned until "
                    "it does (resume_nodes uncordons it then)",
                )
        else:
            jobs.remove(kube, name, settings)
        self._fence("uncordoning")
        drain.uncordon(kube, node)
        return document


# --- after a restart --------------------------------------------------------------------------


def resume_nodes(
    api_client: ApiClient,
    settings: NodeSettings = NodeSettings(),  # noqa: B008 - frozen value
    locks: NodeLocks | None = None,
) -> list[str]:
    """Finish or roll back what a controller that stopped mid-way left on Nodes, without
    waiting: nodes cordoned or draining are put back; a node patching keeps its Job running (a
    later call reads its result); a node rebooting is uncordoned once it is Ready with a new
    boot ID. Returns the nodes whose patching state was cleared (and, if we cordoned them,
    uncordoned) by this call. Nodes a transport of this process works on are left alone.
    Result ConfigMaps of Nodes that no longer exist, whose Job is gone too, are deleted (no
    Node's annotations name them any more, so nothing else would).

    Call it when the controller starts (after winning leader election) and on every pass, with
    the ``locks`` its transports share."""
    kube = Kube(api_client)
    locks = locks or PROCESS_LOCKS
    finished: list[str] = []
    if not locks.may_act():
        return finished  # a replica that lost the Lease leaves the nodes to the new leader
    listing = kube.request("GET", drain.NODES)
    nodes = {str(node["metadata"]["name"]) for node in listing.get("items") or []}
    try:
        _remove_orphaned_results(kube, nodes, settings, locks)
    except ApiException as exc:  # e.g. an older chart's RBAC without `list`: not worth stopping
        _log.warning("orphaned result ConfigMaps not removed", error=str(exc))
    for node in listing.get("items") or []:
        name = str(node["metadata"]["name"])
        state = node_state(node)
        if state.phase is None:
            continue
        if locks.busy(name):
            continue
        try:
            if _resume(kube, node, state, settings):
                finished.append(name)
        except (AgentFailed, ApiException) as exc:  # one node's trouble must not stall the rest
            _log.warning("node not resumed", node=name, phase=state.phase, error=str(exc))
    return finished


def _remove_orphaned_results(
    kube: Kube, nodes: set[str], settings: NodeSettings, locks: NodeLocks
) -> None:
    """Delete the agents' result ConfigMaps left by a crash for Nodes deleted since: neither the
    Node (gone) nor the Job (gone) can lead anyone to them. A live Node's result is its resume's
    business, and a ConfigMap whose Job still exists is still to be read."""
    path = f"/api/v1/namespaces/{quote(settings.namespace)}/configmaps"
    selector = f"{LABEL_COMPONENT}={COMPONENT},{LABEL_MANAGED_BY}=patchwarden"
    listing = kube.request("GET", path, query=[("labelSelector", selector)])
    for configmap in listing.get("items") or []:
        meta = configmap["metadata"]
        node = (meta.get("annotations") or {}).get(ANNOTATION_NODE)
        if not node or node in nodes or locks.busy(node):
            continue
        name = str(meta["name"])
        if kube.get(f"{jobs.jobs_path(settings.namespace)}/{quote(name)}") is not None:
            continue
        kube.delete(jobs.configmap_path(settings.namespace, name))
        _log.info("removed an orphaned result ConfigMap", configmap=name, node=node)


def _resume(kube: Kube, node: JsonObject, state: NodeState, settings: NodeSettings) -> bool:
    name = str(node["metadata"]["name"])
    if state.phase == "patching" and state.job:
        job = kube.get(f"{jobs.jobs_path(settings.namespace)}/{state.job}")
        if job is not None and job_finished(job) is None:
            return False  # still installing; its activeDeadlineSeconds bounds this
        configmap = kube.get(jobs.configmap_path(settings.namespace, state.job))
        try:
            document = document_of(configmap, name) if configmap is not None else {}
        except AgentFailed:
            document = {}
        performed = bool((document.get("reboot") or {}).get("performed"))
        if performed or (configmap is None and boot_id(node) not in ("", state.boot_id)):
            drain.set_phase(kube, name, "rebooting")
            state = NodeState("rebooting", state.job, state.cordoned_by_us, state.boot_id, None)
    if state.phase == "rebooting" and not _back_now(kube, node, state, settings):
        return False
    if state.job:
        jobs.remove(kube, state.job, settings)
    drain.uncordon(kube, name)
    return True


def _back_now(kube: Kube, node: JsonObject, state: NodeState, settings: NodeSettings) -> bool:
    """Whether the rebooting ``node`` is back now; for a node without bootID, a NotReady seen
    is recorded, and once it is Ready again the agent's boot id is read (a Job)."""
    if state.boot_id:
        return rebooted(node, state.boot_id)
    name = str(node["metadata"]["name"])
    if not node_ready(node):
        if not state.seen_down:
            drain.mark_down(kube, name)
        return False
    return state.seen_down and back_without_boot_id(
        node, state, agent_boot_id(kube, name, settings)
    )


def agent_boot_id(kube: Kube, node: str, settings: NodeSettings) -> str:
    """The boot id the agent reads on the node's host (a short Job running ``boot-id``)."""
    args = ["boot-id"]
    name = job_name(BOOT_ID_OPERATION, node, args)
    return boot_id_of(jobs.run(kube, BOOT_ID_OPERATION, node, args, settings, name))
