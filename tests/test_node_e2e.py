"""End to end on the real node (tests/kubenode.py; issue 18 item 3; docs/kubernetes.md "Install
with Helm"): the image `make image` builds, imported into the node's containerd; the chart
installed with the Helm v4 SDK (what `helm install` does: Debian has no helm binary); the
controller pod Ready, reconciling through the API at the `kubernetes` Service's ClusterIP
(kube-proxy), and answering on `/metrics` through its Service; `helm uninstall` leaving behind
only what Helm never deletes (the CRDs) and what the controller itself made."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from reconciler import __version__
from tests.kubenode import NODE_NAME, KubeNode
from tests.test_image import NAME, _build
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
    wait_until(
        "only what the controller made left in the namespace",
        lambda: _left_in(kube_node, ns) - release.before == _CONTROLLER_MADE,
        timeout=120,
        every=1.0,
        detail=lambda: "\n".join(sorted(_left_in(kube_node, ns) - release.before)),
    )


_CONTROLLER_MADE = {
    f"lease.coordination.k8s.io/{FULLNAME}",  # its leader election
    f"managedinstance.patchwarden.io/{NODE_NAME}",  # the Node it mirrored
}
"""What the controller made in its namespace, not Helm, and so what `helm uninstall` leaves (no
owner reference ties them to the release): docs/kubernetes.md "Install with Helm" names them."""


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
