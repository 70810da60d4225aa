"""Stage: loop. The one place where errors become outcomes (see :mod:`reconciler.errors` for the
taxonomy): a refused revision, the error of a failed job (and the end of its output), the error of a
failed export.

Pure: reads an exception, returns what is recorded; may not touch the store, a source or a
transport, and decides no policy (the ``except`` clauses that call it say theirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.api.install import FAILED
from reconciler.api.snapshot import SnapshotInvalid
from reconciler.dispatch.base import AgentFailed
from reconciler.errors import PatchwardenError, RefusedInput, TemporaryError
from reconciler.sources.base import RevisionInvalid, SignatureRefused


@dataclass(frozen=True)
class Refusal:
    """A revision not put in force: which one (or why none could be named), why, and by whom."""

    revision: str
    problems: tuple[str, ...]
    author: str = ""


def refusal(exc: RefusedInput | TemporaryError) -> Refusal:
    """A refused revision names itself; a source that could not be read names no revision."""
    revision = exc.revision if isinstance(exc, RevisionInvalid | SignatureRefused) else None
    if revision is not None:
        return Refusal(str(revision), tuple(exc.reasons()), revision.author)
    unnamed = "unknown" if isinstance(exc, SnapshotInvalid) else "unreachable"
    return Refusal(unnamed, tuple(exc.reasons()))


def job_error(exc: Exception) -> dict[str, str]:
    """A failed job's ``error``: the agent's code and message, else the exception's type."""
    if isinstance(exc, AgentFailed):
        return {"code": exc.code, "message": exc.message}
    return {"code": type(exc).__name__, "message": str(exc)}


def export_error(exc: Exception) -> str:
    """A failed export's ``error``: an expected failure in its own words, a bug with its type."""
    if isinstance(exc, PatchwardenError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


OUTPUT_LINES, OUTPUT_CHARS = 15, 2000
"""How much of a failed job's output its announcement carries (a chat message stays readable)."""


def failure_output(result: Mapping[str, Any]) -> str:
    """The end of what a failed job said: its error's message, then each patch the install
    could not put on the machine with the package manager's words; the last lines only."""
    error = result.get("error") or {}
    lines = str(error.get("message") or "").splitlines()
    for patch in (result.get("install") or {}).get("patches") or ():
        if patch.get("result") == FAILED:
            lines.append(f"{patch.get('name')} {patch.get('version')}: {patch.get('message')}")
    return "\n".join(lines[-OUTPUT_LINES:])[-OUTPUT_CHARS:]
