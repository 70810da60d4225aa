"""A real Prometheus and a real Alertmanager (Debian's ``prometheus`` and
``prometheus-alertmanager``) on loopback, for the safety gates' tests (docs/guardrails.md).

Prometheus scrapes a tiny exporter in the test's process every second; the test sets the value
it exports (:meth:`Exporter.set`). Alertmanager runs without clustering and with a receiver that
sends nothing; tests push alerts and create silences through its v2 API, as Prometheus and
``amtool`` do. Both keep their data in the test's temporary directory and stop with the fixture.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.git_servers import free_port
from tests.waiting import tail_of, wait_until

METRIC = "patchwarden_test_gate"


@dataclass
class Exporter:
    """Serves ``patchwarden_test_gate <value>`` on /metrics."""

    value: float = 0.0
    scrapes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, value: float) -> None:
        with self.lock:
            self.value, self.scrapes = value, 0

    def text(self) -> bytes:
        with self.lock:
            self.scrapes += 1
            return f"# TYPE {METRIC} gauge\n{METRIC} {self.value}\n".encode()


def serve_exporter(exporter: Exporter) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exporter.text()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@dataclass
class Prometheus:
    url: str
    exporter: Exporter

    def samples(self, query: str) -> int:
        target = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(target, timeout=5) as answer:
            return len(json.load(answer)["data"]["result"])

    def scraped(self, value: float) -> None:
        """Wait until Prometheus has scraped ``value`` (the query sees it)."""
        wait_until(
            f"Prometheus to scrape {METRIC} {value}",
            lambda: self.samples(f"{METRIC} == {value}") == 1,
            ignore=(OSError,),
        )


def _start(argv: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited {process.returncode}: {tail_of(log)()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    wait_until(f"{argv[0]} to be ready", ready, timeout=60, detail=tail_of(log))
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def running_prometheus(tmp: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is not installed (make install)"
    exporter = Exporter()
    server, exporter_port = serve_exporter(exporter)
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: gate\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = _start(argv, tmp / "prometheus.log", port)
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", exporter)
    finally:
        _stop(process)
        server.shutdown()


@dataclass
class Alertmanager:
    url: str

    def _post(self, path: str, body: object) -> object:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def fire(self, **labels: str) -> None:
        """An alert with these labels, firing for the next hour."""
        start = datetime.now(UTC)
        alert = {
            "labels": labels,
            "startsAt": start.isoformat(),
            "endsAt": (start + timedelta(hours=1)).isoformat(),
        }
        self._post("/api/v2/alerts", [alert])

    def silence(self, **labels: str) -> str:
        """A silence of the alerts carrying these labels, for the next hour; its id."""
        start = datetime.now(UTC)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in labels.items()
            ],
            "startsAt": start.isoformat(),
            "endsAt": (start + timedelta(hours=1)).isoformat(),
            "createdBy": "patchwarden tests",
            "comment": "maintenance",
        }
        answer = self._post("/api/v2/silences", body)
        assert isinstance(answer, dict)
        return str(answer["silenceID"])

    def alerts(self, **flags: str) -> list[object]:
        query = urllib.parse.urlencode(flags)
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as answer:
            found = json.load(answer)
        assert isinstance(found, list)
        return found


def running_alertmanager(tmp: Path) -> Iterator[Alertmanager]:
    binary = shutil.which("prometheus-alertmanager")
    assert binary, "Debian's prometheus-alertmanager package is not installed (make install)"
    port = free_port()
    config = tmp / "alertmanager.yml"
    config.write_text("route: {receiver: nobody}\nreceivers: [{name: nobody}]\n")
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={tmp / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one Alertmanager, loopback only
    ]
    process = _start(argv, tmp / "alertmanager.log", port)
    try:
        yield Alertmanager(f"http://127.0.0.1:{port}")
    finally:
        _stop(process)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A running Prometheus scraping the test's exporter (the gates' tests)."""
    yield from running_prometheus(tmp_path)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """A running Alertmanager (the gates' tests)."""
    yield from running_alertmanager(tmp_path)
