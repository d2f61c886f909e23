"""Decoding constraints: a JSON schema as the runtimes' guided decoding should read it.

``slmk run --json-schema`` and the server's ``response_format`` both constrain with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: llguidance's option for compact JSON: with flexible whitespace a small model may
#: write spaces until its token budget ends instead of the next value.
COMPACT_JSON = {"whitespace_flexible": False}


def constraint_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` as a decoding constraint: compact JSON (llguidance's option, unless the schema
    sets its own), and objects that list their properties get no others unless they say
    ``additionalProperties`` (as llama-server reads schemas, and OpenAI's strict mode
    requires): a small model otherwise invents keys until its token budget ends."""
    return {"x-guidance": COMPACT_JSON, **_closed(schema)}


# keywords whose value maps names to schemas, and keywords whose value is data, not a schema
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_VALUES = ("const", "enum", "default", "examples")


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):  # name -> schema, not a schema itself
            out[key] = {name: _closed(schema) for name, schema in value.items()}
        else:
            out[key] = value if key in _VALUES else _closed(value)
    if isinstance(out.get("properties"), Mapping) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
