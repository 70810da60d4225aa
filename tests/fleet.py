"""Fleets for end-to-end tests of the reconcile loop: Debian systems rooted in directories (real
apt and dpkg, tests/aptlab.py), the resources that manage them committed to a real Git repository
(tests/git_servers.py), and what a user looks at afterwards (dpkg's status and log, the store).

Nothing here decides anything for the tests: it builds inputs and reads outputs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.api.resources import ManagedInstance
from reconciler.dispatch.base import BaselineSource, InstallRequest, Transport
from tests.aptlab import Pkg, Repo, dpkg_state, make_root
from tests.factories import NOW

API = "apiVersion: patchwarden.io/v1alpha1"
GROUP = "fleet"
_SESSION = time.monotonic()


def at_now() -> tuple[str, str]:
    """patchctl's ``--now`` for a run of the loop: NOW (open_window_yaml's windows are open
    then) plus the time this test session has run. Its clock runs on at the wall clock's pace,
    so a later run (a restart after a kill, a second pass) never starts behind what an earlier
    one recorded; the host's date is never read."""
    return ("--now", (NOW + timedelta(seconds=time.monotonic() - _SESSION)).isoformat())


BASELINE = "debian-security"

# The security baseline every test fleet uses: every priority, security updates only (the
# implicit rule of SSM's Debian baselines), so non-security updates must stay where they are.
BASELINE_YAML = f"""\
{API}
kind: PatchBaseline
metadata:
  name: {BASELINE}
spec:
  operatingSystem: DEBIAN
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required, Important, Standard, Optional, Extra]
      complianceLevel: HIGH
---
{API}
kind: PatchGroup
metadata:
  name: {GROUP}
spec:
  selector:
    matchLabels: {{fleet: e2e}}
  baselines:
    DEBIAN: {BASELINE}
"""


def window_yaml(
    name: str,
    schedule: str,
    *,
    duration: int = 4,
    cutoff: int = 1,
    max_concurrency: str = "100%",
    max_errors: str = "100%",
    cutoff_behavior: str = "CONTINUE_TASK",
    reboot_option: str = "RebootIfNeeded",
    task_fields: str = "",
    group: str = GROUP,
) -> str:
    """A window with one Install task targeting the patch group ``group`` (the fleet's). The
    loop never reboots a local root, and RebootIfNeeded reboots only a machine that needs it, so
    the fleet converges; with NoReboot its patches stay INSTALLED_PENDING_REBOOT (SSM's rule).
    ``task_fields`` are further YAML lines of the task."""
    return f"""\
{API}
kind: MaintenanceWindow
metadata:
  name: {name}
spec:
  schedule: {schedule}
  duration: {duration}
  cutoff: {cutoff}
  targets:
    patchGroups: [{group}]
  tasks:
    - name: install-security
      operation: Install
      rebootOption: {reboot_option}
      maxConcurrency: "{max_concurrency}"
      maxErrors: "{max_errors}"
      cutoffBehavior: {cutoff_behavior}
{task_fields}"""


def open_window_yaml(name: str = "open-now", *, now: datetime = NOW, **options: Any) -> str:
    """A window that opened an hour before ``now`` and stays open a day. The loop under test
    runs on a clock that starts at ``now`` (``at_now()`` for patchctl, ``clock_from(NOW)``
    in-process), never on today's date, so its opening id does not change during a test."""
    start = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    options.setdefault("duration", 24)
    options.setdefault("cutoff", 0)
    return window_yaml(name, f"at({start})", **options)


def local_instance_yaml(name: str, root: Path) -> str:
    return f"""\
{API}
kind: ManagedInstance
metadata:
  name: {name}
  labels: {{fleet: e2e}}
spec:
  connection: {{type: local, root: {root}}}
"""


def ssh_instance_yaml(
    name: str, root: Path, *, port: int, identity_file: Path, known_hosts_file: Path
) -> str:
    return f"""\
{API}
kind: ManagedInstance
metadata:
  name: {name}
  labels: {{fleet: e2e}}
spec:
  connection:
    type: ssh
    host: 127.0.0.1
    port: {port}
    user: root
    identityFile: {identity_file}
    knownHostsFile: {known_hosts_file}
    root: {root}
"""


def documents(*texts: str) -> str:
    return "---\n".join(texts)


# --- machines --------------------------------------------------------------------------------


def make_fleet(
    directory: Path, repo: Repo, names: Sequence[str], installed: Sequence[Pkg]
) -> dict[str, Path]:
    """One fresh Debian root per name under ``directory``, with ``installed`` seeded."""
    return {
        name: make_root(
            directory / name, repo.uri, ["stable", "stable-security"], installed=list(installed)
        )
        for name in names
    }


def versions(root: Path) -> dict[str, str]:
    """name -> version of what dpkg has fully installed in ``root``."""

    return {
        name: version
        for name, (version, status) in dpkg_state(root).items()
        if status == "install ok installed"
    }


def dpkg_installs(root: Path) -> Counter[tuple[str, str]]:
    """(package, version) -> how many times dpkg logged it reaching "installed" in ``root``."""
    log = root / "var/log/dpkg.log"
    counts: Counter[tuple[str, str]] = Counter()
    if not log.exists():
        return counts
    for line in log.read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[2:4] == ["status", "installed"]:
            counts[(fields[4].split(":")[0], fields[5])] += 1
    return counts


# --- time and transports ---------------------------------------------------------------------


@dataclass
class ManualClock:
    """A clock the test moves: the Reconciler calls it, a job callback may advance it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance_to(self, moment: datetime) -> None:
        self.now = moment


@dataclass
class Spy:
    """Wraps the transports a Reconciler uses and records what they were asked to do, and how
    many installs ran at the same time (the concurrency cap as the machines saw it)."""

    inner: Callable[[ManagedInstance], Transport]
    installs: list[str] = field(default_factory=list)
    peak: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, instance: ManagedInstance) -> Transport:
        return _SpyTransport(self.inner(instance), self, instance.metadata.name)

    def enter(self, name: str) -> None:
        with self._lock:
            self.installs.append(name)
            self._active += 1
            self.peak = max(self.peak, self._active)

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


@dataclass
class Wrapped:
    """A machine's real transport with a test's behaviour around it: a subclass overrides what
    it changes, everything else goes to ``inner`` unchanged."""

    inner: Transport

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        return self.inner.scan(instance_id=instance_id, refresh=refresh, sources=sources)

    def install(self, request: InstallRequest) -> InstallResult:
        return self.inner.install(request)


@dataclass
class _SpyTransport(Wrapped):
    spy: Spy
    name: str

    def install(self, request: InstallRequest) -> InstallResult:
        self.spy.enter(self.name)
        try:
            return self.inner.install(request)
        finally:
            self.spy.leave()
