"""Structured outputs: OpenAI's ``response_format``, enforced by the runtime's constrained decoding.

``json_object`` and ``json_schema`` become a JSON-schema constraint (``guidance``) that the
runtime applies token by token, so the answer parses (and matches the schema) whenever it
ends on its own; only a ``max_tokens`` cut can leave it unfinished (``finish_reason:
"length"``, as OpenAI). A runtime that cannot constrain is refused with a 400, never
answered with unconstrained prose.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmk.api.templates import constraint_schema

from .workers import ModelWorker, Refused


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # "schema" shadows a BaseModel attribute: kept under another name, read and written as "schema"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # always constrained: strict or not, the answer follows the schema


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def guidance_of(response_format: ResponseFormat | None) -> tuple[str, str] | None:
    """The runtime constraint for ``response_format`` (None: free text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json_schema", json.dumps(constraint_schema({"type": "object"}))
    spec = response_format.json_schema
    if spec is None:
        raise Refused(
            400,
            'response_format of type json_schema needs a json_schema object: {"name": ..., "schema": {...}}',
            code="invalid_value",
            param="response_format.json_schema",
        )
    schema = spec.json_schema if spec.json_schema is not None else {}
    return "json_schema", json.dumps(constraint_schema(schema))


def check_can_constrain(worker: ModelWorker, param: str = "response_format") -> None:
    """Refuse a constrained request for a model whose runtime cannot constrain its output."""
    sessions = getattr(worker, "sessions", None) or [None]
    if "json_schema" not in (getattr(sessions[0], "guidance_kinds", None) or ()):
        raise Refused(
            400,
            f"{param}: the {worker.runtime} runtime serving {worker.name} cannot constrain its output "
            "(structured outputs and forced tool calls need it); serve the model with the ortgenai runtime",
            code="unsupported_parameter",
            param=param,
        )
