"""Offline checks of CustomResourceDefinitions (a test helper, not a test module).

Two things the API server would do, without an API server:

* :func:`validator` validates a custom resource against a CRD's ``openAPIV3Schema`` with
  jsonschema (Draft 7, which is closest to OpenAPI 3.0's schema dialect). The Kubernetes extensions
  are mapped: ``x-kubernetes-int-or-string`` becomes ``type: [integer, string]``, ``nullable``
  admits ``null``, and every object with ``properties`` gets ``additionalProperties: false`` unless
  it has ``x-kubernetes-preserve-unknown-fields`` -- the server would silently *prune* such a field,
  which for a GitOps tool is as bad as rejecting it. CEL rules and defaults are not evaluated.
* :func:`structural_violations` checks that a schema is *structural* as Kubernetes defines it
  (custom-resource-definitions/#specifying-a-structural-schema in the Kubernetes docs), plus this
  project's own rules: no ``default``, ``title`` or ``const``, ``metadata`` left to the server,
  ``status`` open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from reconciler.api.yamldocs import documents

# Fields of apiextensions.k8s.io/v1 JSONSchemaProps; anything else is rejected by the server.
K8S_SCHEMA_KEYS = frozenset(
    {
        "id",
        "$schema",
        "$ref",
        "description",
        "type",
        "format",
        "title",
        "default",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "multipleOf",
        "enum",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "allOf",
        "oneOf",
        "anyOf",
        "not",
        "properties",
        "additionalProperties",
        "patternProperties",
        "dependencies",
        "additionalItems",
        "definitions",
        "externalDocs",
        "example",
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
_XOF = ("allOf", "anyOf", "oneOf")
# Inside allOf/anyOf/oneOf/not only value validations are allowed (structural rule 3); this
# project also keeps properties out of them.
_FORBIDDEN_IN_XOF = frozenset(
    {"type", "description", "default", "additionalProperties", "nullable", "title", "properties"}
)
# Never emitted by the generator (project rule); `$ref`/`$defs`/`definitions` are not structural.
_FORBIDDEN_ANYWHERE = frozenset({"$ref", "$defs", "definitions", "default", "title", "const"})
_INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]
# Go's RE2 (the API server's regex engine) has no lookaround and no backreferences.
_NOT_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]")


# -- loading -----------------------------------------------------------------------------------


def load_crd(path: Path) -> dict[str, Any]:
    """The one CustomResourceDefinition in a YAML file."""
    crd = yaml.safe_load(path.read_text())
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return crd


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """``spec.versions[0].schema.openAPIV3Schema`` of a CRD."""
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def resources(paths: Iterable[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, document)`` for every non-empty YAML document, read the way the loader does
    (YAML 1.1 timestamps stay text, as they do on their way to the API server)."""
    for path in paths:
        for doc in documents(path.read_text()):
            if doc.data is not None:
                yield f"{path.name}:{doc.line}", doc.data


# -- validation --------------------------------------------------------------------------------


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A Draft 7 JSON Schema that accepts what the API server accepts for this OpenAPI node."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value)
        elif key in _XOF:
            out[key] = [to_json_schema(v) for v in value]
        elif not key.startswith("x-kubernetes-") and key not in ("nullable", "example"):
            out[key] = value
    # OpenAPI 3.0 (draft 4) writes exclusive bounds as booleans beside minimum/maximum.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
        if out.get("anyOf") == _INT_OR_STRING_ANYOF:
            del out["anyOf"]
    if node.get("nullable"):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # the server would prune the field; we reject it
    return out


def validator(crd: dict[str, Any]) -> Draft7Validator:
    """A validator for custom resources of the CRD's (first) version."""
    schema = to_json_schema(openapi_schema(crd))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=FormatChecker())


def json_path(error: ValidationError) -> str:
    """``spec.approvalRules[0].approveAfterDays`` for an error's location."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def errors(crd: dict[str, Any], resource: dict[str, Any]) -> list[tuple[str, str]]:
    """``(path, message)`` for every way the resource violates the CRD schema; empty when valid."""
    found = validator(crd).iter_errors(resource)
    return sorted((json_path(e), e.message) for e in found)


# -- structural schemas ------------------------------------------------------------------------


def structural_violations(schema: dict[str, Any]) -> list[str]:
    """Every way an ``openAPIV3Schema`` is not a structural schema; empty when it is."""
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append("(root): type must be object")
    props = schema.get("properties", {})
    if "metadata" in props and props["metadata"] != {"type": "object"}:
        problems.append("metadata: must be exactly {type: object}; the API server owns it")
    status = props.get("status")
    if status is None:
        problems.append("status: missing")
    elif (
        status.get("type") != "object"
        or status.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        problems.append("status: must be type: object with x-kubernetes-preserve-unknown-fields")
    _walk(schema, "(root)", problems, in_xof=False)
    return problems


def _walk(node: Any, where: str, problems: list[str], *, in_xof: bool) -> None:
    def problem(text: str) -> None:
        problems.append(f"{where}: {text}")

    if not isinstance(node, dict):
        problem(f"a schema must be a mapping, not {type(node).__name__}")
        return
    unknown = set(node) - K8S_SCHEMA_KEYS - {"$defs", "const"}
    if unknown:
        problem(f"not a JSONSchemaProps field: {sorted(unknown)}")
    for key in sorted(_FORBIDDEN_ANYWHERE & set(node)):
        problem(f"{key} is not allowed")

    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is not None and preserve is not True:
        problem("x-kubernetes-preserve-unknown-fields must be true when given")
    kind = node.get("type")
    if in_xof:
        for key in sorted(_FORBIDDEN_IN_XOF & set(node)):
            problem(f"{key} is not allowed inside allOf/anyOf/oneOf/not")
    elif kind is None:
        if not (int_or_string or preserve):
            problem("no type")
    elif kind not in _TYPES:
        problem(f"type must be one of {sorted(_TYPES)}, not {kind!r}")

    if int_or_string:
        if kind is not None:
            problem("x-kubernetes-int-or-string: true takes no type")
        if "anyOf" in node and node["anyOf"] != _INT_OR_STRING_ANYOF:
            problem("x-kubernetes-int-or-string: anyOf must be [{type: integer}, {type: string}]")
    if "properties" in node and not in_xof and kind != "object":
        problem("properties on a node that is not type: object")
    if "items" in node and not in_xof and kind != "array":
        problem("items on a node that is not type: array")
    if kind == "array" and "items" not in node:
        problem("an array needs items")
    if "properties" in node and "additionalProperties" in node:
        problem("properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False and preserve:
        problem("additionalProperties: false with x-kubernetes-preserve-unknown-fields")
    if node.get("uniqueItems") is True:
        problem("uniqueItems: true is not allowed (use x-kubernetes-list-type: set)")
    for exclusive in ("exclusiveMinimum", "exclusiveMaximum"):
        if exclusive in node and not isinstance(node[exclusive], bool):
            problem(f"{exclusive} must be a boolean in OpenAPI 3.0")
    if "required" in node:
        required = node["required"]
        if not isinstance(required, list) or not required:
            problem("required must be a non-empty list (omit it instead)")
        elif not in_xof and "properties" in node:
            missing = sorted(set(required) - set(node["properties"]))
            if missing:
                problem(f"required names fields that are not properties: {missing}")
    if "enum" in node and None in node["enum"] and not node.get("nullable"):
        problem("enum contains null but the node is not nullable")
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            problem(f"pattern does not compile: {exc}")
        if _NOT_RE2.search(node["pattern"]):
            problem("pattern uses lookaround or backreferences, which RE2 does not support")
    if "description" in node and not (isinstance(node["description"], str) and node["description"]):
        problem("description must be a non-empty string")

    for name, child in node.get("properties", {}).items():
        _walk(child, f"{where}.{name}".removeprefix("(root)."), problems, in_xof=in_xof)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{where}[]", problems, in_xof=in_xof)
    elif "items" in node:
        problem("items must be a single schema, not a list")
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{where}{{}}", problems, in_xof=in_xof)
    for key in _XOF:
        if key == "anyOf" and int_or_string and node.get("anyOf") == _INT_OR_STRING_ANYOF:
            continue  # the one x-of form that may carry types
        for i, option in enumerate(node.get(key, [])):
            _walk(option, f"{where}.{key}[{i}]", problems, in_xof=True)
    if "not" in node:
        _walk(node["not"], f"{where}.not", problems, in_xof=True)
