"""Stage: dispatch — an I/O edge (the Kubernetes API). A Node's patching lifecycle on the API:
cordon, drain through the Eviction API, record each step in annotations, wait for a reboot,
uncordon. Every change to the Node is a merge patch applied only to the version it was computed
from; a conflict (409) reads the Node again and recomputes, so a concurrent change (a label, an
administrator's cordon) is never overwritten. Decides nothing about patches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from reconciler.api.times import utc_stamp
from reconciler.dispatch.base import AgentFailed
from reconciler.dispatch.nodes.model import (
    ANNOTATION_AGENT_BOOT_ID,
    ANNOTATION_BOOT_ID,
    ANNOTATION_CORDONED,
    ANNOTATION_JOB,
    ANNOTATION_PHASE,
    ANNOTATION_SEEN_DOWN,
    ANNOTATION_SINCE,
    EVICT,
    REFUSE,
    WAIT,
    Fence,
    NodeSettings,
    NodeState,
    boot_id,
    clear_state_patch,
    drain_disposition,
    eviction_body,
    node_ready,
    node_state,
    pod_key,
    rebooted,
    unfenced,
    unschedulable,
)
from reconciler.kube import ApiException, JsonObject, Kube, status_message

NODES = "/api/v1/nodes"
CONFLICT_RETRIES = 10
MAX_BACKOFF = 30.0


def node_path(name: str) -> str:
    return f"{NODES}/{quote(name)}"


def _now() -> str:
    return utc_stamp(datetime.now(UTC))


def read_node(kube: Kube, name: str) -> JsonObject:
    node = kube.get(node_path(name))
    if node is None:
        raise AgentFailed("NodeNotFound", f"node {name} does not exist")
    return node


def update_node(
    kube: Kube, name: str, change: Callable[[JsonObject], dict[str, Any] | None]
) -> JsonObject:
    """Apply ``change(node)`` (a merge patch, or None for nothing to do) to the Node as it is
    now, only if it is still that version; on a conflict read it again and ask again."""
    for _ in range(CONFLICT_RETRIES):
        node = read_node(kube, name)
        patch = change(node)
        if patch is None:
            return node
        patch.setdefault("metadata", {})["resourceVersion"] = node["metadata"]["resourceVersion"]
        try:
            return kube.merge_patch(node_path(name), patch)
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise AgentFailed("Conflict", f"node {name} kept changing under {CONFLICT_RETRIES} updates")


def cordon(kube: Kube, name: str) -> NodeState:
    """Cordon the node and record that (phase ``cordoned``) in one patch. The node is marked
    cordoned-by-patchwarden only when it was schedulable: an administrator's cordon stays."""

    def change(node: JsonObject) -> dict[str, Any]:
        ours = not unschedulable(node)
        notes: dict[str, Any] = {ANNOTATION_PHASE: "cordoned", ANNOTATION_SINCE: _now()}
        if ours:
            notes[ANNOTATION_CORDONED] = "true"
        return {"metadata": {"annotations": notes}, "spec": {"unschedulable": True}}

    return node_state(update_node(kube, name, change))


def set_phase(kube: Kube, name: str, phase: str, **notes: str) -> JsonObject:
    """Record the next step before it starts (``job=``, ``boot_id=`` add those annotations)."""
    extra = {
        {"job": ANNOTATION_JOB, "boot_id": ANNOTATION_BOOT_ID}[key]: value
        for key, value in notes.items()
    }
    notes_now = {ANNOTATION_PHASE: phase, ANNOTATION_SINCE: _now(), **extra}
    return update_node(kube, name, lambda _node: {"metadata": {"annotations": dict(notes_now)}})


def start_patching(kube: Kube, name: str, job: str, agent_boot_id: str = "") -> JsonObject:
    """Record phase ``patching`` (the Job, and the boot ID before it), only if the node is still
    cordoned and draining as this drain left it. Someone who uncordoned it meanwhile (an
    administrator, or a new leader's resume_nodes after this replica lost its Lease) must not
    see an install, and perhaps a reboot, on a node that takes pods again: AgentFailed."""

    def change(node: JsonObject) -> dict[str, Any]:
        if node_state(node).phase != "draining" or not unschedulable(node):
            raise AgentFailed(
                "NodeChanged",
                f"node {name} was uncordoned or its patching state cleared during the drain; "
                "not patching it",
            )
        notes = {
            ANNOTATION_PHASE: "patching",
            ANNOTATION_SINCE: _now(),
            ANNOTATION_JOB: job,
            ANNOTATION_BOOT_ID: boot_id(node),
        }
        if agent_boot_id:  # a node without bootID: the agent's own, read just before
            notes[ANNOTATION_AGENT_BOOT_ID] = agent_boot_id
        return {"metadata": {"annotations": notes}}

    return update_node(kube, name, change)


def uncordon(kube: Kube, name: str, *, job: str | None = None) -> bool:
    """Clear the state annotations, and uncordon the node if (and only if) we cordoned it; says
    whether it was uncordoned. With ``job``: only while the node is still patching with that
    Job (a rollback must not undo a step someone else has recorded since, such as a reboot)."""
    done = False

    def change(node: JsonObject) -> dict[str, Any] | None:
        nonlocal done
        state = node_state(node)
        notes = (node.get("metadata") or {}).get("annotations") or {}
        if not any(key in notes for key in clear_state_patch()["metadata"]["annotations"]):
            return None
        if job is not None and (state.phase, state.job) != ("patching", job):
            return None
        patch = clear_state_patch()
        done = state.cordoned_by_us
        if done:
            patch["spec"] = {"unschedulable": None}
        return patch

    update_node(kube, name, change)
    return done


# --- drain -------------------------------------------------------------------------------------


def _pods_on(kube: Kube, name: str) -> list[JsonObject]:
    listing = kube.request(
        "GET", "/api/v1/pods", query=[("fieldSelector", f"spec.nodeName={name}")]
    )
    items: list[JsonObject] = listing.get("items") or []
    return items


def _evict(kube: Kube, pod: Mapping[str, Any], settings: NodeSettings) -> str | None:
    """Evict one pod: None when it is evicted (or already gone), else why the API refused."""
    meta = pod.get("metadata") or {}
    path = f"/api/v1/namespaces/{quote(meta['namespace'])}/pods/{quote(meta['name'])}/eviction"
    body = eviction_body(pod, kube.eviction_version(), settings.eviction_grace_seconds)
    try:
        kube.create(path, body)
    except ApiException as exc:
        if exc.status == 404:
            return None  # gone already
        if exc.status == 409:
            return None  # the UID precondition failed: that pod is gone, another took its name
        if exc.status in (429, 500):
            # 429: a PodDisruptionBudget does not allow it now; 500: more than one PDB covers
            # the pod, which the API never allows. Both are retried until the drain timeout.
            return _refusal(exc)
        raise
    return None


def _refusal(exc: ApiException) -> str:
    message = status_message(exc)
    try:
        causes = json.loads(exc.body or "{}").get("details", {}).get("causes") or []
    except (TypeError, ValueError, AttributeError):
        causes = []
    reasons = [str(c.get("message")) for c in causes if c.get("message")]
    return "; ".join([message, *reasons])


def drain(kube: Kube, name: str, settings: NodeSettings, *, fence: Fence = unfenced) -> list[str]:
    """Evict every pod the drain concerns and wait until they are gone; returns the evicted
    pods (namespace/name). AgentFailed (DrainRefused, DrainTimeout) names the pods that stopped
    it and why; the caller puts the node back. ``fence(step)`` runs before every round of
    evictions and of waiting (it raises once this process may not act any more)."""
    deadline = time.monotonic() + settings.drain_timeout
    keep = frozenset(settings.keep_pods)
    pending: dict[str, JsonObject] = {}
    leaving: dict[str, str] = {}  # namespace/name -> uid, for pods we wait to see gone
    refused: list[str] = []
    for pod in _pods_on(kube, name):
        action, why = drain_disposition(pod, keep, settings.evict_unmanaged_pods)
        if action == EVICT:
            pending[pod_key(pod)] = pod
        elif action == WAIT:
            leaving[pod_key(pod)] = str(pod["metadata"].get("uid"))
        elif action == REFUSE:
            refused.append(f"{pod_key(pod)} ({why})")
    if refused:
        raise AgentFailed(
            "DrainRefused",
            f"node {name}: not drained, these pods would be lost: {', '.join(refused)}; "
            "give them a controller or set evictUnmanagedPods",
        )
    delay = settings.poll_seconds
    blocked: dict[str, str] = {}
    while pending:
        fence("evicting pods")
        for key, pod in list(pending.items()):
            refusal = _evict(kube, pod, settings)
            if refusal is None:
                leaving[key] = str(pod["metadata"].get("uid"))
                del pending[key]
                blocked.pop(key, None)
            else:
                blocked[key] = refusal
        if not pending:
            break
        if time.monotonic() + delay > deadline:
            detail = "; ".join(f"{key}: {blocked[key]}" for key in sorted(blocked))
            raise AgentFailed(
                "DrainTimeout",
                f"node {name}: eviction refused for {settings.drain_timeout:.0f}s, "
                f"blocked by a PodDisruptionBudget: {detail}",
                {"pods": sorted(blocked)},
            )
        time.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF)
    _wait_gone(kube, name, leaving, deadline, settings, fence)
    return sorted(leaving)


def _wait_gone(
    kube: Kube,
    name: str,
    leaving: Mapping[str, str],
    deadline: float,
    settings: NodeSettings,
    fence: Fence,
) -> None:
    """Wait until none of ``leaving`` (the same pod, by UID) is on the node any more."""
    while True:
        fence("waiting for evicted pods")
        present = {pod_key(p): str(p["metadata"].get("uid")) for p in _pods_on(kube, name)}
        still = sorted(key for key, uid in leaving.items() if present.get(key) == uid)
        if not still:
            return
        if time.monotonic() >= deadline:
            raise AgentFailed(
                "DrainTimeout",
                f"node {name}: evicted pods still terminating after "
                f"{settings.drain_timeout:.0f}s: {', '.join(still)}",
                {"pods": still},
            )
        time.sleep(min(settings.poll_seconds, max(0.0, deadline - time.monotonic())))


# --- reboot ------------------------------------------------------------------------------------


def wait_rebooted(
    kube: Kube, name: str, before: str | None, timeout: float, *, fence: Fence = unfenced
) -> bool:
    """Wait until the node is Ready with a boot ID other than ``before``."""

    def back(node: JsonObject | None) -> bool:
        fence("waiting for the reboot")
        return rebooted(node, before)

    node = kube.wait(NODES, name, back, time.monotonic() + max(0.0, timeout))
    return rebooted(node, before)


def mark_down(kube: Kube, name: str) -> None:
    """Record that a rebooting node without bootID was seen NotReady (the first half of seeing
    it reboot; a new leader reads it from here)."""

    def change(node: JsonObject) -> dict[str, Any] | None:
        if node_state(node).phase != "rebooting":
            return None  # finished or rolled back meanwhile: nothing to note
        return {"metadata": {"annotations": {ANNOTATION_SEEN_DOWN: "true"}}}

    update_node(kube, name, change)


def wait_down_and_up(
    kube: Kube, name: str, seen_down: bool, deadline: float, *, fence: Fence = unfenced
) -> bool:
    """Wait (until the monotonic ``deadline``) for a node without bootID to go NotReady, which
    is recorded, unless ``seen_down`` already, and then Ready again; whether it did."""

    def down(node: JsonObject | None) -> bool:
        fence("waiting for the reboot")
        return node is not None and not node_ready(node)

    def up(node: JsonObject | None) -> bool:
        fence("waiting for the reboot")
        return node is not None and node_ready(node)

    if not seen_down:
        if not down(kube.wait(NODES, name, down, deadline)):
            return False
        mark_down(kube, name)
    return up(kube.wait(NODES, name, up, deadline))
