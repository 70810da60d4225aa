"""The generated CustomResourceDefinitions: structural, complete, in step with the models, and
validating (offline, see ``crd_validation``) exactly the resources the models accept."""

from __future__ import annotations

import copy
import filecmp
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.api.resources import GROUP, KINDS, NAMES, VERSION
from tests import crd_validation as cv

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "examples"

Doc = dict[str, Any]


def _crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


CRDS: dict[str, Doc] = {
    cv.load_crd(p)["spec"]["names"]["kind"]: cv.load_crd(p) for p in _crd_files()
}


def _schema(kind: str) -> Doc:
    return cv.openapi_schema(CRDS[kind])


def _node(kind: str, path: str) -> Doc:
    """The schema node of a dotted path below the root, ``[]`` stepping into array items."""
    node = _schema(kind)
    for part in path.split("."):
        items = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if items:
            node = node["items"]
    return node


# -- the CRDs themselves -----------------------------------------------------------------------


def test_one_crd_per_kind() -> None:
    assert len(_crd_files()) == len(KINDS) == 8  # Rollout: issue 15; ChangeCalendar: issue 20
    assert set(CRDS) == set(KINDS)
    for kind, crd in CRDS.items():
        plural, _ = NAMES[kind]
        assert (CRD_DIR / f"{GROUP}_{plural}.yaml").is_file()
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{plural}.{GROUP}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_is_structural(kind: str) -> None:
    assert cv.structural_violations(_schema(kind)) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_names_version_and_subresources(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    plural, short = NAMES[kind]
    assert spec["group"] == GROUP == "patchwarden.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": short,
        "categories": ["patchwarden"],
    }
    assert short, "kubectl users need a short name"
    assert [v["name"] for v in spec["versions"]] == [VERSION] == ["v1alpha1"]
    version = spec["versions"][0]
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns_point_at_real_fields(kind: str) -> None:
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert len(columns) >= 3
    assert len({c["name"] for c in columns}) == len(columns)
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for column in columns:
        assert column["type"] in ("integer", "number", "string", "boolean", "date")
        assert column["jsonPath"].startswith((".spec.", ".status.", ".metadata."))
        if column["jsonPath"].startswith(".spec."):
            node = _node(kind, column["jsonPath"].removeprefix("."))
            assert node["type"] == column["type"], column


def test_all_short_names_are_distinct() -> None:
    names = [n for crd in CRDS.values() for n in crd["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", _crd_files(), ids=lambda p: p.name)
def test_crd_files_have_no_yaml_aliases(path: Path) -> None:
    # Shared nodes in the generated tree come out as &id001/*id001: legal, but unreadable in review.
    text = path.read_text()
    assert "&id0" not in text
    assert "*id0" not in text


# The checker must itself be able to fail, or the test above proves nothing.
_OK: Doc = {
    "type": "object",
    "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
}
_BAD_SCHEMAS: dict[str, tuple[Doc, str]] = {
    "untyped property": ({"properties": {"spec": {"properties": {}}}}, "spec: no type"),
    "$ref": ({"properties": {"spec": {"$ref": "#/definitions/Spec"}}}, "$ref is not allowed"),
    "$defs": ({"$defs": {}}, "$defs is not allowed"),
    "definitions": ({"definitions": {}}, "definitions is not allowed"),
    "default": ({"properties": {"a": {"type": "string", "default": "x"}}}, "default is not"),
    "title": ({"properties": {"a": {"type": "string", "title": "A"}}}, "title is not"),
    "const": ({"properties": {"a": {"type": "string", "const": "x"}}}, "const is not"),
    "typed anyOf": (
        {"properties": {"a": {"type": "string", "anyOf": [{"type": "string"}]}}},
        "type is not allowed inside",
    ),
    "described oneOf": (
        {"properties": {"a": {"type": "string", "oneOf": [{"description": "x"}]}}},
        "description is not allowed inside",
    ),
    "properties in allOf": (
        {"properties": {"a": {"type": "object", "allOf": [{"properties": {}}]}}},
        "properties is not allowed inside",
    ),
    "bad int-or-string": (
        {"properties": {"a": {"x-kubernetes-int-or-string": True, "type": "string"}}},
        "takes no type",
    ),
    "properties and additionalProperties": (
        {"properties": {"a": {"type": "object", "properties": {}, "additionalProperties": {}}}},
        "mutually exclusive",
    ),
    "metadata with fields": (
        {
            "properties": {
                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}}
            }
        },
        "metadata: must be exactly",
    ),
    "closed status": ({"properties": {"status": {"type": "object"}}}, "status: must be"),
    "untyped items": (
        {"properties": {"a": {"type": "array", "items": {"minLength": 1}}}},
        "a[]: no type",
    ),
    "empty required": ({"required": []}, "required must be a non-empty list"),
    "numeric exclusiveMinimum": (
        {"properties": {"a": {"type": "integer", "exclusiveMinimum": 0}}},
        "must be a boolean",
    ),
    "uniqueItems": (
        {"properties": {"a": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
        "uniqueItems",
    ),
    "unknown keyword": (
        {"properties": {"a": {"type": "string", "examples": ["x"]}}},
        "not a JSONSchemaProps field",
    ),
}


@pytest.mark.parametrize("name", sorted(_BAD_SCHEMAS))
def test_structural_checker_rejects(name: str) -> None:
    fragment, expected = _BAD_SCHEMAS[name]
    schema = copy.deepcopy(_OK)
    assert cv.structural_violations(schema) == []
    for key, value in fragment.items():
        if key == "properties":
            schema["properties"].update(value)
        else:
            schema[key] = value
    problems = cv.structural_violations(schema)
    assert any(expected in p for p in problems), problems


def test_structural_checker_accepts_int_or_string() -> None:
    schema = {
        "type": "object",
        "properties": {
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "a": {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "description": "count or percentage",
            },
        },
    }
    assert cv.structural_violations(schema) == []


# -- descriptions ------------------------------------------------------------------------------


def _field_docstrings(kind: str) -> Iterator[str]:
    """The description of every field of the kind's models, ``metadata`` (ObjectMeta) aside."""
    schema = KINDS[kind].model_json_schema(by_alias=True)
    models = [schema, *(d for n, d in schema["$defs"].items() if n != "ObjectMeta")]
    for model in models:
        for field in model.get("properties", {}).values():
            if "description" in field:
                yield " ".join(field["description"].split())


def _descriptions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node["description"]
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_docstring_reaches_the_crd(kind: str) -> None:
    expected = set(_field_docstrings(kind))
    assert len(expected) >= 2  # the models are documented
    missing = expected - {" ".join(d.split()) for d in _descriptions(_schema(kind))}
    assert not missing


def test_specific_descriptions() -> None:
    days = _node("PatchBaseline", "spec.approvalRules[].approveAfterDays")["description"]
    assert "days" in days
    assert "360" in days
    assert "hours" in _node("MaintenanceWindow", "spec.duration")["description"]
    connection = _node("ManagedInstance", "spec.connection")
    assert "type: ssh" in connection["description"]
    assert set(connection["properties"]["type"]["enum"]) == {"local", "ssh", "kubernetes"}


def _spec_properties(node: Doc, path: str) -> Iterator[tuple[str, Doc]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _spec_properties(child, f"{path}.{name}")
    if "items" in node:
        yield from _spec_properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _spec_properties(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_spec_field_is_described(kind: str) -> None:
    spec = _schema(kind)["properties"]["spec"]
    assert spec.get("description")
    undescribed = [p for p, n in _spec_properties(spec, "spec") if not n.get("description")]
    assert undescribed == []


def test_descriptions_are_not_hard_wrapped() -> None:
    # Docstrings wrap at 100 columns; `kubectl explain` rewraps, so a newline mid-sentence is noise.
    wrapped = [(kind, d) for kind in KINDS for d in _descriptions(_schema(kind)) if "\n" in d]
    assert wrapped == []


# -- the examples validate ---------------------------------------------------------------------


def _example_files() -> list[Path]:
    return sorted(
        p for p in EXAMPLES.rglob("*.yaml") if "inventories" not in p.relative_to(EXAMPLES).parts
    )


EXAMPLE_DOCS = list(cv.resources(_example_files()))


def test_examples_cover_every_kind() -> None:
    assert {doc["kind"] for _, doc in EXAMPLE_DOCS} == set(KINDS)
    assert all(doc["apiVersion"] == f"{GROUP}/{VERSION}" for _, doc in EXAMPLE_DOCS)


@pytest.mark.parametrize(("where", "doc"), EXAMPLE_DOCS, ids=[w for w, _ in EXAMPLE_DOCS])
def test_example_validates_against_its_crd(where: str, doc: Doc) -> None:
    assert cv.errors(CRDS[doc["kind"]], doc) == []


# -- broken resources are rejected, by the CRD and the model alike -----------------------------

BASE: dict[str, Doc] = {
    "PatchBaseline": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchBaseline",
        "metadata": {"name": "ubuntu-prod", "labels": {"team": "ops"}},
        "spec": {
            "operatingSystem": "UBUNTU",
            "approvalRules": [
                {
                    "patchFilterGroup": {
                        "patchFilters": [{"key": "PRIORITY", "values": ["Required", "Important"]}]
                    },
                    "approveAfterDays": 7,
                    "complianceLevel": "HIGH",
                }
            ],
            "approvedPatches": ["openssl"],
            "sources": [
                {
                    "name": "internal-mirror",
                    "products": ["Ubuntu22.04"],
                    "configuration": "deb http://mirror.example/ubuntu jammy-security main",
                }
            ],
        },
    },
    "PatchGroup": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "PatchGroup",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"role": "web"}}, "baselines": {"UBUNTU": "ubuntu"}},
    },
    "MaintenanceWindow": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "MaintenanceWindow",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "cron(0 2 ? * TUE *)",
            "duration": 4,
            "cutoff": 1,
            "targets": {"patchGroups": ["web"]},
            "tasks": [{"name": "install", "operation": "Install", "maxConcurrency": "10%"}],
        },
    },
    "ManagedInstance": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "ManagedInstance",
        "metadata": {"name": "web-1", "labels": {"role": "web"}},
        "spec": {"connection": {"type": "ssh", "host": "web-1.example.internal", "port": 2222}},
    },
    "ComplianceReport": {
        "apiVersion": "patchwarden.io/v1alpha1",
        "kind": "ComplianceReport",
        "metadata": {"name": "daily"},
        "spec": {"schedule": "cron(0 6 * * ? *)", "destination": "/srv/reports", "format": "json"},
    },
}


def _spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]
    return spec


def _rule(doc: Doc) -> Doc:
    rule: Doc = doc["spec"]["approvalRules"][0]
    return rule


def _task(doc: Doc) -> Doc:
    task: Doc = doc["spec"]["tasks"][0]
    return task


Mutation = Callable[[Doc], None]
# name -> (kind, mutation, path of the error, fragment of its message)
BROKEN: dict[str, tuple[str, Mutation, str, str]] = {
    "operatingSystem enum": (
        "PatchBaseline",
        lambda d: _spec(d).update(operatingSystem="UBUNTUX"),
        "spec.operatingSystem",
        "'UBUNTUX' is not one of",
    ),
    "approveAfterDays maximum": (
        "PatchBaseline",
        lambda d: _rule(d).update(approveAfterDays=400),
        "spec.approvalRules[0].approveAfterDays",
        "greater than the maximum of 360",
    ),
    "approveAfterDays minimum": (
        "PatchBaseline",
        lambda d: _rule(d).update(approveAfterDays=-1),
        "spec.approvalRules[0].approveAfterDays",
        "less than the minimum of 0",
    ),
    "PatchSource name pattern": (
        "PatchBaseline",
        lambda d: _spec(d)["sources"][0].update(name="a b"),
        "spec.sources[0].name",
        "does not match",
    ),
    "unknown spec field": (
        "PatchBaseline",
        lambda d: _spec(d).update(approvalRule=[]),
        "spec",
        "'approvalRule' was unexpected",
    ),
    "unknown nested field": (
        "PatchBaseline",
        lambda d: _rule(d).update(approveAfterDay=3),
        "spec.approvalRules[0]",
        "'approveAfterDay' was unexpected",
    ),
    "eleven approvalRules": (
        "PatchBaseline",
        lambda d: _spec(d).update(approvalRules=_spec(d)["approvalRules"] * 11),
        "spec.approvalRules",
        "is too long",
    ),
    "filter key enum": (
        "PatchBaseline",
        lambda d: _rule(d)["patchFilterGroup"]["patchFilters"][0].update(key="COLOUR"),
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].key",
        "is not one of",
    ),
    "missing operatingSystem": (
        "PatchBaseline",
        lambda d: _spec(d).pop("operatingSystem"),
        "spec",
        "'operatingSystem' is a required property",
    ),
    "baseline name pattern": (
        "PatchGroup",
        lambda d: _spec(d)["baselines"].update(UBUNTU="Ubuntu Prod"),
        "spec.baselines.UBUNTU",
        "does not match",
    ),
    "matchExpressions operator": (
        "PatchGroup",
        lambda d: _spec(d)["selector"].update(
            matchExpressions=[{"key": "role", "operator": "Equals", "values": ["web"]}]
        ),
        "spec.selector.matchExpressions[0].operator",
        "is not one of",
    ),
    "duration 25": (
        "MaintenanceWindow",
        lambda d: _spec(d).update(duration=25),
        "spec.duration",
        "greater than the maximum of 24",
    ),
    "no tasks": (
        "MaintenanceWindow",
        lambda d: _spec(d).update(tasks=[]),
        "spec.tasks",
        "should be non-empty",
    ),
    "maxErrors text": (
        "MaintenanceWindow",
        lambda d: _task(d).update(maxErrors="ten"),
        "spec.tasks[0].maxErrors",
        "does not match",
    ),
    "maxConcurrency integer 0": (
        "MaintenanceWindow",
        lambda d: _task(d).update(maxConcurrency=0),
        "spec.tasks[0].maxConcurrency",
        "less than the minimum of 1",
    ),
    "maxErrors negative integer": (
        "MaintenanceWindow",
        lambda d: _task(d).update(maxErrors=-1),
        "spec.tasks[0].maxErrors",
        "less than the minimum of 0",
    ),
    "maxConcurrency boolean": (
        "MaintenanceWindow",
        lambda d: _task(d).update(maxConcurrency=True),
        "spec.tasks[0].maxConcurrency",
        "is not of type",
    ),
    "connection type": (
        "ManagedInstance",
        lambda d: _spec(d)["connection"].update(type="telnet"),
        "spec.connection.type",
        "'telnet' is not one of",
    ),
    "connection port": (
        "ManagedInstance",
        lambda d: _spec(d)["connection"].update(port=70000),
        "spec.connection.port",
        "greater than the maximum of 65535",
    ),
    "report format": (
        "ComplianceReport",
        lambda d: _spec(d).update(format="pdf"),
        "spec.format",
        "'pdf' is not one of",
    ),
}


def _broken(name: str) -> tuple[str, Doc]:
    kind, mutate, _, _ = BROKEN[name]
    doc = copy.deepcopy(BASE[kind])
    mutate(doc)
    return kind, doc


@pytest.mark.parametrize("kind", sorted(BASE))
def test_base_documents_are_valid(kind: str) -> None:
    assert cv.errors(CRDS[kind], BASE[kind]) == []
    KINDS[kind].model_validate(BASE[kind])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_crd_rejects_broken_resource(name: str) -> None:
    kind, doc = _broken(name)
    _, _, path, message = BROKEN[name]
    found = cv.errors(CRDS[kind], doc)
    assert found, f"{name} was accepted"
    # Every error names the broken field, and at least one says what is wrong with it.
    assert all(p == path for p, _ in found), found
    assert any(message in m for _, m in found), found


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_model_agrees_with_crd_on_broken_resource(name: str) -> None:
    kind, doc = _broken(name)
    with pytest.raises(ValidationError):
        KINDS[kind].model_validate(doc)


ACCEPTED: dict[str, tuple[str, Mutation]] = {
    "approveAfterDays 0": ("PatchBaseline", lambda d: _rule(d).update(approveAfterDays=0)),
    "approveAfterDays 360": ("PatchBaseline", lambda d: _rule(d).update(approveAfterDays=360)),
    "ten approvalRules": (
        "PatchBaseline",
        lambda d: _spec(d).update(approvalRules=_spec(d)["approvalRules"] * 10),
    ),
    "approveUntilDate": (
        "PatchBaseline",
        lambda d: (
            _rule(d).update(approveUntilDate="2026-10-31", approveAfterDays=None)
            or _rule(d).pop("approveAfterDays")
        ),
    ),
    "duration 24": ("MaintenanceWindow", lambda d: _spec(d).update(duration=24)),
    # SSM writes these as strings; the model also takes integers, so the CRD must too.
    "maxErrors integer": ("MaintenanceWindow", lambda d: _task(d).update(maxErrors=1)),
    "maxErrors integer 0": ("MaintenanceWindow", lambda d: _task(d).update(maxErrors=0)),
    "maxConcurrency integer": ("MaintenanceWindow", lambda d: _task(d).update(maxConcurrency=10)),
    "maxConcurrency percent": (
        "MaintenanceWindow",
        lambda d: _task(d).update(maxConcurrency="100%"),
    ),
    "local connection": (
        "ManagedInstance",
        lambda d: _spec(d).update(connection={"type": "local", "root": "/srv/fleet/a"}),
    ),
    "status is free-form": (
        "ManagedInstance",
        lambda d: d.update(status={"complianceStatus": "COMPLIANT", "anything": [1, {"x": 2}]}),
    ),
    "empty PatchGroup spec": ("PatchGroup", lambda d: d.update(spec={})),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_crd_and_model_accept(name: str) -> None:
    kind, mutate = ACCEPTED[name]
    doc = copy.deepcopy(BASE[kind])
    mutate(doc)
    assert cv.errors(CRDS[kind], doc) == []
    KINDS[kind].model_validate(doc)


# -- patchctl crds ------------------------------------------------------------------------------


def _patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "crds", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def crd_copy(tmp_path: Path) -> Path:
    out = tmp_path / "crds"
    out.mkdir()
    for path in _crd_files():
        (out / path.name).write_bytes(path.read_bytes())
    return out


def test_check_passes_on_committed_crds(crd_copy: Path) -> None:
    result = _patchctl("--out", str(crd_copy), "--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_modified_crd(crd_copy: Path) -> None:
    target = crd_copy / f"{GROUP}_maintenancewindows.yaml"
    target.write_text(target.read_text().replace("maximum: 24", "maximum: 48"))
    result = _patchctl("--out", str(crd_copy), "--check")
    assert result.returncode == 1
    assert target.name in result.stderr
    assert f"{GROUP}_patchbaselines.yaml" not in result.stderr


def test_check_fails_on_a_missing_crd(crd_copy: Path) -> None:
    (crd_copy / f"{GROUP}_patchgroups.yaml").unlink()
    result = _patchctl("--out", str(crd_copy), "--check")
    assert result.returncode == 1
    assert "patchgroups" in result.stderr


def test_generate_writes_the_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    result = _patchctl("--out", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == [p.name for p in _crd_files()]
    assert len(written) == 8
    match, mismatch, errors = filecmp.cmpfiles(out, CRD_DIR, written, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert len(match) == 8
