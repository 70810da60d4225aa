"""Stage: api. CustomResourceDefinitions generated from the models, so the schema exists once.

Turns each kind's pydantic JSON Schema into a *structural* ``apiextensions.k8s.io/v1`` schema:
references inlined, every node typed, ``X | None`` reduced to ``X`` (optional = not required),
unions of objects merged, titles and defaults dropped, ``metadata`` left to the API server and
``status`` open. Only keywords that ``JSONSchemaProps`` knows are kept, in their OpenAPI 3.0 form.
Field docstrings become ``description``s. Pure: returns dicts; ``patchctl crds`` writes them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from reconciler.api.resources import GROUP, KINDS, NAMES, VERSION

_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "PatchBaseline": [
        {"name": "OS", "type": "string", "jsonPath": ".spec.operatingSystem"},
        {"name": "Default", "type": "boolean", "jsonPath": ".spec.defaultBaseline"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        _AGE,
    ],
    "PatchGroup": [
        {"name": "Instances", "type": "integer", "jsonPath": ".status.instances"},
        {"name": "Non-compliant", "type": "integer", "jsonPath": ".status.instancesNonCompliant"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        _AGE,
    ],
    "MaintenanceWindow": [
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Duration", "type": "integer", "jsonPath": ".spec.duration"},
        {"name": "Enabled", "type": "boolean", "jsonPath": ".spec.enabled"},
        {"name": "Next", "type": "string", "jsonPath": ".status.nextExecutionTime"},
        _AGE,
    ],
    "ManagedInstance": [
        {"name": "Connection", "type": "string", "jsonPath": ".spec.connection.type"},
        {"name": "OS", "type": "string", "jsonPath": ".status.operatingSystem"},
        {"name": "Compliance", "type": "string", "jsonPath": ".status.complianceStatus"},
        {"name": "Missing", "type": "integer", "jsonPath": ".status.missingCount"},
        _AGE,
    ],
    "InstanceSource": [
        {"name": "Machines", "type": "integer", "jsonPath": ".status.machines"},
        {"name": "Error", "type": "string", "jsonPath": ".status.error"},
        _AGE,
    ],
    "ComplianceReport": [
        {"name": "Format", "type": "string", "jsonPath": ".spec.format"},
        {"name": "Destination", "type": "string", "jsonPath": ".spec.destination"},
        {"name": "Last export", "type": "date", "jsonPath": ".status.lastExportTime"},
        _AGE,
    ],
    "Rollout": [
        # Written once the loop drives rollouts (issue 15 groundwork: empty until then).
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        _AGE,
    ],
    "ChangeCalendar": [
        # Open or closed changes with the clock, not with a pass: `patchctl calendar state`.
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        _AGE,
    ],
}

# Value validations copied as they are; the structure (properties, items, ...) is rebuilt, and every
# other JSON Schema keyword (title, default, const, discriminator, propertyNames, examples, ...)
# either has no place in a structural schema or is not an apiextensions.k8s.io/v1 field.
_KEEP = frozenset(
    {
        "description",
        "type",
        "format",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
    }
)
_SCALARS = frozenset({"string", "integer", "number", "boolean"})
_INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]

# Fields the models take as an integer or a string although their JSON Schema only says string (a
# `mode="before"` validator turns integers into text): (model, field) -> the smallest integer the
# string pattern accepts. Kubernetes would otherwise reject `maxErrors: 1`, which the loader takes.
INT_OR_STRING: dict[tuple[str, str], int] = {
    ("WindowTask", "maxConcurrency"): 1,
    ("WindowTask", "maxErrors"): 0,
}


def custom_resource_definitions() -> dict[str, dict[str, Any]]:
    """File name -> CRD document, one per kind."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in KINDS.items():
        plural, short = NAMES[kind]
        schema = model.model_json_schema(by_alias=True)
        structural = _structural(schema, schema.get("$defs", {}))
        structural["properties"]["metadata"] = {"type": "object"}
        structural["properties"]["status"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "Observed state, written by the controller.",
        }
        structural["properties"]["apiVersion"] = {"type": "string"}
        structural["properties"]["kind"] = {"type": "string"}
        if "required" in structural:
            structural["required"] = [
                r for r in structural["required"] if r not in ("apiVersion", "kind", "metadata")
            ]
            if not structural["required"]:  # OpenAPI 3.0: `required` must not be empty
                del structural["required"]
        out[f"{GROUP}_{plural}.yaml"] = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {
                "group": GROUP,
                "names": {
                    "kind": kind,
                    "listKind": f"{kind}List",
                    "plural": plural,
                    "singular": kind.lower(),
                    "shortNames": list(short),
                    "categories": ["patchwarden"],
                },
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS[kind]),
                        "schema": {"openAPIV3Schema": structural},
                    }
                ],
            },
        }
    return out


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node, model = _inline(node, defs)
    options = node.get("anyOf") or node.get("oneOf")
    if options:
        return _union(
            node,
            [o for o in (_inline(o, defs)[0] for o in options) if o.get("type") != "null"],
            defs,
        )
    # Copies, so that a definition used twice does not become one shared (YAML-aliased) node.
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in node.items() if k in _KEEP}
    if "description" in out:
        out["description"] = _prose(out["description"])
    if "const" in node:
        out["enum"] = [node["const"]]
        out.setdefault("type", "string")
    # JSON Schema 2020-12 writes exclusive bounds as numbers, OpenAPI 3.0 as booleans.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), int | float) and not isinstance(node[exclusive], bool):
            out[bound] = node[exclusive]
            out[exclusive] = True
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {}
        for name, child in node["properties"].items():
            prop = _structural(child, defs)
            minimum = INT_OR_STRING.get((model, name)) if model else None
            if minimum is not None:
                prop = _int_or_string(prop, minimum)
            out["properties"][name] = prop
    elif isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    elif node.get("type") == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
        # uniqueItems: true is forbidden in CRDs; a list of scalars can be declared a set instead.
        if node.get("uniqueItems") is True and out["items"].get("type") in _SCALARS:
            out["x-kubernetes-list-type"] = "set"
    if not out.get("required"):
        out.pop("required", None)
    return out


def _union(
    parent: dict[str, Any], options: list[dict[str, Any]], defs: dict[str, Any]
) -> dict[str, Any]:
    description = parent.get("description")
    merged: dict[str, Any]
    if len(options) == 1:
        merged = _structural(options[0], defs)
    elif all(o.get("type") == "object" for o in options):
        # A discriminated union: one object with every variant's fields; the loader checks variants.
        merged = {"type": "object", "properties": {}}
        required: set[str] | None = None
        type_enum: list[Any] = []
        for option in options:
            sub = _structural(option, defs)
            merged["properties"].update(sub.get("properties", {}))
            type_enum += sub.get("properties", {}).get("type", {}).get("enum", [])
            required = (
                set(sub.get("required", []))
                if required is None
                else required & set(sub.get("required", []))
            )
        if type_enum:
            merged["properties"]["type"] = {
                "type": "string",
                "enum": type_enum,
                "description": f"One of {', '.join(map(str, type_enum))}; it decides which of the "
                "other fields apply.",
            }
        if required:
            merged["required"] = sorted(required)
    elif {o.get("type") for o in options} == {"integer", "string"}:
        merged = _int_or_string({}, None)
    else:
        merged = {"x-kubernetes-preserve-unknown-fields": True}
    if description:
        merged["description"] = _prose(description)
    return merged


def _int_or_string(node: dict[str, Any], minimum: int | None) -> dict[str, Any]:
    """``node`` (a string schema) as Kubernetes' int-or-string: no ``type``, the one allowed
    ``anyOf``; ``pattern`` still constrains strings and ``minimum`` integers."""
    out = {k: v for k, v in node.items() if k != "type"}
    out["x-kubernetes-int-or-string"] = True
    out["anyOf"] = copy.deepcopy(_INT_OR_STRING_ANYOF)
    if minimum is not None:
        out["minimum"] = minimum
    return out


def _inline(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The node with its ``$ref``s resolved, and the name of the definition it came from."""
    name = None
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = dict(defs[name])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra}
    return node, name


def _prose(text: str) -> str:
    """A docstring as one paragraph per blank-line-separated block: `kubectl explain` rewraps it."""
    return "\n\n".join(" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip()))
