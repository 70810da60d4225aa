"""Waiting for what another thread or process brings about: every test polls an explicit condition
with a deadline through :func:`wait_until`, never sleeps a fixed time and hopes it happened.

The deadline is generous (a bound on a hung test, not a benchmark): on a loaded machine a test
waits longer, it does not fail. Polling needs a pause between checks; this is the one place that
pauses.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    what: str,
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    every: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
    detail: Callable[[], str] | None = None,
    error: type[Exception] = AssertionError,
) -> T:
    """Call ``check`` until it returns something true, and return that; fail naming ``what``, the
    last value (or ignored exception) ``check`` gave and ``detail()`` (a log's tail, say) once
    ``timeout`` seconds have passed. An exception ``check`` raises ends the wait unless it is one
    of ``ignore`` (a server not answering yet). ``error`` is what a timeout raises (fixtures that
    retry on RuntimeError, say)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignore as exc:
            last: object = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            more = f": {detail()}" if detail is not None else ""
            raise error(f"timed out after {timeout:g} s waiting for {what} (last: {last!r}){more}")
        time.sleep(every)


def tail_of(log: Path, chars: int = 3000) -> Callable[[], str]:
    """A ``detail`` for :func:`wait_until`: the end of a server's or a command's log."""
    return lambda: log.read_text(errors="replace")[-chars:] if log.exists() else f"(no {log})"


def accepting(port: int) -> bool:
    """Whether a server accepts connections on ``port`` of 127.0.0.1 (has started listening)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def healthy(base: str) -> bool:
    """Whether a service at ``base`` (``http://127.0.0.1:9469``) answers 200 on /healthz."""
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
