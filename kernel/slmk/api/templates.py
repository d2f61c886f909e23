"""Chat templates (rendered in a bounded sandbox), PromptTemplate derivation and checks, output constraints.

Rendering and derivation are the template engine's (a ``TemplateEngine`` record of the
``slmk_template_engines`` hook; the built-in one is ``slmk_templates``): each function here
asks the process-wide registry for the highest priority engine and calls it, so a caller
never imports the engine and importing this module loads no Jinja. A registry passed in
says which families compete for a model. The errors are the kernel's, catchable without
loading an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constraints import constraint_schema
from ..errors import (
    ChatTemplateError,
    ChatTemplateSyntaxError,
    RenderLimitError,
    SlmkError,
    TemplateError,
    TemplateMismatch,
    UnsafeTemplateError,
)
from ..modelinfo import ModelInfo
from ..records import ModelFamily, PromptTemplate, ResolvedTemplate, TemplateEngine

if TYPE_CHECKING:
    from ..plugins import Registry

__all__ = [
    "ChatTemplateError",
    "ChatTemplateSyntaxError",
    "RenderLimitError",
    "ResolvedTemplate",
    "TemplateError",
    "TemplateMismatch",
    "UnsafeTemplateError",
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


def _engine() -> TemplateEngine:
    """The template engine slmk uses: the highest priority one installed; one line when there is none."""
    from ..plugins import get_registry

    registry = get_registry()
    if not registry.template_engines:
        raise SlmkError(
            "no template engine is installed: slmk renders and checks chat templates with one",
            hint="SLMK_DISABLE_PLUGINS or SLMK_LOAD_PLUGINS may leave slmk's own out; "
            "`slmk plugins` lists what is loaded",
        )
    return registry.get("slmk_template_engines")


def render_chat_template(
    chat_template: str,
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | Iterable[str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **template_vars: Any,
) -> str:
    """A chat template rendered as transformers' ``apply_chat_template(tokenize=False)`` does, bounded
    whatever the template does; any failure is one ``ChatTemplateError`` line. ``special_tokens``:
    a ``special_tokens_for(info)`` mapping (or a list of token strings); ``tools``: OpenAI-style
    function tools; ``template_vars``: extra variables (``enable_thinking`` ...)."""
    return _engine().render_chat_template(
        chat_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        special_tokens=special_tokens,
        tools=tools,
        **template_vars,
    )


def special_tokens_for(info: ModelInfo) -> dict[str, str]:
    """What transformers passes to a model's chat template: its ``special_tokens_map``."""
    return _engine().special_tokens_for(info)


def derive_prompt_template(
    chat_template: str,
    special_tokens: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    source: str = "chat_template",
) -> PromptTemplate:
    """The PromptTemplate of a chat template, proved by ``check_round_trip``; ``TemplateError`` when it
    cannot be cut into four pieces."""
    return _engine().derive_prompt_template(chat_template, special_tokens, source=source)


def check_round_trip(
    chat_template: str, template: PromptTemplate, special_tokens: Mapping[str, Any] | Iterable[str] | None = None
) -> Any:
    """Prove the pieces, filled in, render what the chat template renders: a report (``checked``,
    ``skipped``, ``notes``), or ``TemplateMismatch`` naming the conversation and the first difference."""
    return _engine().check_round_trip(chat_template, template, special_tokens)


def sample_rendering(info: ModelInfo) -> str | None:
    """The model's chat template rendered for a sample conversation, or None without a usable one:
    family plugins look for their turn markers here (templates often build them at render time)."""
    return _engine().sample_rendering(info)


def resolve_template(registry: Registry, info: ModelInfo, template_file: Path | None = None) -> ResolvedTemplate:
    """The PromptTemplate for a model: ``template_file`` (JSON pieces or a Jinja chat template), else
    the best family of ``registry``, else the one derived from the model's chat template."""
    return _engine().resolve_template(registry, info, template_file)


def resolve_family(registry: Registry, info: ModelInfo) -> ModelFamily | None:
    """The family of ``registry`` that scores highest for this model (ties: by name), or None."""
    return registry.model_family(info)


def model_identity(info: ModelInfo) -> tuple[str, tuple[str, ...]]:
    """``model_type`` and ``architectures`` of an HF folder, or of the model an slmk build came from."""
    return info.identity()
