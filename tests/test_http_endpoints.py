"""``/healthz`` and ``/metrics`` against hostile or clumsy HTTP clients (issue 12, item 10): idle
connections cost no thread and cannot starve the probes, a client that hangs up leaves no
traceback in the JSON log, IPv6 listen addresses work, and a busy port is a one-line error.

Each test runs the real ``patchctl run`` (over an empty directory source: no machine is needed
to serve) and talks to it over real sockets on loopback.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from reconciler.loop.endpoints import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    READ_TIMEOUT,
    WORKERS,
    EndpointServer,
)
from tests.git_servers import free_port
from tests.waiting import healthy, tail_of, wait_until

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
REQUEST = b"GET /metrics HTTP/1.0\r\n\r\n"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str
    address: tuple[str, int]  # where to connect: (host, port)
    log: Path

    def threads(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("Threads:")[1].split()[0])

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=30)

    def stop(self) -> str:
        """SIGTERM, the exit code checked; the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=60) == 0, self.log.read_text()[-3000:]
        return self.log.read_text()


def _serve(tmp_path: Path, host: str) -> Iterator[Served]:
    source = tmp_path / "source"
    source.mkdir()
    port, log = free_port(), tmp_path / "run.log"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = ["run", "--source", str(source), "--state", str(tmp_path / "state.db")]
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, *argv, "--interval", "3600", "--listen", address],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    served = Served(process, f"http://{address}", (host, port), log)
    try:
        wait_until("/healthz", lambda: healthy(served.base), timeout=60, detail=tail_of(log))
        yield served
        served.stop()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, "127.0.0.1")


def test_idle_connections_cost_no_thread_and_healthz_still_answers(served: Served) -> None:
    before = served.threads()
    idle = [served.connect() for _ in range(MAX_CONNECTIONS + 172)]
    try:
        # Accepted in order: once /healthz answers, every idle connection before it was seen.
        wait_until("/healthz beside idle connections", lambda: healthy(served.base))
        # Was one thread per connection (800 idle connections: 807 threads).
        assert served.threads() <= before + WORKERS
        # Beyond MAX_CONNECTIONS the oldest idle connection made room for the probe.
        assert idle[0].recv(1) == b""
    finally:
        for connection in idle:
            connection.close()


def test_idle_and_trickling_clients_are_dropped_after_their_timeouts(served: Served) -> None:
    idle, trickling = served.connect(), served.connect()
    trickling.sendall(b"GET /healthz HTTP/1.0\r\n")  # and never the blank line that ends it
    for connection in (idle, trickling):
        connection.settimeout(IDLE_TIMEOUT + READ_TIMEOUT + 30)
        assert connection.recv(1) == b"", "the server must close a client that sends nothing"
        connection.close()
    assert healthy(served.base)


def _hang_up_abruptly(connection: socket.socket) -> None:
    # Linger 0: close() sends a reset, as a client that crashed or timed out does.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def test_clients_that_hang_up_leave_no_traceback_in_the_log(served: Served) -> None:
    for _ in range(10):
        connection = served.connect()
        connection.sendall(REQUEST)
        _hang_up_abruptly(connection)
        half = served.connect()
        half.sendall(REQUEST[:10])
        _hang_up_abruptly(half)
    for _ in range(WORKERS + 1):  # one after another: the hang-ups before them are done
        assert healthy(served.base)
    log = served.stop()
    assert "Traceback" not in log and "Exception occurred" not in log, log[-3000:]
    for line in log.splitlines():
        json.loads(line)  # every line is one JSON record


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_listen_on_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    for served in _serve(tmp_path, "::1"):
        with urllib.request.urlopen(f"{served.base}/metrics", timeout=5) as response:
            assert b"patchwarden_reconcile_passes_total" in response.read()


def test_a_busy_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        argv = ["--source", str(tmp_path / "source"), "--state", str(tmp_path / "state.db")]
        run = subprocess.run(
            [*PATCHCTL, "run", *argv, "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1
    assert run.stderr == (
        f"patchctl: cannot listen on 127.0.0.1:{port}: the address is in use (another patchctl"
        " run or controller?): stop it or choose another --listen\n"
    )


@pytest.mark.parametrize("listen", ["::1:9469", "[::1]", "[]:9469", "host:99999", "[::1:9469"])
def test_a_malformed_listen_address_is_a_usage_error(tmp_path: Path, listen: str) -> None:
    run = subprocess.run(
        [*PATCHCTL, "run", "--source", str(tmp_path), "--listen", listen],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"argument --listen: {listen!r} is not HOST:PORT" in run.stderr
    if listen.count(":") > 1:  # an IPv6 address: the message shows how to write one
        assert "an IPv6 address goes in brackets: [::1]:9469" in run.stderr


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


def test_a_client_trickling_one_byte_at_a_time_is_cut_off_at_the_request_deadline() -> None:
    """Each byte arrives well inside the per-read timeout, so only the deadline on the whole
    request can free the worker (four such clients used to hold every worker for as long as
    they liked)."""
    server = EndpointServer(
        "127.0.0.1", 0, _Hello, workers=1, read_timeout=5.0, request_deadline=1.0
    ).start()
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        trickle = iter(b"GET / HTTP/1.0\r\n" + b"X-Slow: " + b"a" * 10_000)
        started, closed = time.monotonic(), False
        # Paced by select's timeout on the reply, not by sleeps; per-read timeout is never hit.
        while not closed and time.monotonic() - started < 4.0:
            try:
                client.send(bytes([next(trickle)]))
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([client], [], [], 0.2)
            closed = bool(readable) and client.recv(1) == b""
        assert closed, "a trickling client must not hold a worker past the request deadline"
        client.close()
        # The one worker is free again: a normal request is answered.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as normal:
            normal.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert normal.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        server.server_close()
