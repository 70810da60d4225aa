"""Stage: controller. What the controller's own objects belong to: the Deployment that runs it,
found from its pod (the downward API's ``POD_NAME``/``POD_NAMESPACE``: pod -> ReplicaSet ->
Deployment). The Lease and the Node mirrors it creates carry that Deployment as their owner, so
Kubernetes' garbage collector removes them with the release (``helm uninstall``); nothing the
controller did not create ever gets an owner here, so a user's own ManagedInstance is never
collected. I/O against the Kubernetes API (reads only); may not write anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import structlog

from reconciler.kube import API_FAILURES, ApiClient, Kube

log = structlog.get_logger("patchwarden")

OwnerReference = dict[str, Any]


def _controller_of(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The ownerReference of ``obj``'s controller when it is a ``kind``."""
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return dict(ref)
    return None


def owner_reference(ref: Mapping[str, Any]) -> OwnerReference:
    """A plain ownerReference to what ``ref`` names (also: a served one as the controller writes
    it, to compare): no ``controller`` (the object is ours, not a Deployment's to manage) and no
    ``blockOwnerDeletion`` (which needs the owner's finalizers permission, and would hold up the
    uninstall)."""
    return {k: ref[k] for k in ("apiVersion", "kind", "name", "uid")}


def own_deployment(api: ApiClient, namespace: str) -> OwnerReference | None:
    """The ownerReference to the Deployment running this process, or None when it runs in no
    pod, in a pod of another namespace (an owner must be in the dependents' namespace: one
    elsewhere counts as gone and the collector would delete them at once), in a pod no
    Deployment owns, or when the API refuses (logged: the objects then stay after an
    uninstall, as before)."""
    pod_name, pod_namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not pod_name or pod_namespace != namespace:
        return None
    kube = Kube(api)
    base = f"/api/v1/namespaces/{quote(namespace)}"
    try:
        replica_set = _controller_of(kube.get(f"{base}/pods/{quote(pod_name)}"), "ReplicaSet")
        if replica_set is None:
            return None
        path = f"/apis/apps/v1/namespaces/{quote(namespace)}/replicasets/"
        deployment = _controller_of(kube.get(path + quote(replica_set["name"])), "Deployment")
    except API_FAILURES as exc:
        log.warning(
            "own Deployment not found: the Lease and Node mirrors get no owner", error=str(exc)
        )
        return None
    return owner_reference(deployment) if deployment else None
