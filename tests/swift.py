"""A real S3 API for tests: OpenStack Swift from Debian with its ``s3api`` middleware, on loopback.

Four processes (account, container, object, proxy) run under Debian's ``/usr/bin/python3`` on free
127.0.0.1 ports, with every config file, ring and byte of data under one scratch directory:
``swift_dir`` points there in every server's config, so the host's ``/etc/swift`` is neither read
nor written. Authentication is tempauth's ``test:tester`` / ``testing``; S3 clients use those as
access key and secret, with path-style addressing (``http://127.0.0.1:PORT/bucket/key``).
Recipe: shared/testbeds/README.md §2 "Real S3-compatible servers".
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import accepting, wait_until

SERVERS = ("account", "container", "object")
ACCESS_KEY, SECRET_KEY = "test:tester", "testing"
HAVE_SWIFT = all(shutil.which(f"swift-{name}-server") for name in (*SERVERS, "proxy")) and bool(
    shutil.which("swift-ring-builder")
)

_SWIFT_CONF = """\
[swift-hash]
swift_hash_path_suffix = patchwarden-tests
swift_hash_path_prefix = patchwarden

[storage-policy:0]
name = Policy-0
default = yes
"""

_BACKEND_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
mount_check = false
devices = {devices}
swift_dir = {swift_dir}
log_name = {name}-server
log_level = WARNING

[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

# s3api before tempauth, as Swift's docs require; copy/slo/dlo serve S3's copy and multipart.
_PROXY_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {swift_dir}
log_name = proxy-server
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


@dataclass
class Swift:
    """A running Swift cluster of one node; ``endpoint`` is the proxy (S3 API and Swift API)."""

    directory: Path
    endpoint: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Kill every process by its PID (they were started by this fixture, nothing else)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_ports(count: int) -> list[int]:
    # All probes stay bound until every port is chosen, so the ports are distinct.
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _environment() -> dict[str, str]:
    # Debian's Swift runs under /usr/bin/python3 with its own site-packages: nothing of the
    # test virtualenv (PYTHONPATH, VIRTUAL_ENV) may leak into it.
    # libfaketime's variables (`make test-clock`) do reach it: Swift shares the tests' clock, as a
    # real S3 endpoint shares the client's (it refuses requests signed 15 minutes off).
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "LD_PRELOAD", "FAKETIME", "FAKETIME_SHARED")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


# One ring per server with one device; what `swift-ring-builder X create 6 1 1; add
# r1z1-127.0.0.1:PORT/d1 100; rebalance` does, in one process instead of nine (a second each).
_RINGS = """
import json, sys
from swift.common.ring import RingBuilder
for name, port in json.loads(sys.argv[1]).items():
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                     "device": "d1", "weight": 100})
    builder.rebalance()
    builder.save(name + ".builder")
    builder.get_ring().save(name + ".ring.gz")
"""


def _build_rings(etc: Path, ports: dict[str, int]) -> None:
    done = subprocess.run(
        ["/usr/bin/python3", "-c", _RINGS, json.dumps(ports)],
        cwd=etc,
        capture_output=True,
        text=True,
        env=_environment(),
    )
    missing = [name for name in ports if not (etc / f"{name}.ring.gz").exists()]
    if done.returncode != 0 or missing:
        raise RuntimeError(f"building Swift's rings in {etc} failed: {done.stderr[-2000:]}")


def start_swift(directory: Path, *, timeout: float = 30.0, attempts: int = 3) -> Swift:
    """Write the configs and rings, start the four servers, return once the S3 API answers.

    Raises RuntimeError with the servers' logs when Swift does not come up: a broken install
    must fail the tests loudly, not skip them. The ports are free when chosen, but another
    process could take one before Swift binds it, hence a few attempts.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _start(directory / f"run-{attempt}", timeout)
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start(directory: Path, timeout: float) -> Swift:
    etc, devices = directory / "etc", directory / "srv"
    etc.mkdir(parents=True, exist_ok=True)
    (devices / "d1").mkdir(parents=True, exist_ok=True)
    (etc / "swift.conf").write_text(_SWIFT_CONF)
    ports = dict(zip((*SERVERS, "proxy"), _free_ports(4), strict=True))
    # The servers switch to `user` at start-up; the one running the tests owns the directory.
    user = pwd.getpwuid(os.geteuid()).pw_name
    for name in SERVERS:
        (etc / f"{name}-server.conf").write_text(
            _BACKEND_CONF.format(
                port=ports[name], user=user, devices=devices, swift_dir=etc, name=name
            )
        )
    _build_rings(etc, {name: ports[name] for name in SERVERS})
    (etc / "proxy-server.conf").write_text(
        _PROXY_CONF.format(port=ports["proxy"], user=user, swift_dir=etc)
    )
    swift = Swift(directory, f"http://127.0.0.1:{ports['proxy']}")
    try:
        for name in (*SERVERS, "proxy"):
            with (directory / f"{name}.log").open("ab") as log:
                swift.processes[name] = subprocess.Popen(
                    [f"/usr/bin/swift-{name}-server", str(etc / f"{name}-server.conf")],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env=_environment(),
                )
        _wait_ready(swift, ports, timeout)
    except BaseException:
        swift.stop()
        raise
    return swift


def _wait_ready(swift: Swift, ports: dict[str, int], timeout: float) -> None:
    def pending() -> list[str]:
        for name, process in swift.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"swift-{name}-server exited with {process.returncode}: {swift.log(name)[-3000:]}"
                )
        return [name for name in sorted(ports) if not accepting(ports[name])]

    wait_until(
        "Swift's servers to listen",
        lambda: not pending(),
        timeout=timeout,
        error=RuntimeError,
        detail=lambda: "; ".join(f"{n}: {swift.log(n)[-1500:]}" for n in pending()),
    )
    try:
        with urllib.request.urlopen(f"{swift.endpoint}/healthcheck", timeout=5) as answer:
            if answer.read() != b"OK":
                raise RuntimeError("Swift's proxy /healthcheck did not answer OK")
    except OSError as exc:
        raise RuntimeError(f"Swift's proxy does not answer: {exc}: {swift.log('proxy')}") from exc
