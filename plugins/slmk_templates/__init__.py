"""slmk's template engine: chat templates rendered as transformers renders them, bounded, and
Foundry Local's four-piece PromptTemplate derived from them and proved by a round trip.

- template engine ``jinja`` (hook ``slmk_template_engines``): what ``slmk.api.templates`` calls
  for the kernel (``install``, ``inspect``, the check before a runtime loads a build) and for
  the plugins (families, the Foundry installer, the transformers runtime, deploy);
- command ``slmk template show``: the PromptTemplate slmk writes for a model, and its source.

``sandbox.py`` renders in a metered Jinja sandbox inside the limited worker process of
``render_worker.py`` (``python -m slmk_templates.render_worker``); ``prompt_template.py``
derives, checks and resolves the pieces. Module level imports no Jinja: it loads with the
first rendering.
"""

from __future__ import annotations

from slmk.api import Command, TemplateEngine, hookimpl

from .prompt_template import check_round_trip, derive_prompt_template, resolve_template, sample_rendering
from .sandbox import render_chat_template, special_tokens_for

ENGINE = TemplateEngine(
    name="jinja",
    description="transformers' sandboxed Jinja, metered, in a limited worker process; PromptTemplate derivation",
    render_chat_template=render_chat_template,
    special_tokens_for=special_tokens_for,
    derive_prompt_template=derive_prompt_template,
    check_round_trip=check_round_trip,
    sample_rendering=sample_rendering,
    resolve_template=resolve_template,
)


def _template_command():
    from .command import template

    return template


@hookimpl
def slmk_template_engines():
    yield ENGINE


@hookimpl
def slmk_commands():
    yield Command(
        "template", "Prompt templates: what slmk will write for a model, and where it came from.", _template_command
    )
