"""Stage: api. JSON Schemas for editors, one per kind, generated from the models (as the CRDs are,
so the schema exists once): ``patchctl schema`` writes them, ``schemas/`` holds the committed
copy that the examples' ``# yaml-language-server: $schema=...`` modelines name (docs/editors.md).

Unlike a CRD's structural schema, these keep pydantic's JSON Schema as it is (``$defs``,
``anyOf``, titles, defaults: what an editor shows while completing), with two changes: the
draft is declared, and the fields the models read from YAML integers as well as strings
(``crd.INT_OR_STRING``) accept both, as validation does. Pure: returns dicts; no I/O.
"""

from __future__ import annotations

import copy
from typing import Any

from reconciler.api.crd import INT_OR_STRING
from reconciler.api.resources import KINDS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""pydantic writes 2020-12 (``$defs``); yaml-language-server and ``jsonschema`` read it."""

MODELINE = "# yaml-language-server: $schema="
"""The comment that tells yaml-language-server (VS Code's redhat.vscode-yaml, neovim's yamlls)
which schema a file's documents follow."""


def file_name(kind: str) -> str:
    """The schema file of ``kind``: ``patchbaseline.json``."""
    return f"{kind.lower()}.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, one per kind."""
    out: dict[str, dict[str, Any]] = {}
    for kind, model in KINDS.items():
        schema = model.model_json_schema(by_alias=True)
        defs = schema.get("$defs", {})
        for (definition, field), minimum in INT_OR_STRING.items():
            node = defs.get(definition, {}).get("properties", {}).get(field)
            if node is not None:
                defs[definition]["properties"][field] = _int_or_string(node, minimum)
        out[file_name(kind)] = {"$schema": DIALECT, **schema}
    return out


def _int_or_string(node: dict[str, Any], minimum: int) -> dict[str, Any]:
    """A string field that also takes a YAML integer (``maxConcurrency: 1``)."""
    shown = {k: v for k, v in node.items() if k in ("title", "description", "default")}
    string = {k: copy.deepcopy(v) for k, v in node.items() if k not in shown}
    return {**shown, "anyOf": [{"type": "integer", "minimum": minimum}, string]}
