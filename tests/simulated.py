"""A simulated fleet for benchmarks at a scale no test machine can host (bench/fleet_scale.py):
transports that answer like the agent after a latency drawn from a distribution, and fail at a
given rate, with no network and no package manager. Everything random comes from one seeded RNG
per machine, so a run is the same fleet with the same latencies and failures every time.

It is a test double, as tests.fleet's ``Wrapped`` is: the loop, the planner and the state store
under it are the real ones; only the machine's side is simulated. Each machine has ``patches``
approved updates missing until an install that succeeds; a failed install is the agent's error
(``AgentFailed``), as a refused SSH connection or a broken dpkg would be.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.api.hooks import HookCommand
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.dispatch.base import AgentFailed, InstallRequest
from tests.factories import inventory


@dataclass(frozen=True)
class Latency:
    """Seconds a call takes: log-normal around ``median`` (``spread`` is sigma), never above
    ``cap``: most machines answer near the median, a few much later, as over a real network."""

    median: float
    spread: float = 0.5
    cap: float = 30.0

    def draw(self, rng: random.Random) -> float:
        return float(min(self.cap, rng.lognormvariate(0.0, self.spread) * self.median))


@dataclass(frozen=True)
class Profile:
    """The fleet's behaviour: scan and install latencies, and the share of installs that fail."""

    scan: Latency = Latency(0.05)
    install: Latency = Latency(0.2)
    install_failure_rate: float = 0.01
    patches: int = 3


@dataclass
class SimulatedMachine:
    """One machine: missing updates until an install succeeds. Thread-safe (the loop's workers
    call a machine from any thread, never two at once, but the bench reads it meanwhile)."""

    name: str
    profile: Profile
    seed: int
    sleep: Callable[[float], None] = time.sleep
    patched: bool = False
    calls: int = 0
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:{self.name}")

    def scan(self, **_: object) -> Inventory:
        # The Transport's keywords (instance_id, refresh, sources) change nothing simulated.
        self.sleep(self._draw(self.profile.scan))
        return self._inventory("Scan")

    def install(self, request: InstallRequest) -> InstallResult:
        self.sleep(self._draw(self.profile.install))
        with self._lock:
            failed = self._rng.random() < self.profile.install_failure_rate
        if failed:
            raise AgentFailed("install-failed", f"{self.name}: simulated dpkg failure")
        with self._lock:
            self.patched = True
        outcomes = [_outcome(pin) for pin in request.pins]
        return InstallResult.model_validate({"changed": bool(outcomes), "patches": outcomes})

    def run_stage(self, stage: str, commands: Sequence[HookCommand]) -> Any:
        raise AgentFailed("not-simulated", f"{self.name}: hooks are not simulated ({stage})")

    def _draw(self, latency: Latency) -> float:
        with self._lock:
            self.calls += 1
            return latency.draw(self._rng)

    def _inventory(self, operation: str) -> Inventory:
        installed = [_package(i, "1.0-2" if self.patched else "1.0-1") for i in range(self.patches)]
        updates = [
            {**_package(i, "1.0-2"), "installedVersion": "1.0-1"}
            for i in range(0 if self.patched else self.patches)
        ]
        return inventory("DEBIAN", installed, updates, operation=operation)

    @property
    def patches(self) -> int:
        return self.profile.patches


def _package(index: int, version: str) -> dict[str, Any]:
    # Security: a DEBIAN baseline approves only the security pocket without enableNonSecurity.
    return {
        "name": f"sim-lib{index}",
        "version": version,
        "priority": "important",
        "security": True,
    }


def _outcome(pin: str) -> dict[str, str]:
    name, _, version = pin.partition("=")
    return {"name": name.partition(":")[0], "version": version, "result": "INSTALLED"}


@dataclass
class SimulatedFleet:
    """``count`` machines named ``sim-00000``…, one seed for all; ``transport`` is the loop's
    transport factory (by instance)."""

    count: int
    profile: Profile = Profile()
    seed: int = 16
    machines: dict[str, SimulatedMachine] = field(init=False)

    def __post_init__(self) -> None:
        self.machines = {
            name: SimulatedMachine(name, self.profile, self.seed) for name in self.names()
        }

    def names(self) -> list[str]:
        return [f"sim-{i:05d}" for i in range(self.count)]

    def transport(self, instance: Any) -> SimulatedMachine:
        return self.machines[instance.metadata.name]

    def patched(self) -> int:
        return sum(m.patched for m in self.machines.values())
