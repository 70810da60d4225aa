"""Stage: api. CustomResourceDefinitions generated from the models, so the schema exists once.

Turns each kind's pydantic JSON Schema into a *structural* ``apiextensions.k8s.io/v1`` schema:
references inlined, every node typed, ``X | None`` reduced to ``X`` (optional = not required),
unions of objects merged, titles and defaults dropped, ``metadata`` left to the API server and
``status`` open. Field docstrings become ``description``s. Pure: returns dicts; ``patchctl crds``
writes them.
"""

from __future__ import annotations

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
    "ComplianceReport": [
        {"name": "Format", "type": "string", "jsonPath": ".spec.format"},
        {"name": "Destination", "type": "string", "jsonPath": ".spec.destination"},
        {"name": "Last export", "type": "date", "jsonPath": ".status.lastExportTime"},
        _AGE,
    ],
}

_DROP = {"title", "default", "discriminator"}


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
        structural["required"] = [
            r for r in structural.get("required", []) if r not in ("apiVersion", "kind", "metadata")
        ]
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
                    "shortNames": short,
                    "categories": ["patchwarden"],
                },
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                        "schema": {"openAPIV3Schema": structural},
                    }
                ],
            },
        }
    return out


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _inline(node, defs)
    options = node.get("anyOf") or node.get("oneOf")
    if options:
        return _union(
            node, [o for o in (_inline(o, defs) for o in options) if o.get("type") != "null"], defs
        )
    out: dict[str, Any] = {
        k: v
        for k, v in node.items()
        if k not in _DROP
        and k not in ("$defs", "properties", "items", "additionalProperties", "const", "$ref")
    }
    if "const" in node:
        out["enum"] = [node["const"]]
        out.setdefault("type", "string")
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    elif node.get("type") == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    out.pop("propertyNames", None)  # enum-constrained map keys are not expressible in a CRD
    return out


def _union(
    parent: dict[str, Any], options: list[dict[str, Any]], defs: dict[str, Any]
) -> dict[str, Any]:
    description = parent.get("description")
    if len(options) == 1:
        merged = _structural(options[0], defs)
    elif all(o.get("type") == "object" for o in options):
        # A discriminated union: one object with every variant's fields; the loader checks variants.
        merged = {"type": "object", "properties": {}}
        required: set[str] | None = None
        for option in options:
            sub = _structural(option, defs)
            merged["properties"].update(sub.get("properties", {}))
            required = (
                set(sub.get("required", []))
                if required is None
                else required & set(sub.get("required", []))
            )
        type_enum = [
            e
            for o in options
            for e in _structural(o, defs)["properties"].get("type", {}).get("enum", [])
        ]
        if type_enum:
            merged["properties"]["type"] = {"type": "string", "enum": type_enum}
        if required:
            merged["required"] = sorted(required)
    elif {o.get("type") for o in options} == {"integer", "string"}:
        merged = {"x-kubernetes-int-or-string": True}
    else:
        merged = {"x-kubernetes-preserve-unknown-fields": True}
    if description:
        merged["description"] = description
    return merged


def _inline(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra}
    return node
