"""The audit log: what the real loop did (``patchctl reconcile`` on real Debian systems in
directory roots, the desired state in a real Git repository), one JSON line per occurrence with
its revision, the commit's author, the instance and the job, and ``patchctl audit`` reading it
back: filters, formats, and a damaged file reported line by line, never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.report.notify.audit import AuditLog, read, table_rows
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE_YAML,
    at_now,
    documents,
    local_instance_yaml,
    make_fleet,
    open_window_yaml,
    versions,
)
from tests.git_servers import GIT_ENV, Upstream

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
AUTHOR = f"{GIT_ENV['GIT_AUTHOR_NAME']} <{GIT_ENV['GIT_AUTHOR_EMAIL']}>"

# web-1's kernel update asks for a reboot (recorded in a directory root, never performed).
WITH_KERNEL = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-kernel")]
WITH_TOOL = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool")]


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )


def audit_json(*args: str) -> list[dict[str, Any]]:
    run = patchctl("audit", *args, "-o", "json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    entries: list[dict[str, Any]] = json.loads(run.stdout)
    return entries


def revision_of(sha: str) -> str:
    return f"main@sha1:{sha}"


@needs_apt
@pytest.mark.slow
def test_the_audit_log_records_what_the_loop_did_with_revision_author_instance_and_job(
    tmp_path: Path, apt_repo: Repo
) -> None:
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], WITH_KERNEL)
    roots |= make_fleet(tmp_path / "fleet", apt_repo, ["web-2"], WITH_TOOL)
    window = open_window_yaml()
    upstream.write("fleet.yaml", documents(BASELINE_YAML, window))
    upstream.write(
        "instances.yaml", documents(*(local_instance_yaml(n, r) for n, r in roots.items()))
    )
    good = revision_of(upstream.commit("fleet, and a window open now"))
    state, log = tmp_path / "state" / "state.db", tmp_path / "audit" / "audit.jsonl"
    url = f"file://{upstream.bare}"
    reconcile = ["reconcile", "--source", url, "--state", str(state), "--audit-log", str(log)]
    reconcile += at_now()

    first = patchctl(*reconcile, "-o", "json")
    assert first.returncode == 0, first.stderr
    assert versions(roots["web-1"]) == {"pwtest-lib": "1.0-2", "pwtest-kernel": "1.0-2"}

    upstream.write(
        "fleet.yaml", BASELINE_YAML.replace("complianceLevel: HIGH", "complianceLevel: X")
    )
    bad = revision_of(upstream.commit("a broken baseline"))
    second = patchctl(*reconcile, "-o", "json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["refused"] == [bad]

    entries = audit_json("--audit-log", str(log))
    assert not (state.parent / "audit.jsonl").exists()  # --audit-log was obeyed
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    kinds = [e["kind"] for e in entries]
    for entry in entries:
        assert set(entry) == {"time", "kind", "revision", "author", "instance", "job", "detail"}
        assert datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).tzinfo is not None
        # Everything but the refusal happened under the good revision, made by its author.
        assert (entry["revision"], entry["author"]) == (
            (bad, AUTHOR) if entry["kind"] == "snapshot.refused" else (good, AUTHOR)
        )

    # The snapshot accepted (once: the second run restored it from the store, it did not
    # accept it again).
    (accepted,) = [e for e in entries if e["kind"] == "snapshot.accepted"]
    assert accepted["detail"]["instances"] == 2
    assert kinds.index("snapshot.accepted") == 0

    # Every job the store knows, dispatched then finished, under its own id.
    with StateStore(state) as store:
        jobs = {job.id: job for job in store.jobs()}
    assert sorted(j.operation for j in jobs.values()) == ["Install", "Install", "Scan", "Scan"]
    for job in jobs.values():
        (dispatched,) = [e for e in entries if e["kind"] == "job.dispatched" and e["job"] == job.id]
        (finished,) = [e for e in entries if e["kind"] == "job.finished" and e["job"] == job.id]
        assert entries.index(dispatched) < entries.index(finished)
        assert dispatched["instance"] == finished["instance"] == job.instance
        assert dispatched["detail"]["operation"] == job.operation
        assert finished["detail"]["status"] == job.status == "succeeded"
        assert job.revision == good
    install = {j.instance: j.id for j in jobs.values() if j.operation == "Install"}

    # What each install put on its machine, as dpkg has it.
    installed = {
        e["instance"]: (e["job"], {(p["name"], p["version"]) for p in e["detail"]["patches"]})
        for e in entries
        if e["kind"] == "patches.installed"
    }
    assert installed == {
        "web-1": (install["web-1"], {("pwtest-lib", "1.0-2"), ("pwtest-kernel", "1.0-2")}),
        "web-2": (install["web-2"], {("pwtest-lib", "1.0-2"), ("pwtest-tool", "2.1-1")}),
    }

    # The reboot web-1's kernel asked for: recorded, not performed (a directory root).
    (reboot,) = [e for e in entries if e["kind"] == "reboot"]
    assert (reboot["instance"], reboot["job"]) == ("web-1", install["web-1"])
    assert reboot["detail"]["required"] is True
    assert reboot["detail"]["performed"] is False
    assert reboot["detail"]["recorded"] is True

    # The refused revision, with why, and what stays in force.
    (refused,) = [e for e in entries if e["kind"] == "snapshot.refused"]
    assert refused["detail"]["keeping"] == good
    assert refused["detail"]["problems"][0].startswith("fleet.yaml:")
    assert "complianceLevel" in refused["detail"]["problems"][0]
    assert kinds[-1] == "snapshot.refused"

    # Filters, as a user would ask.
    assert {e["kind"] for e in audit_json("--audit-log", str(log), "--kind", "job")} == {
        "job.dispatched",
        "job.finished",
    }
    assert audit_json("--audit-log", str(log), "--kind", "reboot", "--instance", "web-1") == [
        reboot
    ]
    assert audit_json("--audit-log", str(log), "--instance", "web-2", "--kind", "reboot") == []
    short = bad.rpartition(":")[2][:10]
    assert audit_json("--audit-log", str(log), "--revision", short) == [refused]
    assert audit_json("--audit-log", str(log), "--revision", good) == [
        e for e in entries if e is not refused
    ]
    # The loop ran from NOW on (at_now()): an hour before it takes every entry (a duration such as 1h counts
    # back from the host's clock, which the entries do not follow).
    assert audit_json("--audit-log", str(log), "--since", "2026-11-28T11:00:00Z") == entries
    assert audit_json("--audit-log", str(log), "--since", "2999-01-01T00:00:00Z") == []

    # JSON lines for pipes, a table for people.
    lines = patchctl("audit", "--audit-log", str(log), "-o", "jsonl")
    assert [json.loads(line) for line in lines.stdout.splitlines()] == entries
    table = patchctl("audit", "--audit-log", str(log), "-o", "table")
    assert table.returncode == 0, table.stderr
    assert "reboot required, not performed" in table.stdout
    assert "pwtest-kernel 1.0-2" in table.stdout

    # A kind that does not exist is a usage error that lists the kinds.
    wrong = patchctl("audit", "--audit-log", str(log), "--kind", "jobs")
    assert wrong.returncode == 2
    assert "job.dispatched" in wrong.stderr and "Traceback" not in wrong.stderr


def test_by_default_the_audit_log_is_beside_the_state_database(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "fleet.yaml").write_text(BASELINE_YAML)
    state = tmp_path / "state" / "state.db"

    run = patchctl("reconcile", "--source", str(source), "--state", str(state), "-o", "json")

    assert run.returncode == 0, run.stderr
    assert (state.parent / "audit.jsonl").is_file()
    (accepted,) = audit_json("--state", str(state))
    assert accepted["kind"] == "snapshot.accepted"
    assert accepted["revision"].startswith("dir@sha256:")
    assert accepted["author"] == ""  # a directory has no author


def test_a_damaged_line_is_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditLog(log) as audit:
        audit(_occurrence(Kind.SNAPSHOT_ACCEPTED, 1))
    with log.open("ab") as damage:
        damage.write(b"garbage\n")
        damage.write(b'{"kind": "reboot"}\n')
        damage.write(b'["a", "list"]\n')
    with AuditLog(log) as audit:  # reopening appends; nothing is truncated
        audit(_occurrence(Kind.REBOOT, 5))
    with log.open("ab") as damage:
        damage.write(b'{"time": "2026-11-28T12:00:00Z", "kind": "re')  # a crash mid-line

    run = patchctl("audit", "--audit-log", str(log), "-o", "json")

    assert run.returncode == 0
    assert [e["kind"] for e in json.loads(run.stdout)] == ["snapshot.accepted", "reboot"]
    problems = run.stderr.splitlines()
    assert [p.split(": ", 2)[1].rpartition(":")[2] for p in problems] == ["2", "3", "4", "6"]
    assert all(p.startswith(f"patchctl: {log}:") and p.endswith("line skipped") for p in problems)
    assert "missing time, revision, instance, job, detail" in problems[1]
    assert "torn last line" in problems[3]
    assert "Traceback" not in run.stderr


def test_a_line_whose_detail_is_not_an_object_is_reported_not_a_crash(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditLog(log) as audit:
        audit(_occurrence(Kind.REBOOT, 1))
    with log.open("ab") as damage:
        damage.write(
            b'{"time": "2026-11-28T12:00:00Z", "kind": "reboot", "revision": null,'
            b' "instance": "web-1", "job": null, "detail": ["performed"]}\n'
        )

    run = patchctl("audit", "--audit-log", str(log), "-o", "table")

    assert run.returncode == 0, run.stderr
    assert run.stderr == (
        f"patchctl: {log}:2: detail: expected a JSON object, got list; line skipped\n"
    )


def test_lines_from_concurrent_jobs_and_processes_never_interleave_and_each_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    # Two writers on one file stand for two processes (each has its own O_APPEND descriptor).
    first, second = AuditLog(log), AuditLog(log)
    big = "x" * 5000  # longer than a pipe buffer: one write() per line still keeps it whole

    def job(writer: AuditLog, worker: int) -> None:
        for n in range(100):
            writer(_occurrence(Kind.JOB_FINISHED, n, worker=worker, padding=big))

    threads = [threading.Thread(target=job, args=(w, i)) for i, w in enumerate([first, second] * 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first.close()
    second.close()

    entries, corrupt = read(log)
    assert corrupt == []
    assert sorted((e["detail"]["worker"], e["detail"]["n"]) for e in entries) == [
        (w, n) for w in range(8) for n in range(100)
    ]
    assert len(synced) >= 800  # every line was fsync'd before the observer returned


def _occurrence(kind: Kind, n: int, **detail: Any) -> Occurrence:
    return Occurrence(
        kind=kind,
        time=datetime(2026, 11, 28, 12, n % 60, tzinfo=UTC),
        revision="main@sha1:" + "ab" * 20,
        author=AUTHOR,
        instance="web-1",
        job=f"job-{n}",
        detail={"n": n, **detail},
    )


def test_a_rotated_log_is_followed_by_a_new_file_at_once(tmp_path: Path) -> None:
    log, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    audit = AuditLog(log)
    audit(_occurrence(Kind.JOB_DISPATCHED, 1))
    log.rename(rotated)  # logrotate without copytruncate

    audit(_occurrence(Kind.JOB_FINISHED, 2))

    assert [e["job"] for e in read(rotated)[0]] == ["job-1"]
    assert [e["job"] for e in read(log)[0]] == ["job-2"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_overrides_read_as_who_overrode_which_rail_for_which_run_and_why(tmp_path: Path) -> None:
    """A run started although a change calendar was closed or a rollout halted (docs/
    guardrails.md) reads, in ``patchctl audit``'s table, as one line: who (and the
    operating-system user when another), the rail as it refused, the run and its machines, and
    the reason they gave."""
    log = tmp_path / "audit.jsonl"
    calendar = "change calendar 'freeze' is closed (DEFAULT_CLOSED, no open period ahead)"
    with AuditLog(log) as audit:
        for kind, rail in (
            (Kind.CALENDAR_OVERRIDDEN, "calendars"),
            (Kind.HALT_OVERRIDDEN, "rollouts"),
        ):
            audit(
                Occurrence(
                    kind=kind,
                    time=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
                    revision="main@sha1:" + "ab" * 20,
                    author="alice",
                    detail={
                        "id": "em-0123456789",
                        "run": "emergency",
                        "instances": ["web-1", "web-2"],
                        "osUser": "ops",
                        rail: [
                            calendar
                            if rail == "calendars"
                            else "rollout rings is halted "
                            "(halted: 1 of 1 dev machines failed health checks): web-2"
                        ],
                        "reason": "INC-9: exploited",
                    },
                )
            )

    table = patchctl("audit", "--audit-log", str(log), "-o", "table")

    assert table.returncode == 0, table.stderr
    what = [row["what"] for row in table_rows(read(log)[0])]
    assert what == [
        "emergency em-0123456789 on web-1, web-2 asked by alice (OS user ops) although "
        f"{calendar}; reason: INC-9: exploited",
        "emergency em-0123456789 on web-1, web-2 asked by alice (OS user ops) although rollout "
        "rings is halted (halted: 1 of 1 dev machines failed health checks): web-2; reason: "
        "INC-9: exploited",
    ]
    assert "emergency em-0123456789 on web-1, web-2 asked by alice (OS user ops)" in table.stdout
