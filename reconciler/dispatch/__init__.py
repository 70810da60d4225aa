"""Stage: dispatch — running the agent where the machine is (local now; SSH, Kubernetes Jobs and
SSM later), behind one protocol. Turns the agent's JSON into api documents; decides nothing.
"""

from reconciler.dispatch.local import AgentFailed, LocalTransport

__all__ = ["AgentFailed", "LocalTransport"]
