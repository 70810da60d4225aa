"""Stage: report (views). ``patchctl import ssm``'s output: the imported documents as YAML files
(one per kind) and the report of what could not be carried over, as a table or JSON.

Renders only: writes no file (the CLI does) and reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import yaml
from rich.table import Table

from reconciler.report.views.render import _console, dump
from reconciler.sources.ssm import Imported

FILES = {
    "PatchBaseline": "patch-baselines.yaml",
    "PatchGroup": "patch-groups.yaml",
    "MaintenanceWindow": "maintenance-windows.yaml",
}
_HEADER = "# Imported from AWS Systems Manager by patchctl import ssm (docs/ssm-import.md).\n"


def yaml_files(imported: Imported) -> dict[str, str]:
    """File name -> its YAML text, for each kind that has documents."""
    files: dict[str, str] = {}
    for kind, name in FILES.items():
        documents = [doc for doc in imported.documents if doc["kind"] == kind]
        if documents:
            files[name] = _HEADER + yaml.safe_dump_all(
                documents, sort_keys=False, allow_unicode=True
            )
    return files


def report(imported: Imported, written: Mapping[str, Path], fmt: str, out: IO[str]) -> None:
    """What was written and what was not carried over (table, or JSON with ``fmt`` json)."""
    counts = {kind: sum(doc["kind"] == kind for doc in imported.documents) for kind in FILES}
    if fmt == "json":
        document: dict[str, Any] = {
            "resources": counts,
            "written": [str(path) for path in written.values()],
            "notCarried": [vars(note) for note in imported.not_carried],
        }
        dump(document, "json", out)
        return
    listed = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "no resources"
    out.write(
        f"imported {listed} into {', '.join(str(p) for p in written.values()) or 'no file'}\n"
    )
    if not imported.not_carried:
        out.write("everything was carried over\n")
        return
    out.write("not carried over:\n")
    table = Table()
    for column in ("KIND", "SSM NAME", "WHY"):
        table.add_column(column)
    for note in imported.not_carried:
        table.add_row(note.kind, note.name, note.reason)
    _console(out).print(table)
