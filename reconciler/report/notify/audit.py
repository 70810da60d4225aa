"""Stage: report — notifications. The audit log: every occurrence of the loop as one JSON line in an
append-only file, and the reader behind ``patchctl audit``.

An I/O edge of the report stage: it owns its one file and touches nothing else. Durability over
speed: each line is written with a single ``write`` on an ``O_APPEND`` descriptor and fsync'd
before the observer returns (per line, not per batch: a job has few lines, and an fsync costs
milliseconds next to a job's seconds). So a line the loop has moved past survives a crash or a
power loss, lines from concurrent jobs (and from two processes) never interleave, and nothing is
ever truncated or rewritten. A torn last line (a crash mid-write) is reported by the reader,
never silently dropped or "repaired".
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.redaction import redacted
from reconciler.report.files import sync_directory
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.report.views import hooks
from reconciler.report.views.render import short_revision

FILENAME = "audit.jsonl"
"""The default audit log's name, beside the state database."""


def default_path(state: Path) -> Path:
    """The audit log of the state database ``state``: ``audit.jsonl`` in the same directory."""
    return state.parent / FILENAME


class AuditLog:
    """An observer appending every occurrence as one fsync'd JSON line. Safe to share between
    threads (jobs run concurrently) and between processes (``O_APPEND``).

    The file is opened for each line: a log renamed away (rotated) is followed by a new file at
    ``path`` at once, without restarting the loop; the cost is nothing next to the fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(self._open())  # fail now, at start-up, if the log cannot be written

    def __call__(self, occurrence: Occurrence) -> None:
        self.write(occurrence.to_dict())

    def write(self, entry: Mapping[str, Any]) -> None:
        # A message quoting a URL (a fetch that failed) keeps no credentials on disk.
        line = (redacted(json.dumps(entry, sort_keys=False, default=str)) + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError(f"the audit log {self.path} is closed")
            fd = self._open()
            try:
                written = os.write(fd, line)
                if written != len(line):  # a full disk: say so; the loop logs it
                    raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _open(self) -> int:
        created = not self.path.exists()
        # 0600: the log names machines, commits and their authors.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            sync_directory(self.path.parent)  # the new file's name is durable too
        return fd

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corrupt:
    """A line that is not an audit entry: where it is and what is wrong with it."""

    path: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}; line skipped"


@dataclass(frozen=True)
class Query:
    """Which entries ``patchctl audit`` shows; every given criterion must hold."""

    since: datetime | None = None
    instance: str | None = None
    kind: str | None = None
    """A kind (``job.dispatched``) or its family (``job``)."""
    revision: str | None = None
    """A whole revision (``main@sha1:<sha>``) or the start of its digest (a short sha)."""

    def matches(self, entry: Mapping[str, Any], time: datetime) -> bool:
        if self.since is not None and time < self.since:
            return False
        if self.instance is not None and entry.get("instance") != self.instance:
            return False
        kind = str(entry.get("kind"))
        if self.kind is not None and self.kind not in (kind, kind.partition(".")[0]):
            return False
        return self.revision is None or _same_revision(str(entry.get("revision")), self.revision)


def kinds() -> list[str]:
    """Every value ``--kind`` accepts: the kinds and their families."""
    values = [str(kind) for kind in Kind]
    return sorted({*values, *(v.partition(".")[0] for v in values)})


def _same_revision(revision: str, wanted: str) -> bool:
    if revision == wanted:
        return True
    digest = revision.rpartition(":")[2].rpartition("@")[2]
    return len(wanted) >= 4 and digest.startswith(wanted.lower())


def read(path: Path, query: Query = Query()) -> tuple[list[dict[str, Any]], list[Corrupt]]:
    """The entries of the log that match ``query``, oldest first, and the lines that are not
    entries (each with ``file:line``). A missing file is an empty log."""
    entries: list[dict[str, Any]] = []
    corrupt: list[Corrupt] = []
    for number, raw in _lines(path):
        entry, time, problem = _parse(raw)
        if problem is not None or entry is None or time is None:
            corrupt.append(Corrupt(path, number, problem or "not an audit entry"))
        elif query.matches(entry, time):
            entries.append(entry)
    return entries, corrupt


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    with path.open("rb") as log:
        for number, raw in enumerate(log, 1):
            if raw.strip():
                yield number, raw


REQUIRED = ("time", "kind", "revision", "instance", "job", "detail")


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, datetime | None, str | None]:
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        torn = "" if raw.endswith(b"\n") else " (a torn last line: the writer stopped mid-line)"
        return None, None, f"not JSON ({exc}){torn}"
    if not isinstance(entry, dict):
        return None, None, f"expected a JSON object, got {type(entry).__name__}"
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        return None, None, "missing " + ", ".join(missing)
    if not isinstance(entry["detail"], dict | None):
        return None, None, f"detail: expected a JSON object, got {type(entry['detail']).__name__}"
    try:
        time = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
    except ValueError:
        return None, None, f"time {entry['time']!r} is not an ISO-8601 time"
    return entry, time if time.tzinfo else time.replace(tzinfo=UTC), None


# -- for people -------------------------------------------------------------------------------


def table_rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per entry: the columns of ``patchctl audit``'s table (times to the second,
    job ids to 8 characters, revisions to 12 hex digits, authors without their address)."""
    return [
        {
            "time": str(entry.get("time"))[:19] + "Z",
            "kind": entry.get("kind"),
            "instance": entry.get("instance"),
            # Short forms for people; -o json has them whole.
            "job": str(entry["job"])[:8] if entry.get("job") else None,
            "revision": _short(entry.get("revision")),
            "author": str(entry.get("author") or "").partition(" <")[0] or None,
            "what": describe(entry),
        }
        for entry in entries
    ]


def describe(entry: Mapping[str, Any]) -> str:
    """What happened, in a few words (the table's last column)."""
    kind, d = entry.get("kind"), entry.get("detail") or {}
    if kind == Kind.SNAPSHOT_ACCEPTED:
        return f"{d.get('instances', '?')} instance(s); was {_short(d.get('previous')) or 'none'}"
    if kind == Kind.SNAPSHOT_REFUSED:
        problems = d.get("problems") or []
        first = problems[0] if problems else ""
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{first}{more}; keeping {_short(d.get('keeping')) or 'nothing'}"
    if kind == Kind.JOB_DISPATCHED:
        pins = f", {len(d.get('pins') or [])} pin(s)" if d.get("pins") else ""
        window = f" in {d.get('window')}" if d.get("window") else ""
        return f"{d.get('operation')}{window}{pins}: {d.get('reason', '')}".rstrip(": ")
    if kind == Kind.JOB_FINISHED:
        error = d.get("error") or {}
        failed = f": {error.get('code')}: {error.get('message')}" if error else ""
        return f"{d.get('operation')} {d.get('status')}{failed}"
    if kind == Kind.HOOK_RAN:
        return hooks.describe(d)
    if kind == Kind.PATCHES_INSTALLED:
        return ", ".join(_patch(p) for p in d.get("patches") or []) or "-"
    if kind == Kind.REBOOT:
        done = "performed" if d.get("performed") else "not performed"
        if d.get("awaited"):  # the loop rebooted the machine and saw it come back
            done += f" and awaited (back after {d.get('seconds')} s with a new boot id)"
        return f"reboot required, {done}" + (f": {d['reason']}" if d.get("reason") else "")
    if kind == Kind.COMPLIANCE_CHANGED:
        return f"{d.get('previous') or 'unknown'} -> {d.get('status')} ({d.get('operation')})"
    if kind == Kind.WINDOW_EXECUTION_CHANGED:
        return f"{d.get('window')} {d.get('opening')}: {d.get('status')}"
    if kind == Kind.PATCH_NOW_REQUESTED:
        return f"{d.get('id')}: {d.get('operation')} on {d.get('targets')}"
    if kind == Kind.PATCH_NOW_CHANGED:
        return f"{d.get('id')}: {d.get('status')}" + (
            f" ({d['reason']})" if d.get("reason") else ""
        )
    if kind == Kind.EMERGENCY_REQUESTED:
        return f"{d.get('id')}: {d.get('cve')} on {', '.join(d.get('instances') or ())}"
    if kind == Kind.EMERGENCY_CHANGED:
        return f"{d.get('id')} ({d.get('cve')}): {d.get('status')}" + (
            f" ({d['reason']})" if d.get("reason") else ""
        )
    if kind in (Kind.CALENDAR_OVERRIDDEN, Kind.HALT_OVERRIDDEN):
        return _overridden(entry, d)
    if kind == Kind.ROLLOUT_OPERATOR:
        stage = f" stage {d['stage']}" if d.get("stage") else ""
        why = f" ({d['reason']})" if d.get("reason") else ""
        return f"{d.get('rollout')}: {d.get('action')}{stage}, cycle {d.get('cycle')}{why}"
    return json.dumps(d, default=str)[:200]


def _overridden(entry: Mapping[str, Any], d: Mapping[str, Any]) -> str:
    """Who started which run on which machines although a rail said no, which rail (the closed
    calendars, the halted rollouts: each said whole) and why."""
    who = str(entry.get("author") or "?").partition(" <")[0]
    os_user = f" (OS user {d['osUser']})" if d.get("osUser") not in (None, who) else ""
    refusals = "; ".join(str(r) for r in d.get("calendars") or d.get("rollouts") or ()) or "?"
    on = ", ".join(str(i) for i in d.get("instances") or ()) or "?"
    return (
        f"{d.get('run')} {d.get('id')} on {on} asked by {who}{os_user} although {refusals}; "
        f"reason: {d.get('reason')}"
    )


def _patch(patch: Any) -> str:
    """``openssl 3.0.15-1`` when installed, else with the agent's result (FAILED, UNCHANGED)."""
    if not isinstance(patch, Mapping):
        return str(patch)
    text = " ".join(str(patch[k]) for k in ("name", "version") if patch.get(k))
    result = patch.get("result")
    return text if result in (None, "INSTALLED") else f"{text} ({result})"


def _short(revision: Any) -> str | None:
    return short_revision(str(revision)) if revision else None
