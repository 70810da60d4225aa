"""Stage: api. The base of every schema model: frozen, camelCase on the wire, no unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Frozen value with SSM's camelCase field names on the wire and snake_case in Python.

    Unknown fields are errors (a misspelt field must never be silently ignored), and a field's
    docstring becomes its description in the JSON Schema and so in the generated CRDs.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        str_strip_whitespace=False,
    )

    def to_wire(self) -> dict[str, object]:
        """The document as it is written in YAML/JSON: camelCase, defaults left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
