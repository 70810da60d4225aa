"""Stage: sources. Snapshots and inventory documents from a directory (or one file).

Every ``*.yaml``/``*.yml`` file under the directory is part of the snapshot (and every ``*.ics``
file, which a ChangeCalendar may name) (hidden directories such
as ``.git`` are skipped, see :func:`reconciler.sources.base.is_resource`); paths in errors are
relative to the directory given. Nothing outside the directory is read: a symbolic link to a file
outside it is skipped with a warning naming the link. Inventories are JSON files (``*.json``).
Files are read as bytes and judged by ``reconciler.api``; nothing here decides what is valid. May
import ``api`` and ``defaults``.

:class:`DirectorySource` is the reconcile loop's view of a directory: its revision is a digest of
the files' paths and contents, and :meth:`DirectorySource.watch` reports edits as they happen.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog
from pydantic import ValidationError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.api.inventory import Inventory
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid
from reconciler.api.yamldocs import MAX_BYTES
from reconciler.sources.base import (
    SNAPSHOT_SUFFIXES,
    Files,
    Revision,
    SourceError,
    is_resource,
    snapshot_of,
    validated,
    walk_order,
)
from reconciler.sources.enrol.base import DirectoryFiles

log = structlog.get_logger("patchwarden")

# Only these change what a directory holds; watchdog also reports opens, closes and attributes.
_CHANGES = frozenset({"created", "modified", "deleted", "moved"})


def read_snapshot(path: Path) -> Snapshot:
    """The validated snapshot of a directory (or one YAML file); SnapshotInvalid lists problems."""
    return snapshot_of(walk(path, SNAPSHOT_SUFFIXES))


def read_inventories(path: Path) -> list[Inventory]:
    """Inventory documents from a JSON file or every ``*.json`` under a directory."""
    inventories: list[Inventory] = []
    problems: list[Problem] = []
    for relpath, raw in walk(path, (".json",)):
        try:
            inventories.append(Inventory.model_validate_json(raw))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(
                    Problem(relpath, _json_line(raw, error["loc"]), where, error["msg"])
                )
    if problems:
        raise SnapshotInvalid(problems)
    return inventories


def walk(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(relative posix path, content) of every file of ``path`` that counts, in walk order.

    ``path`` may be one file, taken whatever its name. SnapshotInvalid when it does not exist.
    """
    if not path.exists():
        raise SnapshotInvalid([Problem(str(path), 0, "", "no such file or directory")])
    if path.is_file():
        yield path.name, _read(path)
        return
    root = path.resolve()
    for relpath in sorted(_relpaths(path, suffixes), key=walk_order):
        target = (path / relpath).resolve()
        if target.is_relative_to(root):
            yield relpath, _read(target)
        else:
            # What a symlink points at outside the directory is not the directory's to give:
            # reading it would put any file the controller can read into a snapshot or an error.
            log.warning(SKIPPED_OUTSIDE, file=relpath)


SKIPPED_OUTSIDE = "symbolic link to a file outside the source directory skipped"


def _relpaths(root: Path, suffixes: tuple[str, ...]) -> Iterator[str]:
    # os.walk lets hidden directories be pruned before descending: a big .git is never listed.
    # Symlinked directories are not followed (as pathlib's rglob did). Symlinked files are
    # listed; walk() reads those whose target lies inside the directory (a Kubernetes ConfigMap
    # volume is made of such links) and skips the rest.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            relpath = (base / name).as_posix()
            if is_resource(relpath, suffixes) and (root / relpath).is_file():
                yield relpath


def _read(file: Path) -> bytes:
    # Read at most one byte past the limit: the parser refuses oversized files by length.
    with file.open("rb") as handle:
        return handle.read(MAX_BYTES + 1)


def _json_line(raw: bytes, loc: tuple[int | str, ...]) -> int:
    """Best-effort line of the last key of ``loc`` in a JSON document (1 when not found)."""
    for element in reversed(loc):
        if isinstance(element, str):
            index = raw.find(json.dumps(element).encode())
            if index >= 0:
                return raw[:index].count(b"\n") + 1
    return 1


def content_digest(files: Files) -> str:
    """SHA-256 over (path, content) pairs, sorted; length-prefixed so no two file sets collide."""
    digest = hashlib.sha256()
    for relpath, content in sorted(files):
        name = relpath.encode()
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


class DirectorySource:
    """A directory of resource files as a snapshot source (see :class:`~.base.Source`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self) -> tuple[Revision, Files]:
        """The files as they are now; the revision is their content digest."""
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: not a directory")
        try:
            files = list(walk(self.path, SNAPSHOT_SUFFIXES))
        except OSError as exc:
            # Typically a file replaced mid-read by an editor's save; the watch fires again.
            raise SourceError(f"{self.path}: changed while reading, retry: {exc}") from exc
        return Revision(str(self.path), "dir", content_digest(files)), files

    def snapshot(self) -> tuple[Revision, Snapshot]:
        """The validated snapshot of the directory now; RevisionInvalid when it is refused."""
        return validated(*self.fetch())

    def repository(self, revision: Revision) -> DirectoryFiles:
        """The directory's files, for enrolment (an Ansible inventory): as they are now."""
        return DirectoryFiles(self.path)

    def watch(self, on_change: Callable[[], None], debounce: float = 0.5) -> Callable[[], None]:
        """Call ``on_change`` once per burst of edits to resource files; returns ``stop()``.

        A burst ends when nothing changed for ``debounce`` seconds, so an editor's save or a
        ``git pull`` touching many files causes one reconcile, not one per file. The callback
        runs on a background thread.
        """
        debouncer = _Debouncer(on_change, debounce)
        observer = Observer()
        root = self.path.resolve()  # watchdog reports absolute paths
        observer.schedule(_Relevant(root, debouncer.poke), str(root), recursive=True)
        try:
            observer.start()
        except OSError as exc:  # missing directory, or out of inotify watches
            debouncer.stop()
            raise SourceError(f"{self.path}: cannot watch: {exc.strerror or exc}") from exc

        def stop() -> None:
            observer.stop()
            observer.join()
            debouncer.stop()

        return stop


class _Relevant(FileSystemEventHandler):
    """Pokes on events that can change the snapshot: resource files, and whole directories."""

    def __init__(self, root: Path, poke: Callable[[], None]) -> None:
        self._root = root
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        paths = [p for p in (event.src_path, event.dest_path) if p]
        if any(self._counts(os.fsdecode(p), event.is_directory) for p in paths):
            self._poke()

    def _counts(self, path: str, is_directory: bool) -> bool:
        try:
            relpath = Path(path).relative_to(self._root).as_posix()
        except ValueError:
            return False
        if not is_directory:
            return is_resource(relpath)
        # A directory moved or deleted takes its files along without an event for each of them.
        # "Modified" on a directory only echoes a change inside it, judged on its own event.
        hidden = any(part.startswith(".") for part in Path(relpath).parts)
        return relpath != "." and not hidden


class _Debouncer:
    """Runs ``action`` on its own thread once events have stopped for ``delay`` seconds."""

    def __init__(self, action: Callable[[], None], delay: float) -> None:
        self._action = action
        self._delay = delay
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="patchwarden-watch", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        with self._cond:
            self._deadline = time.monotonic() + self._delay
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while self._burst_ended():
            try:
                self._action()
            except Exception:
                # A failing callback must not end the watch: the next edit deserves a reconcile.
                log.exception("directory_watch_callback_failed")

    def _burst_ended(self) -> bool:
        """Block until a burst has been quiet for the delay: True; False once stopped."""
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                elif (remaining := self._deadline - time.monotonic()) > 0:
                    self._cond.wait(remaining)
                else:
                    self._deadline = None
                    return True
            return False
