"""Stage: dispatch — Kubernetes Nodes as machines (docs/nodes.md). ``NodeTransport`` runs the
agent in a Job pinned to a node; an install cordons and drains the node first, waits for the
reboot the agent starts when one is needed, and uncordons it; ``resume_nodes`` finishes what a
controller that stopped mid-way left behind. ``patchctl node-agent`` (``agent_job``) is what runs
inside the Job. May import ``reconciler.api`` and ``reconciler.kube`` (its only way to the API);
decides nothing about patches.
"""

from reconciler.dispatch.nodes.model import NodeSettings
from reconciler.dispatch.nodes.transport import NodeLocks, NodeTransport, resume_nodes

__all__ = ["NodeLocks", "NodeSettings", "NodeTransport", "resume_nodes"]
