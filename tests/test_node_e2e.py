"""End to end on the real node (tests/kubenode.py; issue 18 item 3; docs/kubernetes.md "Install
with Helm"): the image `make image` builds, imported into the node's containerd; the chart
installed with the Helm v4 SDK (what `helm install` does: Debian has no helm binary); the
controller pod Ready, reconciling through the API at the `kubernetes` Service's ClusterIP
(kube-proxy), and answering on `/metrics` through its Service; `helm uninstall` leaving behind
only what Helm never deletes (the CRDs): what the controller itself made (its Lease, the Node's
ManagedInstance) is owned by its Deployment and garbage-collected with it. And the resources a
user applies with kubectl patching that node through the installed controller (nodeJobs.agentRoot:
a Debian root on the host, never the host's own packages)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml

from reconciler import __version__
from reconciler.api.resources import GROUP, VERSION
from reconciler.dispatch.nodes import NodeSettings
from reconciler.kube import Kube
from tests.aptlab import seed
from tests.fleet import BASELINE_YAML, at_now, documents, open_window_yaml, versions
from tests.kubenode import NODE_NAME, KubeNode
from tests.netfleet import INSTALLED, _mount_overlay, base_root, default_repo
from tests.test_image import NAME, _build
from tests.test_kubenode import _budget, _deployment, _pods
from tests.waiting import wait_until

on_the_node = [pytest.mark.apiserver, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "patchwarden"
RELEASE = "pw"
FULLNAME = f"{RELEASE}-patchwarden"
REPOSITORY = "patchwarden.io/patchwarden"
VALUES: dict[str, Any] = {
    # The image `make image` built and `ctr images import` put on the node: never pulled.
    "image": {"repository": REPOSITORY, "tag": __version__, "pullPolicy": "Never"},
    # No volume provisioner runs on the test node: the state lives in an emptyDir.
    "persistence": {"enabled": False},
}
"""The values the test installs with; docs/kubernetes.md "Install with Helm" shows the same."""
READY_TIMEOUT = 240.0


@dataclass
class Release:
    namespace: str
    config: Any  # helm_python.Config
    manifest: list[dict[str, Any]]
    before: set[str]
    """What the namespace held before the install (its ServiceAccount, token, root CA)."""


@pytest.fixture(scope="module")
def image(kube_node: KubeNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`make image` (scripts/image: the Debian root is cached) imported into the node."""
    out = tmp_path_factory.mktemp("image") / f"patchwarden-{__version__}.oci.tar"
    _build(out)
    kube_node.ctr("images", "import", str(out))
    return NAME


@pytest.fixture(scope="module")
def release(kube_node: KubeNode, image: str) -> Iterator[Release]:
    namespace = kube_node.namespace("pwe2e")
    kubeconfig = str(kube_node.api.kubeconfig)
    with (
        helm.Chart.load(CHART) as chart,
        helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as config,
    ):
        before = _left_in(kube_node, namespace)
        done = config.install(chart, RELEASE, VALUES, namespace=namespace, timeout=120)
        manifest = [d for d in yaml.safe_load_all(done["manifest"]) if d]
        yield Release(namespace, config, manifest, before)
        config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)
    kube_node.delete_namespace(namespace)


def _controller_pods(kube_node: KubeNode, namespace: str) -> list[Any]:
    selector = f"app.kubernetes.io/name=patchwarden,app.kubernetes.io/instance={RELEASE}"
    return list(kube_node.core().list_namespaced_pod(namespace, label_selector=selector).items)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


@on_the_node[0]
@on_the_node[1]
def test_the_controller_pod_becomes_ready_and_reports_through_its_service(
    kube_node: KubeNode, release: Release
) -> None:
    ns = release.namespace

    def describe() -> str:
        pods = [p.metadata.name for p in _controller_pods(kube_node, ns)]
        logs = kube_node.kubectl("logs", "-n", ns, f"deploy/{FULLNAME}", check=False)
        return "\n".join(kube_node.describe(ns, p) for p in pods) + logs.stdout + logs.stderr

    wait_until(
        "the controller pod Ready",
        lambda: [_ready(p) for p in _controller_pods(kube_node, ns)] == [True],
        timeout=READY_TIMEOUT,
        every=1.0,
        detail=describe,
    )
    (pod,) = _controller_pods(kube_node, ns)
    assert pod.spec.containers[0].image == NAME
    # Through the Service (the API server's service proxy follows its Endpoints to the pod); a
    # successful reconcile means the controller read the cluster from inside its pod.
    path = f"/api/v1/namespaces/{ns}/services/{FULLNAME}-metrics:metrics/proxy/metrics"

    def reconciled() -> str:
        done = kube_node.kubectl("get", "--raw", path, check=False)
        return done.stdout if _sample(done.stdout, "last_successful_reconcile") > 0 else ""

    metrics = wait_until(
        "a successful reconcile on /metrics", reconciled, timeout=120, every=1.0, detail=describe
    )
    assert _sample(metrics, "reconcile_passes_total") >= 1


def _sample(metrics: str, name: str) -> float:
    """The sum of the samples of ``patchwarden_<name>...`` (0 when there is none)."""
    prefix = f"patchwarden_{name}"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    )


def _left_in(kube_node: KubeNode, namespace: str) -> set[str]:
    """Every listable object in the namespace (Events aside: they expire on their own)."""
    kinds = kube_node.kubectl(
        "api-resources", "--verbs=list", "--namespaced", "-o", "name"
    ).stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    listed = kube_node.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "name")
    return set(listed.stdout.split())


@on_the_node[0]
@on_the_node[1]
def test_uninstall_leaves_nothing_behind(kube_node: KubeNode, release: Release) -> None:
    release.config.uninstall(RELEASE, wait="watcher", timeout=120)
    assert release.config.list() == []
    cluster_scoped = [d for d in release.manifest if "namespace" not in d["metadata"]]
    assert {d["kind"] for d in cluster_scoped} <= {"ClusterRole", "ClusterRoleBinding"}
    for doc in cluster_scoped:
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        gone = kube_node.kubectl("get", name, "--ignore-not-found", "-o", "name").stdout
        assert gone == "", f"{name} left behind"
    ns = release.namespace
    # What the controller made itself (its Lease, the Node's ManagedInstance) is owned by its
    # Deployment: the garbage collector (the node's kube-controller-manager) takes it along.
    wait_until(
        "nothing left in the namespace but what was there before the install",
        lambda: _left_in(kube_node, ns) - release.before == set(),
        timeout=120,
        every=1.0,
        detail=lambda: "\n".join(sorted(_left_in(kube_node, ns) - release.before)),
    )
    # Helm never deletes CRDs (nor, with them, anyone's resources): they stay.
    crds = kube_node.kubectl("get", "crd", "-o", "name").stdout.split()
    assert f"customresourcedefinition.apiextensions.k8s.io/managedinstances.{GROUP}" in crds


def _doc_helm_install() -> list[str]:
    doc = (ROOT / "docs/kubernetes.md").read_text()
    text = doc.split("### Install with Helm", 1)[1].split("\n## ", 1)[0]
    (line,) = [ln for ln in text.splitlines() if ln.startswith("$ helm install ")]
    return shlex.split(line[2:])


def test_the_documented_helm_install_is_the_tests() -> None:
    argv = _doc_helm_install()
    assert argv[:4] == ["helm", "install", RELEASE, "charts/patchwarden"]
    values: dict[str, Any] = {}
    for flag, setting in zip(argv[6::2], argv[7::2], strict=True):
        assert flag == "--set", flag
        path, value = setting.split("=", 1)
        *parents, leaf = path.split(".")
        target = values
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = yaml.safe_load(value) if value in ("true", "false") else value
    assert values == VALUES


# --- patching the node through the installed controller ----------------------------------------

PATCHING_RELEASE = "pwp"
APP = "budgeted"


@dataclass
class Watched:
    """Every change a watch delivered, in order: what a user running ``kubectl get -w`` sees,
    without polling (nothing between two polls is missed)."""

    events: list[tuple[str, Any]]
    stop: Callable[[], None]


@contextlib.contextmanager
def _watching(list_call: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Watched]:
    watcher = kubernetes.watch.Watch()
    events: list[tuple[str, Any]] = []

    def run() -> None:
        with contextlib.suppress(Exception):  # the stream cut when the test stops watching
            for event in watcher.stream(list_call, *args, timeout_seconds=900, **kwargs):
                events.append((event["type"], event["object"]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield Watched(events, watcher.stop)
    finally:
        watcher.stop()


@pytest.fixture
def debian_root(tmp_path: Path) -> Iterator[Path]:
    """A Debian root on the node's host, never the host's own packages (this machine is the
    node): the test fleet's cached bookworm root (tests/netfleet.py; it has /bin/sh, so dpkg runs
    maintainer scripts chrooted, without --trust-root-scripts) under an overlay, its apt pointed
    only at a local repository with security updates, the fleet's packages marked installed."""
    repo = default_repo(tmp_path / "repo")
    root, upper, work = tmp_path / "root", tmp_path / "upper", tmp_path / "work"
    for part in (root, upper, work):
        part.mkdir()
    _mount_overlay(root, [base_root()], upper, work)
    try:
        (root / "etc/apt/sources.list").write_text(
            "".join(
                f"deb [trusted=yes] {repo.uri} {s} main\n" for s in ("stable", "stable-security")
            )
        )
        seed(root, list(INSTALLED))
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """The node Jobs' host directory (NodeSettings.host_dir) on this machine: the agent copies
    put there during the test are removed after it."""
    path = Path(NodeSettings().host_dir)
    existed = path.is_dir()
    before = set(path.iterdir()) if existed else set()
    yield path
    for left in set(path.iterdir()) - before if path.is_dir() else ():
        left.unlink()
    if not existed and path.is_dir():
        path.rmdir()


def _apply(kube_node: KubeNode, namespace: str, path: Path, text: str) -> None:
    """``kubectl apply`` of ``text`` written to ``path``, as a user applies a file."""
    path.write_text(text)
    kube_node.kubectl("apply", "-n", namespace, "-f", str(path))


def _wait_budgeted_app(kube_node: KubeNode, namespace: str) -> str:
    """The app's one pod Running and its budget computed (by the disruption controller) to
    allow one eviction; the pod's name."""
    budget = f"/apis/policy/v1beta1/namespaces/{namespace}/poddisruptionbudgets/{APP}"
    kube = Kube(kube_node.api.client())
    wait_until(
        "the budgeted pod Running, one disruption allowed",
        lambda: (
            list(_pods(kube_node, namespace, APP).values()) == ["Running"]
            and kube.request("GET", budget).get("status", {}).get("disruptionsAllowed") == 1
        ),
        timeout=120,
        every=0.5,
    )
    (pod,) = _pods(kube_node, namespace, APP)
    return pod


def _instance(kube_node: KubeNode, namespace: str) -> dict[str, Any]:
    custom = kubernetes.client.CustomObjectsApi(kube_node.api.client())
    found: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "managedinstances", NODE_NAME
    )
    return found


def _events(kube_node: KubeNode, namespace: str) -> set[tuple[str, str, str]]:
    """(kind, name, reason) of the namespace's Events."""
    listed = json.loads(kube_node.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return {
        (e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"])
        for e in listed["items"]
    }


@on_the_node[0]
@on_the_node[1]
def test_applied_resources_patch_the_node_through_the_installed_controller(
    kube_node: KubeNode, image: str, debian_root: Path, host_dir: Path, tmp_path: Path
) -> None:
    """docs/kubernetes.md "Watch a node get patched", on the real node: the resources applied
    with kubectl, the node cordoned, a budgeted pod evicted, the install Job's privileged pod
    running the agent on the host against the Debian root (nodeJobs.agentRoot), the results on
    the ManagedInstance and in Events, the node uncordoned. NoReboot, and a directory root is
    never rebooted for: nothing can reboot this machine."""
    apps, ns = kube_node.namespace("pwapp"), kube_node.namespace("pwpatch")
    values = {
        **VALUES,
        "nodeJobs": {
            "image": {"pullPolicy": "Never"},
            "agentRoot": str(debian_root),
            # PID 1 of this machine (a Firecracker init) refuses nsenter to every container
            # ("cannot open /proc/1/ns/ipc: Permission denied"); this test's process is in the
            # host's namespaces, as the kubelet is.
            "hostPid": os.getpid(),
        },
        # The controller's loop runs on the tests' clock (`patchctl controller --now`), never
        # on today's date: open_window_yaml's window is open at its start.
        "extraArgs": list(at_now()),
    }
    kubeconfig = str(kube_node.api.kubeconfig)
    with (
        helm.Chart.load(CHART) as chart,
        helm.Config(kubeconfig_path=kubeconfig, namespace=ns) as config,
    ):
        config.install(chart, PATCHING_RELEASE, values, namespace=ns, timeout=120)
        try:
            _patch_the_node(kube_node, ns, apps, debian_root, tmp_path)
        finally:
            kube_node.kubectl("label", "node", NODE_NAME, "fleet-", check=False)
            config.uninstall(PATCHING_RELEASE, ignore_not_found=True, wait="watcher", timeout=120)
            kube_node.delete_namespace(apps)
            kube_node.delete_namespace(ns)


def _patch_the_node(kube_node: KubeNode, ns: str, apps: str, root: Path, tmp_path: Path) -> None:
    app_yaml = yaml.safe_dump_all([_deployment(APP), _budget(APP, maxUnavailable=1)])
    _apply(kube_node, apps, tmp_path / "app.yaml", app_yaml)
    evicted = _wait_budgeted_app(kube_node, apps)
    core = kube_node.core()
    selector = "app.kubernetes.io/component=node-agent"
    with (
        _watching(core.list_node, field_selector=f"metadata.name={NODE_NAME}") as node,
        _watching(core.list_namespaced_pod, ns, label_selector=selector) as agents,
        _watching(core.list_namespaced_pod, apps) as app,
    ):
        # What docs/kubernetes.md says a user applies: a baseline, a group selecting nodes by
        # label, a window (open on the controller's --now clock); the Node's ManagedInstance is
        # the controller's mirror.
        window = open_window_yaml("now", reboot_option="NoReboot", max_concurrency="1")
        _apply(kube_node, ns, tmp_path / "patching.yaml", documents(BASELINE_YAML, window))
        kube_node.kubectl("label", "node", NODE_NAME, "fleet=e2e")

        def describe() -> str:
            logs = kube_node.kubectl(
                "logs", "-n", ns, f"deploy/{PATCHING_RELEASE}-patchwarden", check=False
            )
            return f"{_fleet_versions(root)}\n{logs.stdout[-6000:]}{logs.stderr[-2000:]}"

        wait_until(
            "the security updates installed in the Debian root",
            lambda: _fleet_versions(root) == PATCHED,
            timeout=600,
            every=1.0,
            detail=describe,
        )
        wait_until(
            "the install's results on the ManagedInstance, the node uncordoned",
            lambda: (
                _installed(_instance(kube_node, ns).get("status") or {})
                and not core.read_node(NODE_NAME).spec.unschedulable
            ),
            timeout=300,
            every=1.0,
            detail=describe,
        )
        wait_until(
            "the evicted pod's replacement Running",
            lambda: list(_pods(kube_node, apps, APP).values()) == ["Running"],
            timeout=120,
            every=0.5,
        )
    cordons = [bool(obj.spec.unschedulable) for _, obj in node.events]
    assert True in cordons and cordons[-1] is False, cordons
    annotations = core.read_node(NODE_NAME).metadata.annotations or {}
    assert not any(k.startswith("patchwarden.io/") for k in annotations), annotations
    # The budgeted pod was evicted (deleted through the Eviction API) while the node was
    # cordoned; its replacement waited Pending for the uncordon.
    assert ("DELETED", evicted) in [(kind, obj.metadata.name) for kind, obj in app.events]
    replacements = {obj.metadata.name for _, obj in app.events} - {evicted}
    phases = [obj.status.phase for _, obj in app.events if obj.metadata.name in replacements]
    assert "Pending" in phases and phases[-1] == "Running", phases
    # The install ran in a node Job's privileged pod, which finished.
    installs = [obj for _, obj in agents.events if obj.metadata.name.startswith("pw-install-")]
    assert installs, [obj.metadata.name for _, obj in agents.events]
    assert installs[0].spec.containers[0].security_context.privileged is True
    assert "Succeeded" in [obj.status.phase for obj in installs]
    status = _instance(kube_node, ns)["status"]
    assert status["lastNoRebootInstallOperationTime"] and status["failedCount"] == 0, status
    # Transitions only: NonCompliant at the first scan (two security updates missing), and the
    # install left it so (pending reboot); the window's execution started.
    events = _events(kube_node, ns)
    assert ("ManagedInstance", NODE_NAME, "NonCompliant") in events, events
    assert ("MaintenanceWindow", "now", "ExecutionInProgress") in events, events


def _installed(status: dict[str, Any]) -> bool:
    """SSM's rule for NoReboot: what the install put on the node is INSTALLED_PENDING_REBOOT
    until a reboot, so the node stays NON_COMPLIANT with nothing missing."""
    return (
        status.get("operation") == "Install"
        and status.get("complianceStatus") == "NON_COMPLIANT"
        and (status.get("missingCount"), status.get("installedPendingRebootCount")) == (0, 2)
    )


PATCHED = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1", "pwtest-other": "1.0-1"}
"""The fleet's packages after the window: both security updates, the other update left."""


def _fleet_versions(root: Path) -> dict[str, str]:
    """The fleet's packages' versions in ``root`` (Debian's own are not updated: no source)."""
    return {name: version for name, version in versions(root).items() if name in PATCHED}
