"""A full disk under the state store (issue 12, item 6): the service keeps running, says so on
/healthz, /metrics and in one log line, retries, and once space returns the job the full disk
left ``running`` is settled and its machine scanned again.

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
from reconciler.state import StateStore
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.filesystems import fill, tmpfs
from tests.fleet import BASELINE_YAML, Wrapped, documents, local_instance_yaml, make_fleet
from tests.git_servers import free_port
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
class FillsTheDisk(Wrapped):
    """A machine whose first scan ends as the state store's disk fills up (another program's
    log growing meanwhile): the scan's result cannot be recorded."""

    mount: Path
    ballast: list[Path]

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        inventory = self.inner.scan(instance_id=instance_id, refresh=refresh, sources=sources)
        if not self.ballast:
            self.ballast.append(fill(self.mount))
        return inventory


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


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
    roots = make_fleet(tmp_path / "fleet", apt_repo, ["web-1"], INSTALLED[:3])
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "fleet.yaml").write_text(
        documents(BASELINE_YAML, local_instance_yaml("web-1", roots["web-1"]))
    )
    with tmpfs(tmp_path / "small", "2m") as mount, StateStore(mount / "state.db") as store:
        ballast: list[Path] = []
        metrics, log = LoopMetrics(store), RecordingLog()
        reconciler = Reconciler(
            DirectorySource(tmp_path / "desired"),
            store,
            lambda instance: FillsTheDisk(
                transport_for(instance.spec.connection, trust_root_scripts=True), mount, ballast
            ),
            observers=[metrics],
            log=log,
        )
        port = free_port()
        service = Service(reconciler, metrics, interval=3600, host="127.0.0.1", port=port)
        base = f"http://127.0.0.1:{port}"
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

        def drive() -> None:
            try:
                scenario()
            except BaseException:
                seen["error"] = traceback.format_exc()
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
        assert "error" not in seen, seen.get("error")

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
