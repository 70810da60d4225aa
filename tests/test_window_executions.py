"""Window executions are recorded: IN_PROGRESS with an opening's first job, FAILED when a job of
it fails, SUCCESS once the opening has ended without a failure (real SQLite store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.loop import Reconciler
from reconciler.sources import DirectorySource
from reconciler.state import StateStore

WINDOW = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: noon}
spec:
  schedule: cron(0 12 * * ? *)
  duration: 3
  cutoff: 1
  targets: {patchGroups: [web]}
  tasks: [{name: install, operation: Install}]
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec: {}
"""


def test_window_executions_follow_their_openings(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fleet.yaml").write_text(WINDOW)
    now = [datetime(2026, 11, 28, 12, 30, tzinfo=UTC)]
    with StateStore(tmp_path / "state.db") as store:
        loop = Reconciler(
            DirectorySource(tmp_path / "config"),
            store,
            lambda i: None,  # type: ignore[arg-type,return-value]
            clock=lambda: now[0],
        )
        loop.refresh()
        loop.parts.executions.started("noon", "2026-11-28T12:00:00Z")
        loop.parts.executions.started("noon", "2026-11-27T12:00:00Z")
        store.record_window_execution(
            window="noon", opening="2026-11-27T12:00:00Z", status="FAILED", now=now[0]
        )
        loop.close_window_executions()
        status = {e["opening"]: e["status"] for e in store.window_executions("noon")}
        assert status == {"2026-11-28T12:00:00Z": "IN_PROGRESS", "2026-11-27T12:00:00Z": "FAILED"}
        now[0] += timedelta(hours=3)  # 15:30: today's opening has ended
        loop.close_window_executions()
        status = {e["opening"]: e["status"] for e in store.window_executions("noon")}
        assert status == {"2026-11-28T12:00:00Z": "SUCCESS", "2026-11-27T12:00:00Z": "FAILED"}
