"""Stage: dispatch — an I/O edge (network, the Kubernetes API). Reads safety gates
(docs/guardrails.md): each distinct gate once per pass, as a :class:`reconciler.plan.GateReading`
the planner looks up by the gate's key. A gate that cannot be read (refused connection, timeout,
an error answer, a body that is not what the API documents) blocks, with the error as its reason:
a gate exists to stop patching when something is wrong, and an unreachable monitoring system is
something wrong. Decides nothing else; answers' bodies are read only for the fields named here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.api.gates import AlertmanagerGate, Gate, KubernetesGate, PrometheusGate
from reconciler.api.selectors import LabelSelector
from reconciler.plan import GateReading
from reconciler.redaction import redacted

if TYPE_CHECKING:
    from reconciler.kube.rest import Kube

SHOWN = 3
"""How many blocking series, alerts or objects a reason names (the rest are counted)."""


def read_gates(gates: Iterable[Gate], kube: Kube | None = None) -> dict[str, GateReading]:
    """Each distinct gate's reading, by :attr:`Gate.key`; never raises for what a gate answers."""
    readings: dict[str, GateReading] = {}
    for gate in gates:
        if gate.key not in readings:
            readings[gate.key] = read_gate(gate, kube)
    return readings


def read_gate(gate: Gate, kube: Kube | None) -> GateReading:
    try:
        if gate.prometheus is not None:
            return _prometheus(gate.prometheus)
        if gate.alertmanager is not None:
            return _alertmanager(gate.alertmanager)
        assert gate.kubernetes is not None
        return _kubernetes(gate.kubernetes, kube)
    except _Unreachable as exc:
        return _unreadable(str(exc))
    except (ValueError, KeyError, TypeError) as exc:
        return _unreadable(f"unexpected answer: {exc}")


def _unreadable(error: str) -> GateReading:
    return GateReading(True, redacted(f"cannot be read: {error}"))


class _Unreachable(Exception):
    """The gate's system could not be asked, or refused: the message says why."""


def _get(url: str, params: list[tuple[str, str]], timeout: int) -> Any:
    # Imported here, as are the Kubernetes client's errors below: every patchctl command imports
    # this module, and only a pass that reads a gate needs them (docs/architecture.md).
    import httpx

    try:
        client = httpx.Client(timeout=float(timeout), follow_redirects=False, trust_env=False)
        with client:
            answer = client.get(url, params=tuple(params))
            answer.raise_for_status()
            return answer.json()
    except (httpx.HTTPError, OSError) as exc:  # OSError: what httpx may leave unwrapped
        raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc


def _prometheus(gate: PrometheusGate) -> GateReading:
    url = gate.url.rstrip("/") + "/api/v1/query"
    body = _get(url, [("query", gate.query)], gate.timeout_seconds)
    if body.get("status") != "success":
        return _unreadable(f"Prometheus says {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    result = data["result"]
    if data["resultType"] in ("scalar", "string"):
        # A bare number has no series: it cannot be "empty", so it says nothing about alerts.
        return _unreadable(f"the query returns a {data['resultType']}, not a vector")
    if not result:
        return GateReading(False, "the query returns nothing")
    shown = [_series(item["metric"]) for item in result[:SHOWN]]
    return GateReading(True, f"the query returns {len(result)} series: {_listed(shown, result)}")


def _series(metric: Mapping[str, str]) -> str:
    name = metric.get("__name__", "")
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}"


def _alertmanager(gate: AlertmanagerGate) -> GateReading:
    url = gate.url.rstrip("/") + "/api/v2/alerts"
    params = [("active", "true"), ("silenced", "false"), ("inhibited", "true")]
    params += [("filter", matcher) for matcher in gate.matchers]
    alerts = _get(url, params, gate.timeout_seconds)
    if not isinstance(alerts, list):
        raise ValueError("Alertmanager's /api/v2/alerts did not answer a list")
    if not alerts:
        return GateReading(False, "no matching alert fires (or every one is silenced)")
    shown = [str(alert["labels"].get("alertname", "?")) for alert in alerts[:SHOWN]]
    return GateReading(True, f"{len(alerts)} alert(s) firing: {_listed(shown, alerts)}")


def _kubernetes(gate: KubernetesGate, kube: Kube | None) -> GateReading:
    if kube is None:
        return _unreadable("no Kubernetes API configured (give patchctl --kubeconfig)")
    if gate.resource == "Node":
        path = "/api/v1/nodes"
    elif gate.namespace is None:
        path = "/api/v1/pods"
    else:
        path = f"/api/v1/namespaces/{gate.namespace}/pods"
    query = [("labelSelector", selector_text(gate.selector))]
    from reconciler.kube.errors import API_FAILURES, ApiException, status_message

    try:
        items = kube.request("GET", path, query=query).get("items", [])
    except ApiException as exc:
        raise _Unreachable(f"Kubernetes API: {status_message(exc)}") from exc
    except API_FAILURES as exc:
        raise _Unreachable(f"Kubernetes API: {type(exc).__name__}: {exc}") from exc
    if not items:
        return GateReading(False, f"no {gate.resource.lower()} matches the selector")
    shown = [_object_name(item) for item in items[:SHOWN]]
    return GateReading(
        True, f"{len(items)} {gate.resource.lower()}(s) match: {_listed(shown, items)}"
    )


def _object_name(item: Mapping[str, Any]) -> str:
    meta = item.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def selector_text(selector: LabelSelector) -> str:
    """The selector in the API's ``labelSelector`` syntax (``a=b,c in (d,e),!f``)."""
    parts = [f"{key}={value}" for key, value in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        if req.operator == "Exists":
            parts.append(req.key)
        elif req.operator == "DoesNotExist":
            parts.append(f"!{req.key}")
        else:
            word = "in" if req.operator == "In" else "notin"
            parts.append(f"{req.key} {word} ({','.join(req.values)})")
    return ",".join(parts)


def _listed(shown: list[str], every: list[Any]) -> str:
    more = len(every) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
