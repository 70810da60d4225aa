"""Stage: sources. Snapshots from the custom resources of one Kubernetes namespace.

:class:`KubernetesSource` lists the five kinds (PatchBaseline, PatchGroup, MaintenanceWindow,
ManagedInstance, ComplianceReport; namespaced, as ``crds/`` declares them) through
:mod:`reconciler.kube` and renders each object as one YAML document in a virtual file named
after it (``MaintenanceWindow/NAMESPACE/NAME.yaml``), so a refusal points at the object. The set
is judged by the one validation every source uses (:func:`reconciler.sources.base.validated`):
accepted whole or refused whole.

The revision is a digest of what the loader reads (kind, name, uid, generation, labels,
annotations, spec), so status writes, heartbeats and resourceVersion bumps never make a new
revision, while a delete-and-recreate does. :meth:`KubernetesSource.watch` only wakes the loop:
level-based, a wake means "read everything again".

I/O only (the Kubernetes API, through :mod:`reconciler.kube`); decides nothing. May import
``api``, ``defaults``, ``schedule``, ``kube`` and the other sources.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import yaml

from reconciler.api.resources import API_VERSION, KINDS, NAMES
from reconciler.api.snapshot import Problem, Snapshot
from reconciler.kube import API_FAILURES, ApiClient, ApiException, Collection, Kube, resource_path
from reconciler.kube.backoff import Backoff
from reconciler.sources.base import Files, Revision, RevisionInvalid, SourceError, validated
from reconciler.sources.directory import content_digest

log = structlog.get_logger("patchwarden")

NODE_LABEL = "patchwarden.io/node"
"""Marks a ManagedInstance the controller mirrors from the Node of that name."""

# kubectl apply keeps the whole previous object here: it repeats the spec and only adds noise.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_WATCH_SECONDS = 300  # a watch is re-opened this often (from the last resourceVersion)
_READS = 3  # a refused set is read again (up to this often) until two reads agree


@dataclass(frozen=True)
class ObjectInfo:
    """What the status writer needs of one listed object, besides the snapshot."""

    kind: str
    name: str
    uid: str
    generation: int
    resource_version: str
    status: Mapping[str, Any]
    path: str
    """The virtual file the object was rendered into (errors name it)."""


def object_path(kind: str, namespace: str, name: str) -> str:
    """The virtual file of one object: ``Kind/NAMESPACE/NAME.yaml``."""
    return f"{kind}/{namespace}/{name}.yaml"


def render(kind: str, item: Mapping[str, Any]) -> bytes:
    """The object as the loader reads it: no status and no server bookkeeping (resourceVersion,
    managedFields, timestamps), so only a change a user made changes the bytes."""
    metadata = item.get("metadata") or {}
    meta: dict[str, Any] = {"name": metadata.get("name"), "namespace": metadata.get("namespace")}
    if metadata.get("labels"):
        meta["labels"] = metadata["labels"]
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k != _LAST_APPLIED
    }
    if annotations:
        meta["annotations"] = annotations
    meta["uid"] = metadata.get("uid")
    if metadata.get("generation") is not None:
        meta["generation"] = metadata["generation"]
    document: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}
    if "spec" in item:
        document["spec"] = item["spec"]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()


@dataclass
class KubernetesSource:
    """The custom resources of ``namespace`` as a snapshot source (see :class:`~.base.Source`).

    After each :meth:`snapshot`, ``listing`` holds every object read, ``problems`` the reasons
    the set was refused (empty when accepted) and ``accepted`` the rendered files of the set in
    force, so status can say which objects are applied and which are not.
    """

    api: ApiClient
    namespace: str
    watch_nodes: bool = True
    node_selector: str = ""
    listing: dict[tuple[str, str], ObjectInfo] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    accepted: dict[tuple[str, str], bytes] = field(default_factory=dict)
    current: dict[tuple[str, str], bytes] = field(default_factory=dict)
    _wake: Callable[[], None] | None = field(default=None, repr=False)

    def fetch(self) -> tuple[Revision, Files]:
        """Every object of the five kinds, rendered; SourceError when the API cannot be read."""
        files: Files = []
        listing: dict[tuple[str, str], ObjectInfo] = {}
        for kind in KINDS:
            try:
                answer = self._lister(kind).list()
            except ApiException as exc:
                hint = (
                    " (are the CRDs installed? kubectl apply -f crds/)" if exc.status == 404 else ""
                )
                raise SourceError(
                    f"cannot list {NAMES[kind][0]} in namespace {self.namespace}: "
                    f"{exc.status} {exc.reason}{hint}"
                ) from None
            except API_FAILURES as exc:  # not an answer: the server is away
                raise SourceError(f"Kubernetes API unreachable: {exc}") from None
            for item in sorted(answer.get("items", []), key=lambda i: i["metadata"]["name"]):
                metadata = item["metadata"]
                path = object_path(kind, self.namespace, metadata["name"])
                files.append((path, render(kind, item)))
                listing[(kind, metadata["name"])] = ObjectInfo(
                    kind=kind,
                    name=metadata["name"],
                    uid=metadata.get("uid", ""),
                    generation=int(metadata.get("generation") or 0),
                    resource_version=metadata.get("resourceVersion", ""),
                    status=item.get("status") or {},
                    path=path,
                )
        self.listing = listing
        self.current = {self._key(path): content for path, content in files}
        revision = Revision(
            f"kubernetes:{self.namespace}", f"namespace/{self.namespace}", content_digest(files)
        )
        return revision, files

    def snapshot(self) -> tuple[Revision, Snapshot]:
        """The validated snapshot of the namespace now; RevisionInvalid when it is refused."""
        revision, files = self.fetch()
        for attempt in range(_READS):
            try:
                result = validated(revision, files)
                break
            except RevisionInvalid as exc:
                # The five kinds are listed one after the other, so a set applied together
                # (kubectl apply -f dir/) can be read half-way: refuse a set read twice alike.
                again, again_files = self.fetch()
                if again == revision or attempt == _READS - 1:
                    self.problems = list(exc.problems)
                    raise
                revision, files = again, again_files
        self.problems = []
        self.accepted = {self._key(path): content for path, content in files}
        return result

    def _key(self, path: str) -> tuple[str, str]:
        kind, _, rest = path.partition("/")
        return kind, rest.partition("/")[2].removesuffix(".yaml")

    def object_of(self, path: str) -> tuple[str, str] | None:
        """(kind, name) of the object rendered into ``path``, if it is one of ours."""
        key = self._key(path)
        return key if key in self.listing else None

    # -- watching -----------------------------------------------------------------------------

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Watch the five kinds (and Nodes) and call ``on_change`` when something a pass reads
        changed: an object added or deleted, a spec (generation) or its labels. Status writes and
        Node heartbeats are ignored, so the controller's own writes never wake it. Returns
        ``stop()``; ``poke()`` wakes the loop from elsewhere (losing the leader lease)."""
        self._wake = on_change
        stop = threading.Event()
        watchers = [
            _Watcher(self._lister(kind), on_change, stop, name=f"watch-{NAMES[kind][0]}")
            for kind in KINDS
        ]
        if self.watch_nodes:
            nodes = Collection(Kube(self.api), "/api/v1/nodes", self.node_selector)
            watchers.append(_Watcher(nodes, on_change, stop, name="watch-nodes"))
        for watcher in watchers:
            watcher.start()

        def stopper() -> None:
            stop.set()
            for watcher in watchers:
                watcher.stop()
            self._wake = None

        return stopper

    def poke(self) -> None:
        """Wake the loop now (when it is being watched)."""
        if self._wake is not None:
            self._wake()

    def _lister(self, kind: str) -> Collection:
        return Collection(Kube(self.api), resource_path(self.namespace, kind))


def _significant(item: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an object matters to a pass: its identity, spec generation and labels (a Node has
    no generation: its heartbeats only change status)."""
    metadata = item.get("metadata") or {}
    return (
        metadata.get("uid"),
        metadata.get("generation"),
        tuple(sorted((metadata.get("labels") or {}).items())),
    )


class _Watcher:
    """List, then watch from the list's resourceVersion; list and watch again when the watch
    ends, normally (the server's timeout, a proxy closing it) or not (410 Gone, an error), after
    ``backoff``'s pause (reconciler/kube/backoff.py: none after a watch that lasted). Each
    relevant change calls ``on_change``."""

    def __init__(
        self,
        lister: Collection,
        on_change: Callable[[], None],
        stop: threading.Event,
        *,
        name: str,
        backoff: Backoff | None = None,
    ) -> None:
        self.lister, self.on_change, self.stopped = lister, on_change, stop
        # The pause ends at once when the watchers are stopped.
        self.backoff = backoff or Backoff(sleep=stop.wait)
        self.known: dict[str, tuple[Any, ...]] = {}
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        # The watch ends at its next event (or the server's timeout): the thread is a daemon.
        self.thread.join(timeout=2)

    def _run(self) -> None:
        first = True
        while not self.stopped.is_set():
            started = self.backoff.clock()
            try:
                version = self._relist(wake=not first)
                first = False
                self._follow(version)  # returns when the server ends the watch: list again
            except Exception as exc:  # the API is away or the watch expired: never end the watch
                if self.stopped.is_set():
                    return
                if isinstance(exc, ApiException) and exc.status == 410:
                    log.info("watch expired (410 Gone); listing again", watch=self.thread.name)
                else:
                    log.warning("watch failed", watch=self.thread.name, error=str(exc))
            if not self.stopped.is_set():
                self.backoff.pause(started)

    def _relist(self, *, wake: bool) -> str:
        body = self.lister.list()
        fresh = {
            item["metadata"]["uid"]: _significant(item) for item in body.get("items", []) or []
        }
        if wake and fresh != self.known:
            # Changes may have been missed while the watch was down: one wake covers them.
            self.on_change()
        self.known = fresh
        return str(body.get("metadata", {}).get("resourceVersion", ""))

    def _follow(self, version: str) -> None:
        # An ERROR event (410 Gone included) raises ApiException: _run lists again.
        for kind, item in self.lister.watch(version, _WATCH_SECONDS):
            if self.stopped.is_set():
                return
            if kind == "BOOKMARK":
                continue
            uid = str((item.get("metadata") or {}).get("uid"))
            if kind == "DELETED":
                self.known.pop(uid, None)
                self.on_change()
                continue
            significant = _significant(item)
            if self.known.get(uid) != significant:
                self.known[uid] = significant
                self.on_change()
