"""Draws docs/rollout-timeline.svg, the timeline picture of docs/rollouts.md.

Run it from the repository's root after changing the picture:

    .venv/bin/python docs/rollout_timeline.py > docs/rollout-timeline.svg

Standard library only, plain SVG text (no script, no font or image from elsewhere), so the
picture renders the same on GitHub, in an editor and offline.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 980, 400
LEFT, RIGHT = 110, 960
DAYS = 11.0
LANES = {"releases": 80, "dev": 150, "staging": 215, "prod": 280}
BAR = 26
INSTALL, BAKE, HALT, INK, MUTED = "#1565c0", "#8bc34a", "#c62828", "#1d2330", "#5b6472"


def x(day: float) -> float:
    return LEFT + (RIGHT - LEFT) * day / DAYS


def bar(lane: str, start: float, end: float, colour: str, label: str, **extra: str) -> str:
    y = LANES[lane] - BAR / 2
    style = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in extra.items())
    text_colour = "#fff" if colour in (INSTALL, HALT) else INK
    return (
        f'<rect x="{x(start):.1f}" y="{y}" width="{x(end) - x(start):.1f}" height="{BAR}" '
        f'rx="3" fill="{colour}" {style}/>'
        f'<text x="{(x(start) + x(end)) / 2:.1f}" y="{y + 17}" text-anchor="middle" '
        f'font-size="12" fill="{text_colour}">{escape(label)}</text>'
    )


def marker(day: float, colour: str, label: str, *, top: float = 40, dashed: bool = True) -> str:
    """A moment across the lanes, its label to the right of the line."""
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return (
        f'<line x1="{x(day):.1f}" y1="{top}" x2="{x(day):.1f}" y2="{LANES["prod"] + 24}" '
        f'stroke="{colour}" stroke-width="1.5"{dash}/>'
        f'<text x="{x(day) + 4:.1f}" y="{top + 2}" font-size="12" fill="{colour}">'
        f"{escape(label)}</text>"
    )


def arrow(day: float, lane_from: str, lane_to: str, label: str) -> str:
    y1, y2 = LANES[lane_from] + BAR / 2, LANES[lane_to] - BAR / 2
    return (
        f'<line x1="{x(day):.1f}" y1="{y1}" x2="{x(day):.1f}" y2="{y2 - 3}" stroke="{INK}" '
        'stroke-width="1.5" marker-end="url(#head)"/>'
        f'<text x="{x(day) + 5:.1f}" y="{(y1 + y2) / 2 + 4}" font-size="11" fill="{MUTED}">'
        f"{escape(label)}</text>"
    )


def axis() -> list[str]:
    parts = [
        f'<line x1="{LEFT}" y1="{HEIGHT - 60}" x2="{RIGHT}" y2="{HEIGHT - 60}" stroke="{MUTED}"/>'
    ]
    for day in range(int(DAYS) + 1):
        parts.append(
            f'<text x="{x(day):.1f}" y="{HEIGHT - 44}" text-anchor="middle" font-size="11" '
            f'fill="{MUTED}">day {day}</text>'
        )
    for lane, y in LANES.items():
        parts.append(
            f'<text x="{LEFT - 10}" y="{y + 4}" text-anchor="end" font-size="13" '
            f'font-weight="600" fill="{INK}">{lane}</text>'
        )
    return parts


def cycle_one() -> list[str]:
    """Frozen when dev's window opens (day 0); each stage installs, bakes, then promotes."""
    return [
        marker(0, INSTALL, "cycle 1: snapshot frozen at dev's window (sha256:4f2a…)", dashed=False),
        bar("dev", 0, 0.55, INSTALL, "install"),
        bar("dev", 0.55, 2.55, BAKE, "bake 48 h"),
        arrow(2.55, "dev", "staging", "promoted"),
        bar("staging", 2.55, 3.1, INSTALL, "install"),
        bar("staging", 3.1, 4.1, BAKE, "bake 24 h"),
        arrow(4.1, "staging", "prod", "promoted"),
        bar("prod", 4.1, 4.65, INSTALL, "install"),
        f'<text x="{x(4.1):.1f}" y="{LANES["prod"] + 32}" font-size="12" fill="{INK}">'
        "cycle 1 done: all stages baked</text>",
    ]


def later_release() -> list[str]:
    """Approved during cycle 1: not in its snapshot, so it waits for cycle 2."""
    y = LANES["releases"]
    return [
        f'<circle cx="{x(1.2):.1f}" cy="{y}" r="6" fill="{HALT}"/>',
        f'<text x="{x(1.2) + 10:.1f}" y="{y + 4}" font-size="12" fill="{INK}">'
        "openssl 3.0.2 approved: not in cycle 1's snapshot, waits</text>",
        f'<line x1="{x(1.2) + 6:.1f}" y1="{y + 12}" x2="{x(6) - 4:.1f}" y2="{y + 12}" '
        f'stroke="{MUTED}" stroke-dasharray="3 3" marker-end="url(#head)"/>',
    ]


def cycle_two() -> list[str]:
    """The next window freezes cycle 2 (with 3.0.2); dev fails its health checks: halted."""
    return [
        marker(6, INSTALL, "cycle 2 frozen at the next window", top=110),
        bar("dev", 6, 6.55, INSTALL, "install"),
        f'<text x="{x(6.6):.1f}" y="{LANES["dev"] + 5}" font-size="16" fill="{HALT}">✗</text>',
        marker(6.9, HALT, "halted: 2 of 2 dev machines failed health checks", top=188),
        bar("staging", 6.9, 11, "#eeeeee", "halted: installs nothing until resumed",
            stroke=HALT, stroke_dasharray="4 3"),
        bar("prod", 6.9, 11, "#eeeeee", "halted: installs nothing until resumed",
            stroke=HALT, stroke_dasharray="4 3"),
    ]


def legend() -> list[str]:
    y = HEIGHT - 22
    items = [(INSTALL, "installing the snapshot"), (BAKE, "baking"), (HALT, "halt")]
    parts = []
    for index, (colour, label) in enumerate(items):
        left = LEFT + index * 210
        parts.append(f'<rect x="{left}" y="{y - 10}" width="14" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{left + 20}" y="{y}" font-size="12" fill="{INK}">{label}</text>')
    return parts


def svg() -> str:
    body = [*axis(), *cycle_one(), *later_release(), *cycle_two(), *legend()]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="title desc" '
        'font-family="system-ui, sans-serif">\n'
        '<title id="title">A three-stage rollout over two cycles</title>\n'
        '<desc id="desc">Cycle 1 freezes the approved versions when dev\'s window opens; dev '
        "installs and bakes 48 hours, then staging installs and bakes 24 hours, then prod "
        "installs. A version approved during cycle 1 waits for cycle 2, frozen at the next "
        "window; dev fails its health checks in cycle 2 and the rollout halts, so staging and "
        "prod install nothing.</desc>\n"
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker>'
        "</defs>\n"
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>\n' + "\n".join(body) + "\n</svg>\n"
    )


if __name__ == "__main__":
    print(svg(), end="")
