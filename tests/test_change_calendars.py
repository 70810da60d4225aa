"""Change calendars (issue 20 item 2, docs/guardrails.md "Change calendars"): the ChangeCalendar
kind validated at file:line:field, its events and iCalendar sources (recurrences, time zones, a
file of the repository, an https URL on a loopback server) as periods, and what a closed
calendar stops: a window's opening (the pure planner, injected clock), a rollout stage, and
patch-now unless it is overridden (audited)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from reconciler.api.snapshot import SnapshotInvalid
from reconciler.dispatch.calendars import calendar_refusal, read_calendars
from reconciler.plan import INSTALL, Observed, RolloutGate, plan
from reconciler.schedule.ical import reading_state
from reconciler.sources.base import snapshot_of
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import (
    BASELINE_YAML,
    documents,
    dpkg_installs,
    local_instance_yaml,
    make_fleet,
    window_yaml,
)
from tests.test_cli_evaluate import patchctl
from tests.test_hooks import TASK
from tests.test_loop_e2e import BEFORE, ROOT, reconcile_cli
from tests.test_plan import BASELINE, NOON, all_scanned, instances, reasons, snap, window
from tests.test_plan_rollouts import FROZEN

API = "apiVersion: patchwarden.io/v1alpha1"


def calendar(name: str = "prod", kind: str = "DEFAULT_OPEN", body: str = "") -> str:
    return f"{API}\nkind: ChangeCalendar\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n{body}"


FREEZE = """\
  events:
    - summary: year-end freeze
      start: 2026-11-28T12:00:00+00:00
      end: 2027-01-04T00:00:00+00:00
"""


def guarded(*names: str) -> str:
    return window().replace("  targets:", f"  changeCalendars: [{', '.join(names)}]\n  targets:")


def problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(SnapshotInvalid) as refused:
        snapshot_of([(path, text.encode()) for path, text in files.items()])
    return refused.value.reasons()


# --- validation --------------------------------------------------------------------------------


def test_bad_calendars_and_references_are_refused_at_file_line_field() -> None:
    bad_event = """\
  events:
    - summary: freeze
      start: 2026-12-20T00:00:00+00:00
      end: 2026-12-19T00:00:00+00:00
      rrule: FREQ=HOURLY
    - {summary: x, start: 2026-12-20T00:00:00, end: 2026-12-21T00:00:00, timeZone: Mars/Base}
  holidays: true
"""
    found = problems(
        {
            "cal.yaml": calendar(body=bad_event),
            "fleet.yaml": "\n---\n".join([BASELINE, guarded("prdo"), instances(1)]),
        }
    )
    assert (
        "cal.yaml:9: spec.events[0].end: must be after start (2026-12-20T00:00:00+00:00)" in found
    )
    assert any(
        p.startswith("cal.yaml:11: spec.events[1].timeZone: unknown IANA time zone") for p in found
    )
    assert "cal.yaml:12: spec.holidays: unknown field 'holidays'" in found
    # A window naming a calendar that is not there, at its line.
    [window_problem] = [p for p in found if p.startswith("fleet.yaml")]
    assert window_problem.endswith("spec.changeCalendars[0]: no ChangeCalendar named 'prdo'")


def test_a_recurrence_finer_than_a_day_or_not_an_rrule_is_refused() -> None:
    event = "  events:\n    - {summary: x, start: 2026-12-20T00:00:00Z, end: 2026-12-20T01:00:00Z, rrule: '%s'}\n"
    hourly = problems({"c.yaml": calendar(body=event % "FREQ=HOURLY")})
    assert hourly == [
        "c.yaml:7: spec.events[0].rrule: give FREQ=DAILY, FREQ=WEEKLY, FREQ=MONTHLY, FREQ=YEARLY "
        "(for example FREQ=WEEKLY;BYDAY=SA)"
    ]
    [garbled] = problems({"c.yaml": calendar(body=event % "FREQ=WEEKLY;BYDAY=XX")})
    assert garbled.startswith("c.yaml:7: spec.events[0].rrule: not an iCalendar RRULE:")


def test_an_icalendar_file_is_relative_to_its_yaml_and_may_not_climb_out() -> None:
    def source(path: str) -> str:
        return calendar(body=f"  icalendar: {{file: {path}}}\n")

    climbing = problems({"cals/c.yaml": source("../../etc/x.ics")})
    assert climbing == [
        "cals/c.yaml:6: spec.icalendar.file: give a path relative to this YAML file, inside the "
        "repository (no leading / and no ..)"
    ]
    missing = problems({"cals/c.yaml": source("holidays.ics"), "holidays.ics": ICS_WEEKLY})
    assert missing == [
        "cals/c.yaml:6: spec.icalendar.file: no file cals/holidays.ics in this revision (the "
        "path is relative to this YAML file)"
    ]
    broken = problems({"cals/c.yaml": source("holidays.ics"), "cals/holidays.ics": "BEGIN:VEVENT"})
    assert len(broken) == 1 and broken[0].startswith(
        "cals/c.yaml:6: spec.icalendar.file: cals/holidays.ics: not an iCalendar file"
    )
    url = problems({"c.yaml": calendar(body="  icalendar: {url: 'http://cal.example/x.ics'}\n")})
    assert url == [
        "c.yaml:6: spec.icalendar.url: an iCalendar URL must be https:// (the "
        "calendar decides what may patch)"
    ]


# --- periods: rules and iCalendar --------------------------------------------------------------

# A weekly Saturday freeze written in Berlin time, across the end of summer time (25 October
# 2026), with one Saturday taken out and a one-off event in another zone.
ICS_WEEKLY = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//EN
BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
UID:saturday@test
DTSTAMP:20260101T000000Z
SUMMARY:Saturday freeze
DTSTART;TZID=Europe/Berlin:20261017T080000
DTEND;TZID=Europe/Berlin:20261017T200000
RRULE:FREQ=WEEKLY;BYDAY=SA
EXDATE;TZID=Europe/Berlin:20261031T080000
END:VEVENT
BEGIN:VEVENT
UID:release@test
DTSTAMP:20260101T000000Z
SUMMARY:release day
DTSTART;VALUE=DATE:20261103
END:VEVENT
END:VCALENDAR
"""


def parsed(files: dict[str, str]):  # type: ignore[no-untyped-def]
    return snapshot_of([(path, text.encode()) for path, text in files.items()])


def state_at(snapshot, name: str, moment: datetime):  # type: ignore[no-untyped-def]
    readings = read_calendars(snapshot, moment)
    return reading_state(name, snapshot.calendars[name], readings[name], moment)


def test_icalendar_recurrences_follow_their_time_zone_and_exceptions() -> None:
    snapshot = parsed(
        {
            "c/prod.yaml": calendar(
                body="  timeZone: America/New_York\n  icalendar: {file: freeze.ics}\n"
            ),
            "c/freeze.ics": ICS_WEEKLY,
        }
    )
    summer = state_at(snapshot, "prod", datetime(2026, 10, 24, 6, 30, tzinfo=UTC))  # 08:30 CEST
    assert summer.closed and summer.until == datetime(2026, 10, 24, 18, 0, tzinfo=UTC)
    assert summer.reason == (
        "change calendar 'prod' is closed: Saturday freeze until 2026-10-24T20:00:00+02:00"
    )
    assert not state_at(snapshot, "prod", datetime(2026, 10, 31, 12, tzinfo=UTC)).closed  # EXDATE
    winter = datetime(2026, 11, 7, 7, 30, tzinfo=UTC)  # 08:30 CET: the rule kept Berlin's 08:00
    assert state_at(snapshot, "prod", winter).closed
    assert not state_at(snapshot, "prod", winter - timedelta(hours=1)).closed
    # An all-day event is a day in the calendar's own time zone (New York here).
    day = state_at(snapshot, "prod", datetime(2026, 11, 4, 4, 59, tzinfo=UTC))
    assert day.closed and "release day" in day.reason
    assert not state_at(snapshot, "prod", datetime(2026, 11, 4, 5, 0, tzinfo=UTC)).closed


def test_yaml_rules_recur_in_wall_clock_time_and_default_closed_opens_only_inside() -> None:
    body = """\
  timeZone: Europe/Berlin
  events:
    - summary: Tuesday change window
      start: 2026-10-20T22:00:00
      end: 2026-10-21T02:00:00
      rrule: FREQ=WEEKLY;BYDAY=TU
"""
    snapshot = parsed({"c.yaml": calendar("ops", "DEFAULT_CLOSED", body)})
    summer = datetime(2026, 10, 20, 20, 30, tzinfo=UTC)  # 22:30 CEST
    inside = state_at(snapshot, "ops", summer)
    assert not inside.closed and "Tuesday change window" in inside.reason
    winter = state_at(snapshot, "ops", summer + timedelta(days=7))  # 21:30 CET: not yet
    assert winter.closed and winter.until == datetime(2026, 10, 27, 21, 0, tzinfo=UTC)


# --- an https URL read from a loopback server --------------------------------------------------


@pytest.fixture
def https_calendar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """A loopback HTTPS server with a self-signed certificate the system trust store is told
    about (SSL_CERT_FILE), serving ``served['body']`` at /cal.ics and 404 elsewhere."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    served: dict[str, object] = {"body": ICS_WEEKLY.encode(), "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served["requests"] = int(served["requests"]) + 1  # type: ignore[call-overload]
            body = served["body"] if self.path == "/cal.ics" else b"no"
            self.send_response(200 if self.path == "/cal.ics" else 404)
            self.end_headers()
            self.wfile.write(body)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served["url"] = f"https://127.0.0.1:{server.server_address[1]}"
    yield served
    server.shutdown()


def test_a_url_calendar_is_read_over_https_and_one_that_fails_is_closed(
    https_calendar: dict[str, object],
) -> None:
    base = https_calendar["url"]
    snapshot = parsed(
        {
            "a.yaml": calendar("good", body=f"  icalendar: {{url: '{base}/cal.ics'}}\n"),
            "b.yaml": calendar(
                "gone", body=f"  icalendar: {{url: '{base}/gone.ics', timeoutSeconds: 2}}\n"
            ),
            "c.yaml": calendar("also", body=f"  icalendar: {{url: '{base}/cal.ics'}}\n"),
        }
    )
    saturday = datetime(2026, 10, 24, 7, 0, tzinfo=UTC)
    readings = read_calendars(snapshot, saturday)
    assert https_calendar["requests"] == 2  # the same URL is fetched once per reading
    good = reading_state("good", snapshot.calendars["good"], readings["good"], saturday)
    assert good.closed and "Saturday freeze" in good.reason
    gone = reading_state("gone", snapshot.calendars["gone"], readings["gone"], saturday)
    assert gone.closed and gone.until is None
    assert gone.reason == (
        f"change calendar 'gone' is closed: it cannot be read: {base}/gone.ics answered HTTP 404"
    )
    https_calendar["body"] = b"x" * (1024 * 1024 + 1)
    huge = read_calendars(snapshot, saturday, ["good"])["good"]
    assert huge.error == f"{base}/cal.ics is larger than 1048576 bytes"


# --- what a closed calendar stops -------------------------------------------------------------


def test_a_closed_calendar_keeps_an_open_window_from_dispatching_until_it_opens() -> None:
    snapshot = snap(BASELINE, guarded("prod"), instances(2), calendar(body=FREEZE))
    scans = all_scanned(snapshot)
    during = NOON + timedelta(minutes=10)
    closed = plan(
        snapshot, "r1", Observed(scans=scans, calendars=read_calendars(snapshot, during)), during
    )
    assert closed.actions == ()
    assert reasons(closed)["node-1"] == (
        "window noon: change calendar 'prod' is closed: year-end freeze until "
        "2027-01-04T00:00:00+00:00"
    )
    # The same window, a day later than the freeze's end at its opening: installs go out.
    after = datetime(2027, 1, 4, 12, 30, tzinfo=UTC)
    later = {
        name: replace(scan, finished_at=after - timedelta(hours=1)) for name, scan in scans.items()
    }
    opened = plan(
        snapshot, "r1", Observed(scans=later, calendars=read_calendars(snapshot, after)), after
    )
    assert [(a.instance, a.operation) for a in opened.actions] == [
        ("node-1", INSTALL),
        ("node-2", INSTALL),
    ]
    # Not read this pass: closed too (nothing says it is open).
    unread = plan(snapshot, "r1", Observed(scans=later), after)
    assert unread.actions == ()
    assert "change calendar 'prod' is closed: not read this pass" in reasons(unread)["node-1"]


ROLLOUT = f"""\
{API}
kind: Rollout
metadata: {{name: web}}
spec:
  changeCalendars: [prod]
  stages:
    - {{name: dev, patchGroups: [web]}}
"""


def test_a_rollout_stage_installs_nothing_while_its_calendar_is_closed() -> None:
    snapshot = snap(BASELINE, window(), instances(1), calendar(body=FREEZE), ROLLOUT)
    installing = {"node-1": RolloutGate("web", "dev", True, "stage dev installs", FROZEN)}
    during = NOON + timedelta(minutes=10)
    observed = Observed(
        scans=all_scanned(snapshot), gates=installing, calendars=read_calendars(snapshot, during)
    )
    result = plan(snapshot, "r1", observed, during)
    assert result.actions == ()
    assert reasons(result)["node-1"] == (
        "rollout web: change calendar 'prod' is closed: year-end freeze until "
        "2027-01-04T00:00:00+00:00"
    )
    assert calendar_refusal(snapshot, ["node-1"], during) == [
        "change calendar 'prod' is closed: year-end freeze until 2027-01-04T00:00:00+00:00 "
        "(rollout web)"
    ]
    assert calendar_refusal(snapshot, ["node-1"], datetime(2027, 1, 4, tzinfo=UTC)) == []


# --- patchctl: patch-now, calendar state ---------------------------------------------------


@pytest.fixture
def frozen_source(tmp_path: Path) -> Path:
    """A fleet whose window names a DEFAULT_CLOSED calendar with no event: always closed."""
    source = tmp_path / "source"
    source.mkdir()
    kill_switch = calendar("prod", "DEFAULT_CLOSED", "  description: kill switch\n")
    (source / "fleet.yaml").write_text(
        "\n---\n".join([BASELINE, guarded("prod"), instances(1), kill_switch])
    )
    return source


def test_patch_now_is_refused_while_a_calendar_is_closed_unless_overridden(
    tmp_path: Path, frozen_source: Path
) -> None:
    state, audit = tmp_path / "state.db", tmp_path / "audit.jsonl"
    common = ["--source", str(frozen_source), "--state", str(state), "--audit-log", str(audit)]
    refused = patchctl("patch-now", "--instance", "node-1", *common)
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        "patchctl: patch-now: change calendar 'prod' is closed outside its open periods (no "
        "open period ahead) (window noon); give --override-calendar REASON to patch anyway; "
        "nothing recorded"
    )
    done = patchctl(
        "patch-now",
        "--instance",
        "node-1",
        "--override-calendar",
        "INC-42 fix",
        *common,
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    [override] = [line for line in lines if line["kind"] == "calendar.overridden"]
    assert override["detail"]["reason"] == "INC-42 fix"
    assert override["detail"]["run"] == "patch-now"
    assert override["detail"]["instances"] == ["node-1"]
    assert override["detail"]["osUser"]
    assert override["detail"]["calendars"][0].startswith("change calendar 'prod' is closed")


def test_calendar_state_says_open_or_closed_and_until_when(tmp_path: Path) -> None:
    source = tmp_path / "s"
    source.mkdir()
    (source / "c.yaml").write_text(calendar(body=FREEZE))
    closed = patchctl(
        "calendar", "state", "prod", "--source", str(source), "--at", "2026-12-01T00:00:00Z"
    )
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout == (
        "change calendar 'prod' is closed: year-end freeze until 2027-01-04T00:00:00+00:00\n"
    )
    opened = patchctl(
        "calendar",
        "state",
        "prod",
        "--source",
        str(source),
        "--at",
        "2026-11-01T00:00:00Z",
        "-o",
        "json",
    )
    assert json.loads(opened.stdout) == {
        "calendar": "prod",
        "type": "DEFAULT_OPEN",
        "at": "2026-11-01T00:00:00+00:00",
        "state": "OPEN",
        "until": "2026-11-28T12:00:00+00:00",
        "reason": "change calendar 'prod' is open",
    }
    unknown = patchctl("calendar", "state", "prdo", "--source", str(source))
    assert unknown.returncode != 0
    assert (
        unknown.stderr.strip()
        == f"patchctl: no ChangeCalendar named 'prdo' in {source}; known: prod"
    )


# --- the loop, end to end on a real Debian root ------------------------------------------------


@needs_apt
def test_reconcile_installs_nothing_while_the_calendar_is_closed_and_installs_once_it_opens(
    tmp_path: Path, apt_repo: Repo
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], BEFORE)
    freeze = """\
  events:
    - {summary: change freeze, start: 2030-01-01T00:00:00Z, end: 2030-01-01T06:00:00Z}
"""
    opening = window_yaml("jan", "at(2030-01-01T00:00:00)", duration=24, cutoff=0)
    opening = opening.replace("  targets:", "  changeCalendars: [freeze]\n  targets:")
    source = tmp_path / "source"
    source.mkdir()
    (source / "fleet.yaml").write_text(
        documents(BASELINE_YAML, opening, calendar("freeze", body=freeze))
    )
    (source / "instances.yaml").write_text(local_instance_yaml("web-1", roots["web-1"]))
    state = tmp_path / "state.db"

    held = reconcile_cli(str(source), state, "--now", "2030-01-01T01:00:00Z")
    assert held["jobs"] == {"Scan succeeded": 1}
    assert dpkg_installs(roots["web-1"])[("pwtest-lib", "1.0-2")] == 0
    shown = patchctl(
        "plan", "--source", str(source), "--state", str(state), "--now", "2030-01-01T01:00:00Z"
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        "window jan: change calendar 'freeze' is closed: change freeze until "
        "2030-01-01T06:00:00+00:00" in " ".join(shown.stdout.split())
    )

    released = reconcile_cli(str(source), state, "--now", "2030-01-01T07:00:00Z")
    assert released["jobs"] == {"Install succeeded": 1}
    assert dpkg_installs(roots["web-1"])[("pwtest-lib", "1.0-2")] == 1


def test_explain_lists_the_calendars_guarding_the_instance_read_at_now(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "examples", source)
    noon = TASK.replace("OPERATION", "Install").replace(
        "targets: {selector:", "changeCalendars: [prod-freeze]\n  targets: {selector:"
    )
    (source / "guarded.yaml").write_text(noon)
    args = ["explain", "web-1", "--source", str(source), "--inventory", "examples/inventories"]
    at = ["--now", "2026-12-24T10:00:00Z"]
    shown = patchctl(*args, *at, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    (guard,) = json.loads(shown.stdout)["calendars"]
    assert guard == {
        "calendar": "prod-freeze",
        "of": "window noon",
        "closed": True,
        "reason": "change calendar 'prod-freeze' is closed: year-end freeze, Friday evening "
        "until 2027-01-04T08:00:00+01:00",
    }
    table = patchctl(*args, "--now", "2026-10-06T10:00:00Z")
    assert (
        "calendar:    prod-freeze of window noon — open: change calendar 'prod-freeze' is open"
        in table.stdout
    )
