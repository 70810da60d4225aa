"""Stage: sources (enrolment). The ``ansibleInventory`` kind: placeholder until implemented."""

from __future__ import annotations

from reconciler.api.enrolment import DiscoveredHost
from reconciler.api.resources import AnsibleInventory
from reconciler.sources.enrol.base import Context, DiscoveryRefused


def discover(spec: AnsibleInventory, context: Context) -> list[DiscoveredHost]:
    raise DiscoveryRefused("ansibleInventory: not implemented yet")
