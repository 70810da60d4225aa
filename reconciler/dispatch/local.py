"""Stage: dispatch. The ``local`` transport: the agent runs as a subprocess on this machine, for
the host (``root=None``) or for a system rooted at a directory.

The agent is run with this interpreter (``python -m reconciler.agent``), exactly as it would run
from its zipapp elsewhere, so what is tested here is what ships. Its JSON output is validated into
:class:`reconciler.api.inventory.Inventory` or :class:`reconciler.api.install.InstallResult`; an
agent error becomes :class:`AgentFailed`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from reconciler.dispatch.base import AgentCommand, AgentFailed, root_args

TRUST_HOOKS_ENV = "PATCHWARDEN_TRUST_LOCAL_HOOKS"
"""The operator's switch (patchctl's environment) for :attr:`LocalTransport.trust_hooks`."""


@dataclass(frozen=True)
class LocalTransport(AgentCommand):
    """Runs the agent on this machine; ``root`` selects a system rooted at a directory, whose
    maintainer scripts may run on this host only with ``trust_root_scripts`` (AgentCommand)."""

    root: str | None = None
    timeout: float = 3600.0
    python: str = field(default=sys.executable)
    trust_root_scripts: bool = False
    trust_hooks: bool = False
    """The operator's word that a window task's hooks and command health checks, which come from
    the configuration repository, may run here: on this machine, the controller's own."""

    def _may_run_hooks(self) -> None:
        if not self.trust_hooks:
            raise AgentFailed(
                "HooksRefused",
                "a local connection's hooks and command health checks would run on the "
                "controller itself, which the configuration repository may not make it do: run "
                f"them on machines reached over SSH, or start patchctl with {TRUST_HOOKS_ENV}=1 "
                "if this host is yours to run them on",
            )

    def _run(self, args: list[str]) -> dict[str, Any]:
        argv = [self.python, "-m", "reconciler.agent", *args, *root_args(self.root)]
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, our own interpreter and module
                argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise AgentFailed(
                "Timeout", f"the agent did not finish within {self.timeout:.0f}s"
            ) from None
        try:
            document: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [
                f"exit {proc.returncode}"
            ]
            raise AgentFailed("AgentCrashed", f"the agent printed no result: {tail[0]}") from None
        error = document.get("error")
        if error:
            raise AgentFailed(
                error.get("code", "AgentError"), error.get("message", ""), error.get("details")
            )
        return document
