"""Progressive rollouts on the multi-host test fleet (issue 15 item 5, docs/rollouts.md,
docs/test-fleet.md): six machines, each with its own sshd and Debian root, in three rings of two
(dev m01-m02, staging m03-m04, prod m05-m06), each ring its own patch group and window, and one
Rollout dev -> staging -> prod. ``patchctl reconcile`` / ``patchctl run`` drive them over SSH with
an injected clock (``--now``), so the bake times pass without waiting.

What a user would notice, read from dpkg on the machines: a ring installs only after the ring
before it baked the snapshot; a health check failing in dev halts the rollout and staging and
prod install nothing; a version published in the middle of a cycle reaches staging and prod only
in the next cycle; a ``patchctl run`` killed with SIGKILL in the middle of a bake is continued by
the next run without a reinstall and without restarting the bake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import JobStatus
from reconciler.rollout import Outcome
from reconciler.state import StateStore
from tests.aptlab import Pkg
from tests.fleet import API, BASELINE, BASELINE_YAML, documents, dpkg_installs, window_yaml
from tests.git_servers import free_port
from tests.netfleet import FLEET_SKIP, SECURITY, Fleet, Machine
from tests.test_fleet_e2e import health_check
from tests.test_loop_e2e import PATCHCTL, ROOT, patchctl, reconcile_cli
from tests.test_rollout_loop_gaps import NEWER_LIB
from tests.waiting import tail_of, wait_until

pytestmark = pytest.mark.skipif(bool(FLEET_SKIP), reason=FLEET_SKIP or "-")

ROLLOUT = "web"
RINGS = {"dev": ("m01", "m02"), "staging": ("m03", "m04"), "prod": ("m05", "m06")}
BAKE = {"dev": "2h", "staging": "2h", "prod": "1h"}
# Each ring's window opens every day at midnight for 23 hours; the tests' clock starts at 01:00
# on a fixed day (never today's date) and moves by the bake times.
T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
BEFORE = {"pwtest-lib": "1.0-1", "pwtest-tool": "2.0-1"}
SNAPSHOT = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet(tmp_path_factory.mktemp("rollout-fleet"), 6) as machines:
        yield machines


@pytest.fixture
def machines(fleet: Fleet) -> Iterator[dict[str, Machine]]:
    """The fleet as it started (every test installs), with the repository as it started."""
    fleet.reset()
    yield {m.name: m for m in fleet.machines}
    publish(fleet)


def publish(fleet: Fleet, *extra: Pkg) -> None:
    """The fleet's security suite again with ``extra`` updates (none: as the fleet started)."""
    suite, (_, origin, label, codename) = "stable-security", fleet.repo.suites["stable-security"]
    fleet.repo.add(suite, *SECURITY, *extra, origin=origin, label=label, codename=codename)
    fleet.repo.publish()


def ring_of(name: str) -> str:
    return next(ring for ring, names in RINGS.items() if name in names)


def rollout_yaml(dev_max_failed_percent: int = 0) -> str:
    stages = "".join(
        f"    - {{name: {ring}, patchGroups: [{ring}], bakeTime: {BAKE[ring]}"
        + (f", maxFailedPercent: {dev_max_failed_percent}" if ring == "dev" else "")
        + "}\n"
        for ring in RINGS
    )
    return f"{API}\nkind: Rollout\nmetadata:\n  name: {ROLLOUT}\nspec:\n  stages:\n{stages}"


def ring_yaml(ring: str, task_fields: str = "") -> str:
    """The ring's patch group (the machines labelled ``ring: <ring>``) and its own window."""
    group = (
        f"{API}\nkind: PatchGroup\nmetadata:\n  name: {ring}\nspec:\n"
        f"  selector:\n    matchLabels: {{ring: {ring}}}\n  baselines:\n    DEBIAN: {BASELINE}\n"
    )
    window = window_yaml(
        f"{ring}-nightly",
        "cron(0 0 * * ? *)",
        duration=23,
        cutoff=0,
        group=ring,
        task_fields=task_fields,
    )
    return documents(group, window)


def configure(directory: Path, fleet: Fleet, *, dev_fields: str = "", dev_limit: int = 0) -> Path:
    """A directory source: the baseline, the three rings, the Rollout and six instances."""
    directory.mkdir()
    baseline = BASELINE_YAML.split("---\n")[0]  # without the fleet's own patch group
    rings = [ring_yaml(ring, dev_fields if ring == "dev" else "") for ring in RINGS]
    instances = [fleet.instance_yaml(m, labels={"ring": ring_of(m.name)}) for m in fleet.machines]
    (directory / "fleet.yaml").write_text(
        documents(baseline, *rings, rollout_yaml(dev_limit), *instances)
    )
    return directory


@pytest.fixture
def config(tmp_path: Path, fleet: Fleet) -> Path:
    return configure(tmp_path / "config", fleet)


def reconcile_at(
    config: Path, state: Path, fleet: Fleet, now: datetime, *extra: str
) -> dict[str, Any]:
    """``patchctl reconcile`` as of ``now``: a pass at that moment until nothing more can run."""
    return reconcile_cli(
        str(config), state, "--ssh-dir", str(fleet.directory), "--now", now.isoformat(), *extra
    )


def status(config: Path, state: Path, fleet: Fleet, now: datetime) -> list[tuple[str, str, str]]:
    """``patchctl rollout status`` as of ``now``: each stage's (name, verdict, reason)."""
    shown = patchctl(
        "rollout", "status", ROLLOUT, "--source", str(config), "--state", str(state),
        "--ssh-dir", str(fleet.directory), "--now", now.isoformat(), "-o", "json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    (rollout,) = json.loads(shown.stdout)
    return [(s["stage"], s["verdict"], s["reason"]) for s in rollout["stages"]]


def on(machines: dict[str, Machine], versions: dict[str, str]) -> list[str]:
    """The machines whose dpkg has exactly these versions of these packages, sorted."""
    return sorted(
        name
        for name, machine in machines.items()
        if {p: machine.versions().get(p) for p in versions} == versions
    )


def installs(machine: Machine, versions: dict[str, str]) -> list[int]:
    """How many times dpkg's log shows each of ``versions`` installed on ``machine``."""
    logged = dpkg_installs(machine.root)
    return [logged[(package, version)] for package, version in versions.items()]


def test_rings_install_the_frozen_snapshot_one_after_another_and_a_later_release_waits_for_the_next_cycle(
    fleet: Fleet, machines: dict[str, Machine], config: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    fresh = ("--stale-after", "0.5")  # every step below rescans: each sees the repository now
    dev, staging, prod = (list(names) for names in RINGS.values())

    reconcile_at(config, state, fleet, T0, *fresh)
    assert on(machines, SNAPSHOT) == dev
    assert on(machines, BEFORE) == staging + prod
    with StateStore(state) as store:
        record = store.rollout_record(ROLLOUT)
        assert record.cycle == 1 and record.snapshot is not None
        assert sorted(record.snapshot.versions[BASELINE]) == [
            "pwtest-lib=1.0-2",
            "pwtest-tool=2.1-1",
        ]
        frozen = record.snapshot.digest

    publish(fleet, NEWER_LIB)  # released in the middle of the cycle: approved, not frozen
    reconcile_at(config, state, fleet, T0 + timedelta(hours=1, minutes=50), *fresh)
    assert on(machines, BEFORE) == staging + prod  # dev baked 1 h of 2 h: staging waits
    with StateStore(state) as store:
        outcomes = {n: r.outcome for n, r in store.rollout_record(ROLLOUT).results.items()}
    assert outcomes == dict.fromkeys(dev, Outcome.INSTALLED)

    reconcile_at(config, state, fleet, T0 + timedelta(hours=2, minutes=10), *fresh)
    assert on(machines, SNAPSHOT) == dev + staging  # the frozen 1.0-2, not the newer 1.0-3
    assert on(machines, BEFORE) == prod

    reconcile_at(config, state, fleet, T0 + timedelta(hours=4, minutes=20), *fresh)
    assert on(machines, SNAPSHOT) == dev + staging + prod
    for name in dev + staging + prod:  # each ring installed the snapshot once, as dpkg logged
        assert installs(machines[name], SNAPSHOT) == [1, 1], name

    # The next day's dev window starts cycle 2 with the newer version; it moves ring by ring.
    day2 = T0 + timedelta(days=1)
    newer = {"pwtest-lib": "1.0-3", "pwtest-tool": "2.1-1"}
    reconcile_at(config, state, fleet, day2, *fresh)
    assert on(machines, newer) == dev
    assert on(machines, SNAPSHOT) == staging + prod
    reconcile_at(config, state, fleet, day2 + timedelta(hours=2, minutes=10), *fresh)
    reconcile_at(config, state, fleet, day2 + timedelta(hours=4, minutes=20), *fresh)
    assert on(machines, newer) == dev + staging + prod
    with StateStore(state) as store:
        record = store.rollout_record(ROLLOUT)
        assert record.cycle == 2 and record.snapshot is not None
        assert record.snapshot.digest != frozen
        assert "pwtest-lib=1.0-3" in record.snapshot.versions[BASELINE]


def test_a_health_check_failing_on_one_dev_machine_halts_the_rollout_before_staging_and_prod(
    fleet: Fleet, machines: dict[str, Machine], tmp_path: Path
) -> None:
    # Healthy everywhere but m02 (each machine answers with its own hostname): 1 of 2 dev
    # machines is 50%, beyond dev's limit of 40%.
    check = [
        "/bin/sh",
        "-c",
        'case "$(hostname)" in m02) echo "app down on m02" >&2; exit 1;; esac',
    ]
    config = configure(tmp_path / "config", fleet, dev_fields=health_check(check), dev_limit=40)
    state = tmp_path / "state.db"

    reconcile_at(config, state, fleet, T0)
    with StateStore(state) as store:
        jobs = {j.instance: j for j in store.jobs() if j.operation == "Install"}
    assert sorted(jobs) == ["m01", "m02"]
    assert (jobs["m01"].status, jobs["m02"].status) == (JobStatus.SUCCEEDED, JobStatus.FAILED)

    # Long after dev's bake time: the rollout halted, staging and prod install nothing.
    for hours in (3, 5):
        reconcile_at(config, state, fleet, T0 + timedelta(hours=hours))
    for name in (*RINGS["staging"], *RINGS["prod"]):
        assert machines[name].versions()["pwtest-lib"] == "1.0-1", name
        assert installs(machines[name], SNAPSHOT) == [0, 0], name
    with StateStore(state) as store:
        record = store.rollout_record(ROLLOUT)
        assert {j.instance for j in store.jobs() if j.operation == "Install"} == {"m01", "m02"}
    halted = "halted: 1 of 2 dev machines failed health checks, limit 40%"
    assert record.halted == halted
    assert status(config, state, fleet, T0 + timedelta(hours=5)) == [
        (ring, "Halted", halted) for ring in RINGS
    ]


def test_a_run_killed_in_the_middle_of_a_bake_continues_it_without_a_reinstall(
    fleet: Fleet, machines: dict[str, Machine], config: Path, tmp_path: Path
) -> None:
    state, log = tmp_path / "state.db", tmp_path / "run.log"
    common = ["--source", str(config), "--state", str(state), "--ssh-dir", str(fleet.directory)]
    dev, listen = RINGS["dev"], ("--listen", f"127.0.0.1:{free_port()}")
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, "run", *common, "--now", T0.isoformat(), "--interval", "1", *listen],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:

        def baking() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            with StateStore(state) as store:
                return sorted(store.rollout_record(ROLLOUT).results) == list(dev)

        wait_until("dev's machines on the snapshot", baking, timeout=180, detail=tail_of(log))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    with StateStore(state) as store:
        finished = {n: r.finished_at for n, r in store.rollout_record(ROLLOUT).results.items()}

    # An hour into dev's bake of two: the restart neither reinstalls dev nor promotes, and the
    # operator sees the bake where it was.
    restart = max(finished.values()) + timedelta(hours=1, minutes=5)
    reconcile_at(config, state, fleet, restart)
    assert on(machines, SNAPSHOT) == list(dev)
    dev_status = status(config, state, fleet, restart)[0]
    assert dev_status == ("dev", "Baking", "stage dev baked 1 h of 2 h")
    # Two hours after dev's installs finished (not after the restart): staging installs.
    reconcile_at(config, state, fleet, max(finished.values()) + timedelta(hours=2, minutes=1))
    assert on(machines, SNAPSHOT) == [*dev, *RINGS["staging"]]
    for name in dev:
        assert installs(machines[name], SNAPSHOT) == [1, 1], name
    with StateStore(state) as store:
        record = store.rollout_record(ROLLOUT)
        assert record.cycle == 1
        assert {n: record.results[n].finished_at for n in dev} == finished
        assert not [j for j in store.jobs() if j.status == JobStatus.ABANDONED]
