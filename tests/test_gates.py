"""Safety gates (issue 20 item 1, docs/guardrails.md): the schema refuses a gate it could not
honour naming file, line and field; the planner starts no install or reboot of a task whose gate
blocks, naming the gate and its reason; the reader asks a real Prometheus and a real Alertmanager
(Debian's packages, on loopback) and blocks when a gate cannot be read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.api.gates import Gate
from reconciler.api.install import InstallResult
from reconciler.api.snapshot import SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.dispatch.base import InstallRequest
from reconciler.dispatch.gates import read_gate, read_gates, selector_text
from reconciler.kube.rest import Kube
from reconciler.loop import clock_from
from reconciler.plan import GateReading, Observed, plan
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.factories import NOW
from tests.fleet import at_now, dpkg_installs, make_fleet, open_window_yaml, window_yaml
from tests.git_servers import Upstream, free_port
from tests.kubeapi import KubeApi
from tests.promlab import METRIC, Alertmanager, Prometheus
from tests.test_controller import apply, fleet_yaml, in_process
from tests.test_hooks import TASK
from tests.test_loop_e2e import (
    BEFORE,
    ROOT,
    commit_fleet,
    file_url,
    patchctl,
    reconcile_cli,
)
from tests.test_plan import BASELINE, NOON, all_scanned, instances, reasons, snap
from tests.test_reboots import Fleet, Machine, ssh_instance

ALERTS = """\
      gates:
        - name: no-critical-alerts
          alertmanager: {url: "http://alertmanager:9093", matchers: ['severity="critical"']}
"""


def gated(gates: str = ALERTS, operation: str = "Install") -> str:
    return TASK.replace("OPERATION", operation) + gates


def problems(text: str) -> list[str]:
    with pytest.raises(SnapshotInvalid) as caught:
        build_snapshot(
            [("b.yaml", BASELINE.encode()), ("w.yaml", text.encode())], predefined_baselines()
        )
    return [str(p) for p in caught.value.problems]


# --- the schema ---------------------------------------------------------------------------------


def test_gates_of_each_kind_are_valid_and_share_a_key_when_they_ask_the_same() -> None:
    gates = """\
      gates:
        - {name: firing, prometheus: {url: "http://prom:9090", query: 'ALERTS{severity="page"}'}}
        - {name: alerts, alertmanager: {url: "http://am:9093", matchers: ['alertname=~"Node.*"']}}
        - name: backups
          kubernetes: {resource: Pod, namespace: ops, selector: {matchLabels: {job: backup}}}
        - {name: same, prometheus: {url: "http://prom:9090", query: 'ALERTS{severity="page"}'}}
"""
    snapshot = snap(BASELINE, gated(gates))
    (task,) = snapshot.windows["noon"].spec.tasks
    assert [gate.name for gate in task.gates] == ["firing", "alerts", "backups", "same"]
    assert task.gates[0].key == task.gates[3].key != task.gates[1].key
    assert task.gates[0].prometheus is not None and task.gates[0].prometheus.timeout_seconds == 10


@pytest.mark.parametrize(
    ("gates", "operation", "says"),
    [
        (ALERTS, "Scan", "w.yaml:12: spec.tasks[0].gates: gates apply to Install tasks only"),
        (
            "      gates: [{name: a}]\n",
            "Install",
            "w.yaml:12: spec.tasks[0].gates[0]: give exactly one of prometheus, alertmanager or",
        ),
        (
            "      gates: [{name: a, alertmanager: {url: 'http://am', matchers: [critical]}}]\n",
            "Install",
            "spec.tasks[0].gates[0].alertmanager.matchers: 'critical' is not a matcher",
        ),
        (
            "      gates: [{name: a, prometheus: {url: 'http://{host}:9090', query: up}}]\n",
            "Install",
            "a gate's url takes no {host}",
        ),
        (
            "      gates: [{name: a, prometheus: {url: 'http://u:pw@prom', query: up}}]\n",
            "Install",
            "must not carry credentials",
        ),
        (
            "      gates: [{name: a, kubernetes: {resource: Node, selector: {}}}]\n",
            "Install",
            "an empty selector matches every object",
        ),
        (
            "      gates: [{name: a, kubernetes: {resource: Node, namespace: x,"
            " selector: {matchLabels: {a: b}}}}]\n",
            "Install",
            "nodes have no namespace",
        ),
        (
            "      gates: [{name: a, prometheus: {url: 'http://p', query: up}},"
            " {name: a, prometheus: {url: 'http://p', query: up}}]\n",
            "Install",
            "gate names must be unique: a",
        ),
        (
            "      gates: [{name: a, prometheus: {url: 'http://p', query: up, timeout: 5}}]\n",
            "Install",
            "spec.tasks[0].gates[0].prometheus.timeout",
        ),
    ],
    ids=[
        "on-scan",
        "no-kind",
        "bad-matcher",
        "host-placeholder",
        "credentials",
        "empty-selector",
        "node-namespace",
        "duplicate-names",
        "misspelt-field",
    ],
)
def test_a_gate_that_cannot_be_honoured_is_refused_naming_its_field(
    gates: str, operation: str, says: str
) -> None:
    found = problems(gated(gates, operation))
    assert len(found) == 1 and says in found[0], found


def test_a_rollout_stage_takes_gates() -> None:
    text = """\
apiVersion: patchwarden.io/v1alpha1
kind: Rollout
metadata: {name: monthly}
spec:
  stages:
    - name: canary
      selector: {matchLabels: {ring: canary}}
      gates: [{name: a, prometheus: {url: 'http://p', query: up}}, {name: a, prometheus: {url: 'http://p', query: up}}]
"""
    assert problems(text) == ["w.yaml:8: spec.stages[0].gates: gate names must be unique: a"]


# --- the planner --------------------------------------------------------------------------------


def test_a_blocking_gate_holds_the_install_and_plan_names_it() -> None:
    snapshot = snap(BASELINE, gated(ALERTS + '      maxConcurrency: "10"\n'), instances(2))
    gate = snapshot.windows["noon"].spec.tasks[0].gates[0]
    blocked = {gate.key: GateReading(True, "1 alert(s) firing: DiskFull")}
    result = plan(snapshot, "r1", Observed(all_scanned(snapshot), readings=blocked), NOON)
    assert result.actions == ()
    assert reasons(result) == {
        f"node-{i}": "gate no-critical-alerts of task patch of noon blocks: "
        "1 alert(s) firing: DiskFull"
        for i in (1, 2)
    }
    opened = {gate.key: GateReading(False, "no matching alert fires")}
    result = plan(snapshot, "r1", Observed(all_scanned(snapshot), readings=opened), NOON)
    assert [a.instance for a in result.actions] == ["node-1", "node-2"]


def test_a_gate_with_no_reading_this_pass_blocks() -> None:
    snapshot = snap(BASELINE, gated(), instances(1))
    result = plan(snapshot, "r1", Observed(all_scanned(snapshot)), NOON)
    assert result.actions == ()
    assert reasons(result)["node-1"].endswith("blocks: not read this pass")


# --- reading gates from a real Prometheus and Alertmanager --------------------------------------


def prometheus_gate(url: str, query: str) -> Gate:
    return Gate.model_validate({"name": "p", "prometheus": {"url": url, "query": query}})


def test_a_prometheus_gate_blocks_while_its_query_returns_a_series(prometheus: Prometheus) -> None:
    gate = prometheus_gate(prometheus.url, f"{METRIC} > 0")
    prometheus.scraped(0)
    assert read_gate(gate, None) == GateReading(False, "the query returns nothing")
    prometheus.exporter.set(1)
    prometheus.scraped(1)
    reading = read_gate(gate, None)
    assert reading.blocking
    assert reading.reason.startswith(f"the query returns 1 series: {METRIC}{{")
    bad = read_gate(prometheus_gate(prometheus.url, "sum("), None)
    assert bad.blocking and bad.reason.startswith("cannot be read: ")


def test_alertmanager_gate_blocks_on_a_firing_alert_unless_it_is_silenced(
    alertmanager: Alertmanager,
) -> None:
    gate = Gate.model_validate(
        {
            "name": "am",
            "alertmanager": {"url": alertmanager.url, "matchers": ['severity="critical"']},
        }
    )
    assert not read_gate(gate, None).blocking
    alertmanager.fire(alertname="DiskFull", severity="critical", instance="db-1")
    alertmanager.fire(alertname="Noise", severity="info")
    assert read_gate(gate, None) == GateReading(True, "1 alert(s) firing: DiskFull")
    alertmanager.silence(alertname="DiskFull")
    assert read_gate(gate, None).reason == "no matching alert fires (or every one is silenced)"


def test_a_gate_that_cannot_be_read_blocks_with_the_error_as_its_reason() -> None:
    gate = prometheus_gate(f"http://127.0.0.1:{free_port()}", "up")
    readings = read_gates([gate, gate])
    assert list(readings) == [gate.key]  # read once, however many tasks name it
    assert readings[gate.key].blocking
    assert readings[gate.key].reason.startswith("cannot be read: ConnectError")
    kube = Gate.model_validate(
        {"name": "k", "kubernetes": {"resource": "Node", "selector": {"matchLabels": {"a": "b"}}}}
    )
    assert read_gate(kube, None).reason == (
        "cannot be read: no Kubernetes API configured (give patchctl --kubeconfig)"
    )


def test_a_selector_is_sent_in_the_api_label_selector_syntax() -> None:
    gate = Gate.model_validate(
        {
            "name": "k",
            "kubernetes": {
                "resource": "Pod",
                "selector": {
                    "matchLabels": {"app": "backup"},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["db", "cache"]},
                        {"key": "paused", "operator": "DoesNotExist"},
                    ],
                },
            },
        }
    )
    assert gate.kubernetes is not None
    assert selector_text(gate.kubernetes.selector) == "app=backup,tier in (db,cache),!paused"


# --- the loop, end to end -----------------------------------------------------------------------


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Upstream:
    return Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")


@needs_apt
def test_the_loop_installs_nothing_while_an_alert_fires_and_everything_once_it_is_silenced(
    tmp_path: Path, apt_repo: Repo, fleet_repo: Upstream, alertmanager: Alertmanager
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1", "web-2"], BEFORE)
    gate = (
        "      gates:\n        - name: no-critical-alerts\n"
        f"          alertmanager: {{url: '{alertmanager.url}', matchers: ['severity=\"critical\"']}}\n"
    )
    commit_fleet(fleet_repo, roots, open_window_yaml(task_fields=gate))
    state = tmp_path / "state" / "state.db"
    alertmanager.fire(alertname="DiskFull", severity="critical")

    held = reconcile_cli(file_url(fleet_repo), state)
    assert held["jobs"] == {"Scan succeeded": 2}
    assert all(dpkg_installs(root)[("pwtest-lib", "1.0-2")] == 0 for root in roots.values())
    shown = patchctl("plan", "--source", file_url(fleet_repo), "--state", str(state), *at_now())
    assert shown.returncode == 0, shown.stderr
    assert (
        "gate no-critical-alerts of task install-security of open-now blocks: 1 alert(s) "
        "firing: DiskFull" in " ".join(shown.stdout.split())
    )

    alertmanager.silence(alertname="DiskFull")
    released = reconcile_cli(file_url(fleet_repo), state)
    assert released["jobs"] == {"Install succeeded": 2}
    assert all(dpkg_installs(root)[("pwtest-lib", "1.0-2")] == 1 for root in roots.values())


def test_explain_names_each_gate_guarding_the_instance_and_what_it_says_now(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "examples", source)
    url = f"http://127.0.0.1:{free_port()}"
    (source / "gated.yaml").write_text(
        TASK.replace("OPERATION", "Install").replace(
            "targets: {selector: {matchLabels: {role: web}}}", "targets: {patchGroups: [web]}"
        )
        + f"      gates: [{{name: quiet, prometheus: {{url: '{url}', query: up}}}}]\n"
    )
    args = ["explain", "web-1", "--source", str(source), "--inventory", "examples/inventories"]
    shown = patchctl(*args, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    (gate,) = json.loads(shown.stdout)["gates"]
    assert (gate["gate"], gate["of"], gate["blocking"]) == ("quiet", "task patch of noon", True)
    assert gate["reason"].startswith("cannot be read: ConnectError")
    table = patchctl(*args)
    assert "gate:        quiet of task patch of noon — blocks: cannot be read:" in table.stdout


def paged_during_install(machine: Machine, alertmanager: Alertmanager) -> None:
    """An alert that pages begins firing while ``machine`` installs."""
    original = machine.install

    def install_while_paged(request: InstallRequest) -> InstallResult:
        alertmanager.fire(alertname="LatencyHigh", severity="page")
        return original(request)

    machine.install = install_while_paged  # type: ignore[method-assign]


def test_a_gate_that_closes_during_the_install_leaves_the_reboot_pending(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """The gates are read again right before the reboot: an alert that began firing while the
    install ran keeps the machine up, and the job says why."""
    machine = Machine()
    gate = (
        "      gates:\n        - name: quiet\n"
        f"          alertmanager: {{url: '{alertmanager.url}', matchers: ['severity=\"page\"']}}\n"
    )
    fleet = Fleet(
        tmp_path,
        {"web-1": machine},
        window_yaml("noon", "cron(0 12 * * ? *)", task_fields=gate),
        ssh_instance("web-1"),
    )
    paged_during_install(machine, alertmanager)
    with StateStore(tmp_path / "state.db") as store:
        fleet.loop(store).reconcile()
        job = next(j for j in store.jobs(instance="web-1") if j.operation == "Install")
    assert machine.installs and machine.reboots == []
    reboot = job.result["install"]["reboot"]
    assert (reboot["required"], reboot["performed"]) == (True, False)
    assert reboot["reason"] == (
        "reboot needed (pwtest-lib); gate quiet of task install-security of noon blocks: "
        "1 alert(s) firing: LatencyHigh: left pending until the gate opens"
    )


@pytest.mark.apiserver
def test_a_kubernetes_gate_blocks_while_a_matching_pod_or_node_exists(kube_api: KubeApi) -> None:
    namespace = kube_api.namespace("gates")
    kube = Kube(kube_api.client())
    node_label = f"maintenance-{namespace}"

    def gate(resource: str, selector: dict[str, object], where: str | None = None) -> Gate:
        spec = {"resource": resource, "selector": selector}
        return Gate.model_validate(
            {"name": "k", "kubernetes": {**spec, **({"namespace": where} if where else {})}}
        )

    pods = gate(
        "Pod",
        {"matchExpressions": [{"key": "job", "operator": "In", "values": ["backup", "fsck"]}]},
        namespace,
    )
    nodes = gate("Node", {"matchLabels": {node_label: "true"}})
    assert read_gate(pods, kube) == GateReading(False, "no pod matches the selector")
    assert read_gate(nodes, kube) == GateReading(False, "no node matches the selector")
    container = {"name": "c", "image": "busybox"}
    for name, job in (("nightly", "backup"), ("web", "serve")):
        kube.create(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "metadata": {"name": name, "labels": {"job": job}},
                "spec": {"containers": [container]},
            },
        )
    kube.create("/api/v1/nodes", {"metadata": {"name": namespace, "labels": {node_label: "true"}}})
    assert read_gate(pods, kube) == GateReading(True, f"1 pod(s) match: {namespace}/nightly")
    assert read_gate(nodes, kube) == GateReading(True, f"1 node(s) match: {namespace}")


@pytest.mark.apiserver
@needs_apt
def test_the_controller_reads_kubernetes_gates_from_its_api(
    kube_api: KubeApi, system_root: Path, tmp_path: Path
) -> None:
    """A backup pod in the namespace holds the controller's installs; once it is gone they go."""
    ns = kube_api.namespace()
    gate = (
        "      gates:\n        - name: no-backup\n"
        f"          kubernetes: {{resource: Pod, namespace: {ns}, selector: "
        "{matchLabels: {job: backup}}}\n"
    )
    apply(kube_api, ns, fleet_yaml(system_root) + "---\n" + open_window_yaml(task_fields=gate))
    api = kube_api.client()
    kube = Kube(api)
    pod = {"name": "nightly", "labels": {"job": "backup"}}
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    kube.create(f"/api/v1/namespaces/{ns}/pods", {"metadata": pod, "spec": spec})
    with StateStore(tmp_path / "state.db") as store:
        reconciler = in_process(api, ns, store, gate_api=kube, clock=clock_from(NOW))
        reconciler.reconcile()
        assert [j.operation for j in store.jobs(instance="web-1")] == ["Scan"]
        (reading,) = reconciler.parts.observation.readings.values()
        assert reading == GateReading(True, f"1 pod(s) match: {ns}/nightly")
        kube.delete(f"/api/v1/namespaces/{ns}/pods/nightly")
        reconciler.reconcile()
        assert "Install" in [j.operation for j in store.jobs(instance="web-1")]
