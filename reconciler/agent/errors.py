"""Stage: agent. Failures the agent reports, each with a stable code and a message that says what
to do. They end up in the result document, never as a traceback."""

from typing import Dict, Optional


class AgentError(Exception):
    """A failure of the whole operation; ``code`` is stable for machines."""

    code = "AgentError"

    def __init__(self, message: str, details: Optional[Dict[str, object]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> Dict[str, object]:
        out = {"code": self.code, "message": self.message}  # type: Dict[str, object]
        if self.details:
            out["details"] = self.details
        return out


class UnsupportedSystem(AgentError):
    code = "UnsupportedSystem"


class RepositoryError(AgentError):
    """A repository could not be refreshed: unreachable, unsigned, inconsistent."""

    code = "RepositoryError"


class PackageManagerBusy(AgentError):
    """The dpkg/apt lock is held by another process."""

    code = "PackageManagerBusy"


class InvalidPin(AgentError):
    """A package name or version that is not valid; refused before any command runs."""

    code = "InvalidPin"


class InstallRefused(AgentError):
    """apt's simulation shows the install would do something it must not (a blocked package,
    a removal, a version that does not exist)."""

    code = "InstallRefused"


class UntrustedRoot(AgentError):
    """An install into a root whose packages' maintainer scripts would run on this host (a
    Debian root without /bin/sh), without the operator's ``--trust-root-scripts``."""

    code = "UntrustedRoot"


class RecoveryFailed(AgentError):
    """An interrupted dpkg run was found and could not be repaired."""

    code = "RecoveryFailed"


class CommandFailed(AgentError):
    code = "CommandFailed"


class InternalError(AgentError):
    """A bug in the agent, or a standard library module this Python lacks: never "unsupported"."""

    code = "InternalError"
