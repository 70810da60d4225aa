"""A controller that loses its Lease mid-drain starts no further step on the node; the new
leader rolls the node back from its annotations and patches it itself (issue 18 item 4,
docs/nodes.md "Lease loss").

Two real ``patchctl controller`` processes (tests/test_controller.py's ``controllers``) against
the real kube-apiserver, with node Jobs played as in tests/test_node_patching.py (``Kubelet``:
the agent really runs, on a Debian root standing in for the node's host). The first leader is
frozen with SIGSTOP while a PodDisruptionBudget holds its drain, so it cannot renew; the second
takes the Lease. Thawed, the first must see at once that it no longer leads, however its
threads are scheduled: it evicts nothing more, records nothing on the Node and exits 1.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import kubernetes
import pytest
import yaml

from reconciler.controller.leader import LeaderElector, LeaseConfig
from reconciler.dispatch.nodes import NodeLocks
from reconciler.dispatch.nodes.model import ANNOTATION_PHASE, NotLeading
from reconciler.loop import utc_now
from tests import test_controller, test_node_patching
from tests.fleet import BASELINE_YAML, documents, dpkg_installs, open_window_yaml
from tests.kubeapi import KubeApi
from tests.test_controller import Controller, lease_holder
from tests.test_node_patching import Cluster, Kubelet, PhaseLog, _annotations
from tests.waiting import wait_until

# The fixtures these scenarios share with the controller and node tests.
controllers = test_controller.controllers
cluster = test_node_patching.cluster
node_root = test_node_patching.node_root


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_leader_may_act_only_within_the_renew_deadline_of_its_last_renewal() -> None:
    """The fence does not wait for the renewing thread: a process frozen past the deadline
    refuses as soon as any of its threads runs again."""
    clock = Clock()
    config = LeaseConfig("l", "ns", "me", lease_duration=15, renew_deadline=10, retry_period=2)
    elector = LeaderElector(None, config, clock=clock)  # type: ignore[arg-type]  # no API here
    assert not elector.may_act()  # not leading yet
    elector._renewed_at = clock.now
    elector.leading.set()
    clock.now += 9.9
    assert elector.may_act()
    clock.now += 0.1
    assert not elector.may_act()
    locks = NodeLocks(may_act=elector.may_act)
    with pytest.raises(NotLeading, match="lost the leader Lease before draining"):
        locks.fence("n1", "draining")


@pytest.mark.apiserver
def test_a_leader_that_sees_another_holder_stops_leading_at_once(kube_api: KubeApi) -> None:
    """Another holder in the Lease (a standby that took over while this one stalled, or an
    administrator) ends leading at the next renewal, not after the renew deadline."""
    ns = kube_api.namespace()
    config = LeaseConfig("l", ns, "alpha", lease_duration=60, renew_deadline=40, retry_period=0.2)
    elector = LeaderElector(kube_api.client(), config)
    lost = threading.Event()
    assert elector.acquire(threading.Event())
    elector.keep(on_lost=lost.set)
    try:
        coordination = kubernetes.client.CoordinationV1Api(kube_api.client())
        lease = coordination.read_namespaced_lease("l", ns)
        lease.spec.holder_identity = "intruder"
        lease.spec.renew_time = elector.wall()  # the elector's own clock, as a standby's
        coordination.replace_namespaced_lease("l", ns, lease)
        assert lost.wait(timeout=20), "still leading after another holder took the Lease"
        assert not elector.may_act()
    finally:
        elector.release()
    assert lease_holder(kube_api, ns, "l") == "intruder"  # not released: it is not ours


def _kubernetes_fleet(directory: Path, node: str) -> Path:
    directory.mkdir()
    instance = (
        "apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
        f"metadata:\n  name: {node}\n  labels: {{fleet: e2e}}\n"
        f"spec:\n  connection: {{type: kubernetes, node: {node}}}\n"
    )
    # patchctl controller has no --now (its Lease runs on the wall clock as the API server's
    # does), so this window alone is open at the host's time.
    window = open_window_yaml(now=utc_now())
    (directory / "fleet.yaml").write_text(documents(BASELINE_YAML, window, instance))
    return directory


def _node_job_config(path: Path, cluster: Cluster) -> Path:
    values = {
        "namespace": cluster.namespace,
        "jobTimeoutSeconds": 90,
        "drainTimeoutSeconds": 600,  # the drain outlives the test unless the budget allows
        "rebootTimeoutSeconds": 30,
        "evictionGracePeriodSeconds": 0,  # no kubelet to confirm a graceful termination
        "pollSeconds": 0.2,
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.apiserver
def test_a_leader_frozen_mid_drain_starts_nothing_more_and_the_new_one_patches_the_node(
    cluster: Cluster,
    controllers: Callable[..., Controller],
    node_root: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    node = cluster.node("leased", boot="boot-1")
    root = node_root("leased")
    cluster.pod("web-0", node, labels={"app": "web"})
    cluster.pdb("web", {"app": "web"}, allowed=0)  # holds every drain until the test allows
    fleet = _kubernetes_fleet(tmp_path / "fleet", node)
    config = _node_job_config(tmp_path / "node-jobs.yaml", cluster)
    extra = ("--interval", "2", "--source", str(fleet), "--node-job-config", str(config))
    log = PhaseLog(cluster, node)
    ns = cluster.namespace
    with Kubelet(cluster, {node: root}) as kubelet:
        alpha = controllers(ns, "alpha", *extra)
        wait_until(
            "alpha leads", lambda: lease_holder(cluster.api, ns) == "alpha", detail=alpha.logs
        )
        beta = controllers(ns, "beta", *extra)

        def phase() -> str | None:
            return _annotations(cluster.get_node(node)).get(ANNOTATION_PHASE)

        wait_until("alpha draining", lambda: phase() == "draining", timeout=120)
        alpha.process.send_signal(signal.SIGSTOP)  # mid-drain: it can no longer renew
        try:
            wait_until("beta leads", lambda: lease_holder(cluster.api, ns) == "beta", timeout=60)
            # beta rolled alpha's cordon back (resume_nodes), scanned and began its own drain.
            wait_until(
                "beta draining after a roll-back",
                lambda: log.phases.count("draining") == 2 and phase() == "draining",
                timeout=120,
                detail=beta.logs,
            )
        finally:
            alpha.process.send_signal(signal.SIGCONT)
        # Thawed while beta drains the same node: alpha must not go on evicting, record the
        # patching phase or create its Job (its drain would otherwise end with beta's).
        assert alpha.process.wait(timeout=60) == 1, alpha.logs()
        assert "not leading: leaving the node to the new leader" in alpha.logs()
        assert "lost lease" in alpha.logs()
        assert phase() == "draining" and "web-0" in cluster.pods()
        installs = [name for name in kubelet.created if name.startswith("pw-install-")]
        assert installs == []
        cluster.pdb_allows("web", 1)
        wait_until(
            "beta patched and uncordoned the node",
            lambda: log.phases[-2:] == ["patching", None] and phase() is None,
            timeout=120,
            detail=beta.logs,
        )
    assert log.stop() == [
        None,
        "cordoned",
        "draining",
        None,
        "cordoned",
        "draining",
        "patching",
        None,
    ]
    assert [name for name in kubelet.created if name.startswith("pw-install-")] != []
    assert len({n for n in kubelet.created if n.startswith("pw-install-")}) == 1
    assert dpkg_installs(root)[("pwtest-lib", "1.0-2")] == 1  # installed once, by beta
    assert not cluster.get_node(node)["spec"].get("unschedulable")
    assert beta.process.poll() is None
