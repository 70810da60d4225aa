"""Benchmark: the reconcile loop over SSH on the multi-host test fleet, against the ideal and
against Ansible doing the same work on the same machines in the same run (issue 14 item 7).

The fleet (tests/netfleet.py, docs/test-fleet.md): ``--machines`` Debian 12 machines, each with its
own network namespace, sshd and root, logged into as root with a key; each has ``--packages``
packages installed with a newer version waiting in the security suite. Measured, in this order:

1. **Patchwarden scan**: one reconcile pass (no window open) scans every machine over SSH (the
   agent is copied once per machine, refreshes apt's lists and reports the inventory).
2. **Ansible scan**: ``ansible all -m package_facts``, forks = the same concurrency.
3. **Patchwarden install**: a window open now, one Install task with ``maxConcurrency`` = the
   concurrency; the pass installs every approved update (the agent's install plus its rescan).
4. The machines are reset to their starting packages (not timed).
5. **Ansible install**: ``ansible all -m ansible.builtin.apt -a 'upgrade=dist update_cache=yes'``.

Overhead = wall ÷ (Σ job time ÷ concurrency), job times measured by the store from claim to
finish (1.0: the slots never idle). Targets: overhead ≤ 1.15; Patchwarden's wall time ≤ half of Ansible's.
Both sides end with every machine at the same package versions (checked). Results go to
docs/benchmarks.md. Needs root (the fleet does).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402
from bench.fleet_convergence import FLEET_YAML, WINDOW_YAML, _Quiet  # noqa: E402
from reconciler.api.enums import JobStatus  # noqa: E402
from reconciler.api.resources import ManagedInstance, SshConnection  # noqa: E402
from reconciler.dispatch import InstallRequest, SshPool, Transport, transport_for  # noqa: E402
from reconciler.loop import Reconciler  # noqa: E402
from reconciler.sources import DirectorySource  # noqa: E402
from reconciler.state import StateStore  # noqa: E402
from reconciler.state.records import JobRecord  # noqa: E402
from tests.aptlab import Pkg  # noqa: E402
from tests.netfleet import FLEET_SKIP, Fleet, Machine, ansible_environment, default_repo  # noqa: E402

OVERHEAD_TARGET = 1.15
ANSIBLE_TARGET = 0.5
CONCURRENCY = 10
"""fleet_convergence's window: maxConcurrency 10 (and so 10 workers, 10 Ansible forks)."""


@dataclass(frozen=True)
class Timed:
    """A measured step: wall time and the controller's CPU time (ours: this process; Ansible's:
    its process tree), both in seconds."""

    wall: float
    cpu: float


@dataclass(frozen=True)
class Pass(Timed):
    """One reconcile pass, with the store's job times (claim to finish)."""

    busy: float
    jobs: int
    slots: int
    """How many jobs could run at once: the concurrency, or fewer machines."""
    plans: int
    planning: float
    """Seconds spent planning inside the pass: the dispatcher re-plans after each completion
    (a slot freed by a succeeding install is refilled from the plan's queue without waiting)."""

    @property
    def overhead(self) -> float:
        return self.wall / (self.busy / self.slots)


def packages(count: int) -> tuple[list[Pkg], list[Pkg]]:
    old = [Pkg(f"pwtest-bench{i:02d}", "1.0-1", section="libs") for i in range(count)]
    new = [Pkg(f"pwtest-bench{i:02d}", "1.0-2", section="libs") for i in range(count)]
    return old, new


def configuration(directory: Path, fleet: Fleet) -> Path:
    directory.mkdir()
    (directory / "fleet.yaml").write_text(FLEET_YAML)
    (directory / "instances.yaml").write_text(
        "---\n".join(fleet.instance_yaml(m, labels={"app": "bench"}) for m in fleet.machines)
    )
    return directory


def reconcile(config: Path, store: StateStore, fleet: Fleet, pool: SshPool) -> Pass:
    def transport(instance: ManagedInstance) -> Transport:
        return transport_for(
            instance.spec.connection,
            pool=pool,
            ssh_dir=fleet.directory,
            name=instance.metadata.name,
        )

    before = {j.id for j in store.jobs()}
    reconciler = Reconciler(
        DirectorySource(config), store, transport, workers=CONCURRENCY, log=_Quiet()
    )
    plans = _time_plans(reconciler)
    cpu, start = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    summary = reconciler.reconcile(until_idle=True)
    wall, cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_SELF) - cpu
    jobs = [j for j in store.jobs() if j.id not in before]
    failed = [j for j in jobs if j.status != JobStatus.SUCCEEDED]
    assert jobs and not failed, (summary, [_why(j) for j in failed])
    slots = min(CONCURRENCY, len(fleet.machines))
    busy = sum(_seconds(j) for j in jobs)
    return Pass(wall, cpu, busy, len(jobs), slots, len(plans), sum(plans))


def _time_plans(reconciler: Reconciler) -> list[float]:
    """The durations of the plans the reconciler's passes make, as they happen."""
    durations: list[float] = []
    observation = reconciler.parts.observation
    plan = observation.plan

    def timed() -> Any:
        start = time.perf_counter()
        try:
            return plan()
        finally:
            durations.append(time.perf_counter() - start)

    observation.plan = timed  # type: ignore[method-assign]
    return durations


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _seconds(job: JobRecord) -> float:
    assert job.finished_at is not None
    return (job.finished_at - job.created_at).total_seconds()


def _why(job: JobRecord) -> str:
    return f"{job.instance} {job.operation} {job.status}: {job.result}"


def ansible(inventory: Path, work: Path, module: str, args: str = "") -> Timed:
    argv = [str(Path(sys.executable).with_name("ansible")), "all", "-i", str(inventory)]
    argv += ["-f", str(CONCURRENCY), "-m", module, *(["-a", args] if args else []), "-o"]
    env = {**os.environ, **ansible_environment(work)}
    cpu, start = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_CHILDREN) - cpu
    if done.returncode != 0:
        raise RuntimeError(f"ansible {module} failed: {done.stdout[-3000:]}{done.stderr[-2000:]}")
    return Timed(wall, cpu)


def _ansible_version() -> str:
    argv = [str(Path(sys.executable).with_name("ansible")), "--version"]
    first = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return first.replace("ansible [core ", "ansible-core ").rstrip("]")


def converged(fleet: Fleet, new: list[Pkg]) -> bool:
    want = {p.name: p.version for p in new}
    return all(want.items() <= m.versions().items() for m in fleet.machines)


@dataclass(frozen=True)
class Round:
    scan: Pass
    install: Pass
    ansible_scan: Timed
    ansible_install: Timed


def patchwarden(base: Path, fleet: Fleet, new: list[Pkg]) -> tuple[Pass, Pass]:
    """A scan pass, then an install pass, from a fresh store (the machines as the fleet started)."""
    config = configuration(base, fleet)
    with StateStore(base / "state.db") as store, SshPool() as pool:
        scan = reconcile(config, store, fleet, pool)
        (config / "window.yaml").write_text(WINDOW_YAML)
        install = reconcile(config, store, fleet, pool)
    assert converged(fleet, new), "Patchwarden left machines behind"
    return scan, install


def ansible_round(base: Path, fleet: Fleet, new: list[Pkg]) -> tuple[Timed, Timed]:
    inventory = fleet.ansible_inventory(base / "hosts.ini")
    scan = ansible(inventory, base, "ansible.builtin.package_facts")
    install = ansible(inventory, base, "ansible.builtin.apt", "upgrade=dist update_cache=yes")
    assert converged(fleet, new), "Ansible left machines behind"
    return scan, install


def one_round(base: Path, fleet: Fleet, new: list[Pkg], ansible_first: bool) -> Round:
    """Both tools on the same machines, each from the fleet's starting packages (reset first)."""
    base.mkdir()

    def ours() -> tuple[Pass, Pass]:
        fleet.reset()
        return patchwarden(base / "config", fleet, new)

    def theirs() -> tuple[Timed, Timed]:
        fleet.reset()
        return ansible_round(base, fleet, new)

    if ansible_first:
        their, our = theirs(), ours()
    else:
        our, their = ours(), theirs()
    return Round(*our, *their)


@dataclass(frozen=True)
class Alone:
    """One machine's install with the rest of the fleet idle, three ways (seconds, medians)."""

    agent: float
    """The loop's Install job: the agent's install, then its rescan."""
    apt: float
    """``apt-get update && apt-get dist-upgrade -y`` over one SSH command."""
    ansible: float
    """``ansible m01 -m ansible.builtin.apt -a 'upgrade=dist update_cache=yes'``."""


def alone(base: Path, fleet: Fleet, new: list[Pkg], repeats: int = 3) -> Alone:
    """Where an install's time goes when the machine has the host to itself (medians)."""
    machine = fleet.machines[0]
    runs = [
        (
            _agent_alone(fleet, machine, new),
            _apt_alone(machine),
            _ansible_alone(base, fleet, machine),
        )
        for _ in range(repeats)
    ]
    assert {p.name: p.version for p in new}.items() <= machine.versions().items()
    agent, apt, their = (statistics.median(column) for column in zip(*runs, strict=True))
    return Alone(agent, apt, their)


def _agent_alone(fleet: Fleet, machine: Machine, new: list[Pkg]) -> float:
    machine.reset()
    pins = tuple(f"{p.name}={p.version}" for p in new)
    connection = SshConnection(
        type="ssh",
        host=machine.address,
        identityFile=str(fleet.key_file),
        knownHostsFile=str(fleet.known_hosts_file),
    )
    with SshPool() as pool:
        remote = transport_for(connection, pool=pool, ssh_dir=fleet.directory)
        remote.scan()  # as the scan pass before it: agent copied, lists refreshed, connection open
        start = time.perf_counter()
        remote.install(InstallRequest(pins, reboot_option="NoReboot"))
        remote.scan(refresh=False)
        return time.perf_counter() - start


def _apt_alone(machine: Machine) -> float:
    machine.reset()
    start = time.perf_counter()
    machine.ssh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get dist-upgrade -y -qq")
    return time.perf_counter() - start


def _ansible_alone(base: Path, fleet: Fleet, machine: Machine) -> float:
    machine.reset()
    inventory = fleet.ansible_inventory(base / "alone.ini", {"alone": [machine]})
    return ansible(inventory, base, "ansible.builtin.apt", "upgrade=dist update_cache=yes").wall


def measure(base: Path, machines: int, count: int, rounds: int) -> tuple[list[Round], Alone]:
    old, new = packages(count)
    repo = default_repo(base / "repo", stable=old, security=new)
    with Fleet(base / "fleet", machines, repo=repo, installed=old) as fleet:
        runs = [one_round(base / f"round-{i}", fleet, new, bool(i % 2)) for i in range(rounds)]
        return runs, alone(base, fleet, new)


def median(rounds: list[Round]) -> Round:
    """Each figure's median over the rounds (a round's figures are not kept together)."""

    def mid(pick: Callable[[Round], Any]) -> Any:
        values = sorted((pick(r) for r in rounds), key=lambda t: t.wall)
        return values[len(values) // 2]

    return Round(
        mid(lambda r: r.scan),
        mid(lambda r: r.install),
        mid(lambda r: r.ansible_scan),
        mid(lambda r: r.ansible_install),
    )


def verdict(figures: Round) -> tuple[str, list[str]]:
    checks = [
        figures.scan.overhead <= OVERHEAD_TARGET,
        figures.install.overhead <= OVERHEAD_TARGET,
        figures.scan.wall <= ANSIBLE_TARGET * figures.ansible_scan.wall,
        figures.install.wall <= ANSIBLE_TARGET * figures.ansible_install.wall,
    ]
    return ("PASS" if all(checks) else "FAIL"), ["met" if c else "**not met**" for c in checks]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=20)
    parser.add_argument("--packages", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if FLEET_SKIP:
        print(f"ssh fleet: skipped: {FLEET_SKIP}")
        return 0
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rounds, single = measure(Path(tmp), args.machines, args.packages, args.rounds)
    figures = median(rounds)
    result, checks = verdict(figures)
    # Other work on the host slows every machine: say how busy it was, at the start and the end.
    report(
        args, figures, result, checks, f"{load:.1f}, {os.getloadavg()[0]:.1f} at the end", single
    )
    return 0


def report(
    args: argparse.Namespace,
    figures: Round,
    result: str,
    checks: list[str],
    load: str,
    single: Alone,
) -> None:
    scan, install = figures.scan, figures.install
    a_scan, a_install = figures.ansible_scan, figures.ansible_install
    print(
        f"ssh fleet: {args.machines} machines; scan {scan.wall:.1f} s (overhead {scan.overhead:.2f}, "
        f"ansible {a_scan.wall:.1f} s, ratio {scan.wall / a_scan.wall:.2f}); "
        f"install {install.wall:.1f} s (overhead {install.overhead:.2f}, ansible "
        f"{a_install.wall:.1f} s, ratio {install.wall / a_install.wall:.2f}) {result}; alone: "
        f"agent {single.agent:.2f} s, apt {single.apt:.2f} s, ansible {single.ansible:.2f} s; "
        f"planning {install.planning:.2f} s in {install.plans} plans"
    )
    record(
        "ssh fleet",
        f"{args.machines} machines of the multi-host test fleet (docs/test-fleet.md: own netns, sshd and "
        f"Debian 12 root each, root login by key), {args.packages} packages with a security update on "
        f"each; concurrency {CONCURRENCY} (workers and maxConcurrency; Ansible forks); median of "
        f"{args.rounds} rounds, each tool starting from reset machines, the first tool alternating. "
        f"Ansible: {_ansible_version()} with its defaults (SSH ControlPersist on, pipelining off). "
        "Scan: one pass with no window (agent copied, apt lists refreshed, inventory) against `ansible "
        "all -m package_facts`. Install: a window open now (agent install + rescan per machine) "
        "against `ansible all -m ansible.builtin.apt -a 'upgrade=dist update_cache=yes'`. Overhead = "
        "wall ÷ (Σ job time ÷ concurrency), job times from the store; CPU = the controller's "
        "(this process; Ansible's process tree). Targets: overhead ≤ 1.15, wall ≤ half of Ansible's. "
        f"Where the time goes: one machine's install with the rest idle takes {single.agent:.2f} s as "
        f"the loop's job (agent install + rescan), {single.apt:.2f} s as `apt-get update && apt-get "
        f"dist-upgrade -y` over ssh and {single.ansible:.2f} s with Ansible's apt module. The "
        "dispatcher re-plans after each completion; a slot freed by a succeeding install takes "
        "the install the plan queued behind it at once, without waiting for that plan: planning took "
        f"{figures.scan.planning:.2f} s ({figures.scan.plans} plans) of the scan pass, "
        f"{install.planning:.2f} s ({install.plans} plans) of the install pass.",
        [
            "date",
            "scan (s)",
            "overhead",
            "CPU (s)",
            "Ansible scan (s)",
            "CPU (s)",
            "ratio",
            "install (s)",
            "overhead",
            "CPU (s)",
            "Ansible install (s)",
            "CPU (s)",
            "ratio",
            "targets",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            f"{scan.wall:.1f}",
            f"{scan.overhead:.2f}",
            f"{scan.cpu:.1f}",
            f"{a_scan.wall:.1f}",
            f"{a_scan.cpu:.1f}",
            f"{scan.wall / a_scan.wall:.2f}",
            f"{install.wall:.1f}",
            f"{install.overhead:.2f}",
            f"{install.cpu:.1f}",
            f"{a_install.wall:.1f}",
            f"{a_install.cpu:.1f}",
            f"{install.wall / a_install.wall:.2f}",
            " / ".join(checks),
            result,
            f"{os.cpu_count()} cores (load {load}), Python {platform.python_version()}",
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
