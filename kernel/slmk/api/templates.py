"""Chat templates (rendered in a bounded sandbox), PromptTemplate derivation and checks, tool calls.

Importing this module loads Jinja; import it where a template is rendered, not at a
plugin's top level when the plugin only declares records.
"""

from __future__ import annotations

from ..templates import (
    TemplateError,
    check_round_trip,
    derive_prompt_template,
    model_identity,
    render_chat_template,
    resolve_family,
    resolve_template,
    sample_rendering,
    special_tokens_for,
)
from ..toolcalls import constraint_schema, format_tool_calls, parse_tool_calls, tool_call_grammar

__all__ = [
    "TemplateError",
    "check_round_trip",
    "constraint_schema",
    "derive_prompt_template",
    "format_tool_calls",
    "model_identity",
    "parse_tool_calls",
    "render_chat_template",
    "resolve_family",
    "resolve_template",
    "sample_rendering",
    "special_tokens_for",
    "tool_call_grammar",
]
