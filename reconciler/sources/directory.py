"""Stage: sources. Reading a snapshot, or inventory documents, from a directory or one file.

Every ``*.yaml``/``*.yml`` file under the directory is part of the snapshot (hidden directories such
as ``.git`` are skipped); paths in errors are relative to the directory given. Inventories are JSON
files (``*.json``). Files are read as bytes and judged by ``reconciler.api``; nothing here decides
what is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from reconciler.api.inventory import Inventory
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid, build_snapshot
from reconciler.api.yamldocs import MAX_BYTES
from reconciler.defaults import predefined_baselines

YAML_SUFFIXES = (".yaml", ".yml")


def read_snapshot(path: Path) -> Snapshot:
    """The validated snapshot of a directory (or one YAML file); SnapshotInvalid lists problems."""
    return build_snapshot(_files(path, YAML_SUFFIXES), predefined_baselines())


def read_inventories(path: Path) -> list[Inventory]:
    """Inventory documents from a JSON file or every ``*.json`` under a directory."""
    inventories: list[Inventory] = []
    problems: list[Problem] = []
    for relpath, raw in _files(path, (".json",)):
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


def _files(path: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    if not path.exists():
        raise SnapshotInvalid([Problem(str(path), 0, "", "no such file or directory")])
    if path.is_file():
        yield path.name, _read(path)
        return
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or file.suffix not in suffixes:
            continue
        if file.is_file():
            yield rel.as_posix(), _read(file)


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
