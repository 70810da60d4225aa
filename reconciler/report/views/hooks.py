"""Stage: report — views. A job's hooks and health checks (its result's ``hooks``, an audit
line's ``job.hook``) in a few words for people: which stage or check, whether it passed, and
when it did not, how it ended and the last line it printed, cut to :data:`WIDTH` characters.

Pure: from stored entries to text; the renderers escape it like every other value (a machine's
output may hold terminal escapes). Decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

WIDTH = 200
"""Characters of one entry's words: the whole output is in the job's result and -o json."""


def describe(entry: Mapping[str, Any]) -> str:
    """``preInstall ok``, ``healthCheck web after reboot FAILED (3 attempts): HTTP 503``."""
    stage = str(entry.get("stage", "?"))
    if entry.get("name"):
        stage += f" {entry['name']} after {entry.get('after', 'install')}"
    if entry.get("ok"):
        return f"{stage} ok"
    attempts = entry.get("attempts")
    tries = f" ({attempts} attempts)" if isinstance(attempts, int) and attempts > 1 else ""
    return _cut(f"{stage} FAILED{tries}: {_why(entry)}")


def summary(entries: Sequence[Mapping[str, Any]] | None) -> str:
    """Every entry of a job, ``; ``-separated."""
    return "; ".join(describe(entry) for entry in entries or ())


def _why(entry: Mapping[str, Any]) -> str:
    http = entry.get("http")
    if isinstance(http, Mapping):
        return str(http.get("error") or f"HTTP {http.get('status')} from {http.get('url')}")
    commands = entry.get("commands") or [entry.get("command")]
    last = commands[-1] if commands and isinstance(commands[-1], Mapping) else None
    if last is None:
        return str(entry.get("error") or "no output")
    said = str(last.get("stderr") or last.get("stdout") or "").strip().splitlines()[-1:]
    how = "timed out" if last.get("timedOut") else f"exit {last.get('exitCode')}"
    argv = " ".join(str(word) for word in last.get("argv") or ())
    return f"{argv}: {how}" + (f": {said[0]}" if said else "")


def _cut(text: str) -> str:
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"
