"""Tests of the Granite family against the real slmk kernel."""

from __future__ import annotations

import json
from pathlib import Path

import slmk_granite
from slmk_granite.hooks import (
    ARCHITECTURES,
    CHAT_TEMPLATE,
    FAMILY_NAME,
    MODEL_TYPES,
    PROMPT_TEMPLATE,
    SPECIAL_TOKENS,
    match,
)

from slmk.api import ModelInfo
from slmk.api.templates import check_round_trip, derive_prompt_template, resolve_template

# Granite 3.1-3.3 turn format, simplified: the dated default system message these
# versions inject, without their tool and document blocks (written for this test).
GRANITE_31_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = \"Knowledge Cutoff Date: April 2024.\\nToday's Date: \" + strftime_now('%B %d, %Y') + "
    '".\\nYou are Granite, developed by IBM. You are a helpful AI assistant." %}'
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}"
    "{%- for message in loop_messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}"
    "{%- if loop.last and add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
    "{%- endfor %}"
)

OTHER_TEMPLATE = (
    "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def model_folder(folder: Path, model_type: str, architectures: tuple[str, ...], chat_template: str | None) -> ModelInfo:
    """A model folder as slmk reads it: config.json and tokenizer_config.json (no weights needed)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": list(architectures)}))
    tokenizer_config = {**SPECIAL_TOKENS, **({"chat_template": chat_template} if chat_template else {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return ModelInfo.load(folder)


def test_the_plugin_contributes_the_family(slmk_registry_factory):
    registry = slmk_registry_factory(slmk_granite)
    assert list(registry.model_families) == [FAMILY_NAME]
    assert not [error for info in registry.plugin_infos() for error in info.errors]


def test_the_prompt_template_reproduces_the_chat_template():
    report = check_round_trip(CHAT_TEMPLATE, PROMPT_TEMPLATE, SPECIAL_TOKENS)
    assert {"one-turn", "two-turn"} <= set(report.checked)


def test_slmk_picks_this_family_over_the_built_in_ones(tmp_path, slmk_registry_factory):
    info = model_folder(tmp_path / "model", MODEL_TYPES[0], ARCHITECTURES, CHAT_TEMPLATE)
    registry = slmk_registry_factory(slmk_granite, "families")  # with slmk's built-in families
    resolved = resolve_template(registry, info)
    assert resolved.family == FAMILY_NAME
    assert resolved.template == PROMPT_TEMPLATE
    assert not [note for note in resolved.notes if "round-trip" in note]


def test_other_models_and_swapped_templates_are_left_to_other_families(tmp_path):
    other = model_folder(tmp_path / "other", "some_other_type", ("SomeOtherForCausalLM",), CHAT_TEMPLATE)
    assert match(other) == 0
    swapped = model_folder(tmp_path / "swapped", MODEL_TYPES[0], ARCHITECTURES, OTHER_TEMPLATE)
    assert match(swapped) == 0
    no_template = model_folder(tmp_path / "bare", MODEL_TYPES[0], ARCHITECTURES, None)
    assert match(no_template) > 0


# ---------------------------------------------------------------- Granite specifics
def test_the_pieces_are_what_slmk_derives_from_the_published_template():
    derived = derive_prompt_template(CHAT_TEMPLATE, SPECIAL_TOKENS)
    assert derived.to_foundry() == PROMPT_TEMPLATE.to_foundry()


def test_granite_3_1_style_templates_with_a_default_system_message(tmp_path, slmk_registry_factory):
    report = check_round_trip(GRANITE_31_STYLE, PROMPT_TEMPLATE, SPECIAL_TOKENS)
    assert {"one-turn", "with-system", "two-turn", "system-two-turn"} <= set(report.checked)
    info = model_folder(tmp_path / "granite-3.1", "granite", ARCHITECTURES, GRANITE_31_STYLE)
    resolved = resolve_template(slmk_registry_factory(slmk_granite, "families"), info)
    assert resolved.family == FAMILY_NAME
    assert any("default system message" in note for note in resolved.notes)
