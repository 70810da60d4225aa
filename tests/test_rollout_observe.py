"""Progressive rollouts made observable (issue 15, item 4): one scripted three-stage timeline,
driven through the pure planner as the loop drives it (decide, record the freeze, results, the
halt and the resume), and what each observer makes of the views it gives: the occurrences (and
so the audit log, EventBridge/CloudEvents and Kubernetes Events), the Prometheus exposition, the
dashboard's rollout panel and the Rollout's status, on the real kube-apiserver too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kubernetes
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.controller.events import EventSink, notices
from reconciler.controller.status import Seen, statuses
from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.report.notify.events.shapes import ROLLOUT, cloud_event, to_event
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Occurrence
from reconciler.report.notify.rollouts import transitions
from reconciler.report.views import dashboard
from reconciler.report.views.export import report_document
from reconciler.report.views.rollouts import RolloutView, view
from reconciler.rollout import MachineResult, Outcome, RolloutRecord, decide, freeze
from reconciler.sources.directory import DirectorySource
from reconciler.sources.kubernetes import ObjectInfo
from reconciler.state import StateStore
from reconciler.state.kubernetes import StatusWriter
from tests.conftest import needs_apt
from tests.fleet import GROUP
from tests.kubeapi import KubeApi
from tests.test_controller import apply, events, fleet_yaml, get, in_process, wait_for
from tests.test_report_schedule import report_yaml
from tests.test_rollout import machines, rollout, stage
from tests.test_rollout_loop import DAY1, Fleet, at
from tests.test_rollout_validation import ROLLOUT as ROLLOUT_YAML

T0 = datetime(2030, 3, 4, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
WEB = rollout(stage("dev", "48h", limit=10), stage("staging", "24h"), stage("prod"))
MEMBERS = (machines("dev", 2), machines("staging", 1), machines("prod", 1))
RELEASE_1 = {"debian": ["openssl=3.0.1"]}
RELEASE_2 = {"debian": ["openssl=3.0.2"]}
"""Approved after cycle 1 froze: it waits for cycle 2."""


@dataclass
class Loop:
    """What the loop does with the planner each pass, and the views it keeps."""

    record: RolloutRecord = field(default_factory=RolloutRecord)
    views: list[RolloutView] = field(default_factory=list)

    def run(
        self, at: datetime, *, window: bool = False, approved: Mapping[str, list[str]] = RELEASE_1
    ) -> None:
        # A window given here opens at that moment: a new opening, as a new cycle needs.
        decision = decide(WEB, MEMBERS, self.record, window, at, opened_at=at if window else None)
        if decision.freeze:
            self.record = self.record.start_cycle(freeze(approved, at))
        if decision.halt is not None:
            self.record = self.record.halt(decision.halt)
        self.views.append(view(WEB, decision, self.record, at))

    def finish(self, names: Sequence[str], at: datetime, outcome: Outcome) -> None:
        for name in names:
            self.record = self.record.with_result(name, MachineResult(outcome, at))

    @property
    def last(self) -> RolloutView:
        return self.views[-1]


def timeline() -> Loop:
    """Cycle 1 freezes at dev's window and promotes dev -> staging -> prod after each bake;
    cycle 2 (a later release) freezes at the next window, dev fails and the rollout halts,
    then it is resumed."""
    loop = Loop()
    loop.run(T0)  # no window yet
    loop.run(T0 + HOUR, window=True)
    loop.run(T0 + 2 * HOUR)
    loop.finish(machines("dev", 2), T0 + 3 * HOUR, Outcome.INSTALLED)
    loop.run(T0 + 34 * HOUR)  # baking 31 h of 48 h
    loop.run(T0 + 51 * HOUR)
    loop.finish(machines("staging", 1), T0 + 52 * HOUR, Outcome.INSTALLED)
    loop.run(T0 + 76 * HOUR)
    loop.finish(machines("prod", 1), T0 + 77 * HOUR, Outcome.INSTALLED)
    loop.run(T0 + 78 * HOUR)
    loop.run(T0 + 170 * HOUR, window=True, approved=RELEASE_2)
    loop.run(T0 + 171 * HOUR, approved=RELEASE_2)
    loop.finish(("dev-0",), T0 + 172 * HOUR, Outcome.HEALTH_CHECK_FAILED)
    loop.finish(("dev-1",), T0 + 172 * HOUR, Outcome.FAILED)
    loop.run(T0 + 173 * HOUR)
    loop.record = loop.record.resume()  # patchctl rollout resume
    loop.run(T0 + 174 * HOUR)
    return loop


def occurrences(views: Sequence[RolloutView]) -> list[Occurrence]:
    found = []
    for index, current in enumerate(views):
        previous = views[index - 1] if index else None
        for kind, detail in transitions(previous, current):
            found.append(Occurrence(kind, T0, "rev-1", "ana", detail=detail))
    return found


def test_each_step_of_a_cycle_is_one_occurrence_in_the_order_it_happened() -> None:
    loop = timeline()
    told = [
        (str(o.kind), o.detail.get("stage"), o.detail.get("cycle")) for o in occurrences(loop.views)
    ]
    assert told == [
        ("rollout.cycle.started", None, 1),
        ("rollout.stage.installing", "dev", 1),
        ("rollout.stage.baked", "dev", 1),
        ("rollout.stage.installing", "staging", 1),
        ("rollout.stage.baked", "staging", 1),
        ("rollout.stage.installing", "prod", 1),
        ("rollout.stage.baked", "prod", 1),
        ("rollout.cycle.completed", None, 1),
        ("rollout.cycle.started", None, 2),
        ("rollout.stage.installing", "dev", 2),
        ("rollout.halted", None, 2),
        ("rollout.resumed", None, 2),
        ("rollout.stage.installing", "dev", 2),
    ]
    every = occurrences(loop.views)
    promotion = every[3].detail
    assert promotion["reason"] == "stage staging has 0 of 1 machines on the snapshot"
    first, second = every[0].detail, every[8].detail
    assert first["digest"].startswith("sha256:") and first["digest"] != second["digest"]
    assert first["frozenAt"] == "2030-03-04T03:00:00Z"
    assert every[10].detail["reason"] == (
        "halted: 2 of 2 dev machines failed (1 health checks, 1 installs), limit 10%"
    )
    assert every[11].detail["previousReason"] == every[10].detail["reason"]
    # Passes where nothing changed (the bake going on) tell nothing; a restart neither.
    assert transitions(loop.views[3], loop.views[3]) == ()
    assert transitions(None, loop.views[3]) == ()


def test_rollout_occurrences_are_events_for_eventbridge_cloudevents_and_kubernetes() -> None:
    every = occurrences(timeline().views)
    assert all(o.transition for o in every)
    halted = every[10]
    event = to_event(halted)
    assert event is not None and event.detail_type == ROLLOUT and event.subject == "web"
    assert event.type == "io.patchwarden.rollout.halted"
    assert event.detail["state"] == "halted" and event.detail["revision"] == "rev-1"
    assert event.detail["reason"].startswith("halted: 2 of 2 dev machines")
    assert event.detail["frozen-at"] == every[8].detail["frozenAt"]
    assert cloud_event(event).get_data()["cycle"] == 2
    posted = [n for o in every for n in notices(o, lambda _: None)]
    assert [(n.kind, n.name, n.reason, n.type) for n in posted][:4] == [
        ("Rollout", "web", "CycleStarted", "Normal"),
        ("Rollout", "web", "Promoted", "Normal"),
        ("Rollout", "web", "StageBaked", "Normal"),
        ("Rollout", "web", "Promoted", "Normal"),
    ]
    halt = posted[10]
    assert (halt.reason, halt.type) == ("Halted", "Warning")
    assert halt.message.startswith("halted: 2 of 2 dev machines failed")
    assert "cycle 2, snapshot sha256:" in halt.message and halt.message.endswith("(revision rev-1)")


def samples(metrics: LoopMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("patchwarden_rollout")
    }


def test_metrics_give_each_stage_its_verdict_bake_and_failures() -> None:
    loop = timeline()
    metrics = LoopMetrics()
    metrics.observe_rollouts([loop.views[3]])  # dev baking 31 h of 48 h
    got = samples(metrics)

    def stage_series(name: str, stage_name: str, **more: str) -> float:
        labels = tuple(sorted({"rollout": "web", "stage": stage_name, **more}.items()))
        return got[(name, labels)]

    assert stage_series("patchwarden_rollout_stage_verdict", "dev", verdict="Baking") == 1
    assert stage_series("patchwarden_rollout_stage_verdict", "dev", verdict="Install") == 0
    assert stage_series("patchwarden_rollout_stage_verdict", "prod", verdict="Waiting") == 1
    assert stage_series("patchwarden_rollout_stage_baked_seconds", "dev") == 31 * 3600
    assert stage_series("patchwarden_rollout_stage_baked_seconds", "staging") == 0
    assert got[("patchwarden_rollout_cycle", (("rollout", "web"),))] == 1
    assert got[("patchwarden_rollout_halted", (("rollout", "web"),))] == 0

    metrics.observe_rollouts([loop.views[-2]])  # halted in cycle 2
    got = samples(metrics)
    assert stage_series("patchwarden_rollout_stage_failed_machines", "dev") == 2
    assert stage_series("patchwarden_rollout_stage_verdict", "prod", verdict="Halted") == 1
    assert got[("patchwarden_rollout_halted", (("rollout", "web"),))] == 1
    assert got[("patchwarden_rollout_cycle", (("rollout", "web"),))] == 2

    metrics.observe_rollouts([])  # the rollout was deleted: its series go, not stay stale
    assert samples(metrics) == {}


def test_the_dashboard_has_a_rollout_panel_with_each_stage_in_order() -> None:
    baking = timeline().views[3]
    page = dashboard.render(report_document({}, {}, now=T0 + 34 * HOUR, rollouts=[baking]))
    panel = page[page.index('id="rollouts"') :]
    panel = panel[: panel.index("</section>")]
    assert panel.index(">dev<") < panel.index(">staging<") < panel.index(">prod<")
    assert '<span class="badge baking">Baking</span>' in panel
    assert "stage dev baked 31 h of 48 h" in panel
    assert "31 h of 48 h" in panel and "0 min of 24 h" in panel
    assert f"snapshot {baking.digest[:19]}" in panel  # type: ignore[index]
    assert "frozen 2030-03-04 03:00 UTC" in panel
    without = report_document({}, {}, now=T0)
    assert "rollouts" not in without and 'id="rollouts"' not in dashboard.render(without)


def rollout_info(generation: int = 1) -> ObjectInfo:
    return ObjectInfo("Rollout", "web", "uid", generation, "1", {}, "Rollout/ns/web.yaml")


def rollout_status(current: RolloutView) -> dict[str, object]:
    seen = Seen(
        now=T0,
        listing={("Rollout", "web"): rollout_info()},
        snapshot=None,
        revision="rev-1",
        applied=frozenset({("Rollout", "web")}),
        rollouts={"web": current},
    )
    return statuses(seen)[("Rollout", "web")]


def conditions_of(status: dict[str, object]) -> dict[str, tuple[str, str]]:
    found = status["conditions"]
    assert isinstance(found, list)
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def test_the_rollout_status_is_stalled_while_halted_and_reconciling_while_baking() -> None:
    views = timeline().views
    baking = rollout_status(views[3])
    assert baking["stage"] == "dev"
    assert conditions_of(baking) == {
        "Ready": ("False", "Progressing"),
        "Reconciling": ("True", "Progressing"),
        "Stalled": ("False", "Progressing"),
    }
    halted = rollout_status(views[-2])
    assert conditions_of(halted)["Stalled"] == ("True", "Halted")
    assert halted["halted"] == views[-2].halted
    done = rollout_status(views[6])
    assert conditions_of(done)["Ready"] == ("True", "CycleCompleted")
    assert done["stage"] == "prod"


@pytest.mark.apiserver
def test_the_api_server_keeps_the_rollout_status_and_its_events(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    ns = kube_api.namespace()
    apply(kube_api, ns, ROLLOUT_YAML)  # the object the status and Events are written to
    api = kube_api.client()
    loop = timeline()
    halted = loop.views[-2]
    obj = get(kube_api, ns, "Rollout", "web")
    info = ObjectInfo("Rollout", "web", obj["metadata"]["uid"], 1, "", {}, "Rollout/ns/web.yaml")
    seen = Seen(
        now=T0,
        listing={("Rollout", "web"): info},
        snapshot=None,
        revision="rev-1",
        applied=frozenset({("Rollout", "web")}),
        rollouts={"web": halted},
    )
    wanted = statuses(seen)[("Rollout", "web")]
    writer = StatusWriter(api, ns, clock=lambda: T0)
    writer.write(
        "Rollout", "web", wanted, current={}, resource_version=obj["metadata"]["resourceVersion"]
    )
    status = get(kube_api, ns, "Rollout", "web")["status"]
    assert status["stage"] == "dev" and status["snapshot"]["digest"] == halted.digest
    assert [s["verdict"] for s in status["stages"]] == ["Halted", "Halted", "Halted"]
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "Halted")
    assert stalled["message"].startswith("halted: 2 of 2 dev machines failed")

    sink = EventSink(api, ns, uid_of=lambda kind, name: info.uid, object_of=lambda _: None)
    for occurrence in occurrences(loop.views)[8:11]:
        sink(occurrence)
    sink.close()
    expected = [
        ("Rollout/web", "CycleStarted", "Normal"),
        ("Rollout/web", "Promoted", "Normal"),
        ("Rollout/web", "Halted", "Warning"),
    ]
    wait_for("the rollout's Events", lambda: events(kube_api, ns) == expected)
    core = kubernetes.client.CoreV1Api(api)
    posted = core.list_namespaced_event(ns).items
    assert all(e.involved_object.uid == info.uid for e in posted)


@needs_apt
def test_the_loop_announces_its_rollout_steps_and_feeds_the_metrics(tmp_path: Path) -> None:
    """The real loop on apt roots (tests/test_rollout_loop.py's fleet): dev's health check
    fails, and the audit/event stream hears the freeze, dev's promotion and the halt, once; the
    metrics and the scheduled dashboard show the halt."""
    failing = "      healthChecks: [{name: app, command: {argv: [/bin/false]}}]\n"
    fleet = Fleet(tmp_path, dev_task_fields=failing)
    out = tmp_path / "reports"
    dashboard_yaml = report_yaml("fleet", out, "cron(0 13 * * ? *)", format="html")
    (fleet.config / "report.yaml").write_text(dashboard_yaml)
    heard: list[Occurrence] = []
    metrics = LoopMetrics()
    reconciler = Reconciler(
        DirectorySource(fleet.config),
        StateStore(fleet.state),
        lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
        clock=fleet.clock,
        wait=lambda seconds: None,
        observers=[heard.append],
        report_dir=tmp_path,
        export_grace=60,
    )
    for moment in (DAY1, at(1, 12), at(1, 13), at(2, 13)):
        fleet.clock.advance_to(moment)
        summary = reconciler.reconcile()
    steps = [(str(o.kind), o.detail.get("stage")) for o in heard if o.kind.startswith("rollout.")]
    assert steps == [
        ("rollout.cycle.started", None),
        ("rollout.stage.installing", "dev"),
        ("rollout.halted", None),
    ]
    halted = next(o for o in heard if o.kind == "rollout.halted")
    assert halted.detail["reason"] == "halted: 1 of 1 dev machines failed health checks, limit 0%"
    assert halted.revision is not None  # provenance: the revision in force
    metrics.observe_rollouts(summary.rollout_views)
    got = samples(metrics)
    assert got[("patchwarden_rollout_halted", (("rollout", "web"),))] == 1
    failed = (("rollout", "web"), ("stage", "dev"))
    assert got[("patchwarden_rollout_stage_failed_machines", failed)] == 1
    panel = max(out.glob("*.html")).read_text()  # the latest pass's export
    assert 'id="rollouts"' in panel and '<span class="badge halted">Halted</span>' in panel


@pytest.mark.apiserver
@needs_apt
def test_the_controller_writes_the_rollout_status_each_pass(
    kube_api: KubeApi, system_root: Path, tmp_path: Path
) -> None:
    """A Rollout applied in the cluster: the controller's pass writes its stages and
    conditions (no window yet: Waiting, Ready), and a second pass changes nothing."""
    ns = kube_api.namespace()
    stages = [{"name": "only", "patchGroups": [GROUP], "bakeTime": "1d"}]
    spec = {"kind": "Rollout", "metadata": {"name": "web"}, "spec": {"stages": stages}}
    one_stage = yaml.safe_dump({"apiVersion": "patchwarden.io/v1alpha1", **spec})
    apply(kube_api, ns, fleet_yaml(system_root) + "---\n" + one_stage)
    api = kube_api.client()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = in_process(api, ns, store)
        reconciler.reconcile()
        status = get(kube_api, ns, "Rollout", "web")["status"]
        assert status["stage"] == "only" and status["cycle"] == 0
        assert status.get("snapshot") is None  # null: absent, as the writer merges
        (only,) = status["stages"]
        assert (only["verdict"], only["machines"]) == ("Waiting", 1)
        assert only["reason"] == "no snapshot yet: frozen when stage only's window opens"
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert (ready["status"], ready["reason"]) == ("True", "Waiting")
        version = get(kube_api, ns, "Rollout", "web")["metadata"]["resourceVersion"]
        reconciler.reconcile()
        assert get(kube_api, ns, "Rollout", "web")["metadata"]["resourceVersion"] == version
