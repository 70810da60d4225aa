"""``patchctl diff`` and safety gates (issue 20 item 1, docs/diff.md): gates added, removed or
changed per window task and rollout stage are reported, without reading them."""

from __future__ import annotations

import io

from reconciler.report.views.diff import compare
from reconciler.report.views.diffrender import diff, summary_line
from tests.test_gates_patch_now import WINDOW
from tests.test_plan import BASELINE, NOON, instances, snap

ROLLOUT = """
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata: {name: monthly}
spec: {stages: [{name: canary, patchGroups: [web], gates: [{name: calm, alertmanager: {url: 'http://am:9093', matchers: ['a="b"']}}]}]}
"""


def test_gates_added_removed_and_changed_are_reported_per_task_and_stage() -> None:
    before = snap(BASELINE, WINDOW, instances(1))
    after = snap(
        BASELINE,
        WINDOW.replace("query: up}", "query: up}, blockedThreshold: 1h"),
        instances(1),
        ROLLOUT,
    )
    result = compare(before, after, [], NOON)
    assert result.changed
    assert [g.document() for g in result.gates] == [
        {"scope": "stage canary of rollout monthly", "gate": "calm", "change": "added"},
        {"scope": "task install of window noon", "gate": "quiet", "change": "changed"},
    ]
    assert summary_line(result).endswith("Gates: 2 added, removed or changed.")
    shown = io.StringIO()
    diff(result, "markdown", shown, title="a → b")
    assert "stage canary of rollout monthly" in shown.getvalue()
    removed = compare(after, before, [], NOON)
    assert [(g.gate, g.change) for g in removed.gates] == [
        ("calm", "removed"),
        ("quiet", "changed"),
    ]
    assert compare(before, before, [], NOON).gates == ()
