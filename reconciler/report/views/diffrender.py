"""Stage: report — views. ``patchctl diff`` for people (tables), machines (JSON) and pull
requests (Markdown sized for a comment: the totals first, the details folded, long lists cut
with a count of what was left out).

Every name shown comes from a commit or a machine: in Markdown it is HTML-escaped and its ``|``
escaped, so a package or instance name can neither break a table nor inject markup into the
comment. Writes only to the stream it is given.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import IO, Any

from reconciler.report.views.diff import Diff
from reconciler.report.views.render import dump, rows, visible

LIMIT = 50
"""Rows per Markdown section."""
MOST_CHARACTERS = 60_000
"""GitHub refuses comments over 65,536 characters (GitLab's notes allow 1,000,000): fewer rows
per section until the comment fits."""
LISTED = 5
"""Versions named per table cell; the rest are counted (``-o json`` names every one)."""


def diff(result: Diff, fmt: str, out: IO[str], *, title: str, limit: int = LIMIT) -> None:
    """``result`` as a table, JSON or Markdown; ``title`` names the two revisions."""
    if fmt == "json":
        dump({"title": title, **result.document()}, fmt, out)
    elif fmt == "markdown":
        out.write(markdown(result, title, limit))
    else:
        _tables(result, title, out)


def summary_line(result: Diff) -> str:
    """The totals in one sentence."""
    if not result.changed:
        return "No change: approvals, compliance, windows and next installs stay as they are."
    t = result.totals()
    return (
        f"{t['instances']} instance(s) change: {t['newlyApproved']} newly approved, "
        f"{t['noLongerApproved']} no longer approved, {t['newlyRejected']} newly rejected, "
        f"{t['complianceChanges']} compliance change(s); windows: {t['windowsAdded']} added, "
        f"{t['windowsRemoved']} removed, {t['windowsRescheduled']} rescheduled; "
        f"{t['installsChanged']} window(s) would install something else."
        + (f" Gates: {len(result.gates)} added, removed or changed." if result.gates else "")
    )


def _instance_rows(result: Diff) -> list[dict[str, Any]]:
    return [
        {
            "instance": c.instance,
            "group": _arrow(c.before.group, c.after.group),
            "baseline": _arrow(c.before.baseline, c.after.baseline),
            "compliance": _arrow(c.before.status, c.after.status),
            "newly approved": _listed(c.newly_approved),
            "no longer approved": _listed(c.no_longer_approved),
            "newly rejected": _listed(c.newly_rejected),
        }
        for c in result.instances
    ]


def _window_rows(result: Diff) -> list[dict[str, Any]]:
    return [
        {
            "window": w["window"],
            "change": w["change"],
            "schedule": _arrow(w["schedule"]["before"], w["schedule"]["after"]),
            "next opening": _arrow(w["nextOpening"]["before"], w["nextOpening"]["after"]),
        }
        for w in (change.document() for change in result.windows)
    ]


def _install_rows(result: Diff) -> list[dict[str, Any]]:
    return [
        {
            "window": install.window,
            "next opening": install.opening.start.isoformat() if install.opening else "never",
            "instance": name,
            "before the change": _listed(before) or "-",
            "after the change": _listed(after) or "-",
        }
        for install in result.installs
        for name, before, after in install.instances
    ]


def _grouped_rows(entries: Sequence[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    return [
        {
            what: e["name"],
            "instances": e["instances"],
            "newly approved": len(e["newlyApproved"]),
            "no longer approved": len(e["noLongerApproved"]),
            "newly rejected": len(e["newlyRejected"]),
            "now non-compliant": e["nowNonCompliant"],
            "now compliant": e["nowCompliant"],
        }
        for e in entries
    ]


def _sections(result: Diff) -> list[tuple[str, list[dict[str, Any]]]]:
    document = result.document()
    return [
        ("Baselines", _grouped_rows(document["baselines"], "baseline")),
        ("Patch groups", _grouped_rows(document["groups"], "group")),
        ("Instances", _instance_rows(result)),
        ("Windows", _window_rows(result)),
        ("Next openings: what each would install", _install_rows(result)),
        ("Gates", [change.document() for change in result.gates]),
    ]


def _tables(result: Diff, title: str, out: IO[str]) -> None:
    out.write(f"{visible(title)}\n{summary_line(result)}\n")
    for heading, data in _sections(result):
        if data:
            rows(data, "table", out, title=heading)


def markdown(result: Diff, title: str, limit: int = LIMIT) -> str:
    """A pull-request comment: a heading, the totals, then one folded section per kind, with
    at most ``limit`` rows each, fewer when the comment would not fit in one."""
    text = _markdown(result, title, limit)
    while len(text) > MOST_CHARACTERS and limit > 1:
        limit //= 2
        text = _markdown(result, title, limit)
    return text


def _markdown(result: Diff, title: str, limit: int) -> str:
    lines = [f"### {_cell(title)}", "", _cell(summary_line(result)), ""]
    for heading, data in _sections(result):
        if not data:
            continue
        lines += ["<details>", f"<summary>{heading} ({len(data)})</summary>", ""]
        lines += _markdown_table(data[:limit])
        if len(data) > limit:
            lines += ["", f"… and {len(data) - limit} more (`patchctl diff -o json` lists all)"]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def _markdown_table(data: Sequence[dict[str, Any]]) -> list[str]:
    columns = list(data[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in data:
        out.append("| " + " | ".join(_cell(str(row[c])) for c in columns) + " |")
    return out


def _cell(text: str) -> str:
    """Text from a commit or a machine, shown as text in a Markdown table cell."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" (+{len(items) - LISTED} more)" if len(items) > LISTED else "")


def _arrow(before: str | None, after: str | None) -> str:
    before, after = before or "-", after or "-"
    return before if before == after else f"{before} → {after}"
