"""Gates, the rest of issue 20 item 1 (docs/guardrails.md): a gate blocking longer than its
``blockedThreshold`` is announced once per blocking spell (``gate.blocked``) and measured
(``patchwarden_gate_blocked``, ``..._seconds``), through the real Reconciler and a real
Prometheus, on the test's clock; a rollout stage's gates are read again before a reboot (a
real Alertmanager)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.api.enums import Operation
from reconciler.api.snapshot import SnapshotInvalid
from reconciler.loop.reboots import gate_refusal
from reconciler.plan import Action
from reconciler.report.notify.events import to_event
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Kind
from reconciler.state import StateStore
from tests.fleet import window_yaml
from tests.promlab import METRIC, Alertmanager, Prometheus
from tests.test_hooks import TASK
from tests.test_plan import BASELINE, OPENING, instances, snap, window
from tests.test_reboots import IN_WINDOW, Fleet, Machine, ssh_instance


def test_blocked_threshold_is_a_duration_of_at_most_a_week() -> None:
    field = "fleet.yaml:12: spec.tasks[0].gates[0].blockedThreshold"
    for value, says in (
        (
            "soon",
            f'{field}: \'soon\' is not valid: give minutes, hours or days: "30m", "48h", "2d"',
        ),
        ("8d", f"{field}: at most 7 days (7d)"),
    ):
        text = TASK.replace("OPERATION", "Install") + (
            f"      gates: [{{name: q, blockedThreshold: {value}, "
            "prometheus: {url: 'http://p', query: up}}]\n"
        )
        with pytest.raises(SnapshotInvalid) as caught:
            snap(text)
        assert [str(p) for p in caught.value.problems] == [says]


def test_a_gate_blocking_past_its_threshold_is_announced_once_per_spell_and_measured(
    tmp_path: Path, prometheus: Prometheus
) -> None:
    gate = (
        "      gates:\n        - name: quiet\n          blockedThreshold: 10m\n"
        f"          prometheus: {{url: '{prometheus.url}', query: '{METRIC} > 0'}}\n"
    )
    fleet = Fleet(
        tmp_path,
        {"web-1": Machine()},
        window_yaml("noon", "cron(0 12 * * ? *)", task_fields=gate),
        ssh_instance("web-1"),
    )
    metrics = LoopMetrics()
    scope = "task install-security of window noon"
    prometheus.exporter.set(1)
    prometheus.scraped(1)

    def announced() -> list[dict[str, object]]:
        return [dict(o.detail) for o in fleet.occurrences if o.kind is Kind.GATE_BLOCKED]

    def after(minutes: int) -> str:
        fleet.clock.advance_to(IN_WINDOW + timedelta(minutes=minutes))
        metrics.observe_gates(loop.reconcile().gates)
        return metrics.render().decode()

    with StateStore(tmp_path / "state.db") as store:
        loop = fleet.loop(store)
        after(0)
        shown = after(9)
        assert announced() == []
        assert f'patchwarden_gate_blocked{{gate="quiet",scope="{scope}"}} 1.0' in shown
        assert f'patchwarden_gate_blocked_seconds{{gate="quiet",scope="{scope}"}} 540.0' in shown
        after(10)
        after(30)
        (first,) = announced()
        reason = str(first.pop("reason"))
        assert first == {
            "gate": "quiet",
            "scope": scope,
            "since": "2026-11-28T12:30:00Z",
            "blockedSeconds": 600,
        }
        assert reason.startswith(f"the query returns 1 series: {METRIC}{{"), reason
        event = to_event(next(o for o in fleet.occurrences if o.kind is Kind.GATE_BLOCKED))
        assert event is not None
        assert (event.type, event.detail_type, event.subject) == (
            "io.patchwarden.gate.blocked",
            "Gate Blocked Notification",
            f"quiet of {scope}",
        )
        assert event.detail["blocked-seconds"] == 600
        prometheus.exporter.set(0)
        prometheus.scraped(0)
        shown = after(31)
        assert f'patchwarden_gate_blocked{{gate="quiet",scope="{scope}"}} 0.0' in shown
        assert f'patchwarden_gate_blocked_seconds{{gate="quiet",scope="{scope}"}} 0.0' in shown
        prometheus.exporter.set(1)
        prometheus.scraped(1)
        after(40)
        after(50)  # a new spell, announced again once it outlasts the threshold
    assert [(a["since"], a["blockedSeconds"]) for a in announced()] == [
        ("2026-11-28T12:30:00Z", 600),
        ("2026-11-28T13:10:00Z", 600),
    ]


def test_a_rollout_stage_gate_is_read_again_before_a_reboot(alertmanager: Alertmanager) -> None:
    rollout = f"""
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata: {{name: monthly}}
spec:
  stages:
    - name: canary
      patchGroups: [web]
      gates: [{{name: quiet, alertmanager: {{url: '{alertmanager.url}', matchers: ['severity="page"']}}}}]
"""
    snapshot = snap(BASELINE, window(), instances(1), rollout)
    action = Action(
        Operation.INSTALL, "node-1", "k", "r", "debian-prod", "h", "noon", "install", OPENING
    )
    assert gate_refusal(snapshot, action) == ""
    alertmanager.fire(alertname="LatencyHigh", severity="page")
    assert gate_refusal(snapshot, action) == (
        "gate quiet of stage canary of rollout monthly blocks: 1 alert(s) firing: LatencyHigh"
    )
