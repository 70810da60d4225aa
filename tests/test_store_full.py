"""A full disk under the state store (issue 12, item 6), and a PostgreSQL state database lost
mid-pass (issue 16, item 5: its server stopped, every session cut, as a partition cuts them):
the service keeps running, says so on /healthz, /metrics and in one log line, retries, and once
space or the database returns the job left ``running`` is settled and its machine scanned again.

Real parts throughout: the store on a real tmpfs filled to its last page by a ballast file (SQLite
then fails with SQLITE_FULL, "database or disk is full", as on a full disk), a real Debian root
scanned by the real agent through the local transport, the service's real HTTP endpoints. The
service runs on the test's main thread, as ``patchctl run`` does (it installs signal handlers);
the scenario runs beside it and is woken by conditions, never by sleeps: the test wakes the
service's next pass as a source's watch would, rather than waiting for its back-off.
"""

from __future__ import annotations

import signal
import threading
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.api.inventory import Inventory
from reconciler.dispatch import transport_for
from reconciler.dispatch.base import BaselineSource
from reconciler.loop import Reconciler, Service
from reconciler.loop.service import STORE_RETRY_FIRST, store_backoff
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.sources import DirectorySource
from reconciler.state import StateBackend, StateStore
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.filesystems import fill, tmpfs
from tests.fleet import BASELINE_YAML, Wrapped, documents, local_instance_yaml, make_fleet
from tests.git_servers import free_port
from tests.postgres import Postgres, accepting
from tests.waiting import wait_until

FULL = "database or disk is full"


@dataclass
class RecordingLog:
    """The loop's logger, keeping each line as (level, event, fields)."""

    lines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def bind(self, **_: Any) -> RecordingLog:
        return self

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.lines.append((level, event, fields))


@dataclass
class BreaksTheStore(Wrapped):
    """A machine whose first scan ends as the state store breaks (``breaks``: its disk fills
    up as another program's log grows, its database goes away): the scan's result cannot be
    recorded."""

    breaks: Callable[[], None]
    broke: list[bool]

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        inventory = self.inner.scan(instance_id=instance_id, refresh=refresh, sources=sources)
        if not self.broke:
            self.broke.append(True)
            self.breaks()
        return inventory


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def desired(tmp_path: Path, apt_repo: Repo) -> DirectorySource:
    """One Debian root, web-1, and the directory source that manages it."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], INSTALLED[:3])
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "fleet.yaml").write_text(
        documents(BASELINE_YAML, local_instance_yaml("web-1", roots["web-1"]))
    )
    return DirectorySource(tmp_path / "desired")


@dataclass(frozen=True)
class Breaking:
    """A service managing web-1 whose first scan ends as its state store breaks."""

    service: Service
    base: str
    """The service's HTTP endpoints."""
    log: RecordingLog
    broke: list[bool]
    """Not empty once the store was broken."""


def breaking_service(
    tmp_path: Path, apt_repo: Repo, store: StateBackend, breaks: Callable[[], None]
) -> Breaking:
    broke: list[bool] = []
    metrics, log = LoopMetrics(store), RecordingLog()
    reconciler = Reconciler(
        desired(tmp_path, apt_repo),
        store,
        lambda instance: BreaksTheStore(
            transport_for(instance.spec.connection, trust_root_scripts=True), breaks, broke
        ),
        observers=[metrics],
        log=log,
    )
    port = free_port()
    service = Service(reconciler, metrics, interval=3600, host="127.0.0.1", port=port)
    return Breaking(service, f"http://127.0.0.1:{port}", log, broke)


def serve(service: Service, scenario: Callable[[], None]) -> None:
    """Run ``service`` on this thread, as ``patchctl run`` does, and ``scenario`` beside it once
    the service is ready; stop the service when the scenario ends, and re-raise its failure."""
    failure: list[str] = []

    def drive() -> None:
        try:
            scenario()
        except BaseException:
            failure.append(traceback.format_exc())
        finally:
            service.stop()

    ready = threading.Event()
    driver = threading.Thread(target=lambda: (ready.wait(30), drive()), daemon=True)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    driver.start()
    try:
        service.run(ready)  # returns only when the scenario stops it
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    driver.join(60)
    assert not failure, failure[0]


def test_the_back_off_doubles_up_to_the_interval() -> None:
    assert [store_backoff(n, 60) for n in (1, 2, 3, 7, 8, 1000)] == [
        STORE_RETRY_FIRST,
        2 * STORE_RETRY_FIRST,
        4 * STORE_RETRY_FIRST,
        60,
        60,
        60,
    ]


@needs_apt
def test_a_full_disk_neither_stops_the_service_nor_leaves_a_job_running(
    tmp_path: Path, apt_repo: Repo
) -> None:
    with tmpfs(tmp_path / "small", "2m") as mount, StateStore(mount / "state.db") as store:
        ballast: list[Path] = []
        broken = breaking_service(tmp_path, apt_repo, store, lambda: ballast.append(fill(mount)))
        service, base, log = broken.service, broken.base, broken.log
        seen: dict[str, Any] = {}

        def scenario() -> None:
            # The first pass claims a Scan of web-1; the disk fills while it runs.
            def full() -> str | None:
                status, body = get(f"{base}/healthz")
                return body if status == 503 and FULL in body else None

            seen["health"] = wait_until("/healthz to say the store cannot be written", full)
            seen["metrics"] = get(f"{base}/metrics")[1]
            with StateStore(mount / "state.db") as reader:  # reads need no space
                seen["while_full"] = [(j.operation, j.status) for j in reader.jobs()]
            # Space returns; the next pass (woken as a source's watch wakes it) settles the job.
            ballast[0].unlink()
            service.wake.set()
            seen["healthy"] = wait_until(
                "/healthz to be 200 again", lambda: get(f"{base}/healthz")[0] == 200
            )
            seen["metrics_after"] = get(f"{base}/metrics")[1]

        serve(service, scenario)

        # While the disk was full: unhealthy and why, counted, and the job still running.
        assert seen["health"].startswith("the state store cannot be written")
        assert "patchwarden_state_store_errors_total 1.0" in seen["metrics"]
        assert "patchwarden_state_store_writable 0.0" in seen["metrics"]
        assert seen["while_full"] == [("Scan", "running")]
        failures = [fields for level, event, fields in log.lines if event.startswith("state")]
        assert failures and FULL in failures[0]["error"]
        assert all(level == "error" for level, event, _ in log.lines if event.startswith("state"))

        # Space back: the job left running is settled and its machine scanned again.
        assert "patchwarden_state_store_writable 1.0" in seen["metrics_after"]
        jobs = [(j.operation, j.status) for j in store.jobs()]
        assert jobs == [("Scan", "abandoned"), ("Scan", "succeeded")]
        latest = store.latest_scan("web-1")
        assert latest is not None and latest.job_id == store.jobs()[-1].id


@needs_apt
def test_a_database_lost_mid_pass_fails_the_pass_in_one_line_and_the_loop_recovers(
    tmp_path: Path, apt_repo: Repo, postgres_server: Postgres, postgres_url: str
) -> None:
    from reconciler.state.postgres.store import PostgresStore

    with PostgresStore(postgres_url) as store:
        # Every session cut, what was committed kept: a partition, as the service sees it.
        broken = breaking_service(tmp_path, apt_repo, store, lambda: postgres_server.stop("fast"))
        service, base, log = broken.service, broken.base, broken.log
        seen: dict[str, Any] = {}

        def scenario() -> None:
            # The first pass claims a Scan of web-1; the database goes while it runs.
            def lost() -> str | None:
                status, body = get(f"{base}/healthz")
                return body if status == 503 and "cannot use the state store" in body else None

            seen["health"] = wait_until("/healthz to say the store cannot be used", lost)
            postgres_server.start()  # the database returns; the next pass settles the job
            service.wake.set()
            wait_until("/healthz to be 200 again", lambda: get(f"{base}/healthz")[0] == 200)

        try:
            serve(service, scenario)
        finally:
            if broken.broke and not accepting(postgres_server):
                postgres_server.start()  # for the tests after this one, whatever happened

        # While it was gone: unhealthy, and one line saying which store and that it retries,
        # without the password, and no traceback anywhere (no "exception" log line).
        assert seen["health"].startswith("the state store cannot be written")
        assert "cannot use the state store postgresql://" in seen["health"]
        failures = [fields for level, event, fields in log.lines if event.startswith("state")]
        assert failures and "a running service retries by itself" in failures[0]["error"]
        assert "\n" not in failures[0]["error"] and "Traceback" not in failures[0]["error"]
        assert [event for level, event, _ in log.lines if level == "exception"] == []
        # Back: the job the partition left running is settled, its machine scanned again.
        assert [(j.operation, j.status) for j in store.jobs()] == [
            ("Scan", "abandoned"),
            ("Scan", "succeeded"),
        ]
        latest = store.latest_scan("web-1")
        assert latest is not None and latest.job_id == store.jobs()[-1].id
