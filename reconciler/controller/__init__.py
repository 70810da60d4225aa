"""Stage: controller — ``patchctl controller``, the Kubernetes controller: the reconcile loop
(:mod:`reconciler.loop`) with a namespace's custom resources as the source
(:mod:`reconciler.sources.kubernetes`), Nodes mirrored as ManagedInstances, status written to the
resources once per pass (:mod:`reconciler.state.kubernetes`), Kubernetes Events for transitions,
and leader election with a Lease so that one replica acts at a time.

Sits between ``cli`` (which chooses the adapters) and ``loop``; may import every stage below,
and reaches the API server only through :mod:`reconciler.kube`.
"""

from reconciler.controller.events import EventSink
from reconciler.controller.leader import LeaderElector, LeaseConfig, default_identity
from reconciler.controller.nodes import NodeMirror
from reconciler.controller.owner import own_deployment
from reconciler.controller.run import ControllerReconciler, run

__all__ = [
    "ControllerReconciler",
    "EventSink",
    "LeaderElector",
    "LeaseConfig",
    "NodeMirror",
    "default_identity",
    "own_deployment",
    "run",
]
