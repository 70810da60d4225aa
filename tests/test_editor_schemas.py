"""Editor schemas (docs/editors.md): ``schemas/`` holds one JSON Schema per kind, generated from the
models by ``patchctl schema --out``; every example names its kind's schema in a
yaml-language-server modeline and validates against it with the ``jsonschema`` library (what
VS Code's redhat.vscode-yaml and neovim's yamlls do while typing)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.api.editor import MODELINE, file_name, json_schemas
from reconciler.api.resources import KINDS
from tests import difflab

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
EXAMPLES = sorted(
    p
    for p in (REPO / "examples").rglob("*.yaml")
    if "ci" not in p.relative_to(REPO / "examples").parts
)


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return difflab.patchctl(*args, cwd=REPO)


def _schema_named_by(example: Path) -> Path:
    first = example.read_text().splitlines()[0]
    assert first.startswith(MODELINE), f"{example}: no yaml-language-server modeline on line 1"
    return (example.parent / first.removeprefix(MODELINE)).resolve()


def _documents(example: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(example.read_text()) if d]


def test_committed_schemas_equal_freshly_generated_ones() -> None:
    fresh = json_schemas()
    assert sorted(fresh) == sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert len(fresh) == len(KINDS) == 8
    for name, schema in fresh.items():
        assert json.loads((SCHEMAS / name).read_text()) == schema, f"run `make crds`: {name}"
    assert patchctl("schema", "--check", "schemas").returncode == 0


def test_schema_out_writes_every_kind_and_check_names_a_stale_one(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    assert patchctl("schema", "--out", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in SCHEMAS.iterdir())
    (out / "rollout.json").write_text("{}\n")
    checked = patchctl("schema", "--check", str(out))
    assert checked.returncode != 0
    assert checked.stderr.strip() == (
        f"stale JSON Schemas (run `make crds` and commit): {out / 'rollout.json'}"
    )


def test_schema_without_out_or_document_says_what_to_give() -> None:
    result = patchctl("schema")
    assert result.returncode != 0
    assert "give --out DIR" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_validates_against_the_schema_its_modeline_names(example: Path) -> None:
    schema_file = _schema_named_by(example)
    assert schema_file.parent == SCHEMAS
    validator = jsonschema.Draft202012Validator(json.loads(schema_file.read_text()))
    for document in _documents(example):
        assert schema_file.name == file_name(document["kind"])
        errors = [e.message for e in validator.iter_errors(document)]
        assert errors == [], f"{example}: {errors}"


def test_the_schema_flags_a_misspelt_field_and_a_bad_concurrency() -> None:
    """What an editor underlines while typing: a field the model does not have, and a
    maxConcurrency that is neither a count nor a percentage (an integer count is fine)."""
    windows = REPO / "examples" / "windows.yaml"
    document = _documents(windows)[0]
    validator = jsonschema.Draft202012Validator(json.loads(_schema_named_by(windows).read_text()))
    misspelt = {**document, "spec": {**document["spec"], "schedul": "cron(0 2 ? * SUN *)"}}
    assert any("schedul" in e.message for e in validator.iter_errors(misspelt))
    task = {**document["spec"]["tasks"][0], "maxConcurrency": "ten"}
    bad = {**document, "spec": {**document["spec"], "tasks": [task]}}
    assert [e.message for e in validator.iter_errors(bad)] != []
    assert not list(
        validator.iter_errors(
            {**bad, "spec": {**bad["spec"], "tasks": [{**task, "maxConcurrency": 3}]}}
        )
    )
