"""Stage: api (the schema). Safety gates on window tasks and rollout stages (docs/guardrails.md).

A gate is something outside the fleet that says "not now": a Prometheus query with a non-empty
result, an Alertmanager alert matching the gate's matchers that is not silenced, or a Kubernetes
pod or node matching a label selector. The loop reads each gate once per pass (an I/O edge in
``reconciler.dispatch.gates``); the planner only looks the readings up by :attr:`Gate.key`.
These models check one gate's shape; they do no I/O and import nothing outside ``reconciler.api``
but ``reconciler.paths`` (through :mod:`reconciler.api.hooks`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from reconciler.api._base import Model
from reconciler.api.durations import DURATION, duration_seconds
from reconciler.api.hooks import HOST, check_url
from reconciler.api.selectors import LabelSelector

_GATE_NAME = r"^[a-zA-Z0-9_\-.]{1,63}$"
# Alertmanager's matcher syntax (amtool, the v2 API's filter): name, operator, quoted value.
MATCHER = re.compile(r'^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*$')


def _gate_url(value: str) -> str:
    check_url(value)
    if HOST in value:
        # {host} names a patched machine; a gate is read once per pass for all of them.
        raise ValueError("a gate's url takes no {host}: it is read once, not per machine")
    return value


Url = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_gate_url)]
Timeout = Annotated[int, Field(ge=1, le=60, strict=True)]
MAX_THRESHOLD_SECONDS = 7 * 86400


class PrometheusGate(Model):
    """Blocks while an instant PromQL query returns any sample (an alert-like expression such
    as ``ALERTS{alertstate="firing",severity="critical"}`` or ``up{job="db"} == 0``)."""

    url: Url
    """The Prometheus server, for example http://prometheus:9090 (its /api/v1/query is asked)."""
    query: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    """The PromQL expression; any sample in its result blocks."""
    timeout_seconds: Timeout = 10
    """Seconds (1-60) for the request; an answer not in time blocks (the gate cannot be read)."""


class AlertmanagerGate(Model):
    """Blocks while Alertmanager has an active alert matching all the matchers that is not
    silenced (an inhibited alert still blocks: what inhibits it may match no gate)."""

    url: Url
    """The Alertmanager, for example http://alertmanager:9093 (its /api/v2/alerts is asked)."""
    matchers: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=20
    )
    """Alertmanager matchers, all of which must hold, for example ``severity="critical"`` or
    ``alertname=~"Node.*"`` (operators =, !=, =~, !~; the value in double quotes)."""
    timeout_seconds: Timeout = 10
    """Seconds (1-60) for the request; an answer not in time blocks (the gate cannot be read)."""

    @field_validator("matchers")
    @classmethod
    def _matcher_syntax(cls, matchers: list[str]) -> list[str]:
        for matcher in matchers:
            if not MATCHER.match(matcher):
                raise ValueError(
                    f'{matcher!r} is not a matcher: write name="value" (or !=, =~, !~), '
                    'for example severity="critical"'
                )
        return matchers


class KubernetesGate(Model):
    """Blocks while any pod (in a namespace, or in all) or node matches the selector, for
    example a running backup job's pods or nodes labelled for maintenance."""

    resource: Literal["Pod", "Node"]
    """What the selector matches: Pods or Nodes."""
    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    """Pods only: the namespace to look in (all namespaces when omitted)."""
    selector: LabelSelector
    """The labels that block; an empty selector would match everything and is refused."""

    @model_validator(mode="after")
    def _meaningful(self) -> KubernetesGate:
        if self.resource == "Node" and self.namespace is not None:
            raise ValueError("nodes have no namespace; remove namespace or use resource: Pod")
        if not self.selector.match_labels and not self.selector.match_expressions:
            raise ValueError("an empty selector matches every object and would always block")
        return self


class Gate(Model):
    """One gate: exactly one of prometheus, alertmanager or kubernetes. While it blocks, or
    cannot be read, nothing it guards starts (docs/guardrails.md)."""

    name: Annotated[str, StringConstraints(pattern=_GATE_NAME)]
    """1-63 letters, digits, '_', '-' or '.'; unique among the gates of its task or stage; the
    name ``plan`` and ``explain`` give when it blocks."""
    prometheus: PrometheusGate | None = None
    """A PromQL query: any sample blocks."""
    alertmanager: AlertmanagerGate | None = None
    """Alertmanager matchers: a matching alert that is not silenced blocks."""
    kubernetes: KubernetesGate | None = None
    """A pod or node label selector: any match blocks."""
    blocked_threshold: Annotated[str, StringConstraints(pattern=DURATION)] = "30m"
    """How long the gate may block its task or stage before the loop says so (a
    ``gate.blocked`` event, once per blocking spell): minutes, hours or days ("30m", "2h"),
    at most 7 days; "0m" says so at once."""

    @model_validator(mode="after")
    def _one_kind(self) -> Gate:
        kinds = (self.prometheus, self.alertmanager, self.kubernetes)
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError("give exactly one of prometheus, alertmanager or kubernetes")
        return self

    @field_validator("blocked_threshold")
    @classmethod
    def _at_most_a_week(cls, value: str) -> str:
        if duration_seconds(value) > MAX_THRESHOLD_SECONDS:
            raise ValueError("at most 7 days (7d)")
        return value

    @property
    def threshold_seconds(self) -> int:
        """``blockedThreshold`` in seconds."""
        return duration_seconds(self.blocked_threshold)

    @property
    def key(self) -> str:
        """What the gate reads, as text: gates asking the same question share one reading
        per pass, whatever their names."""
        wire = self.to_wire()
        wire.pop("name")
        wire.pop("blockedThreshold")  # when to tell people, not what is read
        return json.dumps(wire, sort_keys=True)


def unique_gate_names(gates: list[Gate]) -> list[Gate]:
    """``gates`` if their names are unique, else ValueError naming the repeated ones."""
    names = [gate.name for gate in gates]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"gate names must be unique: {', '.join(twice)}")
    return gates


Gates = Annotated[
    list[Gate], Field(default_factory=list, max_length=10), AfterValidator(unique_gate_names)
]
