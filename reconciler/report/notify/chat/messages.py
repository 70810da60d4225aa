"""Stage: report — notifications. What a chat or mail notice says: pure functions from an
``Occurrence`` to a ``Message`` (one template per kind people act on: a window execution started
or ended with its counts, a machine failed with the end of its output, a gate blocking too long,
a rollout halted; one generic line for any other transition), and from a ``Message`` to the
payload each destination takes: Slack's mrkdwn, a Teams Adaptive Card, a plain-text mail body.

No I/O, no clock. Every text is passed through ``redaction.redacted`` (a gate's or a source's URL
in an error message keeps no credentials). May not import the sinks beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.api.enums import ExecutionStatus
from reconciler.redaction import redacted
from reconciler.report.notify.audit import describe
from reconciler.report.notify.occurrences import ANNOUNCED, Kind, Occurrence
from reconciler.report.views.render import short_revision

DEFAULT_KINDS = frozenset(
    {Kind.WINDOW_EXECUTION_CHANGED, Kind.JOB_FINISHED, Kind.GATE_BLOCKED, Kind.ROLLOUT_HALTED}
)
"""What a chat sink sends unless told otherwise: the kinds with their own template."""

GOOD, ATTENTION, WARNING, DEFAULT = "good", "attention", "warning", "default"
"""A message's tone: Adaptive Card's colour names (Slack and mail show none)."""


def parse_kinds(text: str) -> frozenset[Kind]:
    """``window.execution,job.finished``: the kinds a sink sends. Only transitions can be sent
    (``job.finished``: the failed ones); anything else is refused with what may be given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("give at least one kind")
    valid = {str(kind) for kind in ANNOUNCED}
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not a kind that is announced; one of {_listed(valid)}"
        )
    return frozenset(Kind(name) for name in names)


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


@dataclass(frozen=True)
class Message:
    """A notice, independent of where it goes."""

    title: str
    """One line: what happened (a mail's subject)."""
    facts: tuple[tuple[str, str], ...] = ()
    output: str = ""
    """The end of what a machine said, shown preformatted."""
    tone: str = DEFAULT
    footer: str = ""
    """Provenance: the revision in force, who made it, when this happened."""


def message(occurrence: Occurrence) -> Message:
    """The notice for ``occurrence``, its template's or the generic line."""
    title, facts, output, tone = _TEMPLATES.get(occurrence.kind, _generic)(occurrence)
    return Message(
        title=redacted(" ".join(title.split())),  # one line: a mail's Subject, a card's heading
        facts=tuple(
            (name, redacted(str(value))) for name, value in facts if value not in ("", None)
        ),
        output=redacted(output),
        tone=tone,
        footer=redacted(_footer(occurrence)),
    )


# --- the templates ---------------------------------------------------------------------------

Facts = list[tuple[str, Any]]
Template = tuple[str, Facts, str, str]

_TONES = {
    ExecutionStatus.SUCCESS: GOOD,
    ExecutionStatus.FAILED: ATTENTION,
    ExecutionStatus.TIMED_OUT: ATTENTION,
    ExecutionStatus.CANCELLED: WARNING,
    ExecutionStatus.SKIPPED_OVERLAPPING: WARNING,
}


def _window(o: Occurrence) -> Template:
    d = o.detail
    window, status = d.get("window"), str(d.get("status"))
    opening: Facts = [("Opening", d.get("opening"))]
    if status == ExecutionStatus.IN_PROGRESS:
        return f"Window {window} started", opening, "", DEFAULT
    if status == ExecutionStatus.SKIPPED_OVERLAPPING:
        title = f"Window {window} skipped: its previous execution still runs"
        return title, opening, "", WARNING
    counts: Mapping[str, Any] = d.get("counts") or {}
    running = int(counts.get("running") or 0)
    title = f"Window {window} ended: {status}"
    if running:  # a FAILED execution is announced at its first failure
        title = f"Window {window} {status}, {running} job(s) still running"
    facts: Facts = [
        *opening,
        ("Installed", counts.get("installed", 0)),
        ("Failed", counts.get("failed", 0)),
        ("Pending reboot", counts.get("pendingReboot", 0)),
    ]
    return title, facts, "", _TONES.get(ExecutionStatus(status), DEFAULT)


def _machine_failed(o: Occurrence) -> Template:
    d = o.detail
    error: Mapping[str, Any] = d.get("error") or {}
    where = f" in window {d['window']}" if d.get("window") else ""
    facts: Facts = [
        ("Machine", o.instance),
        ("Operation", d.get("operation")),
        ("Window", d.get("window")),
        ("Error", error.get("code")),
        ("Job", o.job),
        ("Duration", _duration(d.get("seconds"))),
    ]
    output = str(d.get("output") or error.get("message") or "")
    return f"Machine {o.instance} failed: {d.get('operation')}{where}", facts, output, ATTENTION


def _gate_blocked(o: Occurrence) -> Template:
    d = o.detail
    blocked = _duration(d.get("blockedSeconds"))
    title = f"Gate {d.get('gate')} has blocked {d.get('scope')} for {blocked}"
    facts: Facts = [
        ("Gate", d.get("gate")),
        ("Scope", d.get("scope")),
        ("Blocked since", d.get("since")),
        ("Reason", d.get("reason")),
    ]
    return title, facts, "", WARNING


def _rollout_halted(o: Occurrence) -> Template:
    d = o.detail
    rollout = d.get("rollout")
    facts: Facts = [
        ("Rollout", rollout),
        ("Cycle", d.get("cycle")),
        ("Stage", d.get("stage")),
        ("Reason", d.get("reason")),
        ("Resume with", f"patchctl rollout resume {rollout}"),
    ]
    return f"Rollout {rollout} halted: {d.get('reason')}", facts, "", ATTENTION


def _generic(o: Occurrence) -> Template:
    """Any other transition, in the audit table's words."""
    on = f" {o.instance}" if o.instance else ""
    return f"{o.kind}{on}: {describe(o.to_dict())}", [], "", DEFAULT


_TEMPLATES = {
    Kind.WINDOW_EXECUTION_CHANGED: _window,
    Kind.JOB_FINISHED: _machine_failed,
    Kind.GATE_BLOCKED: _gate_blocked,
    Kind.ROLLOUT_HALTED: _rollout_halted,
}


def _duration(seconds: Any) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``: how long, for people."""
    if not isinstance(seconds, int | float):
        return ""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    hours, minutes = divmod(total // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _footer(o: Occurrence) -> str:
    revision = short_revision(o.revision) if o.revision else "no revision"
    author = o.author.partition(" <")[0]  # the name; the address stays in the audit log
    by = f" by {author}" if author else ""
    when = o.time.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"{revision}{by} · {when}"


# --- the payloads ----------------------------------------------------------------------------


def plain_text(m: Message) -> str:
    """A mail body: the title, the facts as ``Name: value`` lines, the output indented."""
    parts = [m.title]
    if m.facts:
        parts += ["", *(f"{name}: {value}" for name, value in m.facts)]
    if m.output:
        parts += ["", "Last output:", *(f"    {line}" for line in m.output.splitlines())]
    return "\n".join([*parts, "", f"-- {m.footer}", ""])


def slack(m: Message) -> dict[str, Any]:
    """A Slack incoming webhook's payload: one mrkdwn ``text``."""
    lines = [f"*{_slack_escape(m.title)}*"]
    lines += [f"*{_slack_escape(name)}:* {_slack_escape(value)}" for name, value in m.facts]
    if m.output:
        # A ``` inside would end the block early.
        lines.append("```" + _slack_escape(m.output.replace("```", "'''")) + "```")
    lines.append(f"_{_slack_escape(m.footer)}_")
    return {"text": "\n".join(lines)}


def _slack_escape(text: str) -> str:
    """Slack's three control characters (its "Formatting text" guide); nothing else is."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


def teams(m: Message) -> dict[str, Any]:
    """A Teams workflow webhook's payload ("Post to a channel when a webhook request is
    received"): a message with one Adaptive Card 1.4 attachment, every text escaped."""
    body: list[dict[str, Any]] = [
        _text(m.title, weight="Bolder", size="Medium", color=_COLOURS[m.tone]),
    ]
    if m.facts:
        facts = [
            {"title": _teams_escape(name), "value": _teams_escape(value)} for name, value in m.facts
        ]
        body.append({"type": "FactSet", "facts": facts})
    if m.output:
        body.append(_text(m.output, fontType="Monospace", separator=True))
    body.append(_text(m.footer, isSubtle=True, size="Small"))
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}],
    }


_COLOURS = {GOOD: "Good", ATTENTION: "Attention", WARNING: "Warning", DEFAULT: "Default"}


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": _teams_escape(text), "wrap": True, **style}


_TEAMS_INLINE = re.compile(r"([\\`*_~\[\]<])")
"""What Adaptive Card markdown (TextBlock text, Fact title and value: Teams' "Format cards"
page) reads inline: emphasis, code, strikethrough, links ``[text](url)``, and the ``<`` that
opens Teams' ``<at>`` mentions and autolinks (a ``>`` matters only at a line's start, so an
arrow ``->`` stays as it is)."""
_TEAMS_LINE_START = re.compile(r"^(\s*)([-+#>|]|\d+(?=[.)]))", re.MULTILINE)
"""A line that starts a list (``- ``, ``+ ``, ``1. ``), a heading or a quote."""


def _teams_escape(text: str) -> str:
    """Text from machines and repositories (package output, reasons, names, an author) shown
    as it is: each markdown-significant character backslash-escaped (CommonMark's escapes, which
    Teams' renderer honours), as Slack's three characters are for mrkdwn."""
    text = _TEAMS_INLINE.sub(r"\\\1", text)
    return _TEAMS_LINE_START.sub(_escape_line_start, text)


def _escape_line_start(match: re.Match[str]) -> str:
    indent, marker = match.group(1), match.group(2)
    if marker.isdigit():  # "1." or "1)": the number stays, its dot or bracket is escaped
        return f"{indent}{marker}\\"
    return f"{indent}\\{marker}"
