"""Stage: dispatch. The one protocol every transport implements (local, ssh; later Kubernetes
Jobs and SSM): run the agent's scan or install where the machine is and return its documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from reconciler.api.inventory import Inventory


class Transport(Protocol):
    """Runs the agent on one machine. Methods block; transports are safe to use from threads."""

    def scan(self, *, instance_id: str | None = None, refresh: bool = True) -> Inventory:
        """The machine's inventory document (raises AgentFailed)."""
        ...

    def install(
        self,
        pins: Sequence[str],
        *,
        blocked: Sequence[str] = (),
        simulate: bool = False,
        reboot_option: str = "RebootIfNeeded",
        allow_reboot: bool = False,
        lock_timeout: int = 60,
    ) -> dict[str, Any]:
        """The agent's install result document (raises AgentFailed)."""
        ...
