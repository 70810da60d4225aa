"""A node whose kubelet reports no boot ID (``status.nodeInfo.bootID`` empty) is still seen to
reboot: NotReady then Ready after the reboot started, and the agent's own boot id
(/proc/sys/kernel/random/boot_id, read by a ``boot-id`` Job before and after) changed (issue 18
item 5, docs/nodes.md).

Node Jobs are played as in tests/test_node_patching.py (``Kubelet``); here the host's boot id,
which the agent would read on a real node, is kept per node by the player and changes when the
host reboots (the test machine's own never does).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.dispatch.base import InstallRequest
from reconciler.dispatch.nodes import NodeTransport, resume_nodes
from reconciler.dispatch.nodes.model import (
    ANNOTATION_AGENT_BOOT_ID,
    ANNOTATION_PHASE,
    ANNOTATION_SEEN_DOWN,
    RESULT_KEY,
    NodeState,
    back_without_boot_id,
)
from tests import test_node_patching
from tests.test_node_patching import (
    KERNEL_PIN,
    Cluster,
    Kubelet,
    PhaseLog,
    Requests,
    _annotations,
)
from tests.waiting import wait_until

cluster = test_node_patching.cluster
node_root = test_node_patching.node_root


def _node(ready: bool) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {"status": {"conditions": [{"type": "Ready", "status": status}], "nodeInfo": {}}}


def test_without_boot_id_a_reboot_is_a_ready_transition_and_a_new_agent_boot_id() -> None:
    down_seen = NodeState("rebooting", "j", True, "", None, agent_boot_id="a1", seen_down=True)
    assert back_without_boot_id(_node(True), down_seen, "a2")
    assert not back_without_boot_id(_node(True), down_seen, "a1")  # a blip, not a reboot
    assert not back_without_boot_id(_node(False), down_seen, "a2")  # not back yet
    never_down = NodeState("rebooting", "j", True, "", None, agent_boot_id="a1")
    assert not back_without_boot_id(_node(True), never_down, "a2")  # no transition seen
    assert not back_without_boot_id(_node(True), down_seen, "")  # no boot id read


class HostBoots(Kubelet):
    """Nodes without a bootID; each host's boot id (what the agent's ``boot-id`` reads there)
    lives here and changes when the host reboots."""

    def __init__(self, cluster: Cluster, roots: dict[str, Path], requests: Requests) -> None:
        super().__init__(cluster, roots)
        self.host_boot = dict.fromkeys(roots, "host-boot-1")
        self.requests = requests

    def _finish(self, job: dict[str, Any], condition: str, reason: str = "") -> None:
        node = job["metadata"]["annotations"]["patchwarden.io/node"]
        if condition == "Complete" and job["metadata"]["name"].startswith("pw-bootid-"):
            self._report_boot_id(job["metadata"]["name"], self.host_boot[node])
        super()._finish(job, condition, reason)

    def _report_boot_id(self, name: str, boot: str) -> None:
        path = f"/api/v1/namespaces/{self.cluster.namespace}/configmaps/{name}"
        configmap = self.cluster.admin.get(path)
        assert configmap is not None
        document = json.loads(
            gzip.decompress(base64.b64decode(configmap["binaryData"][RESULT_KEY]))
        )
        document["bootId"] = boot
        packed = gzip.compress(json.dumps(document).encode())
        configmap["binaryData"][RESULT_KEY] = base64.b64encode(packed).decode()
        self.cluster.admin.request("PUT", path, body=configmap)

    def _reboot(self, node: str) -> None:
        """Down and up again once the controller watches the node (so that it sees the
        NotReady, as it would during a real reboot's minute), with a new host boot id."""
        wait_until(
            "the controller watching the node",
            lambda: self.requests.count("watch=true", f"metadata.name={node}&") > 0,
        )
        self.cluster.node_status(node, ready=False, boot="")
        for flag in ("reboot-required", "reboot-required.pkgs"):
            (self.roots[node] / "run" / flag).unlink(missing_ok=True)
        self.host_boot[node] = "host-boot-2"
        self.cluster.node_status(node, ready=True, boot="")


@pytest.mark.apiserver
def test_a_node_without_boot_id_is_seen_back_from_its_reboot(
    cluster: Cluster,
    node_root: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = cluster.node("noboot", boot="")
    log = PhaseLog(cluster, node)
    requests = Requests(cluster.controller, monkeypatch)
    transport = NodeTransport(cluster.controller, node, cluster.settings())
    with HostBoots(cluster, {node: node_root("noboot")}, requests) as kubelet:
        kubelet.rebooting.add(node)
        result = transport.install(
            InstallRequest((KERNEL_PIN,), reboot_option="RebootIfNeeded", allow_reboot=True)
        )
    assert result.reboot is not None and result.reboot.performed is True
    assert log.stop() == [None, "cordoned", "draining", "patching", "rebooting", None]
    boot_jobs = [name for name in kubelet.created if name.startswith("pw-bootid-")]
    assert len(boot_jobs) == 2  # before patching, and once the node was Ready again
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}


@pytest.mark.apiserver
def test_resume_waits_for_a_node_without_boot_id_to_go_down_and_come_back(
    cluster: Cluster, node_root: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new leader finds a node rebooting without bootID: a NotReady it sees is recorded on
    the Node; Ready again with the agent's boot id unchanged is no reboot; changed, it is."""
    node = cluster.node("noboot-resume", boot="")
    cluster.admin.merge_patch(
        f"/api/v1/nodes/{node}",
        {
            "metadata": {
                "annotations": {
                    ANNOTATION_PHASE: "rebooting",
                    "patchwarden.io/boot-id": "",
                    "patchwarden.io/cordoned-by-patchwarden": "true",
                    ANNOTATION_AGENT_BOOT_ID: "host-boot-1",
                }
            },
            "spec": {"unschedulable": True},
        },
    )
    settings = cluster.settings()
    requests = Requests(cluster.controller, monkeypatch)
    with HostBoots(cluster, {node: node_root("noboot-resume")}, requests) as kubelet:
        assert resume_nodes(cluster.controller, settings) == []  # Ready, never seen down
        cluster.node_status(node, ready=False, boot="")
        assert resume_nodes(cluster.controller, settings) == []
        assert _annotations(cluster.get_node(node))[ANNOTATION_SEEN_DOWN] == "true"
        cluster.node_status(node, ready=True, boot="")
        assert resume_nodes(cluster.controller, settings) == []  # same host boot id: no reboot
        kubelet.host_boot[node] = "host-boot-2"
        assert resume_nodes(cluster.controller, settings) == [node]
    after = cluster.get_node(node)
    assert not after["spec"].get("unschedulable") and _annotations(after) == {}
