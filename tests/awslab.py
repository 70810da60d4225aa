"""AWS for tests: moto's server (``ThreadedMotoServer``), an EMULATOR of the AWS APIs on loopback,
and an environment that keeps the host's AWS configuration (``~/.aws``, instance metadata) out.

Each test file that needs AWS starts one server for its module or session (:func:`moto_server`)
and empties it per test (:func:`moto_reset`), so no bucket, bus or instance outlives a test.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def moto_api(url: str, path: str, body: bytes = b"") -> None:
    """POST to moto's own API (``/moto-api/PATH``): ``reset``, ``reset-auth`` (body: the number
    of requests before IAM is checked, ``inf`` for never)."""
    headers = {"Content-Type": "text/plain"}  # moto reads the body raw, not as a form
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/{path}", body, headers))


def moto_reset(url: str) -> str:
    """Empties the server: every service's state is gone. Returns ``url``."""
    moto_api(url, "reset")
    return url


def isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No AWS configuration from the host: no AWS_* variable, no ~/.aws, no instance role.
    Returns the resulting environment."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    isolated = {
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in isolated.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)
