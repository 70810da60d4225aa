"""Kubernetes Nodes as machines: Jobs pinned to nodes, cordon, drain through the Eviction API,
reboot, uncordon, and recovery after a controller dies mid-way (docs/nodes.md).

The API server is the real kube-apiserver (tests/kubeapi.py); the controller side runs with
exactly the RBAC docs/nodes.md lists. Nothing runs pods on that server (no scheduler, kubelet or
controller-manager), so the test plays those parts:

- it creates Node objects with a Ready condition and a boot ID, and Pods bound to them (status
  Running, so PodDisruptionBudgets apply), and writes each PodDisruptionBudget's status itself,
  as the disruption controller would, to refuse or allow evictions;
- ``Kubelet`` runs each node Job's own container command (``patchctl node-agent ...``) as a
  process here, with the node's host replaced by a Debian system root (``--no-nsenter`` and the
  agent's ``--root``), so the agent, its documents and the ConfigMap they travel in are all real;
  then it marks the Job Complete through its status subresource;
- a directory root never reboots (the agent records the reboot instead), so for a node whose
  host "reboots", ``Kubelet`` reports what the agent says on a real host after starting the
  reboot (``performed``), then takes the Node NotReady and back Ready with a new boot ID.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml

from reconciler.agent.apt import Apt
from reconciler.api.resources import KubernetesConnection, ManagedInstance
from reconciler.dispatch import AgentFailed, transport_for
from reconciler.dispatch.agent_bundle import agent_zipapp
from reconciler.dispatch.base import InstallRequest, install_args
from reconciler.dispatch.nodes import NodeTransport, drain, jobs, resume_nodes
from reconciler.dispatch.nodes.agent_job import NodeAgentCall, agent_argv
from reconciler.dispatch.nodes.model import (
    ANNOTATION_BOOT_ID,
    ANNOTATION_CORDONED,
    ANNOTATION_JOB,
    ANNOTATION_PHASE,
    EVICT,
    REFUSE,
    RESULT_KEY,
    SKIP,
    WAIT,
    NodeSettings,
    document_of,
    drain_disposition,
    job_labels,
    job_manifest,
    job_name,
    rebooted,
    result_configmap,
)
from reconciler.kube import Kube
from reconciler.loop import Reconciler, clock_from
from reconciler.sources import DirectorySource
from reconciler.state import StateStore
from tests.aptlab import dpkg_state, environ_without_apt, make_root
from tests.conftest import INSTALLED
from tests.factories import NOW
from tests.fleet import BASELINE_YAML, documents, dpkg_installs, open_window_yaml
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent

# --- pure rules -------------------------------------------------------------------------------


def test_job_names_are_deterministic_short_and_differ_by_arguments() -> None:
    long_node = "ip-10-0-12-34.eu-central-1.compute.internal.example"
    first = job_name("Install", long_node, ["install", "--pin", "a=1"])
    assert first == job_name("Install", long_node, ["install", "--pin", "a=1"])
    assert first != job_name("Install", long_node, ["install", "--pin", "a=2"])
    assert first != job_name("Install", long_node + "x", ["install", "--pin", "a=1"])
    assert len(first) <= 63 and first.startswith("pw-install-ip-10-0-12-34-eu-central-1")
    assert all(c.isalnum() or c == "-" for c in first) and first[-1].isalnum()


def test_job_manifest_pins_the_node_never_retries_and_grants_installs_privilege() -> None:
    settings = NodeSettings(namespace="ops", image="reg/pw:1", job_timeout=900)
    install = job_manifest("pw-install-n1-x", "Install", "n1", ["install", "--pin=a=1"], settings)
    scan = job_manifest("pw-scan-n1-x", "Scan", "n1", ["scan"], settings)
    spec = install["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 900)
    pod = spec["template"]["spec"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n1"]
    assert pod["hostPID"] is True and pod["restartPolicy"] == "Never"
    assert {"operator": "Exists"} in pod["tolerations"]  # runs on the node we cordoned
    container = pod["containers"][0]
    assert container["command"][:2] == ["patchctl", "node-agent"]
    assert container["command"][container["command"].index("--") + 1 :] == ["install", "--pin=a=1"]
    assert container["securityContext"]["privileged"] is True
    scan_context = scan["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert scan_context["privileged"] is False
    assert set(scan_context["capabilities"]["add"]) == {"SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"}
    assert pod["volumes"][0]["hostPath"]["path"] == "/var/lib/patchwarden"  # not the whole /


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"agentRoot": "srv/root"}, "nodeJobs.agentRoot 'srv/root': must be an absolute path"),
        ({"agentRoot": "/srv/../etc"}, "nodeJobs.agentRoot '/srv/../etc': must be an absolute"),
        ({"hostPid": 0}, "nodeJobs.hostPid 0: must be a process id"),
        ({"hostDir": "var/pw"}, "nodeJobs.hostDir 'var/pw': must be an absolute path on the"),
        ({"hostDir": "/var/../etc"}, "nodeJobs.hostDir '/var/../etc': must be an absolute"),
        ({"hostDir": "/var/pw\n"}, "nodeJobs.hostDir '/var/pw\\n': must be an absolute"),
        ({"hostDir": 5}, "nodeJobs.hostDir 5: must be an absolute path"),
        ({"hostPid": "1"}, "nodeJobs.hostPid '1': must be a process id"),
    ],
)
def test_node_settings_refuse_a_root_directory_or_host_process_the_agent_cannot_be_given(
    values: dict[str, Any], said: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        NodeSettings.from_values(values)


def test_an_agent_root_is_every_agent_commands_root_and_the_host_is_still_entered(
    tmp_path: Path,
) -> None:
    settings = NodeSettings(agent_root="/srv/image", host_pid=77)
    for operation, args in (("Install", ["install", "--pin=a=1"]), ("BootId", ["boot-id"])):
        pod = job_manifest("pw-x", operation, "n1", args, settings)["spec"]["template"]["spec"]
        command = pod["containers"][0]["command"]
        assert command[command.index("--") + 1 :] == [*args, "--root=/srv/image"]
        assert command[command.index("--host-pid") + 1] == "77" and "--no-nsenter" not in command
    call = NodeAgentCall("cm", "ops", "n1", agent_zipapp(), tmp_path / "host", ("scan",), 77)
    assert agent_argv(call)[0][:3] == ["nsenter", "-t", "77"]


def _pod(name: str, *, owner: str | None = "ReplicaSet", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "apps", "annotations": {}, "labels": {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    meta.update(extra.pop("meta", {}))
    return {"metadata": meta, "status": {"phase": extra.pop("phase", "Running")}}


def test_which_pods_a_drain_evicts() -> None:
    keep = frozenset({"apps/controller"})

    def action(pod: dict[str, Any], unmanaged: bool = False) -> str:
        return drain_disposition(pod, keep, unmanaged)[0]

    assert action(_pod("web")) == EVICT
    assert action(_pod("agent", owner="DaemonSet")) == SKIP
    assert (
        action(_pod("static", meta={"annotations": {"kubernetes.io/config.mirror": "x"}})) == SKIP
    )
    assert action(_pod("done", phase="Succeeded")) == SKIP
    assert action(_pod("controller")) == SKIP
    assert action(_pod("going", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"})) == WAIT
    assert action(_pod("bare", owner=None)) == REFUSE
    assert action(_pod("bare", owner=None), unmanaged=True) == EVICT
    # Our node Jobs' pods stay; another product's pod that merely shares the (common)
    # component label is drained like any other.
    assert action(_pod("pw-install-n1", meta={"labels": job_labels("Install")})) == SKIP
    other = _pod("backup-agent", meta={"labels": {"app.kubernetes.io/component": "node-agent"}})
    assert action(other) == EVICT


def test_settings_from_helm_values() -> None:
    settings = NodeSettings.from_values(
        {
            "namespace": "ops",
            "image": "reg/pw:2",
            "tolerations": [{"operator": "Exists"}],
            "drainTimeoutSeconds": 120,
            "ttlSecondsAfterFinished": 60,
            "serviceAccountName": "",  # empty: the default
            "keepPods": ["ops/ctrl-0"],
        }
    )
    assert (settings.namespace, settings.image, settings.drain_timeout) == ("ops", "reg/pw:2", 120)
    assert settings.job_ttl_seconds == 60 and settings.keep_pods == ("ops/ctrl-0",)
    assert settings.service_account == NodeSettings().service_account
    with pytest.raises(ValueError, match="drainTimeout"):
        NodeSettings.from_values({"drainTimeout": 5})


def test_the_charts_node_job_config_is_understood() -> None:
    """What charts/patchwarden renders into node-job.yaml (--node-job-config) maps onto the
    settings, key for key."""
    chart = helm.Chart.load(str(REPO / "charts" / "patchwarden"))
    values = {"nodeJobs": {"priorityClassName": "system-node-critical"}}
    rendered = chart.render(values, name="pw", namespace="ops", is_install=True)
    configmap = next(yaml.safe_load(text) for name, text in rendered.items() if "configmap" in name)
    settings = NodeSettings.from_values(yaml.safe_load(configmap["data"]["node-job.yaml"]))
    assert settings.namespace == "ops" and settings.priority_class_name == "system-node-critical"
    assert settings.service_account == "pw-patchwarden-node-agent"
    assert (settings.drain_timeout, settings.reboot_timeout) == (600, 900)


def test_result_configmap_round_trip_and_errors() -> None:
    document = {"kind": "InstallResult", "changed": True, "patches": [{"name": "a"}] * 3000}
    configmap = result_configmap("pw-x", "ops", "n1", json.dumps(document), 0, "")
    assert len(configmap["binaryData"][RESULT_KEY]) < len(json.dumps(document)) / 10
    assert document_of(configmap, "n1") == document
    failed = result_configmap(
        "pw-x",
        "ops",
        "n1",
        json.dumps({"error": {"code": "LockTimeout", "message": "held"}}),
        1,
        "",
    )
    with pytest.raises(AgentFailed) as caught:
        document_of(failed, "n1")
    assert (caught.value.code, caught.value.message) == ("LockTimeout", "held")
    crashed = result_configmap("pw-x", "ops", "n1", "", 127, "env: 'python3': No such file\n")
    with pytest.raises(AgentFailed, match="python3': No such file") as caught:
        document_of(crashed, "n1")
    assert caught.value.code == "AgentCrashed"


def test_node_agent_runs_the_agent_with_the_hosts_python_in_the_hosts_namespaces(
    tmp_path: Path,
) -> None:
    agent = agent_zipapp()
    call = NodeAgentCall(
        configmap="pw-scan-n1-x",
        namespace="ops",
        node="n1",
        agent=agent,
        host_dir=tmp_path / "host",
        agent_args=("scan", "--instance-id", "n1"),
    )
    argv, env = agent_argv(call)
    copied = Path(argv[argv.index("-S") + 1])
    assert argv[: argv.index("-S") + 1] == [
        *("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--"),
        *("/usr/bin/env", "python3", "-I", "-S"),
    ]
    assert argv[-3:] == ["scan", "--instance-id", "n1"]
    assert copied.parent == tmp_path / "host" and copied.read_bytes() == agent.read_bytes()
    assert env is not None and "KUBERNETES_SERVICE_HOST" not in env  # nothing of the pod leaks
    stamp = copied.stat().st_mtime_ns
    assert agent_argv(call)[0] == argv and copied.stat().st_mtime_ns == stamp  # copied once


def _kubeconfig(path: Path, server: str) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def _printing_agent(tmp_path: Path) -> Path:
    agent = tmp_path / "agent.py"
    agent.write_text('print(\'{"reboot": {"performed": true}}\')\n')
    return agent


def test_node_agent_retries_storing_its_result_and_says_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The install has run (a reboot may be a minute away): an API that fails once must not
    lose its result, and an API that cannot be reached ends the wrapper with a message, not a
    traceback. (A tiny HTTP server stands in for the API: only its answers matter here.)"""
    import http.server

    from reconciler.dispatch.nodes import agent_job

    monkeypatch.setattr(agent_job, "STORE_DELAYS", (0.0, 0.0))
    posts: list[int] = []

    class FlakyApi(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(500 if not posts else 201)
            self.send_response(posts[-1])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    call = NodeAgentCall(
        configmap="pw-install-n1-x",
        namespace="ops",
        node="n1",
        agent=_printing_agent(tmp_path),
        host_dir=tmp_path / "host",
        agent_args=("install",),
        nsenter=False,
        kubeconfig=_kubeconfig(
            tmp_path / "flaky.yaml", f"http://127.0.0.1:{server.server_address[1]}"
        ),
    )
    try:
        assert agent_job.run_node_agent(call) == 0
    finally:
        server.shutdown()
    assert posts == [500, 201]

    with socket_closed() as port:
        away = _kubeconfig(tmp_path / "away.yaml", f"http://127.0.0.1:{port}")
        unreachable = NodeAgentCall(**{**call.__dict__, "kubeconfig": away})
        assert agent_job.run_node_agent(unreachable) == 1
    assert "cannot store the result in ConfigMap pw-install-n1-x" in capsys.readouterr().err


def test_node_agent_with_a_broken_kubeconfig_says_so_without_retrying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kubeconfig that is not one (here a YAML string) cannot get better by waiting: the
    wrapper gives up at once with a message naming the file, never a traceback."""
    from reconciler.dispatch.nodes import agent_job

    broken = tmp_path / "broken.yaml"
    broken.write_text("just a string\n")
    call = NodeAgentCall(
        configmap="pw-scan-n1-x",
        namespace="ops",
        node="n1",
        agent=_printing_agent(tmp_path),
        host_dir=tmp_path / "host",
        agent_args=("scan",),
        nsenter=False,
        kubeconfig=str(broken),
    )
    started = time.monotonic()
    assert agent_job.run_node_agent(call) == 1
    assert time.monotonic() - started < agent_job.STORE_DELAYS[0]
    err = capsys.readouterr().err
    assert f"cannot store the result in ConfigMap pw-scan-n1-x: {broken}: not a kubeconfig" in err
    assert "Traceback" not in err


@contextlib.contextmanager
def socket_closed() -> Iterator[int]:
    """A local port nothing listens on."""
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    yield port


def test_a_node_is_back_when_ready_with_another_boot_id() -> None:
    def node(ready: str, boot: str) -> dict[str, Any]:
        return {
            "status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "nodeInfo": {"bootID": boot},
            }
        }

    assert rebooted(node("True", "b2"), "b1")
    assert not rebooted(node("True", "b1"), "b1")
    assert not rebooted(node("False", "b2"), "b1")
    assert not rebooted(None, "b1")


def test_kubernetes_connection_in_a_managed_instance() -> None:
    document = {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "ManagedInstance",
        "metadata": {"name": "node-a"},
        "spec": {"connection": {"type": "kubernetes", "node": "node-a.example"}},
    }
    instance = ManagedInstance.model_validate(document)
    assert instance.spec.connection == KubernetesConnection(
        type="kubernetes", node="node-a.example"
    )
    document["spec"]["connection"]["node"] = "Node_A"
    with pytest.raises(ValueError, match="node"):
        ManagedInstance.model_validate(document)
    with pytest.raises(AgentFailed, match="needs the Kubernetes API"):
        transport_for(KubernetesConnection(type="kubernetes", node="node-a"))


# --- the API server scenarios -----------------------------------------------------------------

CONTROLLER_CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
]
CONTROLLER_NAMESPACE_RULES = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "delete"]},
]
NODE_AGENT_RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update"]}]
"""Exactly what docs/nodes.md says the controller and the node Jobs need."""

KERNEL_PIN = "pwtest-kernel=1.0-2"  # its postinst asks for a reboot
LIB_PIN = "pwtest-lib=1.0-2"


@dataclass
class Cluster:
    """One test's namespace on the real API server, RBAC in place, and admin access."""

    api: Any  # the kube_api fixture
    namespace: str
    admin: Kube
    controller: Any  # ApiClient of the controller's ServiceAccount
    controller_kubeconfig: Path
    agent_kubeconfig: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def settings(self, **overrides: Any) -> NodeSettings:
        values: dict[str, Any] = {
            "namespace": self.namespace,
            "job_timeout": 90.0,
            "drain_timeout": 30.0,
            "reboot_timeout": 30.0,
            "eviction_grace_seconds": 0,  # no kubelet to confirm a graceful termination
            "poll_seconds": 0.2,
        }
        values.update(overrides)
        return NodeSettings(**values)

    def node(self, name: str, *, boot: str = "boot-1", unschedulable: bool = False) -> str:
        name = f"{name}-{self.tag}"
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        if unschedulable:
            body["spec"] = {"unschedulable": True}
        self.admin.create("/api/v1/nodes", body)
        self.node_status(name, ready=True, boot=boot)
        return name

    def node_status(self, name: str, *, ready: bool, boot: str) -> None:
        self.admin.merge_patch(
            f"/api/v1/nodes/{name}/status",
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "False",
                            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                        }
                    ],
                    "nodeInfo": {"bootID": boot},
                }
            },
        )

    def get_node(self, name: str) -> dict[str, Any]:
        node = self.admin.get(f"/api/v1/nodes/{name}")
        assert node is not None
        return node

    def pod(
        self,
        name: str,
        node: str,
        *,
        owner: str = "ReplicaSet",
        labels: dict[str, str] | None = None,
    ) -> None:
        meta: dict[str, Any] = {"name": name, "labels": labels or {}}
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner,
                "name": f"{name}-owner",
                "uid": "0f0f0f0f-1111-2222-3333-444455556666",
                "controller": True,
            }
        ]
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "registry.invalid/app:1"}],
            },
        }
        self.admin.create(path, body)
        # Running and Ready, as a kubelet reports it: the API ignores PDBs for pods that are not.
        self.admin.merge_patch(
            f"{path}/{name}/status",
            {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
        )

    def pods(self) -> set[str]:
        listing = self.admin.request("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        return {p["metadata"]["name"] for p in listing["items"]}

    def pdb(self, name: str, labels: dict[str, str], *, allowed: int) -> None:
        path = f"/apis/policy/v1beta1/namespaces/{self.namespace}/poddisruptionbudgets"
        self.admin.create(
            path,
            {
                "apiVersion": "policy/v1beta1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
            },
        )
        self.pdb_allows(name, allowed)

    def pdb_allows(self, name: str, allowed: int) -> None:
        """Write the status the disruption controller would (it does not run here)."""
        path = f"/apis/policy/v1beta1/namespaces/{self.namespace}/poddisruptionbudgets/{name}"
        current = self.admin.get(path)
        assert current is not None
        self.admin.merge_patch(
            f"{path}/status",
            {
                "status": {
                    "observedGeneration": current["metadata"]["generation"],
                    "disruptionsAllowed": allowed,
                    "currentHealthy": 1 + allowed,
                    "desiredHealthy": 1,
                    "expectedPods": 1 + allowed,
                }
            },
        )

    def jobs(self) -> list[str]:
        listing = self.admin.request("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
        return [j["metadata"]["name"] for j in listing["items"]]

    def configmaps(self) -> list[str]:
        listing = self.admin.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps")
        return [
            c["metadata"]["name"]
            for c in listing["items"]
            if c["metadata"]["name"].startswith("pw-")
        ]


@pytest.fixture
def cluster(kube_api: Any) -> Cluster:
    namespace = kube_api.namespace("nodes")
    admin = Kube(kube_api.client())
    controller_user = f"system:serviceaccount:{namespace}:patchwarden"
    agent_user = f"system:serviceaccount:{namespace}:patchwarden-node-agent"
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    admin.create(
        f"{rbac}/clusterroles",
        {"metadata": {"name": f"{namespace}-nodes"}, "rules": CONTROLLER_CLUSTER_RULES},
    )
    admin.create(
        f"{rbac}/clusterrolebindings",
        {
            "metadata": {"name": f"{namespace}-nodes"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}-nodes",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "patchwarden", "namespace": namespace}],
        },
    )
    for role, rules, account in (
        ("controller", CONTROLLER_NAMESPACE_RULES, "patchwarden"),
        ("node-agent", NODE_AGENT_RULES, "patchwarden-node-agent"),
    ):
        admin.create(
            f"{rbac}/namespaces/{namespace}/roles", {"metadata": {"name": role}, "rules": rules}
        )
        admin.create(
            f"{rbac}/namespaces/{namespace}/rolebindings",
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )
    return Cluster(
        api=kube_api,
        namespace=namespace,
        admin=admin,
        controller=kube_api.client(controller_user),
        controller_kubeconfig=kube_api.kubeconfig_for(controller_user),
        agent_kubeconfig=kube_api.kubeconfig_for(agent_user),
    )


class Kubelet:
    """Plays the kubelet (and each node's host) for node Jobs; see the module docstring."""

    def __init__(self, cluster: Cluster, roots: dict[str, Path]) -> None:
        self.cluster, self.roots = cluster, roots
        self.created: list[str] = []  # every Job name seen, once per Job object
        self.held: set[str] = set()  # node names whose Jobs wait for release()
        self.rebooting: set[str] = set()  # nodes whose host reboots when the agent asks
        self.failing: set[str] = set()  # nodes whose Jobs hit their deadline without a result
        self.errors: list[str] = []
        self.agent_runs: list[list[str]] = []
        self._waiting: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.zipapp = agent_zipapp()

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self.errors, self.errors

    def release(self, node: str) -> None:
        with self._lock:
            self.held.discard(node)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # reported by __exit__
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.1)  # a kubelet's sync period; ends at once on stop

    def _step(self) -> None:
        listing = self.cluster.admin.request(
            "GET", f"/apis/batch/v1/namespaces/{self.cluster.namespace}/jobs"
        )
        for job in listing["items"]:
            uid = job["metadata"]["uid"]
            if uid not in self._seen:
                self._seen.add(uid)
                self.created.append(job["metadata"]["name"])
                self._waiting.append(job)
        for job in list(self._waiting):
            node = job["metadata"]["annotations"]["patchwarden.io/node"]
            with self._lock:
                if node in self.held:
                    continue
            self._waiting.remove(job)
            self._run(job, node)

    def _run(self, job: dict[str, Any], node: str) -> None:
        if node in self.failing:
            self._finish(job, "Failed", reason="DeadlineExceeded")
            return
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        split = command.index("--")
        options, agent_args = command[2:split], command[split + 1 :]
        argv = [
            sys.executable, "-m", "reconciler", "node-agent", *options,
            "--no-nsenter", "--kubeconfig", str(self.cluster.agent_kubeconfig), "--agent", str(self.zipapp),
            "--", *agent_args, "--root", str(self.roots[node]),
        ]  # fmt: skip
        if agent_args[0] == "install":
            # The node's host is played by a shell-less lab root, whose maintainer scripts run
            # here: the suite trusts its own roots (conftest.py); a real node has no --root.
            argv.append("--trust-root-scripts")
        self.agent_runs.append(agent_args)
        done = subprocess.run(
            argv, capture_output=True, text=True, env=environ_without_apt(), cwd=REPO, timeout=180
        )
        if done.returncode != 0:
            self.errors.append(f"node-agent exited {done.returncode}: {done.stderr[-2000:]}")
            return
        name, namespace = job["metadata"]["name"], self.cluster.namespace
        reboot = (
            node in self.rebooting
            and "--allow-reboot" in agent_args  # on a host, the agent reboots only if allowed
            and self._host_reboots(namespace, name)
        )
        self._finish(job, "Complete")
        if reboot:
            threading.Thread(target=self._reboot, args=(node,), daemon=True).start()

    def _finish(self, job: dict[str, Any], condition: str, reason: str = "") -> None:
        """Write the status the Job controller would."""
        status: dict[str, Any] = {
            "conditions": [{"type": condition, "status": "True", "reason": reason}],
            "startTime": job["metadata"]["creationTimestamp"],
        }
        if condition == "Complete":
            status["succeeded"] = 1
            status["completionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        else:
            status["failed"] = 1
            status["conditions"][0]["message"] = "Job was active longer than specified deadline"
        self.cluster.admin.merge_patch(
            f"/apis/batch/v1/namespaces/{self.cluster.namespace}/jobs/{job['metadata']['name']}/status",
            {"status": status},
        )

    def _host_reboots(self, namespace: str, name: str) -> bool:
        """When the agent recorded a reboot in the root, report what it says on a real host
        after ``shutdown -r``: performed."""
        path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        configmap = self.cluster.admin.get(path)
        assert configmap is not None
        document = json.loads(
            gzip.decompress(base64.b64decode(configmap["binaryData"][RESULT_KEY]))
        )
        if not document["reboot"].get("recorded"):
            return False
        document["reboot"] = {
            "required": True,
            "performed": True,
            "reason": document["reboot"]["reason"],
        }
        packed = gzip.compress(json.dumps(document).encode())
        configmap["binaryData"][RESULT_KEY] = base64.b64encode(packed).decode()
        self.cluster.admin.request("PUT", path, body=configmap)
        return True

    def _reboot(self, node: str) -> None:
        """The host goes down and comes back with a new boot ID (boot-1 -> boot-2) and, /run
        being a tmpfs, without its reboot-required flag."""
        time.sleep(1.0)  # shutdown -r +1: the node stays up a little while
        old = self.cluster.get_node(node)["status"]["nodeInfo"]["bootID"]
        self.cluster.node_status(node, ready=False, boot=old)
        for flag in ("reboot-required", "reboot-required.pkgs"):
            (self.roots[node] / "run" / flag).unlink(missing_ok=True)
        time.sleep(1.0)
        prefix, _, count = old.rpartition("-")
        self.cluster.node_status(node, ready=True, boot=f"{prefix}-{int(count) + 1}")


@pytest.fixture
def node_root(tmp_path: Path, apt_repo: Any) -> Callable[[str], Path]:
    """A node's "host": a Debian root with the usual packages and refreshed package lists."""

    def make(name: str) -> Path:
        root = make_root(
            tmp_path / name, apt_repo.uri, ["stable", "stable-security"], installed=INSTALLED
        )
        Apt(str(root)).refresh()
        return root

    return make


class PhaseLog:
    """Every value the node's phase annotation takes, in order, from a watch (the client's own
    Watch, resumed from the last resourceVersion, so no change is missed)."""

    def __init__(self, cluster: Cluster, node: str) -> None:
        self.phases: list[str | None] = []
        self.unschedulable: list[bool] = []
        self._core = kubernetes.client.CoreV1Api(cluster.api.client())
        self._cluster, self._node = cluster, node
        self._done = threading.Event()
        start = cluster.admin.get(f"/api/v1/nodes/{node}")
        assert start is not None
        self._record(start)
        self._version = start["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _record(self, node: dict[str, Any]) -> None:
        phase = (node["metadata"].get("annotations") or {}).get(ANNOTATION_PHASE)
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)
            self.unschedulable.append(bool((node.get("spec") or {}).get("unschedulable")))

    def _caught_up(self) -> bool:
        node = self._cluster.admin.get(f"/api/v1/nodes/{self._node}")
        return node is not None and node["metadata"]["resourceVersion"] == self._version

    def _watch(self) -> None:
        watch = kubernetes.watch.Watch()
        while not self._done.is_set():
            for event in watch.stream(
                self._core.list_node,
                field_selector=f"metadata.name={self._node}",
                resource_version=self._version,
                timeout_seconds=1,
            ):
                self._record(event["raw_object"])
                self._version = event["raw_object"]["metadata"]["resourceVersion"]

    def stop(self) -> list[str | None]:
        """The phases, once the watch has delivered the node's latest change."""
        wait_until("the phase watch to catch up", self._caught_up)
        self._done.set()
        self._thread.join(timeout=10)
        return self.phases


def _annotations(node: dict[str, Any]) -> dict[str, str]:
    return {
        k: v
        for k, v in (node["metadata"].get("annotations") or {}).items()
        if k.startswith("patchwarden.io/")
    }


class Requests:
    """The requests an ApiClient sent (they still reach the API server), so a test can wait
    until the code under test got to one: a refused eviction retried, a watch on a Job."""

    def __init__(self, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        call_api = api.call_api

        def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.sent.append(f"{method} {urllib.parse.unquote(url)}")
            return call_api(method, url, *args, **kwargs)

        monkeypatch.setattr(api, "call_api", recording)

    def count(self, *parts: str) -> int:
        """How many requests held every one of ``parts`` (method, path, query)."""
        return sum(all(part in line for part in parts) for line in list(self.sent))


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.apiserver
def test_scan_runs_the_agent_in_a_job_on_the_node(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("scan")
    with Kubelet(cluster, {node: node_root("scan")}) as kubelet:
        inventory = NodeTransport(cluster.controller, node, cluster.settings()).scan()
    assert inventory.instance_id == node
    assert {p.name for p in inventory.installed} >= {"pwtest-lib", "pwtest-kernel"}
    assert any(u.name == "pwtest-lib" and u.version == "1.0-2" for u in inventory.updates)
    assert kubelet.agent_runs == [["scan", f"--instance-id={node}"]]
    assert cluster.jobs() == [] and cluster.configmaps() == []  # cleaned up
    assert not cluster.get_node(node).get("spec", {}).get("unschedulable")  # a scan never cordons


@pytest.mark.apiserver
def test_install_cordons_drains_past_a_pdb_patches_and_uncordons(
    cluster: Cluster, node_root: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = cluster.node("worker")
    other = cluster.node("other")
    root = node_root("worker")
    cluster.pod("web-0", node, labels={"app": "web"})
    cluster.pod("cache-0", node)
    cluster.pod("logs-abcde", node, owner="DaemonSet")
    cluster.pod("web-1", other, labels={"app": "web"})
    cluster.pdb("web", {"app": "web"}, allowed=0)
    log = PhaseLog(cluster, node)
    requests = Requests(cluster.controller, monkeypatch)
    transport = NodeTransport(cluster.controller, node, cluster.settings())
    with Kubelet(cluster, {node: root}) as kubelet:
        thread, outcome = _in_thread(
            lambda: transport.install(InstallRequest((LIB_PIN,), allow_reboot=True))
        )
        # The PDB refuses web-0: the node waits cordoned, draining, with no Job yet, however
        # often the drain asks again.
        wait_until("cache-0 evicted", lambda: "cache-0" not in cluster.pods())
        wait_until("web-0's eviction asked 3 times", lambda: requests.count("/web-0/eviction") >= 3)
        assert "web-0" in cluster.pods() and kubelet.created == []
        state = cluster.get_node(node)
        assert state["spec"]["unschedulable"] is True
        assert _annotations(state)[ANNOTATION_PHASE] == "draining"
        assert _annotations(state)[ANNOTATION_CORDONED] == "true"
        cluster.pdb_allows("web", 1)  # a replica elsewhere became healthy
        thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["value"]
    assert [(p.name, p.result) for p in result.patches] == [("pwtest-lib", "INSTALLED")]
    assert dpkg_state(root)["pwtest-lib"][0] == "1.0-2"
    assert log.stop() == [None, "cordoned", "draining", "patching", None]
    assert log.unschedulable == [False, True, True, True, False]
    assert cluster.pods() == {"logs-abcde", "web-1"}  # DaemonSet pod stays; other node untouched
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert len(kubelet.created) == 1 and kubelet.created[0].startswith("pw-install-worker-")
    assert cluster.jobs() == [] and cluster.configmaps() == []


@pytest.mark.apiserver
def test_a_node_uncordoned_during_its_drain_is_not_patched(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    """While a PDB holds the drain, the node's cordon and state are cleared (what a new leader's
    resume_nodes does after this replica lost its Lease, or an administrator's uncordon): once
    the drain ends, no install Job runs on a node that takes pods again."""
    node = cluster.node("handover")
    cluster.pod("web-0", node, labels={"app": "web"})
    cluster.pdb("web", {"app": "web"}, allowed=0)
    transport = NodeTransport(cluster.controller, node, cluster.settings())
    with Kubelet(cluster, {node: node_root("handover")}) as kubelet:
        thread, outcome = _in_thread(lambda: transport.install(InstallRequest((LIB_PIN,))))
        wait_until(
            "draining",
            lambda: _annotations(cluster.get_node(node)).get(ANNOTATION_PHASE) == "draining",
        )
        drain.uncordon(Kube(cluster.controller), node)
        cluster.pdb_allows("web", 1)
        thread.join(timeout=120)
        assert kubelet.created == []
    assert isinstance(outcome.get("error"), AgentFailed), outcome
    assert outcome["error"].code == "NodeChanged"
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == []


@pytest.mark.apiserver
def test_reboot_when_required_waits_for_a_new_boot_id(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("kernel", boot="boot-1")
    log = PhaseLog(cluster, node)
    transport = NodeTransport(cluster.controller, node, cluster.settings())
    with Kubelet(cluster, {node: node_root("kernel")}) as kubelet:
        kubelet.rebooting.add(node)
        result = transport.install(
            InstallRequest((KERNEL_PIN,), reboot_option="RebootIfNeeded", allow_reboot=True)
        )
    assert result.reboot is not None and result.reboot.performed is True
    assert "--allow-reboot" in kubelet.agent_runs[0]
    back = cluster.get_node(node)
    assert back["status"]["nodeInfo"]["bootID"] == "boot-2"  # returned only once it was back
    assert log.stop() == [None, "cordoned", "draining", "patching", "rebooting", None]
    assert not back["spec"].get("unschedulable") and _annotations(back) == {}


@pytest.mark.apiserver
def test_a_node_an_administrator_cordoned_stays_cordoned(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("held", unschedulable=True)
    with Kubelet(cluster, {node: node_root("held")}):
        NodeTransport(cluster.controller, node, cluster.settings()).install(
            InstallRequest((LIB_PIN,))
        )
    after = cluster.get_node(node)
    assert after["spec"]["unschedulable"] is True and _annotations(after) == {}


@pytest.mark.apiserver
def test_drain_timeout_starts_no_job_and_uncordons(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("blocked")
    cluster.pod("db-0", node, labels={"app": "db"})
    cluster.pdb("db", {"app": "db"}, allowed=0)
    settings = cluster.settings(drain_timeout=3.0)
    with Kubelet(cluster, {node: node_root("blocked")}) as kubelet:
        with pytest.raises(AgentFailed) as caught:
            NodeTransport(cluster.controller, node, settings).install(InstallRequest((LIB_PIN,)))
        assert kubelet.created == []
    assert caught.value.code == "DrainTimeout"
    assert f"{cluster.namespace}/db-0" in caught.value.message
    assert "disruption budget" in caught.value.message
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert "db-0" in cluster.pods()


@pytest.mark.apiserver
def test_an_unmanaged_pod_stops_the_drain(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("bare")
    path = f"/api/v1/namespaces/{cluster.namespace}/pods"
    cluster.admin.create(
        path,
        {
            "metadata": {"name": "debug"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        },
    )
    with pytest.raises(AgentFailed, match=f"{cluster.namespace}/debug") as caught:
        NodeTransport(cluster.controller, node, cluster.settings()).install(
            InstallRequest((LIB_PIN,))
        )
    assert caught.value.code == "DrainRefused"
    assert "debug" in cluster.pods() and _annotations(cluster.get_node(node)) == {}


@pytest.mark.apiserver
def test_a_failed_job_fails_the_install_and_puts_the_node_back(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("deadline")
    with Kubelet(cluster, {node: node_root("deadline")}) as kubelet:
        kubelet.failing.add(node)
        with pytest.raises(AgentFailed, match="DeadlineExceeded") as caught:
            NodeTransport(cluster.controller, node, cluster.settings()).install(
                InstallRequest((LIB_PIN,))
            )
    assert caught.value.code == "JobFailed"
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == []


@pytest.mark.apiserver
def test_a_job_the_api_refuses_puts_the_drained_node_back_at_once(cluster: Cluster) -> None:
    """Node Job settings the API rejects (400: here an invalid memory quantity from the Helm
    values): the node was cordoned and drained for nothing and is put back before the install
    reports its failure, not left cordoned until a later pass."""
    node = cluster.node("refused")
    settings = cluster.settings(resources={"limits": {"memory": "lots"}})
    with pytest.raises(AgentFailed, match=r"400: Job .* cannot be handled") as caught:
        NodeTransport(cluster.controller, node, settings).install(InstallRequest((LIB_PIN,)))
    assert caught.value.code == "KubernetesApiError"
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == []


@pytest.mark.apiserver
def test_a_lost_job_does_not_uncordon_a_node_another_run_moved_on_to_rebooting(
    cluster: Cluster,
) -> None:
    """Two runs attached to one install Job (an old leader still finishing after it lost the
    Lease, and the new one): the other run read the result first, recorded ``rebooting`` and
    removed the Job. This run then finds the Job gone; it must not uncordon a node that is
    about to reboot (resume_nodes does once it is back)."""
    node = cluster.node("shared")
    thread, outcome = _in_thread(
        lambda: NodeTransport(cluster.controller, node, cluster.settings()).install(
            InstallRequest((LIB_PIN,))
        )
    )
    wait_until("the install Job", lambda: cluster.jobs() != [])
    (job,) = cluster.jobs()
    drain.set_phase(Kube(cluster.controller), node, "rebooting")
    jobs.remove(Kube(cluster.controller), job, cluster.settings())
    thread.join(timeout=60)
    assert isinstance(outcome.get("error"), AgentFailed), outcome
    assert outcome["error"].code == "JobLost"
    after = cluster.get_node(node)
    assert after["spec"]["unschedulable"] is True
    assert _annotations(after)[ANNOTATION_PHASE] == "rebooting"


@pytest.mark.apiserver
def test_a_node_that_is_not_ready_is_left_alone(cluster: Cluster) -> None:
    node = cluster.node("down")
    cluster.node_status(node, ready=False, boot="boot-1")
    transport = NodeTransport(cluster.controller, node, cluster.settings())
    with pytest.raises(AgentFailed, match="not Ready") as caught:
        transport.install(InstallRequest((LIB_PIN,)))
    with pytest.raises(AgentFailed, match="not Ready"):
        transport.scan()
    assert caught.value.code == "NodeNotReady"
    after = cluster.get_node(node)
    assert not after.get("spec", {}).get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == []


def _controller_process(
    cluster: Cluster, node: str, pins: list[str], settings: NodeSettings
) -> subprocess.Popen[str]:
    """A controller in its own process, so that it can really die (SIGKILL) mid-way."""
    script = (
        "import json, sys, kubernetes\n"
        "from reconciler.dispatch.base import InstallRequest\n"
        "from reconciler.dispatch.nodes import NodeSettings, NodeTransport\n"
        "api = kubernetes.config.new_client_from_config(config_file=sys.argv[1])\n"
        "settings = NodeSettings(**json.loads(sys.argv[2]))\n"
        "NodeTransport(api, sys.argv[3], settings).install(\n"
        "    InstallRequest(tuple(sys.argv[4:]), allow_reboot=True)\n"
        ")\n"
    )
    values = {
        k: getattr(settings, k)
        for k in (
            "namespace",
            "job_timeout",
            "drain_timeout",
            "reboot_timeout",
            "eviction_grace_seconds",
            "poll_seconds",
        )
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            str(cluster.controller_kubeconfig),
            json.dumps(values),
            node,
            *pins,
        ],
        cwd=REPO,
        text=True,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.apiserver
def test_resume_rolls_back_a_controller_killed_while_draining(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("crash-drain")
    cluster.pod("api-0", node, labels={"app": "api"})
    cluster.pdb("api", {"app": "api"}, allowed=0)
    process = _controller_process(cluster, node, [LIB_PIN], cluster.settings(drain_timeout=300))
    try:
        wait_until(
            "draining",
            lambda: _annotations(cluster.get_node(node)).get(ANNOTATION_PHASE) == "draining",
        )
    finally:
        _kill(process)
    assert cluster.get_node(node)["spec"]["unschedulable"] is True  # left behind by the crash
    assert node in resume_nodes(cluster.controller, cluster.settings())
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == []


@pytest.mark.apiserver
def test_resume_finishes_a_controller_killed_while_patching_then_rebooting(
    cluster: Cluster, node_root: Callable[[str], Path]
) -> None:
    node = cluster.node("crash-patch", boot="boot-1")
    root = node_root("crash-patch")
    settings = cluster.settings()
    with Kubelet(cluster, {node: root}) as kubelet:
        kubelet.held.add(node)
        kubelet.rebooting.add(node)
        process = _controller_process(cluster, node, [KERNEL_PIN], settings)
        try:
            wait_until("the install Job", lambda: len(kubelet.created) == 1)
        finally:
            _kill(process)
        notes = _annotations(cluster.get_node(node))
        assert notes[ANNOTATION_PHASE] == "patching" and notes[ANNOTATION_BOOT_ID] == "boot-1"
        assert notes[ANNOTATION_JOB] == kubelet.created[0]
        assert resume_nodes(cluster.controller, settings) == []  # the Job still runs: leave it
        kubelet.release(node)  # the install finishes; the host starts its reboot
        wait_until("the result", lambda: "pw-" in "".join(cluster.configmaps()))
        wait_until(
            "node down",
            lambda: cluster.get_node(node)["status"]["conditions"][0]["status"] == "False",
        )
        assert node not in resume_nodes(cluster.controller, settings)  # rebooting: not back yet
        assert _annotations(cluster.get_node(node))[ANNOTATION_PHASE] == "rebooting"
        assert cluster.get_node(node)["spec"]["unschedulable"] is True
        wait_until("node back", lambda: rebooted(cluster.get_node(node), "boot-1"))
        assert node in resume_nodes(cluster.controller, settings)
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == [] and cluster.configmaps() == []
    assert dpkg_state(root)["pwtest-kernel"][0] == "1.0-2"
    assert len(kubelet.created) == 1  # installed once


@pytest.mark.apiserver
def test_the_controller_uncordons_a_node_back_late_from_its_reboot_on_its_next_pass(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An install whose reboot outlasted rebootTimeoutSeconds leaves the node cordoned in phase
    `rebooting`. When it comes back, the running controller's next pass puts it back: no
    restart needed."""
    from reconciler.controller import ControllerReconciler
    from reconciler.sources.kubernetes import KubernetesSource
    from reconciler.state.kubernetes import StatusWriter

    node = cluster.node("late", boot="boot-1")
    cluster.admin.merge_patch(
        f"/api/v1/nodes/{node}",
        {
            "metadata": {
                "annotations": {
                    ANNOTATION_PHASE: "rebooting",
                    ANNOTATION_BOOT_ID: "boot-1",
                    ANNOTATION_CORDONED: "true",
                }
            },
            "spec": {"unschedulable": True},
        },
    )
    cluster.node_status(node, ready=False, boot="boot-1")
    settings = cluster.settings()
    with StateStore(tmp_path / "state.db") as store:
        reconciler = ControllerReconciler(
            KubernetesSource(cluster.controller, cluster.namespace, watch_nodes=False),
            store,
            lambda instance: pytest.fail("no instance, no job"),
            writer=StatusWriter(cluster.controller, cluster.namespace),
            resume=lambda: resume_nodes(cluster.controller, settings),
        )
        reconciler.reconcile()  # still down: stays cordoned, still ours to finish
        assert cluster.get_node(node)["spec"]["unschedulable"] is True
        assert _annotations(cluster.get_node(node))[ANNOTATION_PHASE] == "rebooting"
        cluster.node_status(node, ready=True, boot="boot-2")  # back, after a real reboot
        reconciler.reconcile()
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}


@pytest.mark.apiserver
def test_resume_removes_results_of_deleted_nodes_whose_job_is_gone(cluster: Cluster) -> None:
    """A crash between a Job's end and the removal of its result, then the Node deleted (scaled
    away): nothing names that ConfigMap any more, so resume deletes it. A result whose Job still
    exists, a live Node's result, and a ConfigMap that is not ours stay."""
    live = cluster.node("live")
    settings = cluster.settings()
    path = f"/api/v1/namespaces/{cluster.namespace}/configmaps"
    names = {
        key: f"pw-scan-{key}-{cluster.tag}" for key in ("orphan", "job-left", "live", "foreign")
    }
    for key, node in (
        ("orphan", f"gone-{cluster.tag}"),
        ("job-left", f"gone-{cluster.tag}"),
        ("live", live),
    ):
        cluster.admin.create(
            path, result_configmap(names[key], cluster.namespace, node, "{}", 0, "")
        )
    cluster.admin.create(
        f"/apis/batch/v1/namespaces/{cluster.namespace}/jobs",
        job_manifest(names["job-left"], "Scan", f"gone-{cluster.tag}", ["scan"], settings),
    )
    foreign = result_configmap(
        names["foreign"], cluster.namespace, f"gone-{cluster.tag}", "", 0, ""
    )
    foreign["metadata"]["labels"] = {"app": "someone-else"}
    cluster.admin.create(path, foreign)

    assert resume_nodes(cluster.controller, settings) == []  # no Node was mid-patch
    assert sorted(cluster.configmaps()) == sorted(
        names[key] for key in ("job-left", "live", "foreign")
    )
    assert cluster.get_node(live)["metadata"].get("annotations") in (None, {})


@pytest.mark.apiserver
def test_jobs_already_there_are_attached_to_not_run_twice(
    cluster: Cluster, node_root: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller that died left its install Job running (and the node recorded as patching):
    the next install of the same pins attaches to it; a scan attaches to a running scan Job."""
    node = cluster.node("attach")
    root = node_root("attach")
    settings = cluster.settings()
    jobs_path = f"/apis/batch/v1/namespaces/{cluster.namespace}/jobs"
    args = install_args(InstallRequest((LIB_PIN,)))
    name = job_name("Install", node, args)
    requests = Requests(cluster.controller, monkeypatch)
    transport = NodeTransport(cluster.controller, node, settings)

    def watching(job: str) -> Callable[[], bool]:
        """Whether the transport waits on the running ``job`` (attached to it)."""
        return lambda: requests.count("watch=true", f"metadata.name={job}&") > 0

    with Kubelet(cluster, {node: root}) as kubelet:
        kubelet.held.add(node)
        cluster.admin.merge_patch(
            f"/api/v1/nodes/{node}",
            {
                "metadata": {
                    "annotations": {
                        ANNOTATION_PHASE: "patching",
                        ANNOTATION_JOB: name,
                        ANNOTATION_CORDONED: "true",
                        ANNOTATION_BOOT_ID: "boot-1",
                    }
                },
                "spec": {"unschedulable": True},
            },
        )
        cluster.admin.create(jobs_path, job_manifest(name, "Install", node, args, settings))
        thread, outcome = _in_thread(lambda: transport.install(InstallRequest((LIB_PIN,))))
        wait_until("the install to wait on its Job", watching(name))
        kubelet.release(node)
        thread.join(timeout=120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["value"].patches[0].result == "INSTALLED"

        scan_args = ["scan", f"--instance-id={node}", "--no-refresh"]
        scan_name = job_name("Scan", node, scan_args)
        kubelet.held.add(node)
        cluster.admin.create(jobs_path, job_manifest(scan_name, "Scan", node, scan_args, settings))
        thread, scanned = _in_thread(lambda: transport.scan(refresh=False))
        wait_until("the scan to wait on its Job", watching(scan_name))
        kubelet.release(node)
        thread.join(timeout=120)
    assert "error" not in scanned, scanned.get("error")
    assert scanned["value"].instance_id == node
    assert kubelet.created == [name, scan_name]  # no second Job of either
    assert dpkg_installs(root)[("pwtest-lib", "1.0-2")] == 1
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
    assert cluster.jobs() == [] and cluster.configmaps() == []


@pytest.mark.apiserver
def test_the_reconcile_loop_patches_a_node_and_lets_it_reboot(
    cluster: Cluster, node_root: Callable[[str], Path], tmp_path: Path
) -> None:
    """A ManagedInstance {type: kubernetes} through the loop: scan, install inside an open
    window with RebootIfNeeded (so the agent may reboot the node), rescan after it is back."""
    node = cluster.node("looped", boot="boot-1")
    root = node_root("looped")
    source = tmp_path / "desired"
    source.mkdir()
    window = open_window_yaml()
    instance = (
        f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\nmetadata:\n  name: {node}\n"
        f"  labels: {{fleet: e2e}}\nspec:\n  connection: {{type: kubernetes, node: {node}}}\n"
    )
    (source / "fleet.yaml").write_text(documents(BASELINE_YAML, window, instance))
    settings = cluster.settings()
    with (
        StateStore(tmp_path / "state.db") as store,
        Kubelet(cluster, {node: root}) as kubelet,
    ):
        kubelet.rebooting.add(node)
        reconciler = Reconciler(
            DirectorySource(source),
            store,
            lambda i: transport_for(
                i.spec.connection, kubernetes=cluster.controller, node_settings=settings
            ),
            clock=clock_from(NOW),
        )
        summary = reconciler.reconcile()
        installs = [job for job in store.jobs() if job.operation == "Install"]
    assert summary.refused == [] and installs, summary
    assert all("--allow-reboot" in args for args in kubelet.agent_runs if args[0] == "install")
    kernel = next(
        job
        for job in installs
        if ("pwtest-kernel", "INSTALLED")
        in {(p["name"], p["result"]) for p in job.result["install"]["patches"]}
    )
    assert kernel.result["install"]["reboot"]["performed"] is True
    assert dpkg_state(root)["pwtest-kernel"][0] == "1.0-2"
    after = cluster.get_node(node)
    assert after["status"]["nodeInfo"]["bootID"] == "boot-2"
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
