"""Chat templates (rendered in a bounded sandbox), PromptTemplate derivation and checks, output constraints.

Importing this module loads Jinja; import it where a template is rendered, not at a
plugin's top level when the plugin only declares records.
"""

from __future__ import annotations

from ..constraints import constraint_schema
from ..prompt_template import (
    check_round_trip,
    derive_prompt_template,
    model_identity,
    resolve_family,
    resolve_template,
    sample_rendering,
)
from ..sandbox import TemplateError, render_chat_template, special_tokens_for

__all__ = [
    "TemplateError",
    "check_round_trip",
    "constraint_schema",
    "derive_prompt_template",
    "model_identity",
    "render_chat_template",
    "resolve_family",
    "resolve_template",
    "sample_rendering",
    "special_tokens_for",
]
