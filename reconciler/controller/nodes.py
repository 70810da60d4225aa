"""Stage: controller. Every Node is an instance: each selected Node is mirrored into a
ManagedInstance of the same name in the controller's namespace.

A mirror has ``spec.connection: {type: kubernetes, node: NAME}``, the Node's labels (its tags,
which patch groups and windows select) plus ``patchwarden.io/node: NAME``, and an owner reference
to the controller's Deployment when it runs in one (``owner``: the garbage collector removes the
mirrors with the release; an object goes only once every owner has, so the Node is then not an
owner too), else to the Node so Kubernetes' garbage collector removes it with the Node. The
controller also deletes mirrors of Nodes that are gone or no longer selected itself: the
collector may not run (or lag), and a stale instance would be scanned forever. A
ManagedInstance a user wrote under a Node's name is never touched (nor given an owner). Only
mirrors' labels and owners are kept in step; a Node's status (heartbeats) is ignored.

I/O against the Kubernetes API; the decisions (:func:`mirror_of`, :func:`changes`) are pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog

from reconciler.api.resources import API_VERSION
from reconciler.controller.owner import owner_reference
from reconciler.kube import ApiClient, ApiException, Kube, resource_path
from reconciler.sources.kubernetes import NODE_LABEL

log = structlog.get_logger("patchwarden")


def mirror_of(
    node: Mapping[str, Any], namespace: str, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ManagedInstance that stands for ``node`` (a Node as the API's JSON), owned by
    ``owner`` (an ownerReference) or else by the Node."""
    metadata = node["metadata"]
    name = metadata["name"]
    node_owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": metadata["uid"]}
    return {
        "apiVersion": API_VERSION,
        "kind": "ManagedInstance",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**(metadata.get("labels") or {}), NODE_LABEL: name},
            "ownerReferences": [dict(owner) if owner else node_owner],
        },
        "spec": {
            "connection": {"type": "kubernetes", "node": name},
            "description": f"Node {name} (mirrored by the Patchwarden controller)",
        },
    }


@dataclass(frozen=True)
class Changes:
    """What to do to the mirrors."""

    create: list[dict[str, Any]] = field(default_factory=list)
    relabel: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    """(name, labels, resourceVersion) of mirrors whose Node's labels changed."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(name, uid) of mirrors whose Node is gone."""
    skipped: list[str] = field(default_factory=list)
    """Nodes whose name a user's ManagedInstance already has."""
    reown: list[tuple[str, list[dict[str, Any]], str]] = field(default_factory=list)
    """(name, ownerReferences, resourceVersion) of mirrors owned otherwise (an older
    controller's, owned by the Node)."""


def changes(
    nodes: list[Mapping[str, Any]],
    instances: list[Mapping[str, Any]],
    namespace: str,
    owner: Mapping[str, Any] | None = None,
) -> Changes:
    """Compare the selected Nodes with the namespace's ManagedInstances."""
    result = Changes()
    by_name = {i["metadata"]["name"]: i for i in instances}
    wanted = {n["metadata"]["name"]: n for n in nodes}
    for name, node in sorted(wanted.items()):
        mirror = mirror_of(node, namespace, owner)
        existing = by_name.get(name)
        if existing is None:
            result.create.append(mirror)
            continue
        if not _is_mirror(existing):
            result.skipped.append(name)
            continue
        version = existing["metadata"].get("resourceVersion", "")
        if (existing["metadata"].get("labels") or {}) != mirror["metadata"]["labels"]:
            result.relabel.append((name, mirror["metadata"]["labels"], version))
        owners = mirror["metadata"]["ownerReferences"]
        if [
            owner_reference(r) for r in existing["metadata"].get("ownerReferences") or []
        ] != owners:
            result.reown.append((name, owners, version))
    for name, instance in sorted(by_name.items()):
        if _is_mirror(instance) and name not in wanted:
            result.delete.append((name, instance["metadata"].get("uid", "")))
    return result


def _is_mirror(instance: Mapping[str, Any]) -> bool:
    return NODE_LABEL in (instance["metadata"].get("labels") or {})


class NodeMirror:
    """Keeps the mirrors of one namespace in step with the cluster's Nodes."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        node_selector: str = "",
        owner: Mapping[str, Any] | None = None,
    ) -> None:
        """``owner``: the ownerReference of the mirrors (the controller's Deployment), else the
        Node's."""
        self.kube = Kube(api)
        self.namespace = namespace
        self.node_selector = node_selector
        self.owner = owner
        self.collection = resource_path(namespace, "ManagedInstance")
        self._warned: set[str] = set()

    def sync(self) -> Changes:
        """Create, relabel and delete mirrors; return what was done. A 404 or 409 means another
        writer got there first: the next pass sees the outcome."""
        query = [("labelSelector", self.node_selector)] if self.node_selector else []
        nodes = self.kube.request("GET", "/api/v1/nodes", query=query).get("items") or []
        instances = self.kube.request("GET", self.collection).get("items") or []
        todo = changes(nodes, instances, self.namespace, self.owner)
        for name in todo.skipped:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "node not mirrored: a ManagedInstance of that name already exists", node=name
                )
        for body in todo.create:
            with _tolerating(409):
                self.kube.create(self.collection, body)
        for name, labels, version in todo.relabel:
            with _tolerating(404, 409):
                self._relabel(name, labels, version)
        for name, owners, version in todo.reown:
            with _tolerating(404, 409):
                # A merge patch replaces the whole list; the resourceVersion guards a mirror the
                # relabel above (or anyone) changed meanwhile: the next pass tries again.
                path = f"{self.collection}/{quote(name)}"
                self.kube.merge_patch(
                    path, {"metadata": {"ownerReferences": owners, "resourceVersion": version}}
                )
        for name, uid in todo.delete:
            with _tolerating(404, 409):
                self.kube.request(
                    "DELETE",
                    f"{self.collection}/{quote(name)}",
                    body={"preconditions": {"uid": uid}} if uid else None,
                )
        return todo

    def _relabel(self, name: str, labels: dict[str, str], version: str) -> None:
        path = f"{self.collection}/{quote(name)}"
        current = self.kube.request("GET", path)
        # A merge patch cannot drop a label by leaving it out: name the removed ones as null.
        update: dict[str, str | None] = dict(labels)
        for key in current["metadata"].get("labels") or {}:
            update.setdefault(key, None)
        self.kube.merge_patch(path, {"metadata": {"labels": update, "resourceVersion": version}})


@contextmanager
def _tolerating(*statuses: int) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        if exc.status not in statuses:
            raise
