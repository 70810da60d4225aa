"""Scheduled ComplianceReports in the reconcile loop: exported exactly once per opening of their
schedule (read in their time zone), for the instances their scope selects, a failed export
recorded and retried on the next pass, the history kept in the real SQLite store.

The loop is the real Reconciler over a directory source, with a clock the test moves. Its
observed state is scans recorded through the store under the instances' effective baselines, so
the planner has nothing to do and each pass is refresh, plan, and the report step.
"""

from __future__ import annotations

import csv
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import OperatingSystem
from reconciler.evaluation import resolve
from reconciler.loop import EXPORT_GRACE, Reconciler
from reconciler.plan import Settings, baseline_digest
from reconciler.report.publish.scheduled import latest_opening, reports_due, scope_instances
from reconciler.sources import DirectorySource, read_snapshot
from reconciler.state import StateStore
from tests.postgres import raw_sql

FLEET = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec: {}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: db}
spec: {}
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: web-1, labels: {patchwarden.io/patch-group: web, env: prod}}
spec: {connection: {type: local, root: /nonexistent/web-1}}
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: web-2, labels: {patchwarden.io/patch-group: web, env: dev}}
spec: {connection: {type: local, root: /nonexistent/web-2}}
---
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: db-1, labels: {patchwarden.io/patch-group: db, env: prod}}
spec: {connection: {type: local, root: /nonexistent/db-1}}
"""


def report_yaml(name: str, destination: Path | str, schedule: str, **spec: Any) -> str:
    extra = "".join(f"  {key}: {value}\n" for key, value in spec.items())
    return (
        "---\napiVersion: patchwarden.io/v1alpha1\nkind: ComplianceReport\n"
        f"metadata: {{name: {name}}}\nspec:\n  schedule: {schedule}\n"
        f"  destination: {destination}\n{extra}"
    )


class Fleet:
    """A directory source, a real store with every instance scanned, and a loop on a clock."""

    def __init__(self, tmp_path: Path, reports: str, now: datetime) -> None:
        self.config = tmp_path / "config"
        self.config.mkdir()
        self.write(reports)
        self.now = now
        self.report_dir = tmp_path  # the tests' destinations are all under it
        self.store = StateStore(tmp_path / "state.db")
        snapshot = read_snapshot(self.config)
        for minutes, (name, instance) in enumerate(sorted(snapshot.instances.items())):
            labels = instance.metadata.labels
            baseline = resolve(snapshot, labels, OperatingSystem.DEBIAN).baseline
            assert baseline is not None
            missing = 1 if name != "web-2" else 0
            self.store.record_scan(
                instance=name,
                operation="Scan",
                revision="dir:test",
                baseline=baseline.metadata.name,
                baseline_hash=baseline_digest(baseline),
                job_id=None,
                started_at=now - timedelta(hours=1, minutes=minutes),
                finished_at=now - timedelta(hours=1, minutes=minutes),
                inventory={"facts": {"operatingSystem": "DEBIAN", "hostname": name}},
                evaluation={
                    "patchGroup": labels.get("patchwarden.io/patch-group"),
                    "patches": [],
                    "summary": {
                        "complianceStatus": "NON_COMPLIANT" if missing else "COMPLIANT",
                        "missingCount": missing,
                    },
                },
            )
        self.loop = self.new_loop()

    def write(self, reports: str) -> None:
        (self.config / "fleet.yaml").write_text(FLEET + reports)

    def new_loop(
        self, s3_endpoint_url: str | None = None, export_grace: float = EXPORT_GRACE
    ) -> Reconciler:
        """A Reconciler as a fresh process would build it (nothing in memory)."""
        return Reconciler(
            DirectorySource(self.config),
            self.store,
            lambda instance: pytest.fail(f"no job may run ({instance.metadata.name})"),
            settings=Settings(stale_after=timedelta(days=3650)),
            clock=lambda: self.now,
            s3_endpoint_url=s3_endpoint_url,
            report_dir=self.report_dir,
            export_grace=export_grace,
        )

    def passes(self, *moments: datetime) -> None:
        """One reconcile pass at each moment."""
        for moment in moments:
            self.now = moment
            summary = self.loop.reconcile(until_idle=True)
            assert summary.revision is not None and not summary.jobs
            # Exports run on the loop's export thread; a slow machine may outlast the pass's grace.
            assert self.loop.wait_for_exports(60)

    def runs(self, report: str) -> list[tuple[str, str]]:
        """(opening, status) of every recorded attempt, oldest first."""
        return [(r.opening, r.status) for r in reversed(self.store.report_runs(report))]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def summary_rows(path: Path) -> list[str]:
    with path.open() as handle:
        return [row["Instance ID"] for row in csv.DictReader(handle)]


def test_a_report_is_exported_once_per_opening_in_its_time_zone(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    # 06:00 in Berlin is 05:00 UTC in winter.
    yaml = report_yaml(
        "daily-web",
        out,
        "cron(0 6 * * ? *)",
        scheduleTimezone="Europe/Berlin",
        scope="{patchGroups: [web]}",
    )
    fleet = Fleet(tmp_path, yaml, at("2026-11-28T07:30:00"))
    # First pass: never exported, so the most recent opening (this morning) is due at once.
    fleet.passes(at("2026-11-28T07:30:00"), at("2026-11-28T07:31:00"), at("2026-11-29T04:59:59"))
    (first,) = out.iterdir()
    assert first.name == "daily-web-compliance-summary-20261128T073000Z.csv"
    assert summary_rows(first) == ["web-1", "web-2"]
    # The next morning's opening, then more passes within it: one export.
    fleet.passes(at("2026-11-29T05:00:00"), at("2026-11-29T05:01:00"), at("2026-11-29T12:00:00"))
    assert sorted(p.name for p in out.iterdir()) == [
        "daily-web-compliance-summary-20261128T073000Z.csv",
        "daily-web-compliance-summary-20261129T050000Z.csv",
    ]
    # A restarted loop reads what was exported from the store and does not export it again.
    fleet.loop = fleet.new_loop()
    fleet.passes(at("2026-11-29T13:00:00"))
    assert len(list(out.iterdir())) == 2
    assert fleet.runs("daily-web") == [
        ("2026-11-28T05:00:00Z", "SUCCESS"),
        ("2026-11-29T05:00:00Z", "SUCCESS"),
    ]
    (run, _) = fleet.store.report_runs("daily-web")
    assert run.locations == (str(out / "daily-web-compliance-summary-20261129T050000Z.csv"),)
    assert run.destination == str(out) and run.format == "csv" and run.error is None
    fleet.store.close()


def test_a_failed_export_is_recorded_and_retried_next_pass(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the report directory should be")
    yaml = report_yaml("hourly", blocker / "reports", "rate(1 hour)", format="json")
    fleet = Fleet(tmp_path, yaml, at("2026-11-28T10:20:00"))
    fleet.passes(at("2026-11-28T10:20:00"), at("2026-11-28T10:25:00"))
    # The same failure on every pass is recorded once; nothing is claimed as written.
    ((failed),) = fleet.store.report_runs("hourly")
    assert (failed.opening, failed.status, failed.locations) == (
        "2026-11-28T10:00:00Z",
        "FAILED",
        (),
    )
    assert failed.error is not None and failed.error.startswith(f"{blocker / 'reports'}: cannot")
    blocker.unlink()
    fleet.passes(at("2026-11-28T10:30:00"), at("2026-11-28T10:40:00"))
    assert fleet.runs("hourly") == [
        ("2026-11-28T10:00:00Z", "FAILED"),
        ("2026-11-28T10:00:00Z", "SUCCESS"),
    ]
    (written,) = (blocker / "reports").iterdir()
    assert written.name == "hourly-compliance-report-20261128T103000Z.json"
    fleet.store.close()


def test_missed_openings_give_one_export_of_the_newest(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    fleet = Fleet(tmp_path, report_yaml("daily", out, "'0 6 * * *'"), at("2026-11-28T06:10:00"))
    fleet.passes(at("2026-11-28T06:10:00"))
    fleet.passes(at("2026-12-02T09:00:00"))  # the loop was down for four openings
    assert fleet.runs("daily") == [
        ("2026-11-28T06:00:00Z", "SUCCESS"),
        ("2026-12-02T06:00:00Z", "SUCCESS"),
    ]
    assert len(list(out.iterdir())) == 2
    fleet.store.close()


def test_a_report_added_later_and_one_long_past_are_handled(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    fleet = Fleet(
        tmp_path, report_yaml("weekly", out, "cron(0 7 ? * MON *)"), at("2026-11-28T12:00")
    )
    fleet.passes(at("2026-11-28T12:00:00"))  # a Saturday: Monday's opening is due at once
    assert fleet.runs("weekly") == [("2026-11-23T07:00:00Z", "SUCCESS")]
    # A one-time report long past never fires; one that just passed fires once.
    fleet.write(
        report_yaml("weekly", out, "cron(0 7 ? * MON *)")
        + report_yaml("once-old", out, "at(2020-01-01T00:00:00)")
        + report_yaml("once-new", out, "at(2026-11-28T11:00:00)")
    )
    fleet.passes(at("2026-11-28T12:05:00"), at("2026-11-28T12:10:00"))
    assert fleet.runs("once-old") == []
    assert fleet.runs("once-new") == [("2026-11-28T11:00:00Z", "SUCCESS")]
    assert fleet.runs("weekly") == [("2026-11-23T07:00:00Z", "SUCCESS")]
    fleet.store.close()


def test_scope_selects_by_group_and_labels_together(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        FLEET
        + report_yaml("all", "/r", "rate(1 day)")
        + report_yaml("prod", "/r", "rate(1 day)", scope="{selector: {matchLabels: {env: prod}}}")
        + report_yaml(
            "web-prod",
            "/r",
            "rate(1 day)",
            scope="{patchGroups: [web], selector: {matchLabels: {env: prod}}}",
        )
        + report_yaml("groups", "/r", "rate(1 day)", scope="{patchGroups: [web, db]}")
    )
    snapshot = read_snapshot(tmp_path)
    scoped = {name: scope_instances(snapshot, r.spec.scope) for name, r in snapshot.reports.items()}
    assert scoped == {
        "all": {"web-1", "web-2", "db-1"},
        "prod": {"web-1", "db-1"},
        "web-prod": {"web-1"},
        "groups": {"web-1", "web-2", "db-1"},
    }


def test_due_is_decided_from_the_last_exported_opening_only(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(report_yaml("every-5", "/r", "rate(5 minutes)"))
    reports = read_snapshot(tmp_path).reports
    now = at("2026-11-28T10:07:00")
    assert latest_opening(reports["every-5"], now) == at("2026-11-28T10:05:00")
    assert [d.opening for d in reports_due(reports, {}, now)] == ["2026-11-28T10:05:00Z"]
    assert reports_due(reports, {"every-5": "2026-11-28T10:05:00Z"}, now) == []
    assert [d.opening for d in reports_due(reports, {"every-5": "2026-11-28T10:00:00Z"}, now)] == [
        "2026-11-28T10:05:00Z"
    ]


def test_report_runs_are_history_with_one_success_per_opening(state_store: Any) -> None:
    store = state_store  # on both backends
    run: dict[str, Any] = {
        "report": "daily",
        "opening": "2026-11-28T06:00:00Z",
        "destination": "s3://b/p",
        "format": "csv",
        "revision": "main@sha1:aaa",
        "locations": [],
        "started_at": at("2026-11-28T06:01:00"),
        "finished_at": at("2026-11-28T06:01:01"),
    }
    assert store.record_report_run(**run, status="FAILED", error="down") is not None
    assert store.record_report_run(**run, status="FAILED", error="down") is None  # a repeat
    assert store.record_report_run(**run, status="FAILED", error="other") is not None
    done = {**run, "locations": ["s3://b/p/x.csv"]}
    assert store.record_report_run(**done, status="SUCCESS", error=None) is not None
    # Another process exporting the same opening again is not recorded as a second success.
    assert store.record_report_run(**done, status="SUCCESS", error=None) is None
    assert store.last_exported_openings() == {"daily": "2026-11-28T06:00:00Z"}
    assert [(r.status, r.error) for r in store.report_runs("daily")] == [
        ("SUCCESS", None),
        ("FAILED", "other"),
        ("FAILED", "down"),
    ]
    with raw_sql(store) as (conn, refused), pytest.raises(refused):
        conn.execute("DELETE FROM report_runs")


class Blackhole:
    """An S3 endpoint that accepts connections and answers nothing until released, then drops
    every connection: an unreachable destination, on a real socket."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.released = threading.Event()
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.released.is_set():
                conn.close()
            else:
                self.held.append(conn)

    def release(self) -> None:
        self.released.set()
        for conn in self.held:
            conn.close()

    def close(self) -> None:
        self.release()
        self.server.close()


def test_an_unreachable_destination_does_not_hold_up_the_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export runs on the loop's export thread: the pass ends after its grace, the next pass
    does not start a second export of the report while the first one runs, and once the
    destination fails the attempt is recorded once and retried on the next pass."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    blackhole = Blackhole()
    yaml = report_yaml("hourly", "s3://compliance/hourly", "rate(1 hour)", format="json")
    fleet = Fleet(tmp_path, yaml, at("2026-11-28T10:20:00"))
    fleet.loop = fleet.new_loop(
        s3_endpoint_url=f"http://127.0.0.1:{blackhole.port}", export_grace=0.5
    )
    try:
        for moment in ("2026-11-28T10:20:00", "2026-11-28T10:21:00", "2026-11-28T11:05:00"):
            fleet.now = at(moment)
            started = time.monotonic()
            fleet.loop.reconcile(until_idle=True)
            assert time.monotonic() - started < 5, "a pass waited for the export"
        assert blackhole.accepted == 1  # one export in flight, the same one, across 3 passes
        assert fleet.store.report_runs("hourly") == []
        assert not fleet.loop.wait_for_exports(0.1)
        blackhole.release()
        assert fleet.loop.wait_for_exports(60)
        (failed,) = fleet.store.report_runs("hourly")
        assert (failed.opening, failed.status) == ("2026-11-28T10:00:00Z", "FAILED")
        assert f"127.0.0.1:{blackhole.port}" in (failed.error or "")
        # The next pass retries: the newest opening is due, exported (and failing) once.
        fleet.now = at("2026-11-28T11:10:00")
        fleet.loop.reconcile(until_idle=True)
        assert fleet.loop.wait_for_exports(60)
        assert fleet.runs("hourly") == [
            ("2026-11-28T10:00:00Z", "FAILED"),
            ("2026-11-28T11:00:00Z", "FAILED"),
        ]
    finally:
        blackhole.close()
        fleet.loop.wait_for_exports(60)
        fleet.store.close()
