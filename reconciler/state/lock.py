"""Stage: state. One writer per state store: the lock every verb that writes or dispatches
(``reconcile``, ``run``, ``controller``) takes before it opens the store, so that a second one is
refused instead of abandoning the first one's running jobs and dispatching a second job on the
same machine. Readers (``compliance``, ``report``, ``plan``...) take no lock: SQLite's WAL lets
them read beside the writer.

:class:`WriterLock` is the interface; :class:`FileLock` is SQLite's: ``fcntl.flock`` on
``<state>.lock`` beside the database, holding the holder's pid, host and command. The kernel
releases a flock when its process exits, however it exits (SIGKILL included), so a crash never
leaves a stale lock behind; the descriptor is close-on-exec, so no child (the agent, git, ssh)
keeps it after its parent is gone. A server-side store (issue 16, PostgreSQL) implements the same
interface with an advisory lock on its own connection.

Touches only its lock file; imports only the store's errors (``state.records``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from reconciler.state.records import StoreLocked, StoreUnusable


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a store's writer lock."""

    pid: int
    host: str
    command: str

    @classmethod
    def this_process(cls, command: str) -> Holder:
        return cls(os.getpid(), socket.gethostname(), command)

    def describe(self) -> str:
        return f"{self.command or 'a process'} (pid {self.pid} on {self.host or 'unknown host'})"


class WriterLock(Protocol):
    """At most one holder at a time, across processes and hosts sharing the store."""

    def acquire(self, holder: Holder) -> None:
        """Take the lock without waiting; raise :class:`StoreLocked` naming the holder."""

    def release(self) -> None:
        """Let go (idempotent); a holder's exit lets go too."""


class FileLock:
    """``fcntl.flock`` on a lock file; the file keeps the last holder's identity (JSON)."""

    def __init__(self, path: Path, store: str) -> None:
        """``store`` names the store in messages (the database file, as the user gave it)."""
        self.path, self.store = path, store
        self._fd: int | None = None

    def acquire(self, holder: Holder) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _read_holder(fd)
            os.close(fd)
            raise StoreLocked(refusal(self.store, current)) from None
        except BaseException:
            os.close(fd)
            raise
        # Written only once the lock is ours, so the file names whoever holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def _open(self) -> int:
        try:
            # 0600: the file names a process of this user's; nobody else needs to read it.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnusable(
                f"cannot open the state store's lock file {self.path}: {exc.strerror or exc}"
                " (patchctl needs write access to the directory of the state file)"
            ) from None


def refusal(store: str, current: Holder | None) -> str:
    """What a second writer is told, for every kind of store: who holds it, and what to do."""
    who = current.describe() if current else "another process"
    return (
        f"the state store {store} is in use by {who}: stop it first, or give this command"
        " another --state; compliance, report, plan and findings read it meanwhile"
    )


def _read_holder(fd: int) -> Holder | None:
    """The holder the lock file names, or None while it is being written or unreadable."""
    try:
        document = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(int(document["pid"]), str(document["host"]), str(document["command"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def lock_path(database: Path) -> Path:
    """``<state>.lock``: beside the database, so every process that finds one finds the other."""
    return database.with_name(database.name + ".lock")
