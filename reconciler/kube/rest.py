"""Stage: kube — an I/O edge (the Kubernetes API). The REST calls Patchwarden makes, on the
official client's ApiClient (its authentication, TLS and retries), with plain JSON dicts in and
out: merge patches with a resourceVersion precondition and Evictions of either policy version
need control the typed API methods do not give, and dicts keep the pure rules of the callers
free of the client. Decides nothing; may import ``reconciler.api`` only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient

from reconciler.api.resources import GROUP, NAMES, VERSION
from reconciler.kube.backoff import Backoff
from reconciler.kube.errors import ApiException, watch_error

REQUEST_TIMEOUT = 30.0
"""Seconds one API request may take (watches add their own server-side timeout)."""
WATCH_SECONDS = 60
"""Longest single watch request; waits longer than this watch again from the last version."""

JsonObject = dict[str, Any]


def resource_path(namespace: str, kind: str, name: str | None = None) -> str:
    """The REST path of Patchwarden's custom resources of ``kind`` in ``namespace`` (the
    collection), or of the one named ``name``."""
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{NAMES[kind][0]}"
    return collection if name is None else f"{collection}/{quote(name)}"


class Kube:
    """The Kubernetes REST API as JSON dicts. Thread-safe (the ApiClient's pool is)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._eviction_version: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> JsonObject:
        """One call; ApiException (with ``.status``) on anything but 2xx."""
        response = self._call(method, path, query, body, content_type, timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(
                status=response.status, reason=response.reason, http_resp=response.response
            )
        parsed: JsonObject = json.loads(data) if data else {}
        return parsed

    def _call(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        body: Any,
        content_type: str,
        timeout: float,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(method, url, headers, body, post, _request_timeout=timeout)

    def get(self, path: str) -> JsonObject | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: Mapping[str, Any]) -> JsonObject:
        return self.request("POST", path, body=dict(body))

    def delete(self, path: str, *, propagation: str | None = None) -> None:
        """Delete; an object already gone is not an error."""
        body = {"propagationPolicy": propagation} if propagation else None
        try:
            self.request("DELETE", path, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonObject:
        """A JSON merge patch; with ``metadata.resourceVersion`` in it the server applies it only
        to that version (409 otherwise)."""
        return self.request(
            "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )

    def eviction_version(self) -> str:
        """policy/v1 where the server offers it (1.22+), else policy/v1beta1."""
        if self._eviction_version is None:
            group = self.get("/apis/policy") or {}
            versions = {v.get("groupVersion") for v in group.get("versions") or []}
            self._eviction_version = "policy/v1" if "policy/v1" in versions else "policy/v1beta1"
        return self._eviction_version

    def wait(
        self,
        collection: str,
        name: str,
        done: Callable[[JsonObject | None], bool],
        deadline: float,
        *,
        backoff: Backoff | None = None,
    ) -> JsonObject | None:
        """Watch the object ``name`` of ``collection`` until ``done(object)`` (None: it does not
        exist) or the monotonic ``deadline``; returns the last state seen either way. A watch
        that ends early (an error, a proxy closing it) is watched again after ``backoff``'s
        pause."""
        backoff = backoff or Backoff()
        selector = [("fieldSelector", f"metadata.name={name}")]
        while True:
            current = self.get(f"{collection}/{quote(name)}")
            if done(current) or time.monotonic() >= deadline:
                return current
            version = (current or {}).get("metadata", {}).get("resourceVersion")
            if version is None:  # absent: list to learn where to watch from
                version = self.request("GET", collection, query=selector)["metadata"][
                    "resourceVersion"
                ]
            seconds = max(1, min(WATCH_SECONDS, int(deadline - time.monotonic()) + 1))
            started = backoff.clock()
            for kind, obj in self.events(collection, selector, str(version), seconds):
                if kind == "ERROR":
                    break  # e.g. 410 Gone: read again and watch from there
                if done(None if kind == "DELETED" else obj):
                    return None if kind == "DELETED" else obj
                if time.monotonic() >= deadline:
                    break
            backoff.pause(started, enough=seconds, limit=deadline - time.monotonic())

    def events(
        self,
        collection: str,
        selectors: Iterable[tuple[str, str]],
        version: str,
        seconds: int,
        *,
        bookmarks: bool = False,
    ) -> Iterator[tuple[str, JsonObject]]:
        """The events of one watch request on ``collection`` from ``version``, as they arrive,
        as (type, object) pairs; it ends when the server ends the watch (after ``seconds``)."""
        query = [
            ("watch", "true"),
            *selectors,
            ("resourceVersion", version),
            ("timeoutSeconds", str(seconds)),
            ("allowWatchBookmarks", "true" if bookmarks else "false"),
        ]
        response = self._call(
            "GET", collection, query, None, "application/json", seconds + REQUEST_TIMEOUT
        )
        try:
            if not 200 <= response.status <= 299:
                response.read()
                raise ApiException(
                    status=response.status, reason=response.reason, http_resp=response.response
                )
            for line in _lines(response.response):
                event = json.loads(line)
                yield str(event.get("type")), event.get("object") or {}
        finally:
            # Closed, not just released: a watch left half-read must not go back to the pool.
            response.response.close()
            response.response.release_conn()


def _lines(response: Any) -> Iterable[bytes]:
    """The non-empty lines of a streamed (chunked) response, as they arrive: one watch event
    per line."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        yield buffer


@dataclass(frozen=True)
class Collection:
    """One collection to list and watch (a kind in a namespace, or Nodes), optionally narrowed
    by a label selector."""

    kube: Kube
    path: str
    label_selector: str = ""

    def _selectors(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.label_selector)] if self.label_selector else []

    def list(self) -> JsonObject:
        """The collection now (``items`` and ``metadata.resourceVersion``)."""
        return self.kube.request("GET", self.path, query=self._selectors())

    def watch(self, version: str, seconds: int) -> Iterator[tuple[str, JsonObject]]:
        """Changes since ``version`` as (type, object), bookmarks included, until the server ends
        the watch; an ERROR event (410 Gone: ``version`` is too old) raises ApiException."""
        for kind, obj in self.kube.events(
            self.path, self._selectors(), version, seconds, bookmarks=True
        ):
            if kind == "ERROR":
                raise watch_error(obj)
            yield kind, obj
