"""The observed-state store on real SQLite files: round trips, append-only history, exclusive job
claims across threads and processes, reopening, and schema migrations."""

from __future__ import annotations

import copy
import json
import multiprocessing
import sqlite3
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.api.enrolment import DiscoveredHost, Listed, Provenance
from reconciler.api.enums import JobStatus
from reconciler.api.inventory import Inventory
from reconciler.api.oneoff import OneOffOpening, OneOffStatus, OneOffTargets
from reconciler.api.resources import WindowTask
from reconciler.state import (
    SCHEMA_VERSION,
    Holder,
    JobNotRunning,
    StateError,
    StateStore,
    StoreLocked,
    UnknownJob,
    lock_path,
)
from reconciler.state.schema import LATEST, migrate
from tests.postgres import another, location, opened_at, raw_sql

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def facts(hostname: str = "web-1", kernel: str = "6.1.0-18") -> dict[str, Any]:
    return {"osId": "debian", "operatingSystem": "DEBIAN", "hostname": hostname, "kernel": kernel}


def evaluation(instance: str, *states: str) -> dict[str, Any]:
    """An evaluation document as `-o json` writes it, one patch per state."""
    return {
        "instanceId": instance,
        "operatingSystem": "DEBIAN",
        "baseline": "debian-prod",
        "patches": [
            {
                "name": f"pkg{i}",
                "arch": "amd64",
                "installedVersion": "1.0-1",
                "version": "1.0-2",
                "state": state,
                "classification": "Security",
                "severity": "Critical",
                "complianceLevel": "CRITICAL",
                "cves": [f"CVE-2024-000{i}"],
                "reason": "approved by rule 0",
            }
            for i, state in enumerate(states)
        ],
        "summary": {"missingCount": states.count("MISSING")},
    }


def scan(store: StateStore, instance: str = "web-1", minutes: float = 0, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "instance": instance,
        "operation": "Scan",
        "revision": "rev-a",
        "baseline": "debian-prod",
        "baseline_hash": "sha256:aa",
        "job_id": None,
        "started_at": at(minutes - 1),
        "finished_at": at(minutes),
        "inventory": {"instanceId": instance, "facts": facts(instance)},
        "evaluation": evaluation(instance, "MISSING", "INSTALLED"),
    }
    return store.record_scan(**{**fields, **overrides})


def offering(
    instance: str, *archives: tuple[str, str], version: str = "3.0.11-1"
) -> dict[str, Any]:
    """An inventory document offering openssl ``version`` from each (origin, suite)."""
    origins = [{"origin": origin, "suite": suite} for origin, suite in archives]
    update = {"name": "openssl", "arch": "amd64", "version": version, "origins": origins}
    return {"instanceId": instance, "facts": facts(instance), "updates": [update]}


def claim(store: StateStore, key: str, instance: str = "web-1", **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "key": key,
        "instance": instance,
        "operation": "Install",
        "window": "nightly",
        "task": "patch",
        "opening": "2024-05-01T02:00:00+00:00",
        "revision": "rev-a",
        "payload": {"pins": ["pkg0=1.0-2"]},
        "now": T0,
    }
    return store.claim_job(**{**fields, **overrides})


@pytest.fixture
def store(state_store: Any) -> Any:
    """Each test on both backends (tests/postgres.py, ``state_store``)."""
    return state_store


# The file


def test_new_file_is_created_in_wal_mode_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "state.db"
    with StateStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == LATEST
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_foreign_keys_are_enforced(store: StateStore) -> None:
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match=r"(?i)foreign key"):
        scan(store, job_id="no-such-job")
    assert store.latest_scan("web-1") is None


def test_default_path_honours_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert StateStore.default_path() == tmp_path / "xdg" / "patchwarden" / "state.db"


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_default_path_falls_back_to_local_state(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    expected = tmp_path / ".local" / "state" / "patchwarden" / "state.db"
    assert StateStore.default_path() == expected


def test_closed_store_refuses_use(store: StateStore) -> None:
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StateError, match="closed"):
        store.latest_scans()


def test_reopening_keeps_everything(store: StateStore) -> None:
    recorded = scan(store)
    job = claim(store, "k1")
    assert job is not None
    finished = store.finish_job(job.id, status="succeeded", result={"ok": True}, now=at(5))
    store.record_window_execution(window="nightly", opening="o1", status="SUCCESS", now=T0)
    store.record_revision(revision="rev-a", accepted=True, problems=[], now=T0)
    executions = store.window_executions()
    where = location(store)
    store.close()
    with opened_at(where) as store:
        assert store.latest_scan("web-1") == recorded
        assert store.job(job.id) == finished
        assert claim(store, "k1") is None
        assert store.window_executions() == executions
        assert store.last_good_revision() is not None


# Scans and installs


def test_record_scan_round_trip(store: StateStore) -> None:
    recorded = scan(store, operation="Install", baseline_hash="sha256:bb")
    assert recorded.id > 0
    assert recorded.operation == "Install"
    assert recorded.started_at == at(-1) and recorded.finished_at.tzinfo == UTC
    assert recorded.evaluation == evaluation("web-1", "MISSING", "INSTALLED")
    assert store.latest_scan("web-1") == recorded
    assert store.scan_history("web-1") == [recorded]
    assert store.latest_scan("db-1") is None


def test_record_scan_stores_one_row_per_patch(store: StateStore) -> None:
    recorded = scan(store, evaluation=evaluation("web-1", "MISSING", "INSTALLED", "FAILED"))
    rows = store.patch_states(recorded.id)
    assert [(row.name, row.state) for row in rows] == [
        ("pkg0", "MISSING"),
        ("pkg1", "INSTALLED"),
        ("pkg2", "FAILED"),
    ]
    first = rows[0]
    assert (first.installed_version, first.version, first.compliance_level) == (
        "1.0-1",
        "1.0-2",
        "CRITICAL",
    )
    assert first.cves == ["CVE-2024-0000"] and first.instance == "web-1"


def test_first_seen_is_the_earliest_scan_of_any_instance_per_archive(store: StateStore) -> None:
    security = ("Debian", "bookworm-security")
    updates = ("Debian", "bookworm-updates")
    key = ("openssl", "amd64", "3.0.11-1", "Debian/bookworm-security")
    later = ("openssl", "amd64", "3.0.11-1", "Debian/bookworm-updates")
    scan(store, "web-1", minutes=60, inventory=offering("web-1", security))
    # Another instance saw it earlier (its scan recorded later): the time moves earlier.
    scan(store, "db-1", minutes=10, inventory=offering("db-1", security))
    # A later scan never moves it later; the same version in a new suite starts its own clock.
    scan(store, "web-1", minutes=500, inventory=offering("web-1", security, updates))
    # Another version of the same package is a different key.
    scan(store, "web-1", minutes=5, inventory=offering("web-1", security, version="3.0.12-1"))
    assert store.first_seen([key, later, ("openssl", "amd64", "9", "Debian/sid")]) == {
        key: at(10),
        later: at(500),
    }


def test_record_scan_keeps_latest_facts_and_first_seen(store: StateStore) -> None:
    scan(store, minutes=0)
    newest = scan(store, minutes=10, inventory={"facts": facts(kernel="6.1.0-20")}, evaluation={})
    # Recorded late but finished earlier: older facts must not replace newer ones.
    scan(store, minutes=-30, inventory={"facts": facts(kernel="5.10")}, evaluation={})
    # No facts at all keeps what is known.
    scan(store, minutes=20, inventory={}, evaluation={})
    instance = store.instance("web-1")
    assert instance is not None
    assert instance.facts["kernel"] == "6.1.0-20"
    assert instance.first_seen == at(-30)
    assert instance.last_seen == at(20)
    assert instance.last_scan_id > newest.id
    assert [i.instance for i in store.instances()] == ["web-1"]
    assert store.instance("db-1") is None


def test_facts_may_come_with_the_evaluation(store: StateStore) -> None:
    doc = {**evaluation("web-1"), "facts": facts(hostname="from-evaluation")}
    scan(store, inventory={}, evaluation=doc)
    instance = store.instance("web-1")
    assert instance is not None and instance.facts["hostname"] == "from-evaluation"


def test_history_is_append_only(store: StateStore) -> None:
    first = scan(store, minutes=0)
    second = scan(store, minutes=60, revision="rev-b")
    assert store.scan_history("web-1") == [second, first]
    assert store.latest_scan("web-1") == second
    with raw_sql(store) as (conn, refused):
        for statement in (
            "UPDATE scans SET revision = 'forged'",
            "DELETE FROM scans",
            "UPDATE patch_states SET state = 'INSTALLED'",
            "DELETE FROM patch_states",
        ):
            with pytest.raises(refused, match="append-only"):
                conn.execute(statement)
    assert store.scan_history("web-1") == [second, first]


def test_latest_is_decided_by_finish_time_not_arrival(store: StateStore) -> None:
    newer = scan(store, minutes=60)
    scan(store, minutes=0)
    assert store.latest_scan("web-1") == newer
    assert store.latest_scans()["web-1"] == newer


def test_latest_scans_picks_the_newest_per_instance(store: StateStore) -> None:
    expected = {}
    for instance, finishes in {"web-1": [5, 50, 20], "db-1": [30], "web-2": [1, 2]}.items():
        records = [scan(store, instance, minutes=m) for m in finishes]
        expected[instance] = max(records, key=lambda record: record.finished_at)
    assert store.latest_scans() == expected
    assert list(store.latest_scans()) == ["db-1", "web-1", "web-2"]


def test_latest_scans_read_again_see_every_scan_recorded_since(store: StateStore) -> None:
    """latest_scans keeps the records it decoded: read between scans recorded here, by another
    writer of the same file, and late (finished earlier), it stays what a fresh read gives."""
    scan(store, "web-1", minutes=10)
    scan(store, "db-1", minutes=10)
    assert set(store.latest_scans()) == {"db-1", "web-1"}
    with another(store) as other:
        newer = scan(other, "web-1", minutes=20)
    scan(store, "db-1", minutes=5)  # recorded later, finished earlier: not the newest
    scan(store, "web-2", minutes=1)
    with another(store) as fresh:
        assert store.latest_scans() == fresh.latest_scans()
    assert store.latest_scans()["web-1"] == newer


def test_latest_scans_cannot_be_changed_by_a_caller(store: StateStore) -> None:
    """The store keeps the records latest_scans decoded and hands the same ones to the next
    caller (the planner, the views, the metrics): one caller's change would be everyone's."""
    recorded = scan(store, "web-1")
    first = store.latest_scans()["web-1"]
    changes: list[Callable[[], object]] = [
        lambda: first.evaluation["summary"].update(missingCount=0),
        lambda: first.evaluation["patches"].append({"name": "forged"}),
        lambda: first.evaluation["patches"][0].__setitem__("state", "INSTALLED"),
        lambda: first.inventory.pop("facts"),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert store.latest_scans()["web-1"] == recorded
    # Read as before: equal to plain documents, JSON as before, and a copy is the caller's own.
    assert json.loads(json.dumps(first.evaluation)) == recorded.evaluation
    own = copy.deepcopy(first.evaluation)
    own["patches"].clear()
    assert store.latest_scans()["web-1"].evaluation["patches"] == recorded.evaluation["patches"]


def test_scan_history_is_newest_first_and_limited(store: StateStore) -> None:
    records = [scan(store, minutes=m) for m in range(5)]
    scan(store, "other", minutes=100)
    assert store.scan_history("web-1") == records[::-1]
    assert store.scan_history("web-1", limit=2) == [records[4], records[3]]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"operation": "Reboot"}, ValueError),
        ({"started_at": datetime(2024, 5, 1)}, ValueError),
        ({"inventory": {"when": T0}}, TypeError),
        ({"evaluation": {"score": float("nan")}}, ValueError),
        ({"evaluation": {"patches": [{"name": "pkg"}]}}, ValueError),
    ],
)
def test_bad_scans_are_refused_and_nothing_is_written(
    store: StateStore, overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        scan(store, **overrides)
    assert store.latest_scans() == {}
    assert store.instances() == []


def test_times_are_stored_in_utc(store: StateStore) -> None:
    paris = timezone(timedelta(hours=2))
    recorded = scan(store, finished_at=datetime(2024, 5, 1, 14, 0, tzinfo=paris))
    assert recorded.finished_at == T0
    assert recorded.finished_at.utcoffset() == timedelta(0)


def test_scan_links_to_its_job(store: StateStore) -> None:
    job = claim(store, "k1")
    assert job is not None
    recorded = scan(store, operation="Install", job_id=job.id)
    assert store.latest_scan("web-1") == recorded and recorded.job_id == job.id


# Jobs


def test_claim_job_round_trip(store: StateStore) -> None:
    job = claim(store, "web-1/rev-a/Install")
    assert job is not None
    assert len(job.id) == 32 and int(job.id, 16) >= 0
    assert (job.status, job.result, job.finished_at, job.created_at) == ("running", None, None, T0)
    assert job.payload == {"pins": ["pkg0=1.0-2"]}
    assert store.job(job.id) == job
    assert store.job_by_key("web-1/rev-a/Install") == job
    assert store.job("nope") is None and store.job_by_key("nope") is None


@pytest.mark.parametrize("outcome", [None, "succeeded", "failed", "abandoned"])
def test_a_key_is_claimed_once_whatever_its_job_became(
    store: StateStore, outcome: str | None
) -> None:
    job = claim(store, "k")
    assert job is not None
    if outcome:
        store.finish_job(job.id, status=outcome, result={}, now=at(1))
    assert claim(store, "k", instance="other", now=at(2)) is None
    assert [j.id for j in store.jobs()] == [job.id]


def test_finish_job(store: StateStore) -> None:
    job = claim(store, "k")
    assert job is not None
    done = store.finish_job(job.id, status="failed", result={"error": "apt"}, now=at(3))
    assert (done.status, done.result, done.finished_at) == ("failed", {"error": "apt"}, at(3))
    assert done.key == job.key and done.created_at == job.created_at
    assert store.job(job.id) == done


def test_finished_jobs_are_not_overwritten(store: StateStore) -> None:
    job = claim(store, "k")
    assert job is not None
    done = store.finish_job(job.id, status="succeeded", result={"n": 1}, now=at(1))
    with pytest.raises(JobNotRunning, match="succeeded"):
        store.finish_job(job.id, status="failed", result={"n": 2}, now=at(2))
    with raw_sql(store) as (conn, refused):
        with pytest.raises(refused, match="finished once"):
            conn.execute("UPDATE jobs SET status = 'running'")
        with pytest.raises(refused, match="history"):
            conn.execute("DELETE FROM jobs")
    assert store.job(job.id) == done


def test_finish_job_refuses_unknown_jobs_and_statuses(store: StateStore) -> None:
    with pytest.raises(UnknownJob):
        store.finish_job("missing", status="succeeded", result={}, now=T0)
    job = claim(store, "k")
    assert job is not None
    with pytest.raises(ValueError, match="running"):
        store.finish_job(job.id, status="running", result={}, now=T0)
    assert store.job(job.id) == job


def ids(jobs: list[Any]) -> list[str]:
    return [job.id for job in jobs]


def test_jobs_filters_and_order(store: StateStore) -> None:
    a = claim(store, "a", now=at(3))
    b = claim(store, "b", instance="db-1", window="weekly", now=at(1))
    c = claim(store, "c", task="scan", opening="o2", now=at(2))
    assert a and b and c
    store.finish_job(c.id, status="succeeded", result={}, now=at(4))
    assert ids(store.jobs()) == [b.id, c.id, a.id]
    assert ids(store.jobs(status="running")) == [b.id, a.id]
    assert ids(store.jobs(instance="web-1")) == [c.id, a.id]
    assert ids(store.jobs(window="nightly", task="patch")) == [a.id]
    assert ids(store.jobs(opening="o2", status="succeeded")) == [c.id]
    assert store.jobs(instance="nobody") == []
    with pytest.raises(ValueError):
        store.jobs(status="done")


def test_abandon_running_jobs(store: StateStore) -> None:
    first, second, done = (claim(store, key, now=at(i)) for i, key in enumerate("abc"))
    assert first and second and done
    store.finish_job(done.id, status="succeeded", result={}, now=at(5))
    abandoned = store.abandon_running_jobs(at(10))
    assert [job.id for job in abandoned] == [first.id, second.id]
    assert all(job.status == "abandoned" and job.finished_at == at(10) for job in abandoned)
    assert [store.job(job.id) for job in abandoned] == abandoned
    assert store.jobs(status="succeeded") == [store.job(done.id)]
    assert store.jobs(status="running") == []
    assert store.abandon_running_jobs(at(11)) == []
    assert claim(store, "a") is None  # abandoned keys stay taken


def test_a_job_waiting_for_its_reboot_is_not_abandoned_and_is_found_after_a_restart(
    store: StateStore,
) -> None:
    """The phase is written before the reboot is asked for (state migration 7): a new process
    finds the job running in it, with the boot id before and the install's outcome."""
    rebooting, other = claim(store, "a", now=at(0)), claim(store, "b", "web-2", now=at(1))
    detail = {"install": {"changed": True}}
    store.record_phase(rebooting.id, phase="rebooting", boot_id="b-1", detail=detail, now=at(2))
    where = location(store)
    store.close()
    with opened_at(where) as store:
        assert [job.id for job in store.abandon_running_jobs(at(3))] == [other.id]
        [(job, phase)] = store.rebooting_jobs()
        assert (job.id, job.status) == (rebooting.id, "running")
        assert (phase.phase, phase.boot_id, phase.detail, phase.since) == (
            "rebooting",
            "b-1",
            detail,
            at(2),
        )
        store.finish_job(job.id, status="succeeded", result={}, now=at(4))
        assert store.rebooting_jobs() == []
        with pytest.raises(JobNotRunning):
            store.record_phase(job.id, phase="rebooting", boot_id="b-2", detail={}, now=at(5))


def test_planning_jobs_reads_only_what_the_planner_can_act_on(store: StateStore) -> None:
    """Running jobs, jobs of the openings given, recent failed Scans, and abandoned jobs not
    followed by a scan of their machine; oldest first, like jobs()."""
    now_opening = ("nightly", "2024-05-02T02:00:00+00:00")
    old_done = claim(store, "old-done", now=at(0))
    old_failed = claim(store, "old-failed", now=at(1))
    open_done = claim(store, "open-done", opening=now_opening[1], now=at(2))
    open_failed = claim(store, "open-failed", opening=now_opening[1], now=at(3))
    assert claim(store, "running", window=None, task=None, opening=None, now=at(4))
    scan_args = {"operation": "Scan", "window": None, "task": None, "opening": None}
    stale_scan = claim(store, "scan-stale", **scan_args, now=at(5))
    fresh_scan = claim(store, "scan-fresh", **scan_args, now=at(20))
    for job, status in (
        (old_done, "succeeded"),
        (old_failed, "failed"),
        (open_done, "succeeded"),
        (open_failed, "failed"),
        (stale_scan, "failed"),
        (fresh_scan, "failed"),
    ):
        store.finish_job(job.id, status=status, result={}, now=at(21))
    assert claim(store, "lost", instance="db-1", now=at(22))
    rescanned = claim(store, "rescanned", instance="web-2", now=at(22))
    store.abandon_running_jobs(at(23))  # also abandons "running"
    scan(store, "web-2", minutes=24)  # web-2 was rescanned since; db-1 was not
    again = claim(store, "running-again", instance="web-3", now=at(25))
    got = store.planning_jobs(openings=[now_opening], failed_scans_since=at(10))
    assert [job.key for job in got] == [
        "open-done",
        "open-failed",
        "running",  # abandoned, and web-1 has no scan at all
        "scan-fresh",
        "lost",
        "running-again",
    ]
    assert got == [store.job(job.id) for job in got]
    assert rescanned and again
    assert [j.key for j in store.planning_jobs(openings=[], failed_scans_since=at(30))] == [
        "running",
        "lost",
        "running-again",
    ]


def test_latest_jobs_is_the_newest_job_of_each_instance(store: StateStore) -> None:
    """What the controller shows per instance: equal to the last of jobs() per instance, ties on
    creation time broken the same way (the later claim wins)."""
    assert store.latest_jobs() == {}
    claim(store, "w1-old", instance="web-1", now=at(0))
    claim(store, "d1-only", instance="db-1", now=at(1))
    claim(store, "w1-tie-a", instance="web-1", now=at(5))
    claim(store, "w1-tie-b", instance="web-1", now=at(5))
    claim(store, "w2-new", instance="web-2", now=at(6))
    claim(store, "w2-older", instance="web-2", now=at(2))  # claimed later, created earlier
    expected: dict[str, str] = {}
    for job in store.jobs():
        expected[job.instance] = job.key
    assert {k: j.key for k, j in store.latest_jobs().items()} == expected
    assert expected == {"web-1": "w1-tie-b", "db-1": "d1-only", "web-2": "w2-new"}


def test_claimed_keys_checks_existence_in_sql(store: StateStore) -> None:
    assert claim(store, "a") and claim(store, "b")
    assert store.claimed_keys(["a", "c", "b", "a"]) == {"a", "b"}
    assert store.claimed_keys([]) == set()


def test_planning_jobs_use_indexes_not_a_scan_of_the_history(tmp_path: Path) -> None:
    """The planner's read must not grow with the history: every part is an index search.
    SQLite's plan; PostgreSQL's own check is in tests/test_state_postgres.py."""
    with StateStore(tmp_path / "state.db") as store:
        plan = _query_plan(
            store, lambda: store.planning_jobs(openings=[("nightly", "o")], failed_scans_since=T0)
        )
    scans = [step for step in plan if step.startswith("SCAN") and "json_each" not in step]
    assert not [s for s in scans if "jobs" in s and "USING" not in s], plan
    assert any("jobs_by_status_time" in step for step in plan), plan
    assert any("jobs_by_window" in step for step in plan), plan


def test_install_jobs_since_reads_the_finished_installs_of_a_cycle_only(store: StateStore) -> None:
    """The rollout step's read: finished Install jobs of the given instances created since the
    freeze, oldest first; older ones, scans, running jobs and other instances are not read."""
    freeze = T0 + timedelta(days=365)  # a year of history before the cycle

    def finished(key: str, instance: str, at: datetime, status: JobStatus, **kw: Any) -> None:
        job = claim(store, key, instance=instance, now=at, **kw)
        store.finish_job(job.id, status=status, result={}, now=at + timedelta(minutes=5))

    finished("old", "dev-1", T0, JobStatus.SUCCEEDED)
    finished("scan", "dev-1", freeze, JobStatus.SUCCEEDED, operation="Scan")
    finished("ok", "dev-1", freeze + timedelta(hours=1), JobStatus.SUCCEEDED)
    finished("bad", "dev-2", freeze, JobStatus.FAILED)
    finished("other", "db-1", freeze, JobStatus.SUCCEEDED)
    claim(store, "running", instance="dev-2", now=freeze + timedelta(hours=2))

    read = store.install_jobs_since(["dev-1", "dev-2"], freeze)

    assert [(job.key, job.status) for job in read] == [
        ("bad", JobStatus.FAILED),
        ("ok", JobStatus.SUCCEEDED),
    ]
    assert store.install_jobs_since([], freeze) == []


def test_install_jobs_since_is_an_index_range_not_a_scan_of_the_history(tmp_path: Path) -> None:
    """SQLite's plan (PostgreSQL's planner chooses by statistics: its planning read has its own
    check in tests/test_state_postgres.py)."""
    with StateStore(tmp_path / "state.db") as store:
        plan = _query_plan(store, lambda: store.install_jobs_since(["dev-1", "dev-2"], T0))
    # A range on created_at (by instance or by status, as SQLite's planner prefers): nothing
    # created before the freeze is read.
    assert not [step for step in plan if step.startswith("SCAN jobs")], plan
    assert any(s.startswith("SEARCH jobs") and s.endswith("created_at>?)") for s in plan), plan


def _query_plan(store: StateStore, read: Callable[[], object]) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN steps of the one statement on ``jobs`` that ``read`` runs."""
    statements: list[str] = []
    with store._use() as conn:
        conn.set_trace_callback(statements.append)
    try:
        read()
    finally:
        with store._use() as conn:
            conn.set_trace_callback(None)
    (query,) = [s for s in statements if "FROM jobs" in s]
    with store._use() as conn:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query)]


def _claim_from_threads(stores: list[StateStore], keys: list[str]) -> dict[str, int]:
    """Every thread claims every key at the same moment; how many claims won per key."""
    barrier = threading.Barrier(len(stores))
    wins: dict[str, int] = dict.fromkeys(keys, 0)
    count = threading.Lock()

    def race(store: StateStore, worker: int) -> None:
        for key in keys:
            barrier.wait()  # per key, so that every key is really contended
            if claim(store, key, instance=f"worker-{worker}") is not None:
                with count:
                    wins[key] += 1

    threads = [threading.Thread(target=race, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wins


def test_claim_is_exclusive_across_threads_sharing_a_store(store: StateStore) -> None:
    keys = [f"key-{i}" for i in range(25)]
    assert _claim_from_threads([store] * 8, keys) == dict.fromkeys(keys, 1)
    assert len(store.jobs()) == 25


def test_claim_is_exclusive_across_threads_with_their_own_stores(store: StateStore) -> None:
    stores = [another(store) for _ in range(8)]
    try:
        keys = [f"key-{i}" for i in range(25)]
        assert _claim_from_threads(stores, keys) == dict.fromkeys(keys, 1)
    finally:
        for opened in stores:
            opened.close()


def _claim_in_process(path: str, keys: list[str], barrier: Any, won: Any) -> None:
    # Spawned child. The processes create and migrate the new file together, then meet before
    # every key: without that, the first process to start claims most keys unopposed. Errors
    # go back as text, so that a failing child fails the test instead of hanging it.
    try:
        barrier.wait()
        with opened_at(path) as store:
            wins = []
            for key in keys:
                barrier.wait()
                if claim(store, key) is not None:
                    wins.append(key)
        won.put(wins)
    except BaseException:
        barrier.abort()
        won.put(traceback.format_exc())


def test_claim_is_exclusive_across_processes(store: StateStore, tmp_path: Path) -> None:
    # spawn, not fork: a fresh interpreter per process, as separate controllers would be.
    # The processes also race to create the file (which found SQLite's WAL switch not waiting).
    context = multiprocessing.get_context("spawn")
    processes, keys = 4, [f"key-{i}" for i in range(20)]
    barrier, won = context.Barrier(processes, timeout=60), context.Queue()
    path = location(store)
    store.close()
    if isinstance(store, StateStore):  # the processes race to create the file
        (tmp_path / "state.db").unlink()
    workers = [
        context.Process(target=_claim_in_process, args=(path, keys, barrier, won), daemon=True)
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        results = [won.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    failures = [result for result in results if isinstance(result, str)]
    assert not failures, "\n".join(failures)
    assert sorted(key for result in results for key in result) == sorted(keys)
    assert [worker.exitcode for worker in workers] == [0] * processes
    with opened_at(path) as store:
        assert len(store.jobs()) == len(keys)
        assert store.schema_version() == SCHEMA_VERSION


# Window executions


def test_window_executions_upsert_keeps_start_time(store: StateStore) -> None:
    store.record_window_execution(window="nightly", opening="o1", status="PENDING", now=at(0))
    store.record_window_execution(window="weekly", opening="w1", status="IN_PROGRESS", now=at(1))
    store.record_window_execution(window="nightly", opening="o1", status="SUCCESS", now=at(9))
    assert store.window_executions() == [
        {
            "window": "nightly",
            "opening": "o1",
            "status": "SUCCESS",
            "started_at": at(0),
            "updated_at": at(9),
        },
        {
            "window": "weekly",
            "opening": "w1",
            "status": "IN_PROGRESS",
            "started_at": at(1),
            "updated_at": at(1),
        },
    ]
    assert [e["opening"] for e in store.window_executions("weekly")] == ["w1"]
    assert store.window_executions("none") == []
    with pytest.raises(ValueError):
        store.record_window_execution(window="nightly", opening="o1", status="DONE", now=T0)


def test_a_version_4_file_keeps_its_executions_and_takes_skipped_overlapping(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        migrate(conn, target=4)
        conn.execute(
            "INSERT INTO window_executions VALUES ('nightly', 'o1', 'FAILED', ?, ?)",
            (T0.isoformat(), T0.isoformat()),
        )
    conn.close()
    with StateStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        store.record_window_execution(
            window="nightly", opening="o2", status="SKIPPED_OVERLAPPING", now=at(1)
        )
        assert [(e["opening"], e["status"]) for e in store.window_executions()] == [
            ("o1", "FAILED"),
            ("o2", "SKIPPED_OVERLAPPING"),
        ]
        wanted = [("nightly", "o2"), ("nightly", "o3"), ("weekly", "o1")]
        assert store.execution_statuses(wanted) == {("nightly", "o2"): "SKIPPED_OVERLAPPING"}


# Source revisions


def test_revisions_and_last_good(store: StateStore) -> None:
    assert store.last_good_revision() is None and store.revisions() == []
    store.record_revision(revision="a", accepted=True, problems=[], now=at(0))
    store.record_revision(revision="b", accepted=False, problems=["x.yaml:3: bad"], now=at(1))
    good = store.last_good_revision()
    assert good is not None and (good.revision, good.accepted, good.seen_at) == ("a", True, at(0))
    newest = store.revisions()[0]
    assert (newest.revision, newest.accepted, newest.problems) == ("b", False, ["x.yaml:3: bad"])
    assert [r.revision for r in store.revisions(limit=1)] == ["b"]


def test_revisions_collapse_repeats_but_keep_reverts(store: StateStore) -> None:
    for minute, revision in enumerate(["a", "a", "c", "c", "a"]):
        store.record_revision(revision=revision, accepted=True, problems=[], now=at(minute))
    assert [(r.revision, r.seen_at) for r in store.revisions()] == [
        ("a", at(4)),
        ("c", at(2)),
        ("a", at(0)),
    ]
    good = store.last_good_revision()
    assert good is not None and good.seen_at == at(4)


# Migrations


def test_migrates_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    with StateStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert scan(store).id == 1


def test_migrates_a_version_1_file_and_backfills(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    doc = {**evaluation("web-1", "MISSING", "INSTALLED"), "facts": facts(kernel="old")}
    with sqlite3.connect(path, isolation_level=None) as conn:
        migrate(conn, target=1)
        conn.execute(
            "INSERT INTO scans (instance, operation, revision, baseline, baseline_hash, job_id,"
            " started_at, finished_at, inventory, evaluation)"
            " VALUES ('web-1', 'Scan', 'rev-a', 'debian-prod', 'h', NULL,"
            " '2024-05-01T11:00:00.000000+00:00', '2024-05-01T12:00:00.000000+00:00', '{}', ?)",
            (json.dumps(doc),),
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    with StateStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        old = store.latest_scan("web-1")
        assert old is not None and old.evaluation == doc and old.finished_at == T0
        assert [row.state for row in store.patch_states(old.id)] == ["MISSING", "INSTALLED"]
        instance = store.instance("web-1")
        assert instance is not None and instance.facts["kernel"] == "old"
        assert instance.first_seen == T0 and instance.last_scan_id == old.id
        newer = scan(store, minutes=5)
        assert store.latest_scans() == {"web-1": newer}


def test_migration_is_a_no_op_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with sqlite3.connect(path, isolation_level=None) as conn:
        assert migrate(conn) == SCHEMA_VERSION
    conn.close()


def test_a_file_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="newer"):
        StateStore(path)


def test_one_writer_at_a_time_and_readers_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = Holder(pid=4242, host="ctl-1", command="patchctl run")
    with StateStore(path, writer=first) as writer:
        with pytest.raises(StoreLocked, match=r"patchctl run \(pid 4242 on ctl-1\)"):
            StateStore(path, writer=Holder.this_process("patchctl reconcile"))
        with StateStore(path) as reader:  # readers take no lock
            scan(writer, "web-1")
            assert reader.latest_scan("web-1") is not None
        assert json.loads(lock_path(path).read_text()) == asdict(first)
    # Closed: the lock is free for the next writer, which the file then names.
    with StateStore(path, writer=Holder.this_process("patchctl reconcile")) as second:
        assert second.latest_scan("web-1") is not None


def test_with_first_seen_gives_recorded_times_and_now_for_versions_not_recorded_yet(
    store: StateStore,
) -> None:
    security = ("Debian", "bookworm-security")
    scan(store, "db-1", minutes=10, inventory=offering("db-1", security))
    document = offering("web-1", security)
    document["updates"].append({**document["updates"][0], "version": "3.0.13-1"})
    document.update(
        collectedAt=at(0).isoformat(),
        facts={"osId": "debian", "osVersion": "12", "operatingSystem": "DEBIAN", "arch": "amd64"},
    )
    merged = store.with_first_seen(Inventory.model_validate(document), at(60))
    assert [u.first_seen for u in merged.updates] == [at(10), at(60)]


# One-off openings and enrolment


def test_one_off_openings_end_once_and_keep_their_jobs(store: StateStore) -> None:
    task = WindowTask.model_validate({"name": "patch-now", "operation": "Install"})
    opening = OneOffOpening(
        id="pn-0123456789",
        targets=OneOffTargets(instances=["web-1"]),
        task=task,
        requested_by="alice",
        os_user="alice",
        created_at=T0,
        expires_at=at(60),
    )
    assert store.record_one_off(opening, now=T0).status is OneOffStatus.PENDING
    claim(store, "pn/web-1", window=None, task="patch-now", opening=opening.id)
    claim(store, "nightly/web-1")
    live = (OneOffStatus.PENDING, OneOffStatus.IN_PROGRESS)
    assert store.change_one_off(
        opening.id, status=OneOffStatus.CANCELLED, now=at(1), only_from=live
    )
    assert not store.change_one_off(
        opening.id, status=OneOffStatus.SUCCESS, now=at(2), only_from=live
    )
    (record,) = store.one_offs([OneOffStatus.CANCELLED])
    assert record == store.one_off(opening.id) and record.status is OneOffStatus.CANCELLED
    assert store.one_offs([OneOffStatus.PENDING]) == [] and store.one_off("pn-none") is None
    assert [job.key for job in store.one_off_jobs([opening.id])] == ["pn/web-1"]
    with raw_sql(store) as (conn, refused), pytest.raises(refused, match="ends once"):
        conn.execute("UPDATE one_off_openings SET status = 'PENDING'")


def test_enrolment_keeps_last_good_lists_failures_and_provenance(store: StateStore) -> None:
    hosts = (DiscoveredHost(id="h1", address="10.0.0.1"), DiscoveredHost(id="h2", address="h2"))
    store.record_source_failure("lab", "static", "unreadable", at(0))
    assert store.source_lists() == {} and store.source_failures() == {"lab": ("unreadable", at(0))}
    store.save_source_list("lab", Listed("static", "spec-1", hosts, at(1)))
    assert store.source_lists() == {"lab": Listed("static", "spec-1", hosts, at(1))}
    assert store.source_failures() == {}
    store.record_source_failure("lab", "static", "timeout", at(2))  # the good list stays
    assert store.source_lists()["lab"].hosts == hosts
    assert store.source_failures() == {"lab": ("timeout", at(2))}
    store.record_enrolled(
        {"lab-h1": Provenance("lab", "h1"), "lab-h2": Provenance("lab", "h2")}, at(3)
    )
    store.record_enrolled({"lab-h2": Provenance("lab", "h2")}, at(4))
    assert store.enrolled() == {
        "lab-h1": (Provenance("lab", "h1"), False),
        "lab-h2": (Provenance("lab", "h2"), True),
    }
