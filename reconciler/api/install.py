"""Stage: api (the schema). The agent's install result, as the reconciler reads it: one model
between the transports (which read the agent's document into it), the loop and the store
(which keeps the parts a job's result names).

Fields the reconciler does not read are kept as they came, and every key where the agent put it
(each backend adds its own details, see ``reconciler/agent``), so a stored or printed result is
the agent's document, not a rewrite of it. This module may not import anything from the rest
of ``reconciler`` but the api.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import (
    ConfigDict,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from reconciler.api._base import Model

FAILED = "FAILED"
"""A patch's ``result`` when it could not be installed."""
INSTALLED = "INSTALLED"
"""A patch's ``result`` when the install put it on the machine."""
STORED = ("changed", "patches", "dependencies", "recovery", "reboot")
"""The parts of an install result a job's result keeps."""


class _AgentDocument(Model):
    """A part of an agent document: what the reconciler reads is typed, the rest is kept."""

    model_config = ConfigDict(extra="allow")
    _keys: tuple[str, ...] = PrivateAttr(default=())
    """The keys in the order the agent wrote them."""

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        part = handler(data)
        if isinstance(data, dict):
            part._keys = tuple(data)
        return part

    @model_serializer(mode="wrap")
    def _in_written_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Declared fields would come first: keep the agent's order, which `patchctl install`
        # prints and the audit log records as it came.
        dumped: dict[str, Any] = handler(self)
        return {**{k: dumped[k] for k in self._keys if k in dumped}, **dumped}

    def document(self) -> dict[str, Any]:
        """The part as the agent wrote it (fields it left out stay out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class PatchOutcome(_AgentDocument):
    """What the install did with one pinned patch."""

    name: str
    version: str
    arch: str | None = None
    result: str = ""
    """INSTALLED, UNCHANGED, WOULD_INSTALL, HELD (held on the machine, not sent to its package
    manager) or FAILED."""
    message: str = ""
    rollback: str = ""


class Reboot(_AgentDocument):
    """Whether the machine needed a reboot, and whether it happened."""

    required: bool = False
    performed: bool = False


class InstallResult(_AgentDocument):
    """An agent's install result document."""

    changed: bool | None = None
    patches: tuple[PatchOutcome, ...] = ()
    dependencies: tuple[dict[str, Any], ...] = ()
    recovery: tuple[dict[str, Any], ...] = ()
    reboot: Reboot | None = None

    @property
    def failed(self) -> tuple[PatchOutcome, ...]:
        """The patches that could not be installed."""
        return tuple(p for p in self.patches if p.result == FAILED)

    def stored(self) -> dict[str, Any]:
        """The ``install`` part of a job's result: what the install did, each part as the agent
        wrote it (None when it wrote none)."""
        document = self.document()
        return {k: document.get(k) for k in STORED}
