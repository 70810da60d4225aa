"""Stage: api (the schema). The agent's install result, as the reconciler reads it: one model
between the transports (which hand over the agent's document), the loop and the store (which
keeps the parts a job's result names).

Fields the reconciler does not read are kept as they came (each backend adds its own details,
see ``reconciler/agent``), so a stored result is the agent's document, not a rewrite of it. This
module may not import anything from the rest of ``reconciler`` but the api.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from reconciler.api._base import Model

FAILED = "FAILED"
"""A patch's ``result`` when it could not be installed."""
STORED = ("changed", "patches", "dependencies", "recovery", "reboot")
"""The parts of an install result a job's result keeps."""


class _AgentDocument(Model):
    """A part of an agent document: what the reconciler reads is typed, the rest is kept."""

    model_config = ConfigDict(extra="allow")

    def document(self) -> dict[str, Any]:
        """The part as the agent wrote it (fields it left out stay out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class PatchOutcome(_AgentDocument):
    """What the install did with one pinned patch."""

    name: str
    version: str
    arch: str | None = None
    result: str = ""
    """INSTALLED, UNCHANGED, WOULD_INSTALL or FAILED."""
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
