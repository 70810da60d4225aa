"""``patchctl controller`` against a real kube-apiserver (tests/kubeapi.py: v1.20 built from
Debian's source, with Debian's etcd) on real Debian systems rooted in directories (real apt and
dpkg, tests/aptlab.py): the custom resources are the desired state, their status is the report.

The controller runs as a real process where a user would see it run (reconciling, status, Events,
two replicas and their Lease) and in-process where a test needs to count what one pass did
(status left alone when nothing changed, a 409, Node mirrors). Nothing runs pods here, so Node
patching itself is tested elsewhere (tests/test_nodes*.py); Nodes here are API objects only.

The first tests need no server: the pure rules (who may take a Lease, when a condition's
transition time moves, which occurrences become Events, what a Node's mirror looks like).
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import kubernetes
import pytest
import yaml

from reconciler.api.resources import KINDS
from reconciler.api.snapshot import Problem
from reconciler.controller.events import EventSink, notices
from reconciler.controller.leader import Holder, LeaderElector, LeaseConfig, may_acquire
from reconciler.controller.nodes import NodeMirror, changes, mirror_of
from reconciler.controller.owner import own_deployment
from reconciler.controller.run import ControllerReconciler
from reconciler.controller.status import Seen, statuses
from reconciler.dispatch import transport_for
from reconciler.kube.rest import Kube
from reconciler.loop import Clock, utc_now
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources.kubernetes import NODE_LABEL, KubernetesSource, ObjectInfo, _Watcher
from reconciler.state import StateStore
from reconciler.state.kubernetes import StatusWriter, Written, merge_conditions, unchanged
from tests import awslab
from tests.conftest import needs_apt
from tests.fleet import BASELINE, BASELINE_YAML, GROUP, local_instance_yaml, window_yaml
from tests.kubeapi import KubeApi, free_port
from tests.postgres import terminate_lock_session, writer_lock_held
from tests.test_enrol_ec2 import IMAGE as EC2_IMAGE
from tests.test_enrol_ec2 import INSTANCE_SOURCE
from tests.test_enrol_ec2 import KEYS as EC2_KEYS
from tests.test_enrol_ec2 import SOURCE as EC2_SOURCE
from tests.test_metrics import scrape
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
G, V = "patchwarden.io", "v1alpha1"
PLURAL = {
    "PatchBaseline": "patchbaselines",
    "PatchGroup": "patchgroups",
    "MaintenanceWindow": "maintenancewindows",
    "ManagedInstance": "managedinstances",
    "ComplianceReport": "compliancereports",
    "InstanceSource": "instancesources",
    "Rollout": "rollouts",
    "ChangeCalendar": "changecalendars",
}
# The fleet's baseline changed so that it approves nothing these systems have: compliant.
NOTHING_APPROVED = BASELINE_YAML.replace(
    "values: [Required, Important, Standard, Optional, Extra]", "values: [Required]"
)
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


# --- pure rules --------------------------------------------------------------------------------


def holder(identity: str, duration: float = 15.0) -> Holder:
    return Holder(identity, duration, "2026-11-28T09:00:00.000000Z", "", 0, "1")


def test_a_lease_is_taken_only_when_free_mine_or_unrenewed_for_its_duration() -> None:
    assert may_acquire(None, "b", observed_at=0.0, now=0.0)
    assert may_acquire(holder(""), "b", observed_at=0.0, now=0.0)  # released
    assert may_acquire(holder("b"), "b", observed_at=0.0, now=0.0)  # renewing my own
    assert not may_acquire(holder("a"), "b", observed_at=100.0, now=114.9)
    assert may_acquire(holder("a"), "b", observed_at=100.0, now=115.0)


def test_lease_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseConfig("l", "ns", "me", lease_duration=10, renew_deadline=10, retry_period=2)


def test_a_leader_whose_renewal_hangs_stops_leading_within_the_renew_deadline() -> None:
    """An API server that accepts the connection and never answers (a partition, an overloaded
    apiserver): the renewal is not waited for beyond the renew deadline, so this replica stops
    leading before a standby may take the Lease (lease duration after its last renewal)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{silent.getsockname()[1]}"
    config = LeaseConfig("l", "ns", "me", lease_duration=2.0, renew_deadline=1.0, retry_period=0.2)
    elector = LeaderElector(kubernetes.client.ApiClient(configuration), config)
    elector.leading.set()
    lost = threading.Event()
    started = time.monotonic()
    try:
        elector.keep(on_lost=lost.set)
        assert lost.wait(timeout=config.lease_duration), "still leading after the lease duration"
        assert time.monotonic() - started < config.lease_duration
        assert not elector.leading.is_set()
    finally:
        elector.release()
        silent.close()


@pytest.mark.parametrize(
    ("kubeconfig", "extra", "said"),
    [
        ("garbage: [", (), "not a kubeconfig"),
        ("just a string", (), "not a kubeconfig"),
        (None, ("--listen", "metrics"), "argument --listen: 'metrics' is not HOST:PORT"),
    ],
)
def test_a_bad_kubeconfig_or_listen_address_is_a_clear_error(
    tmp_path: Path, kubeconfig: str | None, extra: tuple[str, ...], said: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        kubeconfig
        if kubeconfig is not None
        else "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"
    )
    command = [sys.executable, "-m", "reconciler", "controller", "--kubeconfig", str(path)]
    done = subprocess.run(
        [*command, "--state", str(tmp_path / "state.db"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert said in done.stderr, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_a_kubeconfig_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "kubeconfig"
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "controller", "--kubeconfig", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"{missing}: no such kubeconfig file" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    old = [
        {"type": "Ready", "status": "True", "reason": "A", "lastTransitionTime": "then"},
        {"type": "Stalled", "status": "False", "reason": "A", "lastTransitionTime": "then"},
    ]
    new = [
        {"type": "Ready", "status": "True", "reason": "B", "message": "other words"},
        {"type": "Stalled", "status": "True", "reason": "InvalidSpec"},
        {"type": "NonCompliant", "status": "True", "reason": "MissingPatches"},
    ]
    merged = {c["type"]: c for c in merge_conditions(old, new, T0)}
    assert merged["Ready"]["lastTransitionTime"] == "then"
    assert merged["Ready"]["reason"] == "B"
    assert merged["Stalled"]["lastTransitionTime"] == "2026-11-28T09:00:00Z"
    assert merged["NonCompliant"]["lastTransitionTime"] == "2026-11-28T09:00:00Z"
    assert unchanged({"a": 1, "conditions": old}, {"a": 1, "gone": None, "conditions": old})
    assert not unchanged({"a": 1}, {"a": 2})


def occurrence(kind: Kind, **detail: Any) -> Occurrence:
    return Occurrence(kind, T0, "namespace/ns@sha256:" + "0" * 64, instance="web-1", detail=detail)


def test_only_transitions_become_events_on_the_object_they_concern() -> None:
    def object_of(path: str) -> tuple[str, str] | None:
        return {"MaintenanceWindow/ns/bad.yaml": ("MaintenanceWindow", "bad")}.get(path)

    quiet = [
        occurrence(Kind.JOB_DISPATCHED, operation="Scan"),
        occurrence(Kind.JOB_FINISHED, operation="Scan", status="succeeded"),
        occurrence(Kind.SNAPSHOT_ACCEPTED),
        occurrence(Kind.PATCHES_INSTALLED, patches=[]),
    ]
    assert [n for o in quiet for n in notices(o, object_of)] == []
    (changed,) = notices(
        occurrence(
            Kind.COMPLIANCE_CHANGED,
            status="NON_COMPLIANT",
            previous=None,
            operation="Scan",
            baseline=BASELINE,
            summary={"missingCount": 3, "failedCount": 0},
        ),
        object_of,
    )
    assert (changed.kind, changed.name, changed.type, changed.reason) == (
        "ManagedInstance",
        "web-1",
        "Warning",
        "NonCompliant",
    )
    assert "3 missing" in changed.message
    (failed,) = notices(
        occurrence(
            Kind.JOB_FINISHED,
            operation="Install",
            status="failed",
            error={"code": "X", "message": "y"},
        ),
        object_of,
    )
    assert (failed.reason, failed.type) == ("InstallFailed", "Warning")
    (refused,) = notices(
        occurrence(
            Kind.SNAPSHOT_REFUSED,
            problems=["MaintenanceWindow/ns/bad.yaml:8: spec.cutoff: cutoff (3 h) must be less"],
            keeping=None,
        ),
        object_of,
    )
    assert (refused.kind, refused.name, refused.reason) == (
        "MaintenanceWindow",
        "bad",
        "SnapshotRefused",
    )
    assert "spec.cutoff" in refused.message


GATE_BLOCKED = {
    "gate": "quiet",
    "scope": "task patch of window noon",
    "since": "2026-11-28T08:15:00Z",
    "blockedSeconds": 2700,
    "reason": "alertmanager: 1 alert firing (HighErrorRate)",
}
EMERGENCY = {"id": "em-1", "cve": "CVE-2026-1234", "instances": ["web-2", "web-1"]}


def gate_and_emergency_occurrences() -> list[Occurrence]:
    return [
        occurrence(Kind.GATE_BLOCKED, **GATE_BLOCKED),
        occurrence(Kind.GATE_BLOCKED, **{**GATE_BLOCKED, "scope": "stage prod of rollout web"}),
        occurrence(Kind.EMERGENCY_REQUESTED, **EMERGENCY, reason="INC-7", digest="sha256:ab"),
        occurrence(Kind.EMERGENCY_CHANGED, **EMERGENCY, status="SUCCESS", reason="all done"),
        occurrence(Kind.EMERGENCY_CHANGED, **EMERGENCY, status="CANCELLED", reason="by ada"),
    ]


def test_gates_blocked_and_emergency_runs_are_events_on_what_they_concern() -> None:
    """A gate blocking too long on the window (or rollout) whose task (or stage) it guards; an
    emergency run on each machine it targets, a cancelled one a Warning."""
    posted = [n for o in gate_and_emergency_occurrences() for n in notices(o, lambda _: None)]
    assert [(n.kind, n.name, n.reason, n.type) for n in posted] == [
        ("MaintenanceWindow", "noon", "GateBlocked", "Warning"),
        ("Rollout", "web", "GateBlocked", "Warning"),
        ("ManagedInstance", "web-1", "EmergencyRequested", "Normal"),
        ("ManagedInstance", "web-2", "EmergencyRequested", "Normal"),
        ("ManagedInstance", "web-1", "EmergencySucceeded", "Normal"),
        ("ManagedInstance", "web-2", "EmergencySucceeded", "Normal"),
        ("ManagedInstance", "web-1", "EmergencyCancelled", "Warning"),
        ("ManagedInstance", "web-2", "EmergencyCancelled", "Warning"),
    ]
    assert posted[0].message.startswith(
        "gate quiet has blocked task patch of window noon since 2026-11-28T08:15:00Z (2700 s): "
        "alertmanager: 1 alert firing (HighErrorRate) (revision "
    )
    assert posted[2].message.startswith(
        "emergency run em-1 for CVE-2026-1234 requested: INC-7; snapshot sha256:ab"
    )
    assert posted[6].message.startswith("emergency run em-1 for CVE-2026-1234: CANCELLED: by ada")
    odd = occurrence(Kind.GATE_BLOCKED, **{**GATE_BLOCKED, "scope": "something else"})
    assert list(notices(odd, lambda _: None)) == [], "no object to post it on"


@pytest.mark.apiserver
def test_the_api_server_takes_gate_and_emergency_events(kube_api: KubeApi) -> None:
    """Posted through the controller's EventSink to the real kube-apiserver, as the loop's
    observer would: each on its object, in order."""
    ns = kube_api.namespace()
    sink = EventSink(kube_api.client(), ns, uid_of=lambda _k, _n: None, object_of=lambda _: None)
    for each in gate_and_emergency_occurrences():
        sink(each)
    sink.close()
    expected = [
        ("MaintenanceWindow/noon", "GateBlocked", "Warning"),
        ("Rollout/web", "GateBlocked", "Warning"),
        *[(f"ManagedInstance/{m}", "EmergencyRequested", "Normal") for m in ("web-1", "web-2")],
        *[(f"ManagedInstance/{m}", "EmergencySucceeded", "Normal") for m in ("web-1", "web-2")],
        *[(f"ManagedInstance/{m}", "EmergencyCancelled", "Warning") for m in ("web-1", "web-2")],
    ]
    wait_for("the gate and emergency Events", lambda: events(kube_api, ns) == expected)


def test_only_objects_whose_current_spec_is_not_in_force_are_stalled() -> None:
    """A refused set: the object with the problem is Stalled with the loader's words, another
    changed object with the refusal, an unchanged one (still in force) not at all."""

    def info(kind: str, name: str) -> ObjectInfo:
        return ObjectInfo(kind, name, "uid", 2, "7", {}, f"{kind}/ns/{name}.yaml")

    bad, changed, steady = (
        info("MaintenanceWindow", "bad"),
        info("PatchGroup", "fleet"),
        info("PatchBaseline", "base"),
    )
    problem = Problem(bad.path, 9, "spec.cutoff", "cutoff (3 h) must be less than duration (2 h)")
    seen = Seen(
        now=T0,
        listing={(i.kind, i.name): i for i in (bad, changed, steady)},
        snapshot=None,
        revision="namespace/ns@sha256:" + "1" * 64,
        applied=frozenset({("PatchBaseline", "base")}),
        problems=[problem],
    )
    got = {key: {c["type"]: c for c in s["conditions"]} for key, s in statuses(seen).items()}
    window = got[("MaintenanceWindow", "bad")]
    assert (window["Stalled"]["status"], window["Stalled"]["reason"]) == ("True", "InvalidSpec")
    assert window["Stalled"]["message"] == (
        "line 9: spec.cutoff: cutoff (3 h) must be less than duration (2 h)"
    )
    assert window["Ready"]["status"] == "False"
    group = got[("PatchGroup", "fleet")]
    assert (group["Stalled"]["status"], group["Stalled"]["reason"]) == ("True", "SnapshotRefused")
    assert "MaintenanceWindow/ns/bad.yaml" in group["Stalled"]["message"]
    assert got[("PatchBaseline", "base")]["Stalled"]["status"] == "False"
    assert all(s["observedGeneration"] == 2 for s in statuses(seen).values())


def node(name: str, labels: dict[str, str], uid: str = "u-1") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "labels": labels}}


def test_a_node_mirror_carries_the_nodes_labels_connection_and_owner() -> None:
    mirror = mirror_of(node("n1", {"zone": "a"}), "ns")
    assert mirror["metadata"]["labels"] == {"zone": "a", NODE_LABEL: "n1"}
    assert mirror["spec"]["connection"] == {"type": "kubernetes", "node": "n1"}
    assert mirror["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    mine = {"metadata": {"name": "n2", "labels": {NODE_LABEL: "n2"}, "uid": "m2"}}
    users = {"metadata": {"name": "n3", "labels": {}}}
    todo = changes(
        [node("n1", {"zone": "a"}), node("n3", {})], [mine, users], "ns"
    )  # n1 new, n2's node gone, n3 is a user's instance
    assert [m["metadata"]["name"] for m in todo.create] == ["n1"]
    assert todo.delete == [("n2", "m2")]
    assert todo.skipped == ["n3"]


def test_a_mirror_is_owned_by_the_controllers_deployment_when_it_has_one() -> None:
    """With the Deployment as owner the garbage collector takes the mirror with the release
    (an object goes only when every owner has: the Node is then not one); an older mirror,
    owned by its Node, is re-owned; a user's instance under a Node's name is left alone."""
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pw", "uid": "d-1"}
    assert mirror_of(node("n1", {}), "ns", owner)["metadata"]["ownerReferences"] == [owner]
    older = mirror_of(node("n1", {}), "ns")
    older["metadata"]["resourceVersion"] = "7"
    users = {"metadata": {"name": "n3", "labels": {}}}
    todo = changes([node("n1", {}), node("n3", {})], [older, users], "ns", owner)
    assert todo.reown == [("n1", [owner], "7")]
    assert (todo.create, todo.relabel, todo.delete, todo.skipped) == ([], [], [], ["n3"])
    served = {**owner, "controller": False}  # as the API may return it: still the same owner
    current = mirror_of(node("n1", {}), "ns", served)
    assert changes([node("n1", {})], [current], "ns", owner).reown == []


# --- with the API server -----------------------------------------------------------------------


def _deployment_chain(kube_api: KubeApi, ns: str) -> tuple[str, dict[str, Any]]:
    """A Deployment, its ReplicaSet and their pod, as the controllers would make them (no
    controller-manager runs here, so the test writes the owner references): the pod's name and
    the ownerReference to the Deployment."""
    admin = kube_api.client()
    apps = kubernetes.client.AppsV1Api(admin)
    labels = {"app": "pw"}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "pw"}]},
    }
    spec = {"selector": {"matchLabels": labels}, "template": template}
    deployment = apps.create_namespaced_deployment(ns, {"metadata": {"name": "pw"}, "spec": spec})
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pw"}
    ref["uid"] = deployment.metadata.uid
    replica_set = apps.create_namespaced_replica_set(
        ns,
        {
            "metadata": {"name": "pw-1", "ownerReferences": [{**ref, "controller": True}]},
            "spec": spec,
        },
    )
    rs_ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "pw-1"}
    rs_ref["uid"] = replica_set.metadata.uid
    pod = {**template, "metadata": {"name": "pw-1-x", "labels": labels}}
    pod["metadata"]["ownerReferences"] = [{**rs_ref, "controller": True}]
    kubernetes.client.CoreV1Api(admin).create_namespaced_pod(ns, pod)
    return "pw-1-x", ref


@pytest.mark.apiserver
def test_the_lease_and_mirrors_are_owned_by_the_deployment_found_from_the_pod(
    kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pod -> ReplicaSet -> Deployment; the Lease keeps its owner across renewals (a PUT
    without it would drop it). Outside a pod, or in another namespace's pod, no owner."""
    ns = kube_api.namespace()
    pod, ref = _deployment_chain(kube_api, ns)
    api = kube_api.client()
    monkeypatch.delenv("POD_NAME", raising=False)
    assert own_deployment(api, ns) is None  # not in a pod
    monkeypatch.setenv("POD_NAME", pod)
    monkeypatch.setenv("POD_NAMESPACE", "elsewhere")
    assert own_deployment(api, ns) is None  # an owner in another namespace would be "gone"
    monkeypatch.setenv("POD_NAMESPACE", ns)
    assert own_deployment(api, ns) == ref
    elector = LeaderElector(api, LeaseConfig("pw", ns, "me", owners=(ref,)))
    assert elector.try_acquire_or_renew() and elector.try_acquire_or_renew()
    coordination = kubernetes.client.CoordinationV1Api(api)
    owners = coordination.read_namespaced_lease("pw", ns).metadata.owner_references
    assert [(o.kind, o.name, o.uid) for o in owners] == [("Deployment", "pw", ref["uid"])]
    name = f"node-{ns}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_node({"metadata": {"name": name, "labels": {"pw-test": ns}}})
    try:
        NodeMirror(api, ns, f"pw-test={ns}").sync()  # an older controller's: owned by the Node
        assert NodeMirror(api, ns, f"pw-test={ns}", ref).sync().reown
        owners = get(kube_api, ns, "ManagedInstance", name)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"]) for o in owners] == [("Deployment", ref["uid"])]
    finally:
        core.delete_node(name)


def custom(kube_api: KubeApi) -> Any:
    return kubernetes.client.CustomObjectsApi(kube_api.client())


def apply(kube_api: KubeApi, namespace: str, text: str) -> None:
    """Create or replace every document of ``text`` in ``namespace``."""
    api = custom(kube_api)
    for document in yaml.safe_load_all(text):
        plural, name = PLURAL[document["kind"]], document["metadata"]["name"]
        try:
            current = api.get_namespaced_custom_object(G, V, namespace, plural, name)
        except kubernetes.client.ApiException as exc:
            assert exc.status == 404
            api.create_namespaced_custom_object(G, V, namespace, plural, document)
            continue
        document["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        api.replace_namespaced_custom_object(G, V, namespace, plural, name, document)


def get(kube_api: KubeApi, namespace: str, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(kube_api).get_namespaced_custom_object(
        G, V, namespace, PLURAL[kind], name
    )
    return result


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something true; an ApiException is polled past."""
    return wait_until(
        what, check, timeout=timeout, every=0.3, ignore=(kubernetes.client.ApiException,)
    )


def events(kube_api: KubeApi, namespace: str) -> list[tuple[str, str, str]]:
    """(involved kind/name, reason, type) of every Event in the namespace, oldest first."""
    core = kubernetes.client.CoreV1Api(kube_api.client())
    items = core.list_namespaced_event(namespace).items
    # Names end in the posting time (hex nanoseconds): the order within one second.
    items.sort(key=lambda e: (e.first_timestamp or T0, e.metadata.name.rpartition(".")[2]))
    return [(f"{e.involved_object.kind}/{e.involved_object.name}", e.reason, e.type) for e in items]


def ready_instance(kube_api: KubeApi, namespace: str, name: str, status: str) -> Callable[[], Any]:
    """Check: the instance's status reports ``status`` for its current generation, Ready."""

    def check() -> dict[str, Any] | None:
        obj = get(kube_api, namespace, "ManagedInstance", name)
        s = obj.get("status") or {}
        ready = conditions(obj).get("Ready", {})
        if (
            s.get("complianceStatus") == status
            and s.get("observedGeneration") == obj["metadata"]["generation"]
            and ready.get("status") == "True"
        ):
            return obj
        return None

    return check


@dataclass
class Controller:
    """A ``patchctl controller`` process."""

    process: subprocess.Popen[bytes]
    identity: str
    state: Path
    log: Path
    port: int

    def jobs(self) -> int:
        if not self.state.exists():
            return 0
        with sqlite3.connect(self.state) as db:
            try:
                return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


@pytest.fixture
def controllers(kube_api: KubeApi, tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """Start controllers (each its own state and log); all are stopped at the end."""
    started: list[Controller] = []

    def start(namespace: str, identity: str = "one", *extra: str) -> Controller:
        state = tmp_path / identity / "state.db"
        state.parent.mkdir(parents=True, exist_ok=True)
        log = tmp_path / identity / "controller.log"
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "controller",
            "--kubeconfig",
            str(kube_api.kubeconfig),
            "--namespace",
            namespace,
            "--state",
            str(state),
            "--no-nodes",
            "--listen",
            f"127.0.0.1:{port}",
            "--identity",
            identity,
            "--lease-duration",
            "4",
            "--renew-deadline",
            "3",
            "--retry-period",
            "0.5",
            *extra,
        ]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb")
        )
        controller = Controller(process, identity, state, log, port)
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop(signal.SIGKILL)


def fleet_yaml(root: Path, name: str = "web-1") -> str:
    return BASELINE_YAML + "---\n" + local_instance_yaml(name, root)


def in_process(
    api: Any,
    ns: str,
    store: StateStore,
    writer: StatusWriter | None = None,
    gate_api: Kube | None = None,
    clock: Clock = utc_now,
) -> ControllerReconciler:
    """The controller's reconciler in this process, local connections, writing status, on
    ``clock``."""
    return ControllerReconciler(
        KubernetesSource(api, ns, watch_nodes=False),
        store,
        lambda instance: transport_for(instance.spec.connection, trust_root_scripts=True),
        writer=writer or StatusWriter(api, ns),
        gate_api=gate_api,
        clock=clock,
    )


@pytest.mark.apiserver
@needs_apt
def test_the_controller_reconciles_resources_and_reports_on_them(
    kube_api: KubeApi, controllers: Callable[..., Controller], system_root: Path
) -> None:
    """Created resources are scanned and their status written; a changed baseline changes it;
    a deleted instance leaves the group's counts; Events only on transitions. The interval is
    long: every reaction here comes from the watch."""
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    controller = controllers(ns, "one", "--interval", "600")

    obj = wait_for(
        "web-1 scanned NON_COMPLIANT", ready_instance(kube_api, ns, "web-1", "NON_COMPLIANT")
    )
    status = obj["status"]
    assert status["baseline"] == BASELINE and status["patchGroup"] == GROUP
    assert status["operation"] == "Scan" and status["operatingSystem"] == "DEBIAN"
    assert status["missingCount"] > 0
    for count in ("installedCount", "installedOtherCount", "installedPendingRebootCount"):
        assert isinstance(status[count], int)
    for count in ("installedRejectedCount", "failedCount", "notApplicableCount"):
        assert isinstance(status[count], int)
    assert status["revision"].startswith(f"namespace/{ns}@sha256:")
    assert conditions(obj)["NonCompliant"]["status"] == "True"
    assert conditions(obj)["Stalled"]["status"] == "False"
    group = get(kube_api, ns, "PatchGroup", GROUP)["status"]
    assert (group["instances"], group["instancesNonCompliant"]) == (1, 1)
    assert group["instancesWithMissingPatches"] == 1
    baseline = get(kube_api, ns, "PatchBaseline", BASELINE)
    assert conditions(baseline)["Ready"]["status"] == "True"
    assert baseline["status"]["observedGeneration"] == baseline["metadata"]["generation"]
    assert events(kube_api, ns) == [("ManagedInstance/web-1", "NonCompliant", "Warning")]

    # A new baseline generation: rescanned (the baseline's content changed) and compliant.
    apply(kube_api, ns, NOTHING_APPROVED)
    obj = wait_for("web-1 COMPLIANT", ready_instance(kube_api, ns, "web-1", "COMPLIANT"))
    assert conditions(obj)["NonCompliant"]["status"] == "False"
    baseline = get(kube_api, ns, "PatchBaseline", BASELINE)
    assert baseline["metadata"]["generation"] == 2
    assert baseline["status"]["observedGeneration"] == 2
    assert wait_for(
        "the group compliant",
        lambda: get(kube_api, ns, "PatchGroup", GROUP)["status"]["instancesNonCompliant"] == 0,
    )
    assert events(kube_api, ns) == [
        ("ManagedInstance/web-1", "NonCompliant", "Warning"),
        ("ManagedInstance/web-1", "Compliant", "Normal"),
    ]

    # Deleted: the instance no longer counts in its group.
    custom(kube_api).delete_namespaced_custom_object(G, V, ns, PLURAL["ManagedInstance"], "web-1")
    wait_for(
        "the group empty",
        lambda: get(kube_api, ns, "PatchGroup", GROUP)["status"]["instances"] == 0,
    )
    assert controller.process.poll() is None, controller.logs()
    assert controller.stop() == 0
    assert '"released lease"' in controller.logs() or "released lease" in controller.logs()


@pytest.mark.apiserver
@needs_apt
def test_a_set_the_loader_refuses_stalls_the_object_with_its_message(
    kube_api: KubeApi, controllers: Callable[..., Controller], system_root: Path
) -> None:
    """cutoff >= duration passes the CRD schema (no cross-field rules on this server) but not the
    loader: the window is Stalled with the loader's words, one Event says so, and the rest of
    the fleet keeps being reconciled under the last good set."""
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    controllers(ns, "one", "--interval", "600")
    wait_for("web-1 scanned", ready_instance(kube_api, ns, "web-1", "NON_COMPLIANT"))

    apply(kube_api, ns, window_yaml("nightly", "cron(0 2 * * ? *)", duration=2, cutoff=3))

    def stalled() -> dict[str, Any] | None:
        window = get(kube_api, ns, "MaintenanceWindow", "nightly")
        stall = conditions(window).get("Stalled", {})
        return window if stall.get("status") == "True" else None

    window = wait_for("the window Stalled", stalled)
    stall = conditions(window)["Stalled"]
    assert stall["reason"] == "InvalidSpec"
    assert "spec.cutoff: cutoff (3 h) must be less than duration (2 h)" in stall["message"]
    assert conditions(window)["Ready"]["status"] == "False"
    assert window["status"]["observedGeneration"] == window["metadata"]["generation"]
    # What was in force stays in force and is not Stalled.
    instance = get(kube_api, ns, "ManagedInstance", "web-1")
    assert conditions(instance)["Stalled"]["status"] == "False"
    assert ("MaintenanceWindow/nightly", "SnapshotRefused", "Warning") in events(kube_api, ns)

    # Fixed: accepted, the Stalled condition flips back.
    apply(kube_api, ns, window_yaml("nightly", "cron(0 2 * * ? *)", duration=4, cutoff=1))

    def accepted() -> dict[str, Any] | None:
        window = get(kube_api, ns, "MaintenanceWindow", "nightly")
        ok = conditions(window).get("Ready", {}).get("status") == "True"
        return window if ok else None

    window = wait_for("the window accepted", accepted)
    assert conditions(window)["Stalled"]["status"] == "False"
    assert window["status"]["nextExecutionTime"].endswith("T02:00:00Z")
    assert window["status"]["observedGeneration"] == 2


@pytest.mark.apiserver
@needs_apt
def test_status_is_written_once_and_left_alone_when_nothing_changed(
    kube_api: KubeApi, system_root: Path, tmp_path: Path
) -> None:
    """Two passes in-process over an unchanged namespace: the second writes nothing, so no
    object's resourceVersion moves (no write storms, no self-triggered watch events)."""
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    api = kube_api.client()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = in_process(api, ns, store)
        reconciler.reconcile()
        assert reconciler.written == {"written": 3}
        versions = {
            kind: get(kube_api, ns, kind, name)["metadata"]["resourceVersion"]
            for kind, name in [
                ("PatchBaseline", BASELINE),
                ("PatchGroup", GROUP),
                ("ManagedInstance", "web-1"),
            ]
        }
        revision = reconciler.revision
        reconciler.reconcile()
        assert reconciler.written == {"unchanged": 3}
        assert reconciler.revision == revision  # our own status writes are not a new revision
        for kind, name in [("PatchBaseline", BASELINE), ("PatchGroup", GROUP)]:
            assert get(kube_api, ns, kind, name)["metadata"]["resourceVersion"] == versions[kind]
        instance = get(kube_api, ns, "ManagedInstance", "web-1")
        assert instance["metadata"]["resourceVersion"] == versions["ManagedInstance"]


class _RefusingBaselines(StatusWriter):
    """The real writer, except that the API's refusal of PatchBaseline status (as an older
    chart's RBAC without patchbaselines/status would answer) is simulated here."""

    def write(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Written:
        if kind == "PatchBaseline":
            raise kubernetes.client.ApiException(status=403, reason="Forbidden")
        return super().write(kind, name, *args, **kwargs)


@pytest.mark.apiserver
@needs_apt
def test_one_object_whose_status_is_refused_does_not_cost_the_others_theirs(
    kube_api: KubeApi, system_root: Path, tmp_path: Path
) -> None:
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    api = kube_api.client()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = in_process(api, ns, store, _RefusingBaselines(api, ns))
        reconciler.reconcile()
    assert reconciler.written == {"failed": 1, "written": 2}
    assert "status" not in get(kube_api, ns, "PatchBaseline", BASELINE)
    assert get(kube_api, ns, "PatchGroup", GROUP)["status"]["observedGeneration"] == 1
    assert get(kube_api, ns, "ManagedInstance", "web-1")["status"]["observedGeneration"] == 1


@pytest.mark.apiserver
def test_a_status_conflict_is_retried_on_the_fresh_object_and_a_deleted_one_skipped(
    kube_api: KubeApi, system_root: Path
) -> None:
    """409: the object changed after it was read (here: a user relabelled it). The writer reads
    it again and writes on top of the new version; the user's change stays."""
    ns = kube_api.namespace()
    apply(kube_api, ns, local_instance_yaml("web-1", system_root))
    stale = get(kube_api, ns, "ManagedInstance", "web-1")
    obj = dict(stale, metadata={**stale["metadata"], "labels": {"fleet": "e2e", "tier": "web"}})
    custom(kube_api).replace_namespaced_custom_object(
        G, V, ns, PLURAL["ManagedInstance"], "web-1", obj
    )
    writer = StatusWriter(kube_api.client(), ns, clock=lambda: T0)
    wanted = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Scanned", "message": ""}],
    }
    outcome = writer.write(
        "ManagedInstance",
        "web-1",
        wanted,
        current={},
        resource_version=stale["metadata"]["resourceVersion"],
    )
    assert outcome is Written.WRITTEN
    now = get(kube_api, ns, "ManagedInstance", "web-1")
    assert now["metadata"]["labels"]["tier"] == "web"
    assert conditions(now)["Ready"]["lastTransitionTime"] == "2026-11-28T09:00:00Z"
    assert (
        writer.write("ManagedInstance", "gone", wanted, current={}, resource_version="1")
        is Written.GONE
    )


@pytest.mark.apiserver
def test_nodes_are_mirrored_and_their_heartbeats_change_nothing(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    """Every selected Node becomes a ManagedInstance with its labels; a label change follows,
    a heartbeat (status) does not change the revision, a deleted Node's mirror goes (no garbage
    collector runs on this server, so the controller does it)."""
    ns = kube_api.namespace()
    core = kubernetes.client.CoreV1Api(kube_api.client())
    mark = ns  # only this test's Nodes (Nodes are cluster-wide)
    name = f"node-{ns}"
    core.create_node({"metadata": {"name": name, "labels": {"pw-test": mark, "zone": "a"}}})
    try:
        api = kube_api.client()
        mirror = NodeMirror(api, ns, f"pw-test={mark}")
        assert [m["metadata"]["name"] for m in mirror.sync().create] == [name]
        instance = get(kube_api, ns, "ManagedInstance", name)
        assert instance["spec"]["connection"] == {"type": "kubernetes", "node": name}
        assert instance["metadata"]["labels"] == {"pw-test": mark, "zone": "a", NODE_LABEL: name}
        assert instance["metadata"]["ownerReferences"][0]["kind"] == "Node"
        source = KubernetesSource(api, ns, node_selector=f"pw-test={mark}")
        revision, snapshot = source.snapshot()
        assert name in snapshot.instances

        # A heartbeat: the Node's status moves, nothing else does.
        core.patch_node_status(
            name,
            {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Beat"}]}},
        )
        assert mirror.sync().create == [] and mirror.sync().relabel == []
        assert source.snapshot()[0] == revision

        # Relabelled (a label dropped, one changed): the mirror follows; a new revision.
        core.patch_node(name, {"metadata": {"labels": {"zone": "b"}}})
        assert [r[0] for r in mirror.sync().relabel] == [name]
        labels = get(kube_api, ns, "ManagedInstance", name)["metadata"]["labels"]
        assert labels == {"pw-test": mark, "zone": "b", NODE_LABEL: name}
        assert source.snapshot()[0] != revision
        node_json = core.read_node(name)
        node_json.metadata.labels.pop("zone")
        core.replace_node(name, node_json)
        mirror.sync()
        labels = get(kube_api, ns, "ManagedInstance", name)["metadata"]["labels"]
        assert labels == {"pw-test": mark, NODE_LABEL: name}
    finally:
        core.delete_node(name)
    assert mirror.sync().delete
    with pytest.raises(kubernetes.client.ApiException) as gone:
        get(kube_api, ns, "ManagedInstance", name)
    assert gone.value.status == 404


def instances_gauge(base: str) -> dict[tuple[str, str], float] | None:
    """``patchwarden_instances`` by (status, group), non-zero series only, once a pass is done
    (None before, or while nothing answers)."""
    try:
        metrics = scrape(base)
    except OSError:
        return None
    if metrics.value("patchwarden_reconcile_passes_total") < 1:
        return None
    samples = metrics.samples.get("patchwarden_instances", [])
    return {(got["status"], got["group"]): v for got, v in samples if v}


@pytest.mark.apiserver
def test_mirrored_nodes_are_counted_on_metrics_before_their_scans_report(
    kube_api: KubeApi, controllers: Callable[..., Controller]
) -> None:
    """patchwarden_instances counts the instances in force, not only those with a scan in the
    store (it read 0 on the real node): a mirrored Node whose scan has not reported (never, here:
    no kubelet runs it, NodeNotReady) counts as NOT_SCANNED in the group its labels select, and
    once the Node and its mirror are gone it no longer counts."""
    ns = kube_api.namespace()
    core = kubernetes.client.CoreV1Api(kube_api.client())
    name = f"node-{ns}"
    core.create_node({"metadata": {"name": name, "labels": {"pw-test": ns, "fleet": "e2e"}}})
    try:
        apply(kube_api, ns, BASELINE_YAML)  # its PatchGroup selects fleet=e2e
        selector = ("--nodes", "--node-selector", f"pw-test={ns}", "--interval", "1")
        controller = controllers(ns, "one", *selector)
        base = f"http://127.0.0.1:{controller.port}"
        counted = wait_until(
            "the mirrored Node counted",
            lambda: instances_gauge(base),
            timeout=60,
            every=0.3,
            detail=controller.logs,
        )
        assert counted == {("NOT_SCANNED", GROUP): 1}
        assert "NodeNotReady" in controller.logs()  # its scan failed: nothing in the store
    finally:
        core.delete_node(name)
    wait_until(
        "the deleted Node no longer counted",
        lambda: instances_gauge(base) == {},
        timeout=60,
        every=0.3,
        detail=controller.logs,
    )
    assert controller.stop() == 0, controller.logs()


@pytest.mark.apiserver
def test_the_watch_wakes_on_changes_but_not_on_status_writes(
    kube_api: KubeApi, system_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What wakes the loop: an object created, its spec changed, deleted. What does not: a status
    write (the controller's own, every pass), which would otherwise wake it forever."""
    ns = kube_api.namespace()
    wakes = threading.Semaphore(0)
    source = KubernetesSource(kube_api.client(), ns, watch_nodes=False)
    listed = _listed_kinds(source, monkeypatch)
    stop = source.watch(wakes.release)
    try:

        def woken(timeout: float = 10.0) -> bool:
            return wakes.acquire(timeout=timeout)

        # The first list wakes nobody: what is created before it is simply there.
        wait_until("the watches to list", lambda: len(listed) == len(KINDS))
        apply(kube_api, ns, local_instance_yaml("web-1", system_root))
        assert woken()
        while wakes.acquire(timeout=1):
            pass  # one create may wake more than once; level-based, that is harmless
        custom(kube_api).patch_namespaced_custom_object_status(
            G, V, ns, PLURAL["ManagedInstance"], "web-1", {"status": {"waiting": "x"}}
        )
        # A label change after it, on the same watch: its events arrive in order, so when the
        # label's wake is in, the status write's would be too. Exactly one wake: the label's.
        custom(kube_api).patch_namespaced_custom_object(
            G, V, ns, PLURAL["ManagedInstance"], "web-1", {"metadata": {"labels": {"seen": "1"}}}
        )
        assert woken()
        assert not wakes.acquire(blocking=False)
        apply(kube_api, ns, BASELINE_YAML)
        assert woken()
        custom(kube_api).delete_namespaced_custom_object(
            G, V, ns, PLURAL["ManagedInstance"], "web-1"
        )
        assert woken()
    finally:
        stop()


def _listed_kinds(source: KubernetesSource, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The kinds ``source``'s watches have listed (not watched) so far: each lists once before
    it watches from the list's resourceVersion, so a change made after that is never missed."""
    listed: set[str] = set()
    lister = source._lister

    class Recording:
        """The kind's collection, noting each list; the requests still reach the server."""

        def __init__(self, kind: str) -> None:
            self.kind, self.real = kind, lister(kind)

        def list(self) -> Any:
            answer = self.real.list()
            listed.add(self.kind)
            return answer

        def watch(self, version: str, seconds: int) -> Any:
            return self.real.watch(version, seconds)

    monkeypatch.setattr(source, "_lister", Recording)
    return listed


@pytest.mark.apiserver
def test_a_watch_that_expired_lists_again_and_keeps_watching(kube_api: KubeApi) -> None:
    """410 Gone (the watch's resourceVersion is older than the server keeps): list again and
    watch from there, without losing the change that happens next."""
    ns = kube_api.namespace()

    class Expiring(_Watcher):
        lists = 0

        def _relist(self, *, wake: bool) -> str:
            version = super()._relist(wake=wake)
            self.lists += 1
            return "1" if self.lists == 1 else version  # the first watch starts far too old

    wakes = threading.Semaphore(0)
    source = KubernetesSource(kube_api.client(), ns, watch_nodes=False)
    stop = threading.Event()
    watcher = Expiring(source._lister("PatchBaseline"), wakes.release, stop, name="expiring")
    watcher.start()
    try:
        # Listed again: the watch goes on from that list's resourceVersion, so the change
        # made next is delivered whenever the watch request reaches the server.
        wait_for("a second list after 410 Gone", lambda: watcher.lists >= 2, timeout=15)
        apply(kube_api, ns, BASELINE_YAML.split("---")[0])
        assert wakes.acquire(timeout=10)
    finally:
        stop.set()
        watcher.stop()


def lease_holder(kube_api: KubeApi, namespace: str, name: str = "patchwarden-controller") -> str:
    coordination = kubernetes.client.CoordinationV1Api(kube_api.client())
    try:
        return str(coordination.read_namespaced_lease(name, namespace).spec.holder_identity or "")
    except kubernetes.client.ApiException:
        return ""


@pytest.mark.apiserver
@needs_apt
def test_two_replicas_one_leader_and_a_takeover_when_it_dies(
    kube_api: KubeApi,
    controllers: Callable[..., Controller],
    system_root: Path,
) -> None:
    """Two controller processes on one namespace: one holds the Lease and is the only one that
    runs jobs and writes status; SIGKILL it and the other takes over within the lease duration."""
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    first = controllers(ns, "alpha", "--interval", "2")
    wait_for("alpha leads", lambda: lease_holder(kube_api, ns) == "alpha")
    second = controllers(ns, "beta", "--interval", "2")
    scanned = wait_for("web-1 scanned", ready_instance(kube_api, ns, "web-1", "NON_COMPLIANT"))
    # Two whole passes of alpha after the one that scanned (every 2 s: beta has been waiting
    # through several retry periods of 0.5 s meanwhile).
    alpha = f"http://127.0.0.1:{first.port}"
    passes = scrape(alpha).value("patchwarden_reconcile_passes_total")
    wait_for(
        "two idle passes of alpha",
        lambda: scrape(alpha).value("patchwarden_reconcile_passes_total") >= passes + 3,
        timeout=60,
    )
    # Idle passes write nothing and announce nothing.
    again = get(kube_api, ns, "ManagedInstance", "web-1")
    assert again["metadata"]["resourceVersion"] == scanned["metadata"]["resourceVersion"]
    assert events(kube_api, ns) == [("ManagedInstance/web-1", "NonCompliant", "Warning")]
    assert lease_holder(kube_api, ns) == "alpha"
    assert first.jobs() >= 1
    assert second.jobs() == 0, second.logs()
    assert second.process.poll() is None  # a standby waits, healthy

    first.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for("beta leads", lambda: lease_holder(kube_api, ns) == "beta", timeout=30)
    assert time.monotonic() - killed < 4 + 3  # lease duration + retries
    # The new leader has no history of its own: it scans the instance again.
    wait_for("beta ran a job", lambda: second.jobs() >= 1, timeout=60)
    assert second.stop() == 0
    assert lease_holder(kube_api, ns) == ""  # released on SIGTERM


@pytest.mark.apiserver
def test_losing_the_lease_stops_the_controller_with_an_error(
    kube_api: KubeApi, controllers: Callable[..., Controller]
) -> None:
    """Someone else takes the Lease (here: the test writes itself into it): the controller stops
    starting jobs and exits non-zero, so its Pod restarts as a follower."""
    ns = kube_api.namespace()
    controller = controllers(ns, "alpha", "--interval", "2")
    wait_for("alpha leads", lambda: lease_holder(kube_api, ns) == "alpha")
    coordination = kubernetes.client.CoordinationV1Api(kube_api.client())

    def intrude() -> bool:
        """Take the lease for an intruder; whether alpha has given up (exited) by now."""
        if controller.process.poll() is not None:
            return True
        lease = coordination.read_namespaced_lease("patchwarden-controller", ns)
        lease.spec.holder_identity = "intruder"
        lease.spec.renew_time = datetime.now(UTC)
        lease.spec.lease_duration_seconds = 60
        with contextlib.suppress(kubernetes.client.ApiException):  # alpha renewed: again
            coordination.replace_namespaced_lease("patchwarden-controller", ns, lease)
        return False

    wait_until("alpha to give up", intrude, timeout=40, every=0.2, detail=controller.logs)
    assert controller.process.wait(timeout=30) == 1, controller.logs()
    assert "lost the leader lease" in controller.logs()
    assert lease_holder(kube_api, ns) == "intruder"


@pytest.mark.apiserver
@needs_apt
def test_with_a_directory_or_git_source_it_still_leads_and_reconciles(
    kube_api: KubeApi,
    controllers: Callable[..., Controller],
    system_root: Path,
    tmp_path: Path,
) -> None:
    """The chart can point the controller at Git instead of the cluster's resources: the same
    Lease, the same loop, no status (there are no objects to write it on)."""
    ns = kube_api.namespace()
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "fleet.yaml").write_text(fleet_yaml(system_root))
    controller = controllers(ns, "solo", "--interval", "2", "--source", str(fleet))
    wait_for("solo leads", lambda: lease_holder(kube_api, ns) == "solo")
    wait_for("a scan", lambda: controller.jobs() >= 1)
    with StateStore(controller.state) as store:
        wait_for("web-1 scanned", lambda: "web-1" in store.latest_scans())
        assert store.latest_scans()["web-1"].revision.startswith("dir@sha256:")
    assert controller.stop() == 0, controller.logs()


def report_yaml(name: str, destination: Path | str) -> str:
    return (
        "apiVersion: patchwarden.io/v1alpha1\nkind: ComplianceReport\n"
        f"metadata: {{name: {name}}}\n"
        f"spec: {{schedule: 'rate(1 hour)', destination: '{destination}', format: json}}\n"
    )


@pytest.mark.apiserver
def test_a_reports_last_export_is_its_status(kube_api: KubeApi, tmp_path: Path) -> None:
    """A ComplianceReport exported to a directory: its status says SUCCESS, when, for which
    opening and where the files are; the next pass (nothing new) writes nothing."""
    ns = kube_api.namespace()
    out = tmp_path / "reports"
    apply(kube_api, ns, report_yaml("hourly", out))
    api = kube_api.client()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = ControllerReconciler(
            KubernetesSource(api, ns, watch_nodes=False),
            store,
            lambda instance: pytest.fail("no instance, no job"),
            report_dir=tmp_path,
            writer=StatusWriter(api, ns),
        )
        reconciler.reconcile()
        assert reconciler.written == {"written": 1}
        report = get(kube_api, ns, "ComplianceReport", "hourly")
        last = report["status"]["lastExport"]
        (written,) = out.iterdir()
        assert written.name.startswith("hourly-compliance-report-")
        assert last["status"] == "SUCCESS"
        assert last["locations"] == [str(written)]
        assert "error" not in last
        (run,) = store.report_runs("hourly")
        assert last["opening"] == run.opening and last["time"] == run.finished_at.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert report["status"]["lastExportTime"] == last["time"]
        failed = conditions(report)["ExportFailed"]
        assert (failed["status"], failed["reason"]) == ("False", "NoFailure")
        assert conditions(report)["Ready"]["status"] == "True"

        reconciler.reconcile()  # the opening is exported: nothing due, nothing to write
        assert reconciler.written == {"unchanged": 1}
        again = get(kube_api, ns, "ComplianceReport", "hourly")
        assert again["metadata"]["resourceVersion"] == report["metadata"]["resourceVersion"]


@pytest.mark.apiserver
def test_a_failed_export_sets_export_failed_until_an_export_succeeds(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    """An unwritable destination: ExportFailed=True with the error, lastExport FAILED and no
    lastExportTime; once the destination is writable the retry succeeds, the condition flips and
    no stale error is left in lastExport."""
    ns = kube_api.namespace()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the report directory should be")
    apply(kube_api, ns, report_yaml("hourly", blocker / "reports"))
    api = kube_api.client()
    clock = [T0]  # the status writer's: the conditions' transition times
    with StateStore(tmp_path / "state.db") as store:
        reconciler = ControllerReconciler(
            KubernetesSource(api, ns, watch_nodes=False),
            store,
            lambda instance: pytest.fail("no instance, no job"),
            report_dir=tmp_path,
            writer=StatusWriter(api, ns, clock=lambda: clock[0]),
        )
        reconciler.reconcile()
        report = get(kube_api, ns, "ComplianceReport", "hourly")
        last = report["status"]["lastExport"]
        assert (last["status"], last["locations"]) == ("FAILED", [])
        assert last["error"].startswith(f"{blocker / 'reports'}: cannot")
        assert "lastExportTime" not in report["status"]
        failed = conditions(report)["ExportFailed"]
        assert (failed["status"], failed["reason"]) == ("True", "ExportFailed")
        assert failed["message"] == (
            f"exporting the opening {last['opening']} to {blocker / 'reports'} failed: "
            + last["error"]
        )
        assert conditions(report)["Ready"]["status"] == "True", "the spec itself is in force"
        reconciler.reconcile()  # failing the same way: recorded once, written once
        assert reconciler.written == {"unchanged": 1}

        blocker.unlink()
        clock[0] = clock[0].replace(microsecond=0) + timedelta(seconds=5)
        reconciler.reconcile()
        report = get(kube_api, ns, "ComplianceReport", "hourly")
        last = report["status"]["lastExport"]
        assert last["status"] == "SUCCESS" and "error" not in last
        assert last["locations"] == [str(p) for p in (blocker / "reports").iterdir()]
        ok = conditions(report)["ExportFailed"]
        assert (ok["status"], ok["message"]) == ("False", "")
        assert ok["lastTransitionTime"] != failed["lastTransitionTime"]
        assert report["status"]["lastExportTime"] == last["time"]


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's server, an EMULATOR of EC2 and S3 on loopback; the AWS configuration (which the
    controllers started by the test inherit) has its keys and names no endpoint."""
    awslab.isolated_aws(monkeypatch, tmp_path)
    for name, value in {**EC2_KEYS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with awslab.moto_server() as url:
        yield url


@pytest.mark.apiserver
def test_the_controller_reaches_ec2_and_s3_at_the_endpoints_it_is_given(
    kube_api: KubeApi, controllers: Callable[..., Controller], moto: str
) -> None:
    """As for run and reconcile: with no endpoint in the AWS configuration, --ec2-endpoint-url
    alone reaches the EC2 an ec2 InstanceSource lists, and --s3-endpoint-url alone the bucket a
    ComplianceReport is exported to (moto's emulator for both)."""
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=moto)
    tags = [{"Key": "Name", "Value": "web-1"}, {"Key": "Environment", "Value": "prod"}]
    ec2.run_instances(
        ImageId=EC2_IMAGE,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto)
    s3.create_bucket(Bucket="compliance")
    ns = kube_api.namespace()
    apply(kube_api, ns, INSTANCE_SOURCE + "---\n" + report_yaml("fleet", "s3://compliance/fleet"))
    controllers(ns, "one", "--ec2-endpoint-url", moto, "--s3-endpoint-url", moto)

    def enrolled() -> Any:
        return (get(kube_api, ns, "InstanceSource", EC2_SOURCE).get("status") or {}).get(
            "instances"
        )

    assert wait_for("the EC2 instance enrolled", enrolled) == ["web-1"]
    last = wait_for(
        "the report exported",
        lambda: (get(kube_api, ns, "ComplianceReport", "fleet").get("status") or {}).get(
            "lastExport"
        ),
    )
    assert last["status"] == "SUCCESS", last
    listed = s3.list_objects_v2(Bucket="compliance")["Contents"]
    assert [f"s3://compliance/{o['Key']}" for o in listed] == last["locations"]


@pytest.mark.apiserver
def test_a_known_hosts_file_outside_the_ssh_dir_reaches_no_status(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    """Issue 12 item 2 under the controller: a file outside --ssh-dir is never read, one inside
    that is not a known_hosts file is not quoted; the status names the field, never the secret."""
    ns = kube_api.namespace()
    secret = "root:$6$pw-status-secret$x:19000:0:99999:7:::\n"
    (tmp_path / "token").write_text(secret)
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    (ssh_dir / "copied").write_text(secret)
    instances = [
        f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\nmetadata: {{name: {name}}}\n"
        f"spec: {{connection: {{type: ssh, host: 127.0.0.1, port: 9, knownHostsFile: '{path}'}}}}\n"
        for name, path in (("outside", tmp_path / "token"), ("garbage", "copied"))
    ]
    apply(kube_api, ns, "---\n".join(instances))
    api = kube_api.client()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = ControllerReconciler(
            KubernetesSource(api, ns, watch_nodes=False),
            store,
            lambda i: transport_for(i.spec.connection, ssh_dir=ssh_dir, name=i.metadata.name),
            writer=StatusWriter(api, ns),
        )
        reconciler.reconcile()
    outside = conditions(get(kube_api, ns, "ManagedInstance", "outside"))["Ready"]
    garbage = conditions(get(kube_api, ns, "ManagedInstance", "garbage"))["Ready"]
    assert (
        "SshFileRefused: ManagedInstance outside: spec.connection.knownHostsFile"
        in (outside["message"])
    )
    assert "SshHostKeyRejected" in garbage["message"]
    assert "not an OpenSSH known_hosts file" in garbage["message"]
    for name in ("outside", "garbage"):
        assert "pw-status-secret" not in str(get(kube_api, ns, "ManagedInstance", name))


@pytest.mark.apiserver
def test_an_instance_source_reports_what_it_enrols_and_why_it_cannot(
    kube_api: KubeApi, controllers: Callable[..., Controller]
) -> None:
    """Enrolment in Kubernetes: a static InstanceSource's status counts its machines and names
    the ManagedInstances it generates; an ansibleInventory has no repository to be read from
    here, so its status says RefreshFailed with the reason, and one Event says so."""
    ns = kube_api.namespace()
    apply(
        kube_api,
        ns,
        f"""\
apiVersion: {G}/{V}
kind: InstanceSource
metadata:
  name: lab
spec:
  static:
    hosts:
      - {{name: lab-1, address: 127.0.0.1, port: 1}}
      - {{name: lab-2, address: 127.0.0.1, port: 1}}
---
apiVersion: {G}/{V}
kind: InstanceSource
metadata:
  name: inv
spec:
  ansibleInventory: {{path: hosts.ini}}
""",
    )
    controllers(ns, "one", "--interval", "600")

    def listed(name: str, key: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            obj = get(kube_api, ns, "InstanceSource", name)
            return obj if key in obj.get("status", {}) else None

        return check

    lab = wait_for("lab's status", listed("lab", "machines"))
    status = lab["status"]
    assert (status["kind"], status["machines"], status["instances"]) == (
        "static",
        2,
        ["lab-1", "lab-2"],
    )
    assert conditions(lab)["RefreshFailed"]["status"] == "False"
    inv = wait_for("inv's status", listed("inv", "error"))
    assert "needs a Git or directory source" in inv["status"]["error"]
    failed = conditions(inv)["RefreshFailed"]
    assert failed["status"] == "True" and "nothing listed" in failed["message"]
    wait_for(
        "a RefreshFailed event",
        lambda: ("InstanceSource/inv", "RefreshFailed", "Warning") in events(kube_api, ns),
    )


@pytest.mark.apiserver
def test_a_controller_whose_postgresql_lock_session_is_cut_stops_with_one_line(
    kube_api: KubeApi,
    controllers: Callable[..., Controller],
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As ``patchctl run`` does (tests/test_state_cli.py): the leader's writer lock session is
    ended by an administrator; it writes nothing more and exits 1 with one line, so its Pod
    restarts and waits its turn."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))  # beside-the-store files
    ns = kube_api.namespace()
    # The fixture's own --state is a file; the later option wins.
    controller = controllers(ns, "alpha", "--interval", "1", "--state", postgres_url)
    wait_for("alpha leads", lambda: lease_holder(kube_api, ns) == "alpha")
    wait_for("alpha takes the writer lock", lambda: writer_lock_held(postgres_url))
    terminate_lock_session(postgres_url)
    assert controller.process.wait(timeout=60) == 1, controller.logs()
    logs = controller.logs()
    assert logs.splitlines()[-1].startswith(
        "patchctl: lost the writer lock of the state store postgresql://"
    ), logs
    assert "Traceback" not in logs
    assert lease_holder(kube_api, ns) == ""  # released: a standby need not wait it out


def _jobs_in(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.apiserver
@needs_apt
def test_a_standby_sharing_postgresql_state_takes_over_without_rescanning(
    kube_api: KubeApi,
    controllers: Callable[..., Controller],
    system_root: Path,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two controller processes share one PostgreSQL store: the second waits as a standby
    (before, the writer lock refused it at start, exit 1); SIGKILL the leader and the standby
    leads, continuing from the shared state: web-1, scanned within staleAfter, is not scanned
    again."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    ns = kube_api.namespace()
    apply(kube_api, ns, fleet_yaml(system_root))
    first = controllers(ns, "alpha", "--interval", "1", "--state", postgres_url)
    wait_for("alpha leads", lambda: lease_holder(kube_api, ns) == "alpha")
    second = controllers(ns, "beta", "--interval", "1", "--state", postgres_url)
    wait_for("web-1 scanned", ready_instance(kube_api, ns, "web-1", "NON_COMPLIANT"))
    jobs = _jobs_in(postgres_url)
    assert jobs >= 1
    beta = f"http://127.0.0.1:{second.port}"
    # A standby serves its endpoints while it waits (one refused at start never does).
    wait_until(
        "beta waits as a standby", lambda: scrape(beta), ignore=(OSError,), detail=second.logs
    )
    assert second.process.poll() is None, second.logs()
    assert lease_holder(kube_api, ns) == "alpha"

    first.stop(signal.SIGKILL)
    wait_for("beta leads", lambda: lease_holder(kube_api, ns) == "beta", timeout=30)
    wait_until(
        "two passes of beta",
        lambda: scrape(beta).value("patchwarden_reconcile_passes_total") >= 2,
        timeout=60,
        every=0.3,
        ignore=(OSError,),  # its standby endpoint gives way to the leader's
    )
    assert _jobs_in(postgres_url) == jobs, second.logs()  # nothing scanned (or installed) again
    assert second.stop() == 0, second.logs()
