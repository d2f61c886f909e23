"""The families plugin: every family recognises its models (by the markers its chat template
renders, over model_type), and its PromptTemplate round-trips against the real templates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import slmk_families
from slmk_families.families import SPECS
from slmk_templates.prompt_template import check_round_trip, resolve_template
from slmk_templates.sandbox import special_tokens_for
from test_templates import CANNOT_BE_FOUR_PIECES, SPECIAL_TOKENS, chat_template, write_model

from slmk.api.templates import resolve_family
from slmk.errors import SlmkError, TemplateMismatch
from slmk.modelinfo import ModelInfo
from slmk.testing import make_registry

#: template file -> (family, config.json model_type, architecture) of the models that ship it
MODELS = {
    "qwen2": ("qwen2", "qwen2", "Qwen2ForCausalLM"),
    "qwen2.5": ("qwen2", "qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "qwen3", "Qwen3ForCausalLM"),
    "smollm2": ("smollm", "llama", "LlamaForCausalLM"),
    "phi-3.5-mini": ("phi3", "phi3", "Phi3ForCausalLM"),
    "phi-4-mini": ("phi3", "phi3", "Phi3ForCausalLM"),
    "llama-3": ("llama3", "llama", "LlamaForCausalLM"),
    "llama-3.1": ("llama3", "llama", "LlamaForCausalLM"),
    "llama-3.2": ("llama3", "llama", "LlamaForCausalLM"),
    "mistral-v0.1": ("mistral", "mistral", "MistralForCausalLM"),
    "mistral-v0.3": ("mistral", "mistral", "MistralForCausalLM"),
    "gemma-2": ("gemma", "gemma2", "Gemma2ForCausalLM"),
    "gemma-3": ("gemma", "gemma3_text", "Gemma3ForCausalLM"),
    "deepseek-r1-distill": ("deepseek-r1", "qwen2", "Qwen2ForCausalLM"),
    "zephyr": ("zephyr", "llama", "LlamaForCausalLM"),
    "granite-3.1": ("granite", "granite", "GraniteForCausalLM"),
    "smollm3": ("smollm3", "smollm3", "SmolLM3ForCausalLM"),
}
#: Search options genai_config.json understands (where generation defaults end up).
SEARCH_KEYS = {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_length", "min_length"}


@pytest.fixture(scope="module")
def registry():
    return make_registry(slmk_families)


def model(
    tmp_path: Path, template: str | None, model_type: str, architecture: str, tokens: dict[str, str], **config
) -> ModelInfo:
    tokenizer_config = dict(tokens)
    if template is not None:
        tokenizer_config["chat_template"] = template
    folder = write_model(
        tmp_path / f"{model_type}-model",
        tokenizer_config=tokenizer_config,
        config={"model_type": model_type, "architectures": [architecture], **config},
    )
    return ModelInfo.load(folder)


def test_every_family_is_registered(registry):
    assert set(registry.model_families) == {family for family, _, _ in MODELS.values()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_family_claims_its_models_and_round_trips(registry, tmp_path, name):
    family_name, model_type, architecture = MODELS[name]
    info = model(tmp_path, chat_template(name), model_type, architecture, SPECIAL_TOKENS[name])
    family = resolve_family(registry, info)
    assert family is not None and family.name == family_name

    template = family.prompt_template(info)
    if name in CANNOT_BE_FOUR_PIECES:
        # the family's pieces, and notes that say where they differ from the real template
        resolved = resolve_template(registry, info)
        assert resolved.family == family_name and resolved.template == template == family.prompt_template(info)
        assert any(note.startswith("does not round-trip") for note in resolved.notes), resolved.notes
        return
    report = check_round_trip(chat_template(name), template, special_tokens_for(info))
    assert {"one-turn", "two-turn"} <= set(report.checked)

    resolved = resolve_template(registry, info)
    assert resolved.family == family_name and resolved.source == f"family:{family_name}+chat_template"
    assert resolved.template == template
    assert not any(note.startswith("does not round-trip") for note in resolved.notes)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_family_pieces_round_trip_against_the_published_template(spec, registry):
    family = registry.model_families[spec.name]
    assert family.chat_template == chat_template(spec.chat_template_file)
    tokens = SPECIAL_TOKENS[spec.chat_template_file]
    if spec.chat_template_file in CANNOT_BE_FOUR_PIECES:
        with pytest.raises(TemplateMismatch):
            check_round_trip(family.chat_template, spec.pieces, tokens)
        return
    check_round_trip(family.chat_template, spec.pieces, tokens)
    assert spec.special_tokens.items() <= tokens.items()
    # derived from the family's own template, with the model's tokens or (as `slmk template
    # show FAMILY` asks, without a tokenizer config) the family's: the same pieces
    for tokenizer_config in (tokens, {}):
        info = ModelInfo(
            path=Path(spec.name),
            format="hf",
            config={},
            model_type="",
            architectures=(),
            chat_template=family.chat_template,
            tokenizer_config=tokenizer_config,
        )
        assert family.prompt_template(info).to_foundry() == spec.pieces.to_foundry()


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_family_metadata(spec, registry):
    family = registry.model_families[spec.name]
    assert family.stop_tokens and all(isinstance(token, str) and token for token in family.stop_tokens)
    assert set(family.generation_defaults) <= SEARCH_KEYS
    assert family.description


@pytest.mark.parametrize(
    "template, model_type, architecture, expected",
    [
        ("phi-3.5-mini", "qwen2", "Qwen2ForCausalLM", "phi3"),  # a Qwen fine-tune with a Phi-3 template
        ("deepseek-r1-distill", "qwen2", "Qwen2ForCausalLM", "deepseek-r1"),
        ("deepseek-r1-distill", "llama", "LlamaForCausalLM", "deepseek-r1"),
        ("qwen2.5", "llama", "LlamaForCausalLM", "qwen2"),  # ChatML on a Llama: not Llama 3
        ("zephyr", "mistral", "MistralForCausalLM", "zephyr"),  # zephyr-7b-beta
        ("llama-3.1", "mistral", "MistralForCausalLM", "llama3"),
        ("phi-4-mini", "llama", "LlamaForCausalLM", "phi3"),  # markers built at render time
    ],
)
def test_template_markers_win_over_model_type(registry, tmp_path, template, model_type, architecture, expected):
    info = model(tmp_path, chat_template(template), model_type, architecture, SPECIAL_TOKENS[template])
    assert resolve_family(registry, info).name == expected
    resolved = resolve_template(registry, info)
    check_round_trip(chat_template(template), resolved.template, SPECIAL_TOKENS[template])


def test_a_qwen2_type_with_a_phi_template_never_gets_chatml(registry, tmp_path):
    info = model(tmp_path, chat_template("phi-3.5-mini"), "qwen2", "Qwen2ForCausalLM", SPECIAL_TOKENS["phi-3.5-mini"])
    assert registry.model_families["qwen2"].match(info) == 0
    assert "<|user|>" in resolve_template(registry, info).template.prompt


@pytest.mark.parametrize(
    "model_type, architecture, vocab_size, expected, piece",
    [
        ("qwen2", "Qwen2ForCausalLM", 151936, "qwen2", "<|im_start|>user\n{Content}<|im_end|>\n"),
        ("qwen3", "Qwen3ForCausalLM", 151936, "qwen3", "<|im_start|>user\n{Content}<|im_end|>\n"),
        ("phi3", "Phi3ForCausalLM", 32064, "phi3", "<|user|>\n{Content}<|end|>\n"),
        ("phi3", "Phi3ForCausalLM", 200064, "phi3", "<|user|>{Content}<|end|>"),
        (
            "llama",
            "LlamaForCausalLM",
            128256,
            "llama3",
            "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>",
        ),
        ("mistral", "MistralForCausalLM", 32768, "mistral", "[INST] {Content}[/INST]"),
        ("mistral", "MistralForCausalLM", 32000, "mistral", "[INST] {Content} [/INST]"),
        ("gemma2", "Gemma2ForCausalLM", 256000, "gemma", "<start_of_turn>user\n{Content}<end_of_turn>\n"),
    ],
)
def test_without_a_chat_template_model_type_decides(
    registry, tmp_path, model_type, architecture, vocab_size, expected, piece
):
    info = model(tmp_path, None, model_type, architecture, {}, vocab_size=vocab_size)
    resolved = resolve_template(registry, info)
    assert resolved.family == expected and resolved.source == f"family:{expected}"
    assert resolved.template.user == piece
    assert any("no chat template" in note for note in resolved.notes)


def test_a_jinja_template_file_decides_the_family(registry, tmp_path):
    info = model(tmp_path, chat_template("qwen2.5"), "qwen2", "Qwen2ForCausalLM", SPECIAL_TOKENS["qwen2.5"])
    jinja = tmp_path / "phi.jinja"
    jinja.write_text(chat_template("phi-3.5-mini"))
    resolved = resolve_template(registry, info, jinja)
    assert resolved.family == "phi3" and resolved.source == f"file:{jinja}"
    assert resolved.template.prompt == "<|user|>\n{Content}<|end|>\n<|assistant|>\n"
    # a JSON file only replaces the pieces: the model's own template still decides, and disagrees
    pieces = tmp_path / "phi.json"
    pieces.write_text(json.dumps(resolved.template.to_foundry()))
    resolved = resolve_template(registry, info, pieces)
    assert resolved.family == "qwen2"
    assert any(note.startswith("does not round-trip") for note in resolved.notes)


def test_no_family_and_no_chat_template_is_a_clean_error(registry, tmp_path):
    info = model(tmp_path, None, "gpt_neox", "GPTNeoXForCausalLM", {"eos_token": "<|endoftext|>"})
    with pytest.raises(SlmkError) as error:
        resolve_template(registry, info)
    assert "no family plugin claims model_type 'gpt_neox'" in error.value.message
    assert "--template FILE" in error.value.hint


def test_unknown_template_without_family_falls_back_to_the_generic_derivation(registry, tmp_path):
    # an OLMo-style template: no family's markers
    olmo = (
        "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    info = model(tmp_path, olmo, "olmo2", "Olmo2ForCausalLM", {"bos_token": "<|endoftext|>"})
    # renders <|user|> and <|assistant|> but no </s>: Zephyr's markers are there, so it claims it
    resolved = resolve_template(registry, info)
    check_round_trip(olmo, resolved.template, {"bos_token": "<|endoftext|>"})
    weird = (
        "{% for m in messages %}## {{ m.role }}\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}## assistant\n{% endif %}"
    )
    info = model(tmp_path / "w", weird, "mystery", "MysteryForCausalLM", {})
    resolved = resolve_template(registry, info)
    assert resolved.family is None and resolved.source == "chat_template"
    assert resolved.template.prompt == "## user\n{Content}\n## assistant\n"


def test_a_build_folder_resolves_like_its_source(registry, tmp_path):
    build = write_model(
        tmp_path / "build",
        genai_config={"model": {"type": "qwen2", "vocab_size": 151936}},
        build_info={"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
        tokenizer_config={
            "chat_template": chat_template("deepseek-r1-distill"),
            **SPECIAL_TOKENS["deepseek-r1-distill"],
        },
    )
    resolved = resolve_template(registry, ModelInfo.load(build))
    assert resolved.family == "deepseek-r1"
    bare = write_model(
        tmp_path / "bare",
        genai_config={"model": {"type": "phi3"}},
        build_info={"model_type": "phi3"},
        tokenizer_config={},
    )
    assert resolve_template(registry, ModelInfo.load(bare)).family == "phi3"


def test_the_plugin_imports_nothing_heavy():
    code = (
        "import sys, slmk_families; "
        "print(sorted(m for m in ('jinja2', 'transformers', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_tiny_model_and_its_build_resolve_to_chatml(registry, tiny_model_dir):
    source = resolve_template(registry, ModelInfo.load(tiny_model_dir))
    assert source.family == "qwen2" and source.source == "family:qwen2+chat_template"
    assert source.template.prompt == "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n"
    assert not any("round-trip" in note or "default system" in note for note in source.notes)


@pytest.mark.slow
def test_a_real_build_of_the_tiny_model_resolves_like_its_source(registry, tiny_model_dir, tiny_build):
    build = ModelInfo.load(tiny_build("int4"))
    assert build.format == "ortgenai" and build.chat_template
    resolved = resolve_template(registry, build)
    assert resolved.family == "qwen2"
    assert (
        resolved.template.to_foundry()
        == resolve_template(registry, ModelInfo.load(tiny_model_dir)).template.to_foundry()
    )
    check_round_trip(build.chat_template, resolved.template, special_tokens_for(build))
