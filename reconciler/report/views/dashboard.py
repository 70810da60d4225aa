"""Stage: report — views. The compliance dashboard: one self-contained HTML page drawn from the
ComplianceReportData document (``export.report_document``), for people and for printing.

Works offline by construction: inline CSS, charts as inline SVG drawn here, no script, no font or
image from anywhere (a Content-Security-Policy says so to the browser as well). Every chart has a
title and description for screen readers and a table with the same numbers beside it. Everything
from the data (instance, group and patch names are user data) goes through ``html.escape``.
Pure: document in, text out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from reconciler.report.views.render import short_revision

LEVELS = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")
RED, GREEN, GREY, INK = "#c62828", "#2e7d32", "#9e9e9e", "#1d2330"
STATUS_COLOURS = {"COMPLIANT": GREEN, "NON_COMPLIANT": RED, "UNSPECIFIED": GREY}
LEVEL_COLOURS = {
    "CRITICAL": "#7b1fa2",
    "HIGH": "#c62828",
    "MEDIUM": "#ef6c00",
    "LOW": "#f9a825",
    "INFORMATIONAL": "#1565c0",
    "UNSPECIFIED": "#757575",
}
NO_GROUP = "(no patch group)"
LABEL_CHARS = 22
"""Chart labels longer than this are cut (the full name is in the table and the tooltip)."""


def render(document: Mapping[str, Any]) -> str:
    """The whole page."""
    title = f"Patch compliance — {_scope_text(document['scope'])}"
    body = [
        _header(document, title),
        _cards(document["summary"]),
        '<div class="grid">',
        _panel("by-group", "Compliance by patch group", *_group_chart(document)),
        _panel("by-severity", "Non-compliant patches by severity", *_severity_chart(document)),
        _panel(
            "over-time", "Missing and failed patches over time", *_trend_chart(document["trend"])
        ),
        "</div>",
        _rollouts_section(document.get("rollouts") or ()),
        _worst_section(document),
        _revisions_section(document["revisions"]),
        _patches_section(document),
        _footer(document),
    ]
    return _page(title, "\n".join(part for part in body if part))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _scope_text(scope: Mapping[str, Any]) -> str:
    if scope.get("instance"):
        return f"instance {scope['instance']}"
    if scope.get("patchGroup"):
        return f"patch group {scope['patchGroup']}"
    return "all instances"


def _when(moment: str) -> str:
    """An ISO time for people: minutes, in UTC."""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _header(document: Mapping[str, Any], title: str) -> str:
    return (
        f"<header><h1>{escape(title)}</h1>"
        f'<p class="meta">Generated {escape(_when(document["generatedAt"]))} by Patchwarden from '
        "the observed state; each result names the Git revision that decided it.</p></header>"
    )


def _cards(summary: Mapping[str, Any]) -> str:
    percent = summary["compliantPercent"]
    grade = "ok" if percent == 100 else "warn" if (percent or 0) >= 80 else "bad"
    cards = [
        ("Instances compliant", "—" if percent is None else f"{percent:g}%", f"big {grade}"),
        ("Instances", summary["instances"], ""),
        ("Compliant", summary["compliant"], "ok"),
        ("Non-compliant", summary["nonCompliant"], "bad"),
        ("Missing patches", summary["missingCount"], "bad"),
        ("Failed patches", summary["failedCount"], "bad"),
        ("Critical non-compliant", summary["criticalNonCompliantCount"], "bad"),
        ("Pending reboot", summary["installedPendingRebootCount"], ""),
        ("Held packages", summary.get("heldCount", 0), ""),
    ]
    items = "".join(
        f'<div class="card {kind}"><div class="value">{escape(str(value))}</div>'
        f'<div class="label">{escape(label)}</div></div>'
        for label, value, kind in cards
    )
    bar = _percent_bar(percent or 0.0)
    return f'<section class="cards" aria-label="Fleet compliance summary">{items}{bar}</section>'


def _percent_bar(percent: float) -> str:
    return (
        '<div class="meter" role="meter" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{percent:g}" aria-label="Instances compliant: {percent:g}%">'
        f'<div style="width:{percent:.1f}%"></div></div>'
    )


def _panel(key: str, heading: str, svg: str, table: str) -> str:
    return (
        f'<section class="panel" id="{key}" aria-labelledby="{key}-h">'
        f'<h2 id="{key}-h">{escape(heading)}</h2>'
        f'<div class="figure"><div class="plot">{svg}</div>{table}</div></section>'
    )


# Charts. Coordinates are in a viewBox about as wide as the panel, so text keeps its size.


@dataclass(frozen=True)
class Frame:
    """A chart's viewBox and its plot area inside it."""

    width: int
    height: int
    left: int = 48
    right: int = 12
    top: int = 16
    bottom: int = 36

    @property
    def base(self) -> int:
        return self.height - self.bottom

    @property
    def span(self) -> int:
        return self.width - self.left - self.right

    def y(self, value: float, top: int) -> float:
        return self.base - (self.base - self.top) * value / top


def _svg(key: str, title: str, desc: str, body: Iterable[str], frame: Frame) -> str:
    return (
        f'<svg class="chart" data-chart="{key}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-labelledby="{key}-t {key}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{key}-t">{escape(title)}</title><desc id="{key}-d">{escape(desc)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _group_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Instances per patch group and compliance status, with SSM's group state beside them."""
    states = {g["patchGroup"]: g for g in document["groups"]}
    rows: dict[str, dict[str, Any]] = {}
    for inst in document["instances"]:
        name = inst["patchGroup"] or NO_GROUP
        row = rows.setdefault(name, {"group": name, **dict.fromkeys(STATUS_COLOURS, 0)})
        status = inst["complianceStatus"]
        row[status if status in STATUS_COLOURS else "UNSPECIFIED"] += 1
    for name, row in rows.items():
        state = states.get(name, {})
        row["missing"] = state.get("instancesWithMissingPatches")
        row["failed"] = state.get("instancesWithFailedPatches")
    return [rows[name] for name in sorted(rows)]


def _group_chart(document: Mapping[str, Any]) -> tuple[str, str]:
    rows = _group_rows(document)
    bar, gap = 24, 10
    frame = Frame(560, 56 + len(rows) * (bar + gap), left=170, right=16, top=8)
    top = max((sum(r[s] for s in STATUS_COLOURS) for r in rows), default=0)
    body = [_legend(STATUS_COLOURS, x=frame.left, y=frame.height - 12)]
    for index, row in enumerate(rows):
        body += _stacked_bar(row, frame, frame.top + index * (bar + gap), bar, top)
    desc = "; ".join(
        f"{r['group']}: {r['COMPLIANT']} compliant, {r['NON_COMPLIANT']} non-compliant"
        for r in rows
    )
    title = "Instances per patch group by compliance status"
    svg = _svg("by-group", title, desc or "No instance has been scanned", body, frame)
    table = _table(
        "Instances per patch group (SSM's patch group state: with missing, with failed patches)",
        ("Patch group", "Compliant", "Non-compliant", "Unspecified", "With missing", "With failed"),
        [[r[k] for k in ("group", *STATUS_COLOURS, "missing", "failed")] for r in rows],
    )
    return svg, table


def _stacked_bar(row: Mapping[str, Any], frame: Frame, y: float, bar: int, top: int) -> list[str]:
    """One group's bar: its label, then a segment per compliance status with its count."""
    parts = [_label(row["group"], 8, y + bar / 2 + 5, anchor="start")]
    x = float(frame.left)
    for status, colour in STATUS_COLOURS.items():
        if not row[status]:
            continue
        width = frame.span * row[status] / top
        tip = f"{row['group']}: {row[status]} {status}"
        parts.append(_rect(x, y, width, bar, colour, tip, group=row["group"], series=status))
        if width >= 18:  # room for the count inside the segment
            parts.append(_value(row[status], x + width / 2, y + bar / 2 + 5, "#fff"))
        x += width
    return parts


def _severity_chart(document: Mapping[str, Any]) -> tuple[str, str]:
    counts = document["summary"]["nonCompliantByComplianceLevel"]
    values = [(level, int(counts.get(level, 0))) for level in LEVELS]
    frame = Frame(560, 260)
    ticks = _ticks(max(v for _, v in values))
    slot = frame.span / len(values)
    body = _y_axis(ticks, frame)
    for index, (level, value) in enumerate(values):
        x = frame.left + index * slot + slot * 0.15
        y = frame.y(value, ticks[-1])
        body.append(
            _rect(
                x,
                y,
                slot * 0.7,
                frame.base - y,
                LEVEL_COLOURS[level],
                f"{level}: {value}",
                series=level,
            )
        )
        body.append(_value(value, x + slot * 0.35, y - 5, INK))
        body.append(
            _label(level.capitalize(), x + slot * 0.35, frame.base + 18, anchor="middle", size=12)
        )
    desc = "; ".join(f"{level}: {value}" for level, value in values)
    svg = _svg("by-severity", "Non-compliant patches by compliance level", desc, body, frame)
    table = _table(
        "Non-compliant patches (missing, failed, rejected, pending reboot) per compliance level",
        ("Compliance level", "Patches"),
        [(level.capitalize(), value) for level, value in values],
    )
    return svg, table


def _trend_chart(points: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    if not points:
        return '<p class="empty">No scans recorded yet.</p>', ""
    totals = [p["missingCount"] + p["failedCount"] for p in points]
    frame = Frame(760, 260, right=20)
    ticks = _ticks(max(totals))
    step = frame.span / max(1, len(points) - 1)
    xs = [
        frame.left + i * step if len(points) > 1 else frame.left + frame.span / 2
        for i in range(len(points))
    ]
    coords = [(x, frame.y(v, ticks[-1])) for x, v in zip(xs, totals, strict=True)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{xs[0]:.1f},{frame.base} {line} {xs[-1]:.1f},{frame.base}"
    body = _y_axis(ticks, frame)
    body.append(f'<polygon class="area" points="{area}" fill="{RED}" fill-opacity="0.12"/>')
    body.append(
        f'<polyline class="line" points="{line}" fill="none" stroke="{RED}" '
        'stroke-width="2.5" stroke-linejoin="round"/>'
    )
    every = max(1, math.ceil(len(points) / 8))
    for index, ((x, y), point, total) in enumerate(zip(coords, points, totals, strict=True)):
        body.append(_point(x, y, point["date"], total))
        # Every few days a date, and always the last one, never two on top of each other.
        if index == len(points) - 1 or (index % every == 0 and index + every < len(points)):
            body.append(_label(point["date"][5:], x, frame.base + 18, anchor="middle"))
    desc = f"From {points[0]['date']} to {points[-1]['date']}: " + ", ".join(map(str, totals))
    title = "Missing and failed patches per day, summed over instances"
    svg = _svg("over-time", title, desc, body, frame)
    table = _table(
        "Per day, each instance's newest scan by then (the last 10 days)",
        ("Day", "Missing", "Failed", "Instances"),
        [(p["date"], p["missingCount"], p["failedCount"], p["instances"]) for p in points][-10:],
    )
    return svg, table


def _ticks(top: int) -> list[int]:
    """0 and at most five round steps (1, 2 or 5 times a power of ten) reaching at least
    ``top``."""
    raw = max(1.0, top / 5)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return list(range(0, max(1, math.ceil(top / step)) * step + 1, step))


def _y_axis(ticks: Sequence[int], frame: Frame) -> list[str]:
    parts = []
    for tick in ticks:
        y = frame.y(tick, ticks[-1])
        parts.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(_label(str(tick), frame.left - 8, y + 4, anchor="end"))
    return parts


def _rect(
    x: float, y: float, width: float, height: float, colour: str, tip: str, **data: str
) -> str:
    attrs = "".join(f' data-{k}="{escape(v)}"' for k, v in data.items())
    return (
        f'<rect class="bar"{attrs} x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
        f'height="{height:.1f}" fill="{colour}"><title>{escape(tip)}</title></rect>'
    )


def _point(x: float, y: float, day: str, total: int) -> str:
    return (
        f'<circle class="point" data-date="{escape(day)}" data-value="{total}" '
        f'cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{RED}">'
        f"<title>{escape(f'{day}: {total} missing or failed')}</title></circle>"
    )


def _label(text: str, x: float, y: float, *, anchor: str, size: int = 13) -> str:
    shown = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{INK}">'
        f"{escape(shown)}</text>"
    )


def _value(value: int, x: float, y: float, colour: str) -> str:
    return (
        f'<text class="value" x="{x:.1f}" y="{y:.1f}" text-anchor="middle" font-size="13" '
        f'font-weight="700" fill="{colour}">{value}</text>'
    )


def _legend(colours: Mapping[str, str], *, x: float, y: float) -> str:
    parts = []
    for name, colour in colours.items():
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colour}"/>')
        parts.append(_label(name.replace("_", "-").lower(), x + 17, y, anchor="start"))
        x += 125
    return "".join(parts)


# Tables.


def _table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


class Badge(str):
    """A patch state cell, shown as a coloured badge."""


def _cell(value: Any) -> str:
    if isinstance(value, int | float):
        return f'<td class="num">{value}</td>'
    if isinstance(value, Badge):
        return f'<td><span class="badge {escape(value.lower())}">{escape(value)}</span></td>'
    return f"<td>{escape('—' if value is None else str(value))}</td>"


WORST_COLUMNS = {
    "Instance": "instanceId",
    "Patch group": "patchGroup",
    "Baseline": "baseline",
    "Severity": "complianceSeverity",
    "Critical": "criticalNonCompliantCount",
    "Security": "securityNonCompliantCount",
    "Missing": "missingCount",
    "Failed": "failedCount",
    "Pending reboot": "installedPendingRebootCount",
    "Held": "heldCount",
}


def _worst_section(document: Mapping[str, Any]) -> str:
    rows = {r["instanceId"]: r for r in document["instances"]}
    worst = [rows[name] for name in document["worstInstances"]]
    if not worst:
        return (
            '<section class="wide"><h2>Instances needing attention</h2>'
            '<p class="empty">None: every instance in scope is compliant.</p></section>'
        )
    table = _table(
        "Non-compliant instances, most critical and security patches missing first",
        (*WORST_COLUMNS, "Last operation", "Revision"),
        [
            (
                *(r.get(key) for key in WORST_COLUMNS.values()),
                f"{r['operation']} {_when(r['operationEndTime'])}",
                short_revision(r["revision"]),
            )
            for r in worst
        ],
    )
    return f'<section class="wide" id="worst"><h2>Instances needing attention</h2>{table}</section>'


ROLLOUT_COLUMNS = ("Stage", "Verdict", "Reason", "Machines", "On snapshot", "Failed", "Baked")


def _rollouts_section(rollouts: Sequence[Mapping[str, Any]]) -> str:
    """Progressive rollouts (docs/rollouts.md): each one's stages in order, with the planner's
    verdict and reason, bake progress and failures, under its cycle's snapshot."""
    if not rollouts:
        return ""
    parts = [_rollout_table(rollout) for rollout in rollouts]
    return '<section class="wide" id="rollouts"><h2>Rollouts</h2>' + "".join(parts) + "</section>"


def _rollout_table(rollout: Mapping[str, Any]) -> str:
    snapshot = rollout["snapshot"]
    cycle = (
        f"cycle {rollout['cycle']}, snapshot {snapshot['digest'][:19]}… frozen "
        f"{_when(snapshot['frozenAt'])}"
        if snapshot
        else "no snapshot yet"
    )
    halted = f"; {rollout['halted']}" if rollout["halted"] else ""
    rows = [
        (
            stage["name"],
            Badge(stage["verdict"]),
            stage["reason"],
            stage["machines"],
            stage["onSnapshot"],
            stage["failedMachines"],
            f"{_hours(stage['bakedSeconds'])} of {_hours(stage['bakeSeconds'])}",
        )
        for stage in rollout["stages"]
    ]
    caption = f"Rollout {rollout['rollout']}: {cycle}{halted}"
    return _table(caption, ROLLOUT_COLUMNS, rows)


def _hours(seconds: int) -> str:
    """Bake times for people: ``31 h 20 min``, ``45 min``."""
    hours, minutes = divmod(seconds // 60, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def _revisions_section(revisions: Sequence[Mapping[str, Any]]) -> str:
    table = _table(
        "The revision each instance's latest result was decided under",
        ("Revision", "Instances"),
        [(r["revision"], r["instances"]) for r in revisions],
    )
    return f'<section class="wide" id="revisions"><h2>Revisions in force</h2>{table}</section>'


PATCH_COLUMNS = {
    "Patch": "name",
    "Arch": "arch",
    "Installed": "installedVersion",
    "Version": "version",
    "State": "state",
    "Classification": "classification",
    "Severity": "severity",
    "Compliance level": "complianceLevel",
    "CVEs": "cves",
    "Reason": "reason",
}


def _patches_section(document: Mapping[str, Any]) -> str:
    """With one instance in scope, every patch of it (the document holds them all then)."""
    instance = document["scope"].get("instance")
    if not instance:
        return ""
    rows = [
        tuple(Badge(p[k]) if k == "state" else p[k] for k in PATCH_COLUMNS.values())
        for p in document["patches"].get(instance, [])
    ]
    table = _table(f"Every patch of {instance}", tuple(PATCH_COLUMNS), rows)
    return f'<section class="wide" id="patches"><h2>Patches</h2>{table}</section>'


def _footer(document: Mapping[str, Any]) -> str:
    return (
        f"<footer>{escape(document['apiVersion'])} {escape(document['kind'])} · "
        "counts follow AWS Systems Manager Patch Manager's compliance states.</footer>"
    )


CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6472; --line: #d9dee7; --bg: #f4f6f9;
  --ok: #2e7d32; --bad: #c62828; --warn: #b85c00; }
* { box-sizing: border-box; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; padding: 24px 32px; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 12px; }
.meta, footer, caption, .empty { color: var(--muted); }
header { margin-bottom: 20px; }
.cards { display: grid; grid-template-columns: 1.4fr repeat(7, 1fr); gap: 12px;
  margin-bottom: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .value { font-size: 26px; font-weight: 700; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 12.5px; }
.card.big .value { font-size: 34px; line-height: 1.1; }
.card.ok .value { color: var(--ok); }
.card.warn .value { color: var(--warn); }
.card.bad .value { color: var(--bad); }
.meter { grid-column: 1 / -1; height: 10px; border-radius: 5px; background: var(--bad);
  overflow: hidden; }
.meter div { height: 100%; background: var(--ok); }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
#over-time { grid-column: 1 / -1; }
#over-time .figure { display: grid; grid-template-columns: 2fr 1fr; gap: 20px;
  align-items: start; }
.panel, .wide { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 18px; break-inside: avoid; }
.wide { margin-top: 16px; overflow-x: auto; }
svg.chart { width: 100%; height: auto; display: block; margin-bottom: 12px; }
svg text { font-family: inherit; }
svg line.grid { stroke: var(--line); stroke-width: 1; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
caption { text-align: left; font-size: 12px; padding-bottom: 4px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#revisions td:first-child, #worst td:last-child { font-family: ui-monospace, monospace; }
.badge { padding: 1px 6px; border-radius: 4px; font-size: 11.5px; font-weight: 600; color: #fff;
  background: #757575; }
.badge.missing, .badge.failed, .badge.installed_rejected { background: var(--bad); }
.badge.installed_pending_reboot { background: var(--warn); }
.badge.installed, .badge.installed_other { background: var(--ok); }
.badge.halted { background: var(--bad); }
.badge.install, .badge.baking { background: var(--warn); }
.badge.baked { background: var(--ok); }
#rollouts table + table { margin-top: 12px; }
footer { margin-top: 20px; font-size: 12px; }
@media (max-width: 1000px) {
  .cards { grid-template-columns: repeat(4, 1fr); }
  .grid, #over-time .figure { grid-template-columns: 1fr; }
}
@media print {
  @page { margin: 12mm; }
  body { background: #fff; padding: 0; font-size: 11px; }
  .panel, .wide, .card { border-color: #999; }
  .cards { grid-template-columns: repeat(4, 1fr); }
  .wide { overflow: visible; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
}
"""
