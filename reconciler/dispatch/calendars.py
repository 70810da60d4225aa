"""Stage: dispatch — an I/O edge (network). Reads ChangeCalendars (docs/guardrails.md "Change
calendars"): a calendar's iCalendar file comes with the revision's files, its https URL is
fetched here from the controller (one GET, at most ``MAX_ICALENDAR_BYTES``, a timeout,
redirects not followed, the system's trust store, no proxy settings), and every calendar's
periods near ``now`` are computed by the pure :mod:`reconciler.schedule.ical`. A calendar that
cannot be read comes back with the error, and counts as closed. Decides nothing itself:
:func:`reconciler.plan.calendar_verdict` judges the readings; :func:`calendar_refusal` is the
check patch-now (and every run started by a person) makes before anything is recorded.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from datetime import datetime

from reconciler.api.resources import MAX_ICALENDAR_BYTES, ChangeCalendar
from reconciler.api.snapshot import Snapshot
from reconciler.plan import calendar_verdict, calendars_guarding
from reconciler.redaction import redacted
from reconciler.schedule.ical import CalendarReading, calendar_reading

DEFAULT_TIMEOUT = 10


def read_calendars(
    snapshot: Snapshot, now: datetime, names: Iterable[str] | None = None
) -> dict[str, CalendarReading]:
    """Each calendar of ``snapshot`` (or only ``names``) read at ``now``, by name; a URL is
    fetched once per call even when several calendars name it."""
    fetched: dict[str, bytes | str] = {}
    readings: dict[str, CalendarReading] = {}
    for name in sorted(set(snapshot.calendars if names is None else names)):
        calendar = snapshot.calendars.get(name)
        if calendar is None:
            continue
        data = _icalendar_data(snapshot, name, calendar, fetched)
        if isinstance(data, str):
            readings[name] = CalendarReading((), data)
        else:
            readings[name] = calendar_reading(calendar, data, now)
    return readings


def calendar_refusal(snapshot: Snapshot, instances: Iterable[str], now: datetime) -> list[str]:
    """Why the calendars guarding ``instances`` (those of the windows targeting them and of
    their rollouts) forbid starting anything on them at ``now``: one reason per closed
    calendar, naming whose it is; empty when all are open. The check a run a person asks for
    (patch-now, an emergency run) makes; the planner makes the same for scheduled openings."""
    guarding: dict[str, str] = {}
    for instance in instances:
        labels = snapshot.instances[instance].metadata.labels
        groups = snapshot.groups_of(labels)
        group = groups[0].metadata.name if groups else None
        for whose, name in calendars_guarding(
            snapshot, instance, group, _rollout_of(snapshot, labels)
        ):
            guarding.setdefault(name, whose)
    readings = read_calendars(snapshot, now, guarding)
    reasons = []
    for name, whose in guarding.items():
        closed = calendar_verdict(snapshot, [name], readings, now)
        if closed:
            reasons.append(f"{closed} ({whose})")
    return reasons


def _rollout_of(snapshot: Snapshot, labels: Mapping[str, str]) -> str | None:
    for name, rollout in sorted(snapshot.rollouts.items()):
        if any(
            snapshot.selected_by(s.patch_groups, s.selector, labels) for s in rollout.spec.stages
        ):
            return name
    return None


def _icalendar_data(
    snapshot: Snapshot, name: str, calendar: ChangeCalendar, fetched: dict[str, bytes | str]
) -> bytes | str | None:
    """The iCalendar bytes of the calendar, None without a source, or the error as text."""
    source = calendar.spec.icalendar
    if source is None:
        return None
    if source.url is None:
        path = snapshot.calendar_file(name)
        data = snapshot.icalendar_files.get(path) if path is not None else None
        return data if data is not None else f"no iCalendar file {path} in this revision"
    if source.url not in fetched:
        fetched[source.url] = fetch_icalendar(source.url, source.timeout_seconds or DEFAULT_TIMEOUT)
    return fetched[source.url]


def fetch_icalendar(url: str, timeout: int) -> bytes | str:
    """The body at ``url`` (at most ``MAX_ICALENDAR_BYTES``), or why it could not be read."""
    # Imported here: every patchctl command imports this module, few fetch a calendar.
    import httpx

    try:
        with (
            httpx.Client(
                timeout=float(timeout),
                follow_redirects=False,
                trust_env=False,
                verify=ssl.create_default_context(),
            ) as client,
            client.stream("GET", url) as answer,
        ):
            if answer.status_code != 200:
                return redacted(f"{url} answered HTTP {answer.status_code}")
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_ICALENDAR_BYTES:
                    return redacted(f"{url} is larger than {MAX_ICALENDAR_BYTES} bytes")
            return body
    except httpx.HTTPError as exc:
        return redacted(f"{url}: {type(exc).__name__}: {exc}")
