"""Stage: dispatch. The one protocol every transport implements (local, ssh; later Kubernetes
Jobs and SSM): run the agent's scan or install where the machine is and return its documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.errors import PermanentError

M = TypeVar("M", bound=BaseModel)


class AgentFailed(PermanentError):
    """The agent reported an error (or its output could not be read)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


def scan_args(instance_id: str | None, refresh: bool) -> list[str]:
    """The agent's command line for a scan (every transport runs the same agent)."""
    return [
        "scan",
        *(["--instance-id", instance_id] if instance_id else []),
        *([] if refresh else ["--no-refresh"]),
    ]


def install_args(
    pins: Sequence[str],
    blocked: Sequence[str],
    simulate: bool,
    reboot_option: str,
    allow_reboot: bool,
    lock_timeout: int,
) -> list[str]:
    """The agent's command line for an install."""
    args = ["install", "--reboot-option", reboot_option, "--lock-timeout", str(lock_timeout)]
    for pin in pins:
        args += ["--pin", pin]
    for pattern in blocked:
        args += ["--block", pattern]
    return (
        args + (["--simulate"] if simulate else []) + (["--allow-reboot"] if allow_reboot else [])
    )


def inventory_of(document: dict[str, Any]) -> Inventory:
    """The agent's scan output as the schema's Inventory, or AgentFailed saying why not."""
    return _read(Inventory, document, "BadInventory", "inventory")


def install_result_of(document: dict[str, Any]) -> InstallResult:
    """The agent's install result as the schema's InstallResult, or AgentFailed saying why not."""
    return _read(InstallResult, document, "BadInstallResult", "install result")


def _read(model: type[M], document: dict[str, Any], code: str, what: str) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:  # the agent's fault, not the loop's: this job fails
        raise AgentFailed(code, f"the agent's {what} does not match the schema: {exc}") from None


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
