"""The HTML dashboard in a real browser: Debian's headless Chromium renders the file offline, the
rendered DOM holds the three charts with their bars and points, and the screenshot shows the
charts' colours. The screenshot is kept as build/test-artifacts/dashboard.png for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

from tests.test_report_export import NOW, fleet_state, patchctl

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Chart colours as drawn (bar interiors are filled exactly with them).
CHART_COLOURS = {
    "non-compliant": (0xC6, 0x28, 0x28),
    "compliant": (0x2E, 0x7D, 0x32),
    "critical": (0x7B, 0x1F, 0xA2),
}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dashboard `patchctl report --format html` writes for the fleet of test_report_export."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium package")
    work = tmp_path_factory.mktemp("dashboard")
    state = fleet_state(work / "state.db")
    run = patchctl(
        "report",
        "--to",
        str(work),
        "--state",
        str(state),
        "--format",
        "html",
        "--now",
        NOW.isoformat(),
    )
    assert run.returncode == 0, run.stderr
    (path,) = work.glob("compliance-dashboard-*.html")
    return path


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A private HOME and profile: the browser writes nothing of the host's user.
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile / 'chromium'}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def test_rendered_dom_holds_the_charts(dashboard: Path, tmp_path: Path) -> None:
    run = _chromium(tmp_path, "--dump-dom", dashboard.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    charts = dict(re.findall(r'<svg class="chart" data-chart="([\w-]+)"(.*?)</svg>', dom, re.S))
    assert set(charts) == {"by-group", "by-severity", "over-time"}
    assert charts["by-group"].count('<rect class="bar"') == 5  # 4 groups, web has two statuses
    assert charts["by-severity"].count('<rect class="bar"') == 6  # one per compliance level
    # One point per day from the first scan (2026-11-25) to the day the report is made as of
    # (NOW, 2026-11-28), each also a row of the chart's table.
    assert charts["over-time"].count('<circle class="point"') == 4
    trend = re.search(r'<section class="panel" id="over-time".*?<tbody>(.*?)</tbody>', dom, re.S)
    assert trend is not None and trend.group(1).count("<tr>") == 4
    assert "<script" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_screenshot_shows_the_charts(dashboard: Path, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", dashboard.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "dashboard.png")
    width, height, pixels = _read_png(shot)
    assert (width, height) == (1280, 2000)
    colours = Counter(pixels)
    assert len(colours) > 50, "the screenshot is (nearly) one colour"
    # The compliant and non-compliant bars and the severity chart's critical bar are on screen,
    # as areas (a sample of at least 500 pixels each: more than any line or text would give).
    drawn = {name: colours[rgb] for name, rgb in CHART_COLOURS.items()}
    assert min(drawn.values()) >= 500, drawn


def _read_png(path: Path) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and every fourth pixel of an 8-bit RGB(A) PNG (stdlib only: no Pillow)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks: dict[bytes, list[bytes]] = {}
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unexpected PNG layout"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride, previous, pixels = width * bpp, bytearray(width * bpp), []
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, bpp)
        pixels += [tuple(line[x : x + 3]) for x in range(0, stride, 4 * bpp)]
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> bytearray:
    """Undo one of PNG's five scanline filters (None, Sub, Up, Average, Paeth)."""
    for i in range(len(line) if kind else 0):
        left = line[i - bpp] if i >= bpp else 0
        up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 2:
            line[i] = (line[i] + up) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 255
        else:
            estimate = left + up - corner
            distances = (abs(estimate - left), abs(estimate - up), abs(estimate - corner))
            line[i] = (line[i] + (left, up, corner)[distances.index(min(distances))]) & 255
    return line
