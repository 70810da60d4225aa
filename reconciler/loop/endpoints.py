"""Stage: loop — the one HTTP server of Patchwarden: ``/healthz`` and ``/metrics`` of
``patchctl run`` and of the controller (:func:`reconciler.loop.service.http_endpoints` gives it
their handler).

Anyone who can reach the port is a client, so a client costs a bounded amount: one thread waits
for new connections and for their first bytes (an idle connection costs a socket, not a thread),
and only then hands the connection to one of :data:`WORKERS` threads; at most
:data:`MAX_CONNECTIONS` are open (the oldest idle one is closed to admit a new one), an idle
connection is closed after :data:`IDLE_TIMEOUT` seconds, every read or write of a request
gives up after :data:`READ_TIMEOUT`, and a whole request is cut off after
:data:`REQUEST_DEADLINE` (a client that trickles one byte at a time cannot hold a worker). A
client that goes away is its own business: nothing is logged; a failure of the handler is
logged as one line. Serves what the handler answers; may not
touch the store or decide anything.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from reconciler.errors import PermanentError

WORKERS = 4
"""Requests answered at once; readable connections beyond them wait their turn."""
MAX_CONNECTIONS = 128
"""Connections open at once, idle, waiting or being answered."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay open without sending a byte."""
READ_TIMEOUT = 5.0
"""Seconds a worker waits on one read or write of a request before it drops the client."""
REQUEST_DEADLINE = 15.0
"""Seconds a worker spends on one request at most, however slowly its bytes arrive."""
POLL = 0.5
"""Seconds between checks of the stop flag (the longest ``shutdown()`` waits for the loop)."""

Handler = Callable[[socket.socket, Any, Any], object]
"""A ``BaseHTTPRequestHandler`` class: constructed with (connection, address, server), it
answers the request."""

_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")


class ListenError(PermanentError):
    """The listen address cannot be served (in use, not this machine's, not allowed)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` → (host without brackets, port); ValueError
    saying what to write otherwise."""
    found = _LISTEN.fullmatch(text)
    if found is None or int(found["port"]) > 65535:
        hint = " (an IPv6 address goes in brackets: [::1]:9469)" if text.count(":") > 1 else ""
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:9469){hint}")
    return found["v6"] if found["v6"] is not None else found["host"], int(found["port"])


def shown(host: str, port: int) -> str:
    """An address as people write it: ``[::1]:9469`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
    except OSError as exc:
        raise ListenError(_bind_failure(shown(host, port), exc)) from None
    listener.setblocking(False)
    return listener


def _bind_failure(address: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "the address is in use (another patchctl run or controller?)"
        return f"cannot listen on {address}: {why}: stop it or choose another --listen"
    if exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
        return f"cannot listen on {address}: {why}: choose another --listen"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        why = "not an address of this machine"
        return f"cannot listen on {address}: {why}: choose another --listen"
    return f"cannot listen on {address}: {exc.strerror or exc}: choose another --listen"


class EndpointServer:
    """``handler`` answering on HOST:PORT from daemon threads once :meth:`start` is called;
    :meth:`shutdown` stops the serving loop, :meth:`server_close` closes every socket."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        workers: int = WORKERS,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        self.handler = handler
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.read_timeout, self.request_deadline = read_timeout, request_deadline
        self.listener = _bind(host, port)
        self.port: int = self.listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._idle: dict[socket.socket, float] = {}  # connection → deadline; oldest first
        self._busy: dict[socket.socket, float] = {}  # being answered → deadline; oldest first
        self._open = 0  # idle, waiting for a worker, or being answered
        self._lock = threading.Lock()
        # Daemon threads: a request being answered never holds up the process's exit.
        self._ready: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"http-worker-{n}")
            for n in range(workers)
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="http")

    def start(self) -> EndpointServer:
        for worker in self._workers:
            worker.start()
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def server_close(self) -> None:
        self.shutdown()
        for connection in list(self._idle):
            self._drop(connection)
        self._selector.close()
        self.listener.close()
        for _ in self._workers:
            self._ready.put(None)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(self._wait()):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj in self._idle:  # not closed to admit another in this round
                    self._dispatch(key.fileobj)
            self._expire(time.monotonic())
            self._cut_off(time.monotonic())

    def _wait(self) -> float:
        oldest = next(iter(self._idle.values()), None)
        return POLL if oldest is None else max(0.0, min(POLL, oldest - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionAbortedError, ConnectionResetError):
                continue  # the client left before it was accepted
            except OSError:  # out of descriptors: an idle client makes room, or the backlog waits
                if not self._evict_oldest():
                    return
                continue
            with self._lock:
                full = self._open >= self.max_connections
                self._open += 1
            if full and not self._evict_oldest():
                self._drop(connection, registered=False)
                continue
            self._idle[connection] = time.monotonic() + self.idle_timeout
            self._selector.register(connection, selectors.EVENT_READ)

    def _evict_oldest(self) -> bool:
        oldest = next(iter(self._idle), None)
        if oldest is not None:
            self._drop(oldest)
        return oldest is not None

    def _expire(self, now: float) -> None:
        for connection, deadline in list(self._idle.items()):
            if deadline > now:
                return  # deadlines grow with the order of arrival
            self._drop(connection)

    def _cut_off(self, now: float) -> None:
        """Requests past their deadline: the socket is shut, so the worker's read or write
        fails at once and the worker closes it."""
        with self._lock:
            overdue = [c for c, deadline in self._busy.items() if deadline <= now]
            for connection in overdue:
                del self._busy[connection]
        for connection in overdue:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _dispatch(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._idle[connection]
        connection.settimeout(self.read_timeout)
        with self._lock:
            self._busy[connection] = time.monotonic() + self.request_deadline
        self._ready.put(connection)

    def _work(self) -> None:
        while (connection := self._ready.get()) is not None:
            self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        try:
            self.handler(connection, connection.getpeername(), self)
        except OSError:
            pass  # the client went away or was too slow: nothing of ours to report
        except Exception as exc:  # a bug in a handler: one line, the server goes on
            structlog.get_logger().error(
                "http request failed", error=f"{type(exc).__name__}: {exc}"
            )
        finally:
            with self._lock:
                self._busy.pop(connection, None)
            self._drop(connection, registered=False)

    def _drop(self, connection: socket.socket, *, registered: bool = True) -> None:
        if registered:
            self._selector.unregister(connection)
            del self._idle[connection]
        with contextlib.suppress(OSError):  # the client may have closed it already
            connection.shutdown(socket.SHUT_WR)  # the answer is sent before the socket closes
        connection.close()
        with self._lock:
            self._open -= 1
