"""observe() reads only the jobs the planner can still act on, and the plans are unchanged.

A real state store (a SQLite file, then a PostgreSQL database: both backends) is filled with weeks of history by running the pure planner
against it: every action is claimed with ``claim_job`` and finished with ``finish_job`` (some
fail, some stay running for a while, a restart abandons what was running), and every scan or
install is recorded with ``record_scan``. At every step, and at arbitrary clocks afterwards, the
plan from ``Reconciler.observe()`` (the reduced read) must equal the plan from the whole job
history (``store.jobs()``), as the planner saw it before the reduction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.api.snapshot import Snapshot, build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.loop import Reconciler
from reconciler.plan import (
    INSTALL,
    SCAN,
    Action,
    Observed,
    ObservedJob,
    Plan,
    Settings,
    baseline_digest,
    plan,
)
from reconciler.state import JobRecord, StateStore
from tests.postgres import opened_at, raw_sql

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 14
STEP = timedelta(minutes=45)
REVISION = "main@sha1:" + "1" * 40
SETTINGS = Settings(stale_after=timedelta(hours=20), retry_after=timedelta(minutes=50))

FLEET = """
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata: {name: debian-prod}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup: {patchFilters: [{key: PRIORITY, values: [Required, Important]}]}
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  baselines: {DEBIAN: debian-prod}
---
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: nightly}
spec:
  schedule: cron(0 2 * * ? *)
  duration: 4
  cutoff: 1
  targets: {patchGroups: [web]}
  tasks:
    - {name: scan-first, operation: Scan, maxConcurrency: "3", maxErrors: "1", priority: 1}
    - {name: install, operation: Install, maxConcurrency: "25%", maxErrors: "0", priority: 2}
---
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: sunday}
spec:
  schedule: cron(0 12 ? * SUN *)
  duration: 6
  cutoff: 1
  targets: {patchGroups: [web]}
  tasks:
    - {name: install, operation: Install, maxConcurrency: "1", maxErrors: "0"}
"""
INSTANCES = [f"web-{i}" for i in range(8)]


def fleet() -> Snapshot:
    docs = [FLEET] + [
        f"""apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {{name: {name}, labels: {{role: web}}}}
spec: {{connection: {{type: local, root: /srv/{name}}}}}
"""
        for name in INSTANCES
    ]
    return build_snapshot([("fleet.yaml", "---\n".join(docs).encode())], predefined_baselines())


DIGEST = baseline_digest(fleet().baselines["debian-prod"])


def roll(*parts: object) -> int:
    """A deterministic die in 0..99 per job: the history is the same on every run."""
    return hashlib.sha256(repr(parts).encode()).digest()[0] * 100 // 256


def full_history(store: StateStore, observed: Observed) -> Observed:
    """What observe() gave the planner before the reduction: every job ever claimed."""
    jobs = [
        ObservedJob(
            j.key, j.instance, j.operation, j.status, j.created_at, j.window, j.task, j.opening
        )
        for j in store.jobs()
    ]
    return Observed(scans=observed.scans, jobs=jobs)


@dataclass
class History:
    store: StateStore
    reconciler: Reconciler
    snapshot: Snapshot
    steps: int = 0
    reasons: set[str] = field(default_factory=set)
    actions: set[str] = field(default_factory=set)

    def plans_at(self, now: datetime) -> tuple[Plan, Plan, Observed]:
        reduced = self.reconciler.observe(now)
        full = full_history(self.store, reduced)
        return (
            plan(self.snapshot, REVISION, full, now, SETTINGS),
            plan(self.snapshot, REVISION, reduced, now, SETTINGS),
            reduced,
        )


def record(
    store: StateStore, name: str, operation: str, job: JobRecord, now: datetime, failed: bool
) -> None:
    """A scan or install result; after a successful install nothing is missing any more."""
    day = (now - START).days
    missing = roll(name, day) < 50 if operation == SCAN else failed
    pins = [f"openssl=3.0.{day}-1"] if missing else []
    store.record_scan(
        instance=name,
        operation=operation,
        revision=REVISION,
        baseline="debian-prod",
        baseline_hash=job.payload["baseline_hash"] or DIGEST,
        job_id=job.id,
        started_at=job.created_at,
        finished_at=now,
        inventory={"facts": {"operatingSystem": "DEBIAN"}},
        evaluation={
            "pins": pins,
            "patches": [],
            "summary": {"complianceStatus": "NON_COMPLIANT" if pins else "COMPLIANT"},
        },
    )


def simulate(store: StateStore) -> Iterator[History]:
    """Run the planner over DAYS days of STEP ticks, acting on its plans through the store, and
    check at every tick that both reads of the history give the same plan."""
    snapshot = fleet()
    reconciler = Reconciler(
        None,  # type: ignore[arg-type]  # observe() reads only the store
        store,
        lambda _: None,  # type: ignore[arg-type,return-value]
        settings=SETTINGS,
    )
    reconciler.snapshot, reconciler.revision = snapshot, REVISION
    history = History(store, reconciler, snapshot)
    running: dict[str, tuple[JobRecord, int]] = {}  # job id -> (job, ticks left)
    now = START
    while now < START + timedelta(days=DAYS):
        full, reduced, _ = history.plans_at(now)
        assert reduced == full, f"plans differ at {now.isoformat()}"
        history.steps += 1
        history.reasons.update(w.reason for w in full.waits)
        for action in full.actions:
            history.actions.add(f"{action.operation} {action.window}")
            job = store.claim_job(
                key=action.key,
                instance=action.instance,
                operation=action.operation,
                window=action.window,
                task=action.task,
                opening=action.opening,
                revision=REVISION,
                payload={"baseline_hash": action.baseline_hash},
                now=now,
            )
            assert job is not None
            running[job.id] = (job, roll(job.key, "ticks") % 3)
        for job_id, (job, left) in list(running.items()):
            if left > 0:
                running[job_id] = (job, left - 1)
                continue
            del running[job_id]
            failed = roll(job.key, "fails") < 25
            done = now + timedelta(minutes=5)
            if not failed or job.operation == INSTALL:
                record(store, job.instance, job.operation, job, done, failed)
            store.finish_job(
                job_id, status="failed" if failed else "succeeded", result={}, now=done
            )
        if now.hour == 3 and now.minute < 45 and now.day % 4 == 0:
            # A crash and restart: what ran is abandoned, its machines rescanned.
            store.abandon_running_jobs(now)
            running.clear()
        now += STEP
    yield history


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[History]:
    """One long history per backend, shared by this module's tests."""
    if request.param == "sqlite":
        where = str(tmp_path_factory.mktemp("history") / "state.db")
    else:
        where = request.getfixturevalue("postgres_server").fresh_database()
    with opened_at(where) as store:
        yield from simulate(store)


def test_every_tick_of_a_long_history_plans_the_same_from_the_reduced_read(
    history: History,
) -> None:
    # The history went through every rule the reduction must keep (else the test proves little).
    assert history.steps == DAYS * 24 * 60 // 45
    assert {"Scan nightly", "Install nightly", "Install sunday", "Scan None"} <= history.actions
    for reason in (
        "a job is running on it",
        "rollout halted",
        "maxConcurrency 25% of install reached; waiting for a slot",
        "its last scan failed (web-",
        "task install waits for lower-priority tasks of nightly",
        "compliant",
    ):
        assert any(reason in r for r in history.reasons), reason
    assert any("already dispatched" in r for r in history.reasons)
    assert history.store.jobs(status="abandoned")


def test_the_reduced_read_is_a_small_part_of_the_history(history: History) -> None:
    end = START + timedelta(days=DAYS)
    _, _, reduced = history.plans_at(end + timedelta(hours=2, minutes=30))  # nightly open
    everything = history.store.jobs()
    assert len(everything) > 200
    assert len(reduced.jobs) < len(everything) // 10


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=DAYS + 2)),
    minutes=st.sampled_from([0, 1, 30, 59, 60, 61, 179, 180, 181, 239, 240]),
)
def test_any_clock_plans_the_same_from_the_reduced_read(
    history: History, offset: timedelta, minutes: int
) -> None:
    """Inside and after windows, at cutoffs and retry boundaries: equal plans at any clock."""
    now = (START + offset).replace(minute=0, second=0, microsecond=0) + timedelta(minutes=minutes)
    full, reduced, _ = history.plans_at(now)
    assert reduced == full


def test_latest_scans_are_the_newest_by_finish_time_then_id(history: History) -> None:
    """latest_scans() reads instances.last_scan_id; it must pick what ranking every scan picks."""
    with raw_sql(history.store) as (conn, _):
        ranked = dict(
            conn.execute(
                "SELECT instance, id FROM (SELECT instance, id, row_number() OVER ("
                " PARTITION BY instance ORDER BY finished_at DESC, id DESC) AS n FROM scans)"
                " AS ranked WHERE n = 1"
            ).fetchall()
        )
    assert {name: scan.id for name, scan in history.store.latest_scans().items()} == ranked


def test_submitted_jobs_hold_a_slot_until_claimed_checked_in_sql(history: History) -> None:
    """A submitted action not yet claimed counts as running; once its key is claimed (even long
    ago, outside the reduced read), it is not added a second time."""
    now = START + timedelta(days=DAYS, hours=12)
    old = history.store.jobs(status="succeeded")[0]
    new_key = "web-0:Scan:submitted:now"
    reconciler = history.reconciler
    reconciler.submitted = {
        key: Action(SCAN, name, key, "test", "debian-prod", DIGEST)
        for key, name in ((new_key, "web-0"), (old.key, "web-7"))
    }
    try:
        observed = reconciler.observe(now)
    finally:
        reconciler.submitted = {}
    assert old.key not in {j.key for j in observed.jobs}  # finished long ago: not read
    synthetic = [j for j in observed.jobs if j.created_at == now]
    assert [(j.key, j.status) for j in synthetic] == [(new_key, "running")]
