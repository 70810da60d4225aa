"""Stage: state. Observed state written where Kubernetes users look: the ``/status`` subresource of
the custom resources, once per reconcile, only when it changed.

:class:`StatusWriter` takes the status a pass computed for one object (the controller computes
it) and writes it with a JSON merge patch guarded by the object's resourceVersion: fields it names
are set (``None`` removes one), fields others own are left alone. A condition keeps its
``lastTransitionTime`` unless its status flips (kstatus); nothing is sent when every field already
holds the value, so an idle controller writes nothing. A conflict (409: the object changed since it
was read) re-reads it and retries once; an object deleted meanwhile (404) is skipped.

An I/O edge: the Kubernetes API only (through :mod:`reconciler.kube`), decides nothing. May
import ``reconciler.api`` and ``reconciler.kube`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from reconciler.api.times import utc_stamp
from reconciler.kube import ApiClient, ApiException, Kube, resource_path

log = structlog.get_logger("patchwarden")


class Written(StrEnum):
    """What became of one status update."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"
    GONE = "gone"
    """The object was deleted meanwhile (404)."""
    CONFLICT = "conflict"
    """It changed again between the re-read and the retry; the next pass writes it."""


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """``new`` conditions with ``lastTransitionTime`` set: the old one when the condition's status
    did not change, ``now`` when it did (or the condition is new)."""
    before = {c.get("type"): c for c in old}
    merged = []
    for condition in new:
        previous = before.get(condition["type"])
        same = previous is not None and previous.get("status") == condition["status"]
        since = previous.get("lastTransitionTime") if same and previous else None
        merged.append({**condition, "lastTransitionTime": since or utc_stamp(now)})
    return merged


def desired(current: Mapping[str, Any], wanted: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """``wanted`` as it will be written over ``current`` (conditions with their times)."""
    result = dict(wanted)
    if "conditions" in wanted:
        result["conditions"] = merge_conditions(
            current.get("conditions") or [], wanted["conditions"], now
        )
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch does it (RFC 7386): objects merge
    key by key, ``None`` removes a key, anything else (lists included) replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def unchanged(current: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
    """Whether writing ``update`` would change nothing: what the server would store equals what
    it has (an absent field equals ``None``, at any depth)."""
    return bool(merge_patch(current, update) == dict(current))


class StatusWriter:
    """Writes the status of the custom resources of one namespace."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = Kube(api)
        self.namespace = namespace
        self.clock = clock

    def write(
        self,
        kind: str,
        name: str,
        wanted: Mapping[str, Any],
        *,
        current: Mapping[str, Any],
        resource_version: str,
    ) -> Written:
        """Write ``wanted`` into the status of ``kind/name``, read at ``resource_version`` with
        status ``current``, unless it already says so."""
        now = self.clock()
        for attempt in range(2):
            update = desired(current, wanted, now)
            if unchanged(current, update):
                return Written.UNCHANGED
            try:
                self._patch(kind, name, update, resource_version)
                return Written.WRITTEN
            except ApiException as exc:
                if exc.status == 404:
                    return Written.GONE
                if exc.status != 409:
                    raise
                if attempt == 1:
                    log.info("status conflict again; next pass writes it", kind=kind, name=name)
                    return Written.CONFLICT
            # The object itself, not /status: reading it needs only the ``get`` the
            # controller has anyway.
            fresh = self.kube.get(resource_path(self.namespace, kind, name))
            if fresh is None:
                return Written.GONE
            current = fresh.get("status") or {}
            resource_version = fresh["metadata"]["resourceVersion"]
        return Written.CONFLICT

    def _patch(
        self, kind: str, name: str, update: Mapping[str, Any], resource_version: str
    ) -> None:
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(update)}
        self.kube.merge_patch(f"{resource_path(self.namespace, kind, name)}/status", body)
