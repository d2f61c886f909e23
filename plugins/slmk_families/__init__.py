"""Prompt formats of the major small-model families: Qwen2/2.5, Qwen3, SmolLM, Phi-3/3.5/4-mini,
Llama 3.x, Mistral, Gemma 2/3, DeepSeek-R1 distills, Zephyr/TinyLlama.

Each family recognises a model by the turn markers its chat template renders (trusted
over ``model_type``: fine-tunes swap templates) and by ``model_type``/``architectures``,
and gives its PromptTemplate, stop tokens and published generation defaults. The
heavy lifting (rendering, deriving, the round-trip check) is the template engine's
(``slmk.api.templates``, slmk_templates); this module imports nothing heavy.
"""

from __future__ import annotations

from slmk.api import hookimpl

from .families import FAMILIES


@hookimpl
def slmk_model_families():
    yield from FAMILIES
