"""docs/ssm-parity.md cannot drift: its tests exist, its statuses hold, and its refusals are real.

The page maps every SSM field to the Patchwarden field that carries it, a status and the tests
that prove the effect (issue 13 item 9). These checks read the page: a cited test that was renamed
or removed, an implemented row without a test, a schema field without a row, an "accepted" status,
or a field the page calls refused that validates, each fails here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from reconciler.api import resources
from reconciler.api.snapshot import SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines

PAGE = Path(__file__).resolve().parent.parent / "docs" / "ssm-parity.md"
STATUSES = ("implemented", "refused", "not applicable")
TEST_ID = re.compile(r"`tests/(test_\w+)\.py::(test_\w+)(?:\[([^\]]+)\])?`")
REFUSED = re.compile(r"`(spec\.[\w.\[\]]+)` is refused")

# Which resource each section of the page is about, and the models whose fields it must cover.
SECTIONS: dict[str, tuple[str, tuple[type[BaseModel], ...]]] = {
    "Patch baseline": (
        "PatchBaseline",
        (
            resources.PatchBaselineSpec,
            resources.PatchRule,
            resources.PatchFilterGroup,
            resources.PatchFilter,
            resources.PatchSource,
        ),
    ),
    "Patch groups": ("PatchGroup", (resources.PatchGroupSpec,)),
    "Maintenance window": ("MaintenanceWindow", (resources.MaintenanceWindowSpec,)),
    "Window targets": ("MaintenanceWindow", (resources.WindowTargets,)),
    "Window tasks": ("MaintenanceWindow", (resources.WindowTask,)),
    "AWS-RunPatchBaseline parameters": ("MaintenanceWindow", ()),
    "Rules SSM applies without a field": ("PatchBaseline", ()),
}

BASES = {
    "PatchBaseline": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchBaseline",
        "metadata": {"name": "rhel-prod"},
        "spec": {"operatingSystem": "REDHAT_ENTERPRISE_LINUX"},
    },
    "PatchGroup": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchGroup",
        "metadata": {"name": "web"},
        "spec": {"baselines": {"UBUNTU": "aws-ubuntu-default"}},
    },
    "MaintenanceWindow": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "MaintenanceWindow",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "cron(0 2 ? * * *)",
            "duration": 3,
            "cutoff": 1,
            "targets": {"selector": {"matchLabels": {"role": "web"}}},
            "tasks": [{"name": "install", "operation": "Install"}],
        },
    },
}


@dataclass(frozen=True)
class Row:
    section: str
    ssm: str
    patchwarden: str
    status: str
    proof: str

    @property
    def tests(self) -> list[tuple[str, str, str | None]]:
        return [(m[1], m[2], m[3]) for m in TEST_ID.finditer(self.proof)]


def rows() -> list[Row]:
    found: list[Row] = []
    section = ""
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or cells[0] in ("SSM", "---"):
            continue
        found.append(Row(section, *cells))
    return found


ROWS = rows()


def test_the_page_has_a_table_for_every_section() -> None:
    assert {row.section for row in ROWS} == set(SECTIONS)


def test_every_cited_test_exists() -> None:
    missing = []
    for row in ROWS:
        for module_name, function, param in row.tests:
            module = importlib.import_module(f"tests.{module_name}")
            source = Path(module.__file__ or "").read_text(encoding="utf-8")
            # A parametrised test is cited by its base name plus a case id written in its module.
            if not callable(getattr(module, function, None)) or (
                param is not None and f'"{param}"' not in source
            ):
                missing.append(f"{module_name}::{function}[{param}] ({row.ssm})")
    assert not missing, "docs/ssm-parity.md cites tests that do not exist: " + ", ".join(missing)


def test_every_row_has_a_known_status_and_implemented_or_refused_rows_cite_a_test() -> None:
    for row in ROWS:
        assert row.status.startswith(STATUSES), f"{row.ssm}: unknown status {row.status!r}"
        assert "accepted" not in row.status, f"{row.ssm}: 'accepted' is not a status"
        if row.status.startswith(("implemented", "refused")):
            assert row.tests, f"{row.ssm}: {row.status} without a test that proves it"


@pytest.mark.parametrize("section", [s for s, (_, models) in SECTIONS.items() if models])
def test_every_schema_field_has_a_row(section: str) -> None:
    _, models = SECTIONS[section]
    named = {
        word
        for row in ROWS
        if row.section == section
        for code in re.findall(r"`([^`]+)`", row.patchwarden)
        for word in re.findall(r"\w+", code)
    }
    fields = {info.alias or name for model in models for name, info in model.model_fields.items()}
    assert not fields - named, f"{section}: no row in docs/ssm-parity.md for {fields - named}"


REFUSALS = [(row.section, path) for row in ROWS for path in REFUSED.findall(row.patchwarden)]


def with_field(kind: str, path: str) -> dict[str, object]:
    """The base document of ``kind`` with ``path`` (``spec.a``, ``spec.tasks[].a``) set."""
    document = yaml.safe_load(yaml.safe_dump(BASES[kind]))
    *parents, field = path.replace("[]", "").split(".")
    target = document
    for parent in parents:
        target = target[parent]
        target = target[0] if isinstance(target, list) else target
    target[field] = "x"
    return dict(document)


@pytest.mark.parametrize(("section", "path"), REFUSALS, ids=[p for _, p in REFUSALS])
def test_fields_this_page_refuses_are_refused_at_their_line(section: str, path: str) -> None:
    kind, _ = SECTIONS[section]
    text = yaml.safe_dump(with_field(kind, path), sort_keys=False)
    field = path.rsplit(".", 1)[1]
    line = next(n for n, found in enumerate(text.splitlines(), 1) if f"{field}: x" in found)
    with pytest.raises(SnapshotInvalid) as caught:
        build_snapshot([("fleet.yaml", text.encode())], predefined_baselines())
    (problem,) = [str(p) for p in caught.value.problems]
    assert problem.startswith(f"fleet.yaml:{line}: ")
    assert f"unknown field '{field}'" in problem


def test_the_page_refuses_something() -> None:
    # The refusal test is parametrised by the page: an empty list would pass silently.
    assert len(REFUSALS) >= 5
