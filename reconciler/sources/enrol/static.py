"""Stage: sources (enrolment). The ``static`` kind: the hosts are written in the InstanceSource.
No I/O at all; it is a discovery function like the others so every kind is enrolled one way."""

from __future__ import annotations

from reconciler.api.enrolment import DiscoveredHost
from reconciler.api.resources import StaticHosts
from reconciler.sources.enrol.base import Context


def discover(spec: StaticHosts, context: Context) -> list[DiscoveredHost]:
    """One host per entry, as written."""
    return [
        DiscoveredHost(
            id=host.name,
            address=host.address,
            port=host.port,
            user=host.user,
            labels=dict(host.labels),
        )
        for host in spec.hosts
    ]
