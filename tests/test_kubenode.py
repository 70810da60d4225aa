"""A real node (tests/kubenode.py, issue 18 item 2): the kubelet runs pods from an image imported
with ``ctr images import``, their output reaches ``kubectl logs``, and a Service's Endpoints lead
to a pod's address on the node's bridge."""

from __future__ import annotations

import json
from collections.abc import Iterator

import kubernetes
import pytest

from reconciler.dispatch import AgentFailed
from reconciler.dispatch.nodes import drain
from reconciler.dispatch.nodes.model import NodeSettings
from reconciler.kube import Kube
from tests.kubenode import DEBIAN_IMAGE, KUBERNETES_SERVICE_IP, NODE_NAME, KubeNode
from tests.waiting import wait_until

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]


@pytest.fixture
def ns(kube_node: KubeNode) -> Iterator[str]:
    """A namespace of this test's own, deleted (pods and all) when it ends."""
    name = kube_node.namespace()
    yield name
    kube_node.delete_namespace(name)


def _pod(name: str, command: list[str], **extra: object) -> dict[str, object]:
    container = {
        "name": "main",
        "image": DEBIAN_IMAGE,
        "imagePullPolicy": "Never",  # imported, never pulled: no registry is reached
        "command": command,
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        # A server that is PID 1 of its container never dies of SIGTERM (the kernel ignores a
        # signal PID 1 has no handler for): without this the kubelet waits the default 30 s
        # before SIGKILL, and the namespace's deletion outlasted its wait under load.
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def test_a_pod_runs_from_the_imported_image_and_its_output_reaches_kubectl_logs(
    kube_node: KubeNode, ns: str
) -> None:
    script = (
        "import platform; print('hello from', platform.freedesktop_os_release()['PRETTY_NAME'])"
    )
    kube_node.core().create_namespaced_pod(ns, _pod("hello", ["python3", "-c", script]))

    assert kube_node.wait_pod(ns, "hello", ["Succeeded", "Failed"]) == "Succeeded"
    pod = kube_node.core().read_namespaced_pod("hello", ns)
    assert pod.spec.node_name == NODE_NAME
    logs = kube_node.kubectl("logs", "-n", ns, "hello").stdout
    assert logs == "hello from Debian GNU/Linux 12 (bookworm)\n"


def test_a_service_leads_to_a_ready_pod_on_the_node_bridge(kube_node: KubeNode, ns: str) -> None:
    server = ["python3", "-c", _SERVER]
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    kube_node.core().create_namespaced_pod(
        ns, _pod("web", server, ports=[{"containerPort": 8080}], readinessProbe=probe)
    )
    kube_node.core().create_namespaced_service(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    kube_node.wait_pod(ns, "web", ["Running"])
    pod_ip = kube_node.core().read_namespaced_pod("web", ns).status.pod_ip
    assert pod_ip.startswith("10.214.0.")

    # The API server's service proxy follows the Endpoints the controller-manager wrote once the
    # kubelet's readiness probe passed: no kube-proxy is involved.
    path = f"/api/v1/namespaces/{ns}/services/web:80/proxy/"
    body = wait_until(
        "the Service answering through its Endpoints",
        lambda: (
            (done := kube_node.kubectl("get", "--raw", path, check=False)).returncode == 0
            and done.stdout
        ),
        timeout=60,
        every=0.5,
        detail=lambda: kube_node.describe(ns, "web"),
    )
    assert body == f"served by web at {pod_ip}\n"


def test_a_pods_in_cluster_client_reaches_the_api_at_the_kubernetes_service_cluster_ip(
    kube_node: KubeNode, ns: str
) -> None:
    """What the chart's controller pod does first: kube-proxy routes the ClusterIP the kubelet
    puts in the pod's environment to the API server, whose certificate is valid for it."""
    kube_node.core().create_namespaced_pod(ns, _pod("client", ["python3", "-c", _IN_CLUSTER]))

    assert kube_node.wait_pod(ns, "client", ["Succeeded", "Failed"]) == "Succeeded", (
        kube_node.kubectl("logs", "-n", ns, "client", check=False).stdout
    )
    host, version = kube_node.kubectl("logs", "-n", ns, "client").stdout.split(" ", 1)
    assert host == KUBERNETES_SERVICE_IP
    assert json.loads(version) == json.loads(kube_node.kubectl("get", "--raw", "/version").stdout)


def _deployment(name: str) -> dict[str, object]:
    pod = _pod(name, ["sleep", "infinity"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": pod["metadata"],
                # A second's grace: `sleep` as PID 1 ignores SIGTERM, so the kubelet kills it.
                "spec": {
                    **pod["spec"],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def _budget(name: str, **rule: int) -> dict[str, object]:
    return {
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, **rule},
    }


def _pods(kube_node: KubeNode, ns: str, app: str) -> dict[str, str]:
    """name -> phase of the app's pods that are not being deleted."""
    items = kube_node.core().list_namespaced_pod(ns, label_selector=f"app={app}").items
    return {p.metadata.name: p.status.phase for p in items if not p.metadata.deletion_timestamp}


def test_a_drain_evicts_within_each_budget_and_uncordon_brings_the_pod_back(
    kube_node: KubeNode, ns: str
) -> None:
    apps = kubernetes.client.AppsV1Api(kube_node.api.client())
    kube = Kube(kube_node.api.client())
    budgets = f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets"  # what 1.20 serves
    for name, rule in (("web", {"maxUnavailable": 1}), ("db", {"minAvailable": 1})):
        apps.create_namespaced_deployment(ns, _deployment(name))
        kube.create(budgets, _budget(name, **rule))
    wait_until(
        "both pods Running",
        lambda: (
            list(_pods(kube_node, ns, "web").values()) == ["Running"]
            and list(_pods(kube_node, ns, "db").values()) == ["Running"]
        ),
        timeout=120,
        every=0.5,
    )
    # The disruption controller, not the test, computes what each budget allows.
    wait_until(
        "the budgets computed",
        lambda: (
            [
                kube.request("GET", f"{budgets}/{n}").get("status", {}).get("disruptionsAllowed")
                for n in ("web", "db")
            ]
            == [1, 0]
        ),
        timeout=60,
        every=0.5,
    )
    (web,) = _pods(kube_node, ns, "web")
    (db,) = _pods(kube_node, ns, "db")
    drain.cordon(kube, NODE_NAME)
    try:
        settings = NodeSettings(drain_timeout=6.0, poll_seconds=0.5)
        with pytest.raises(AgentFailed) as refused:
            drain.drain(kube, NODE_NAME, settings)
        assert f"{ns}/{db}" in str(refused.value) and "PodDisruptionBudget" in str(refused.value)
        wait_until("web's pod evicted", lambda: web not in _pods(kube_node, ns, "web"), timeout=60)
        # Its replacement cannot land on the cordoned node; db's pod was never touched.
        wait_until(
            "web's replacement Pending",
            lambda: list(_pods(kube_node, ns, "web").values()) == ["Pending"],
            timeout=60,
        )
        assert _pods(kube_node, ns, "db") == {db: "Running"}
    finally:
        drain.uncordon(kube, NODE_NAME)
    wait_until(
        "web's replacement Running after uncordon",
        lambda: list(_pods(kube_node, ns, "web").values()) == ["Running"],
        timeout=120,
        every=0.5,
    )


_IN_CLUSTER = """
import json, os, ssl, urllib.request
d = '/var/run/secrets/kubernetes.io/serviceaccount/'
host = os.environ['KUBERNETES_SERVICE_HOST']
url = 'https://%s:%s/version' % (host, os.environ['KUBERNETES_SERVICE_PORT'])
token = open(d + 'token').read()
request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + token})
answer = urllib.request.urlopen(request, context=ssl.create_default_context(cafile=d + 'ca.crt'))
print(host, json.dumps(json.load(answer)))
"""

_SERVER = """
import http.server, socket
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('served by %s at %s\\n' % (socket.gethostname(), self.request.getsockname()[0]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())
http.server.HTTPServer(('', 8080), Handler).serve_forever()
"""
