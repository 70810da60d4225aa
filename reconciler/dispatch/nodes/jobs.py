"""Stage: dispatch — an I/O edge (the Kubernetes API). One agent run as a batch/v1 Job pinned to
a node: created under a deterministic name (or attached to when it already runs), watched until
it finishes, its document read from the ConfigMap the node-agent wrapper writes, then both
removed. Decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from reconciler.dispatch.base import AgentFailed
from reconciler.dispatch.nodes.model import (
    Fence,
    NodeSettings,
    document_of,
    job_failure,
    job_finished,
    job_manifest,
    unfenced,
)
from reconciler.kube import ApiException, JsonObject, Kube

RESULT_GRACE = 30.0
"""Seconds a finished Job's ConfigMap may lag behind it (the wrapper writes it before exiting,
so this only covers a slow API)."""
FRESH = ("scan", "bootid")
"""Operations whose finished Job is stale: what they read must be read now."""
DEADLINE_GRACE = 60.0
"""Seconds we wait beyond the Job's own activeDeadlineSeconds for the Job controller to fail
it, before giving up ourselves."""


def jobs_path(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs"


def configmap_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}"


def start(
    kube: Kube,
    name: str,
    operation: str,
    node: str,
    args: Sequence[str],
    settings: NodeSettings,
) -> bool:
    """Make sure the Job ``name`` exists; True when we created it, False when we attach to one
    already there (an install is never started twice). A scan or boot-id Job found finished is
    stale (its result would be old) and is run again."""
    collection = jobs_path(settings.namespace)
    existing = kube.get(f"{collection}/{quote(name)}")
    if existing is not None and operation.lower() in FRESH and job_finished(existing):
        remove(kube, name, settings)
        existing = None
    if existing is not None:
        return False
    # No Job of this name: any ConfigMap of that name is left over from a crash, not a result.
    kube.delete(configmap_path(settings.namespace, name))
    try:
        kube.create(collection, job_manifest(name, operation, node, args, settings))
    except ApiException as exc:
        if exc.status == 409:
            return False  # created in between by another run: attach to it
        raise
    return True


def collect(
    kube: Kube,
    name: str,
    node: str,
    settings: NodeSettings,
    *,
    fence: Fence = unfenced,
) -> dict[str, Any]:
    """Wait for the Job to finish and return the agent's document (AgentFailed: the agent's
    error, a failed or vanished Job, or no result within the Job's deadline). ``fence(step)``
    runs at every change seen, and ends the wait by raising."""
    collection = jobs_path(settings.namespace)
    deadline = time.monotonic() + settings.job_timeout + DEADLINE_GRACE

    def finished(job: JsonObject | None) -> bool:
        fence("waiting for the install Job")
        return job is None or job_finished(job) is not None

    job = kube.wait(collection, name, finished, deadline)
    if job is not None and job_finished(job) is None:
        raise AgentFailed(
            "Timeout", f"node {node}: Job {name} did not finish within {settings.job_timeout:.0f}s"
        )
    configmap = _result(
        kube, name, settings, wait=job is not None and job_finished(job) == "Complete"
    )
    if configmap is not None:
        return document_of(configmap, node)
    if job is None:
        raise AgentFailed("JobLost", f"node {node}: Job {name} was deleted before it reported")
    if job_finished(job) == "Failed":
        raise AgentFailed("JobFailed", f"node {node}: Job {name} failed: {job_failure(job)}")
    raise AgentFailed(
        "NoResult", f"node {node}: Job {name} completed without writing its result ConfigMap"
    )


def _result(kube: Kube, name: str, settings: NodeSettings, *, wait: bool) -> JsonObject | None:
    path = configmap_path(settings.namespace, name)
    deadline = time.monotonic() + (RESULT_GRACE if wait else 0.0)
    while True:
        configmap = kube.get(path)
        if configmap is not None or time.monotonic() >= deadline:
            return configmap
        time.sleep(min(1.0, settings.poll_seconds))


def remove(kube: Kube, name: str, settings: NodeSettings) -> None:
    """Delete the Job (its pod with it, in the background) and its result ConfigMap."""
    kube.delete(f"{jobs_path(settings.namespace)}/{quote(name)}", propagation="Background")
    kube.delete(configmap_path(settings.namespace, name))


def run(
    kube: Kube, operation: str, node: str, args: Sequence[str], settings: NodeSettings, name: str
) -> dict[str, Any]:
    """Start (or attach to) the Job, collect its document, remove it."""
    try:
        start(kube, name, operation, node, args, settings)
        return collect(kube, name, node, settings)
    finally:
        remove(kube, name, settings)
