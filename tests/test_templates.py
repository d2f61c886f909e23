"""slmk_templates (sandbox, prompt_template, render_worker): rendering as transformers does, the generic derivation,
the round-trip check, and resolving a model's template (no family plugin registered here: the generic path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slmk_templates.prompt_template import (
    analyse_chat_template,
    check_round_trip,
    derive_prompt_template,
    resolve_template,
)
from slmk_templates.sandbox import as_special_tokens, render_chat_template

from slmk.errors import ChatTemplateError, SlmkError, TemplateError, TemplateMismatch, UsageError
from slmk.modelinfo import ModelInfo
from slmk.records import PromptTemplate
from slmk.testing import make_registry

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

#: The special tokens each published template is rendered with (its tokenizer_config.json).
SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
    "phi-3.5-mini": {
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
    },
    "phi-4-mini": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "llama-3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama-3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral-v0.1": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral-v0.3": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma-2": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "gemma-3": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "deepseek-r1-distill": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "zephyr": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "granite-3.1": {
        "bos_token": "<|end_of_text|>",
        "eos_token": "<|end_of_text|>",
        "pad_token": "<|end_of_text|>",
        "unk_token": "<|end_of_text|>",
    },
    "smollm3": {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
}
NAMES = sorted(SPECIAL_TOKENS)
#: Templates four PromptTemplate pieces cannot express, and the analysis' reason. SmolLM3
#: writes today's date and the reasoning mode into a metadata system block, leaves an
#: explicit system block unclosed (no <|im_end|>) and words its default system block
#: differently: Foundry Local v2 renders the real template; the legacy pieces are ChatML.
CANNOT_BE_FOUR_PIECES = {"smollm3": "default system message that differs from an explicit system message"}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nThey greet me.\n</think>\n\nBonjour !"},
        {"role": "user", "content": "  Une blague ?  "},
    ],
]

QWEN25 = {
    "system": "<|im_start|>system\n{Content}<|im_end|>\n",
    "user": "<|im_start|>user\n{Content}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{Content}<|im_end|>\n",
    "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n",
}
PHI3 = PromptTemplate(
    system="<|system|>\n{Content}<|end|>\n",
    user="<|user|>\n{Content}<|end|>\n",
    assistant="<|assistant|>\n{Content}<|end|>\n",
    prompt="<|user|>\n{Content}<|end|>\n<|assistant|>\n",
)


def chat_template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def hf_tokenizer(name: str):
    """A real transformers fast tokenizer holding this family's special tokens and chat template."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS[name]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(["[UNK]", *tokens.values()]))}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), **tokens
    )
    tokenizer.chat_template = chat_template(name)
    return tokenizer


def hf_render(tokenizer, messages, add_generation_prompt=True, **kwargs) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except TemplateError as exc:
        return f"raised: {exc}"


def slmk_render(template, messages, tokens, add_generation_prompt=True, **kwargs) -> str:
    try:
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, special_tokens=tokens, **kwargs
        )
    except ChatTemplateError as exc:
        return f"raised: {exc.__cause__}"


def write_model(
    folder: Path,
    *,
    config: dict | None = None,
    tokenizer_config: dict | None = None,
    genai_config: dict | None = None,
    build_info: dict | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("genai_config.json", genai_config),
        ("slmk_build.json", build_info),
    ):
        if data is not None:
            (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


# ------------------------------------------------------------------ rendering = transformers
@pytest.mark.parametrize("name", NAMES)
def test_render_equals_transformers_for_every_family_template(name):
    tokenizer = hf_tokenizer(name)
    tokens = tokenizer.special_tokens_map
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            expected = hf_render(tokenizer, messages, add_generation_prompt)
            assert slmk_render(chat_template(name), messages, tokens, add_generation_prompt) == expected, (
                name,
                messages,
                add_generation_prompt,
            )


def test_render_equals_transformers_on_the_tiny_model(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    info = ModelInfo.load(tiny_model_dir)
    assert info.chat_template, "the tiny model ships a chat template"
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            assert slmk_render(
                info.chat_template, messages, tokenizer.special_tokens_map, add_generation_prompt
            ) == hf_render(tokenizer, messages, add_generation_prompt)
    # the tiny model's own template round-trips through the generic derivation
    derive_prompt_template(info.chat_template, tokenizer.special_tokens_map)


def test_render_environment_matches_transformers_extras():
    """tojson (unescaped, indent), the {% generation %} tag, loop controls, dict(), namespace,
    strftime_now and extra template variables behave as in transformers."""
    template = (
        "{%- set ns = namespace(count=0) -%}"
        "{%- for m in messages -%}{%- if loop.index > 2 %}{% break %}{% endif -%}"
        "{%- set ns.count = ns.count + 1 -%}"
        "{{ m.role }}:{% generation %}{{ m.content }}{% endgeneration %}|"
        "{%- endfor -%}"
        "{{ ns.count }}{{ {'é': '<b>', 'n': [1, 2]} | tojson }}{{ dict(a=1) | tojson(indent=2) }}"
        "{{ strftime_now('%Y') }}{{ greeting | default('none') }}{{ bos_token }}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    tokenizer = hf_tokenizer("llama-3")
    tokenizer.chat_template = template
    for extra in ({}, {"greeting": "hello"}):
        expected = hf_render(tokenizer, messages, **extra)
        assert slmk_render(template, messages, tokenizer.special_tokens_map, **extra) == expected
    assert expected.startswith('user:a|assistant:b|2{"é": "<b>"')


def test_render_errors_are_one_line_slmk_errors():
    with pytest.raises(ChatTemplateError, match="does not parse") as parse_error:
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    assert parse_error.value.hint and "\n" not in parse_error.value.one_line()
    with pytest.raises(ChatTemplateError, match="system, user: System role not supported"):
        render_chat_template(chat_template("gemma-2"), CONVERSATIONS[1], special_tokens=SPECIAL_TOKENS["gemma-2"])


def test_the_template_modules_import_nothing_heavy():
    code = (
        "import sys, slmk_templates, slmk_templates.sandbox, slmk_templates.prompt_template; "
        "print(sorted(m for m in ('jinja2', 'transformers', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ the generic derivation
@pytest.mark.parametrize("name", NAMES)
def test_generic_derivation_round_trips_for_every_family_template(name):
    if name in CANNOT_BE_FOUR_PIECES:
        with pytest.raises(TemplateError, match=CANNOT_BE_FOUR_PIECES[name]):
            derive_prompt_template(chat_template(name), SPECIAL_TOKENS[name])
        return
    template = derive_prompt_template(chat_template(name), SPECIAL_TOKENS[name])
    for key, piece in template.to_foundry().items():
        assert piece.count("{Content}") == 1, (name, key)
    report = check_round_trip(chat_template(name), template, SPECIAL_TOKENS[name])
    assert {"one-turn", "two-turn"} <= set(report.checked)
    assert report.ok


def test_chatml_with_a_default_system_message_is_cut_for_conversations_with_a_system_message():
    analysis = analyse_chat_template(chat_template("qwen2.5"), SPECIAL_TOKENS["qwen2.5"])
    assert analysis.template.to_foundry() == QWEN25
    assert analysis.system_support == "default"
    assert analysis.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    report = check_round_trip(chat_template("qwen2.5"), analysis.template, SPECIAL_TOKENS["qwen2.5"])
    assert report.checked == ("one-turn", "with-system", "two-turn", "system-two-turn")
    assert any("default system message" in note for note in report.notes)
    # the honest limit: without a system message the pieces leave the default out
    one_turn = [{"role": "user", "content": "Hi"}]
    rendered = render_chat_template(chat_template("qwen2.5"), one_turn, special_tokens=SPECIAL_TOKENS["qwen2.5"])
    assert analysis.template.render(one_turn) != rendered
    with_default = [{"role": "system", "content": analysis.default_system}, *one_turn]
    assert analysis.template.render(with_default) == rendered


def test_qwen3_pieces_are_plain_chatml_with_a_note_on_reasoning():
    analysis = analyse_chat_template(chat_template("qwen3"), SPECIAL_TOKENS["qwen3"])
    assert analysis.template.to_foundry() == QWEN25
    assert analysis.system_support == "native" and analysis.default_system is None
    assert any("<think>" in note for note in analysis.notes)


def test_a_leading_bos_goes_into_the_system_piece():
    tokens = SPECIAL_TOKENS["llama-3"]
    analysis = analyse_chat_template(chat_template("llama-3"), tokens)
    assert analysis.leading_bos == "<|begin_of_text|>"
    pieces = analysis.template.to_foundry()
    assert pieces["system"].startswith("<|begin_of_text|><|start_header_id|>system")
    assert not any(pieces[key].startswith("<|begin_of_text|>") for key in ("user", "assistant", "prompt"))
    report = check_round_trip(chat_template("llama-3"), analysis.template, tokens)
    assert report.checked == ("one-turn", "with-system", "two-turn", "system-two-turn")
    assert any("without a system message gets no BOS" in note for note in report.notes)
    # a BOS written into every user turn shows up in the middle of a conversation
    doubled = PromptTemplate(
        **{**pieces, "user": "<|begin_of_text|>" + pieces["user"], "prompt": "<|begin_of_text|>" + pieces["prompt"]}
    )
    with pytest.raises(TemplateMismatch) as mismatch:
        check_round_trip(chat_template("llama-3"), doubled, tokens)
    assert mismatch.value.conversation == "with-system"
    # pieces that leave the BOS out altogether lose it even with a system message
    without = PromptTemplate(**{**pieces, "system": pieces["system"].removeprefix("<|begin_of_text|>")})
    with pytest.raises(TemplateMismatch) as mismatch:
        check_round_trip(chat_template("llama-3"), without, tokens)
    assert mismatch.value.conversation == "with-system" and mismatch.value.expected.startswith("begin_of_text|>")


def test_a_bos_equal_to_the_turn_marker_stays_in_the_pieces():
    # SmolLM2's BOS is <|im_start|>: the template never writes {{ bos_token }}, its turns start with it
    analysis = analyse_chat_template(chat_template("smollm2"), SPECIAL_TOKENS["smollm2"])
    assert analysis.leading_bos is None
    assert analysis.template.system == "<|im_start|>system\n{Content}<|im_end|>\n"


@pytest.mark.parametrize(
    "name, support",
    [("gemma-2", "raises"), ("gemma-3", "folded"), ("mistral-v0.1", "raises"), ("mistral-v0.3", "folded")],
)
def test_templates_without_a_system_turn_send_it_as_a_user_turn_and_skip_that_check(name, support):
    analysis = analyse_chat_template(chat_template(name), SPECIAL_TOKENS[name])
    assert analysis.system_support == support
    assert analysis.template.system == (analysis.leading_bos or "") + analysis.template.user
    assert analysis.leading_bos == SPECIAL_TOKENS[name]["bos_token"]
    report = check_round_trip(chat_template(name), analysis.template, SPECIAL_TOKENS[name])
    assert report.checked == ("one-turn", "two-turn")
    assert report.skipped == ("with-system", "system-two-turn")
    assert any("not checked: with-system" in note for note in report.notes)


def test_phi_markers_are_cut_at_token_boundaries():
    # <|end|>\n<|assistant|> and <|end|>\n<|endoftext|> share "<|end|>\n<|": the turn ends at "\n"
    template = derive_prompt_template(chat_template("phi-3.5-mini"), SPECIAL_TOKENS["phi-3.5-mini"])
    assert template.to_foundry() == PHI3.to_foundry()


def test_llama_31_system_block_is_always_there():
    analysis = analyse_chat_template(chat_template("llama-3.1"), SPECIAL_TOKENS["llama-3.1"])
    assert analysis.system_support == "default" and analysis.default_system == ""
    assert analysis.template.system.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge"
    )
    # a system message, even an empty one, gives the template's exact prompt, BOS included
    one_turn = [{"role": "user", "content": "Hi"}]
    expected = render_chat_template(chat_template("llama-3.1"), one_turn, special_tokens=SPECIAL_TOKENS["llama-3.1"])
    assert analysis.template.render([{"role": "system", "content": ""}, *one_turn]) == expected
    assert analysis.template.user == "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>"


def test_an_underivable_template_is_a_clear_error():
    # the first user turn is framed differently from later ones: no single "user" piece exists
    odd = (
        "{% for m in messages %}{% if loop.first %}FIRST:{% else %}{{ m.role }}:{% endif %}"
        "{{ m.content }};{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(SlmkError, match="cannot derive a prompt template") as error:
        derive_prompt_template(odd)
    assert "--template FILE" in error.value.hint


# ------------------------------------------------------------------ mismatch detection
def test_a_phi3_template_on_a_chatml_model_is_a_mismatch_naming_offset_and_characters():
    with pytest.raises(TemplateMismatch) as mismatch:
        check_round_trip(chat_template("qwen2.5"), PHI3, SPECIAL_TOKENS["qwen2.5"])
    error = mismatch.value
    assert error.conversation == "one-turn"
    assert error.offset == 2  # both start with "<|"
    assert error.expected.startswith("im_start|>system") and error.got.startswith("system|>")
    line = error.one_line()
    assert "one-turn conversation (user)" in line and "offset 2" in line
    assert "'im_start|>system" in line and "got 'system|>" in line
    assert "slmk template show" in error.hint


def test_a_mismatch_in_a_later_turn_names_that_conversation():
    wrong_assistant = PromptTemplate(**{**QWEN25, "assistant": "<|im_start|>assistant\n{Content}\n"})
    with pytest.raises(TemplateMismatch) as mismatch:
        check_round_trip(chat_template("qwen3"), wrong_assistant, SPECIAL_TOKENS["qwen3"])
    assert mismatch.value.conversation == "two-turn"
    assert mismatch.value.expected.startswith("<|im_end|>") and mismatch.value.got.startswith("\n<|im_start|>user")


def test_special_tokens_as_the_installer_lists_them():
    listed = ["<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|end_of_text|>"]
    assert as_special_tokens(listed) == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    template = derive_prompt_template(chat_template("llama-3"), SPECIAL_TOKENS["llama-3"])
    assert check_round_trip(chat_template("llama-3"), template, listed).ok
    assert as_special_tokens({"bos_token": {"content": "<s>", "special": True}, "x": None}) == {"bos_token": "<s>"}


# ------------------------------------------------------------------ resolving
def test_resolve_without_family_plugins_derives_from_the_chat_template(tmp_path):
    model = write_model(
        tmp_path / "m",
        config={"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
        tokenizer_config={"chat_template": chat_template("qwen2.5"), **SPECIAL_TOKENS["qwen2.5"]},
    )
    resolved = resolve_template(make_registry(), ModelInfo.load(model))
    assert resolved.family is None and resolved.source == "chat_template"
    assert resolved.template.to_foundry() == QWEN25
    assert any("default system message" in note for note in resolved.notes)


def test_resolve_with_no_family_and_no_chat_template_names_the_ways_out(tmp_path):
    model = write_model(
        tmp_path / "m",
        config={"model_type": "mystery", "architectures": ["MysteryForCausalLM"]},
        tokenizer_config={"eos_token": "</s>"},
    )
    with pytest.raises(SlmkError) as error:
        resolve_template(make_registry(), ModelInfo.load(model))
    line = error.value.one_line()
    assert "no family plugin claims model_type 'mystery' and the model has no chat template" in line
    for way_out in ("family plugin", "--template FILE", "chat_template to tokenizer_config.json"):
        assert way_out in error.value.hint
    assert "\n" not in line


def test_template_file_json_wins_and_is_checked(tmp_path):
    model = write_model(
        tmp_path / "m",
        config={"model_type": "qwen2"},
        tokenizer_config={"chat_template": chat_template("qwen2.5"), **SPECIAL_TOKENS["qwen2.5"]},
    )
    good = tmp_path / "chatml.json"
    good.write_text(json.dumps(QWEN25))
    resolved = resolve_template(make_registry(), ModelInfo.load(model), good)
    assert resolved.source == f"file:{good}" and resolved.template.to_foundry() == QWEN25
    assert not any(note.startswith("does not round-trip") for note in resolved.notes)
    # an inference_model.json is accepted too; a wrong one resolves, with the mismatch in the notes
    wrong = tmp_path / "inference_model.json"
    wrong.write_text(json.dumps({"Name": "x", "PromptTemplate": PHI3.to_foundry()}))
    notes = resolve_template(make_registry(), ModelInfo.load(model), wrong).notes
    assert any(note.startswith("does not round-trip") and "offset 2" in note for note in notes)


def test_template_file_jinja_is_derived(tmp_path):
    model = write_model(
        tmp_path / "m",
        config={"model_type": "llama"},
        tokenizer_config={"chat_template": chat_template("qwen2.5"), **SPECIAL_TOKENS["llama-3"]},
    )
    jinja = tmp_path / "llama.jinja"
    jinja.write_text(chat_template("llama-3"))
    resolved = resolve_template(make_registry(), ModelInfo.load(model), jinja)
    assert resolved.source == f"file:{jinja}"
    assert resolved.template.user == "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"system": "{Content}", "user": "{Content}"}, "lacks assistant, prompt"),
        (
            {"system": "x", "user": "{Content}", "assistant": "{Content}", "prompt": "{Content}{Content}"},
            "'system' holds",
        ),
    ],
)
def test_bad_template_files_are_usage_errors(tmp_path, content, message):
    model = write_model(
        tmp_path / "m", config={"model_type": "qwen2"}, tokenizer_config={"chat_template": chat_template("qwen2.5")}
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=message):
        resolve_template(make_registry(), ModelInfo.load(model), bad)
    with pytest.raises(UsageError, match="not found"):
        resolve_template(make_registry(), ModelInfo.load(model), tmp_path / "missing.json")


def test_resolve_works_on_a_build_folder_without_config_json(tmp_path):
    build = write_model(
        tmp_path / "build",
        genai_config={"model": {"type": "qwen2", "vocab_size": 100}},
        build_info={"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
        tokenizer_config={"chat_template": chat_template("qwen3"), **SPECIAL_TOKENS["qwen3"]},
    )
    info = ModelInfo.load(build)
    assert info.format == "ortgenai" and not info.config
    resolved = resolve_template(make_registry(), info)
    assert resolved.template.to_foundry() == QWEN25


# ------------------------------------------------------------------ the bounded renderer (issue 19, item 1)
# Templates whose work no Jinja meter sees (C code), or that nobody listed: each must end in
# one line within the render worker's deadline and memory limit, whatever it does.
_NEST = (
    "{% set ns=namespace(l=[0]) %}{% for i in range(40) %}{% set ns.l=[ns.l,ns.l] %}{% endfor %}"
    "{% set nb=namespace(l=[0]) %}{% for i in range(40) %}{% set nb.l=[nb.l,nb.l] %}{% endfor %}"
)
_DISTINCT = "".join(chr(code) for code in range(0x4E00, 0x4E00 + 31000))
#: A list literal of 300 fresh dicts: building it is one step for the meters and 55 KB of memory.
_WIDE = "[" + ",".join(["{'k': i}"] * 300) + "]"
UNMETERED = {
    "nested-equal": _NEST + "{{ ns.l == nb.l }}",
    "nested-in": _NEST + "{{ ns.l in [nb.l] }}",
    "nested-max": _NEST + "{{ [ns.l, nb.l] | max }}",
    "nested-printed": _NEST + "{{ ns.l }}",
    "nested-tojson": _NEST + "{{ ns.l | tojson }}",
    "nested-sorted": _NEST + "{{ [ns.l, nb.l, ns.l] | sort }}",
    "nested-count": _NEST + "{{ [ns.l, 1].count(nb.l) }}",
    "format-before-size-check": "{{ ('{0}'*1500).format('x'*999999) }}",
    "format-map-before-size-check": "{{ ('{a}'*1500).format_map({'a': 'x'*999999}) }}",
    "punycode-quadratic": "{{ '" + _DISTINCT + "'.encode('punycode') }}",
    "literal-format-fields": "{{ '" + "{0}" * 1500 + "'.format('x'*999999) }}",
    "nested-pprint": _NEST + "{{ ns.l | pprint }}",
    # written for this test, unlike any listed trick: a loop whose every step is a big literal
    "generic-memory-grower": "{% set ns=namespace(l=[]) %}{% for i in range(99999) %}{% set ns.l=[ns.l, "
    + _WIDE
    + "] %}{% endfor %}{{ 'done' }}",
    # and a loop whose every step is one filter call doing a lot of C work
    "generic-cpu-burner": "{% set big = range(99999) | list %}{% for i in range(99999) %}"
    "{% set _ = big | reverse | list | sort | sum %}{% endfor %}",
}


def _model_with_chat_template(folder: Path, chat_template: str) -> Path:
    folder.mkdir(parents=True)
    write_model(folder, config={"model_type": "mystery", "architectures": ["MysteryForCausalLM"], "vocab_size": 10},
                tokenizer_config={"eos_token": "</s>"})  # fmt: skip
    (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return folder


def _run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None, **kwargs):
    import os
    import resource

    def limit_memory():  # a template the worker does not bound fails the test instead of the machine
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))

    return subprocess.run(
        [sys.executable, "-m", "slmk", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=timeout, preexec_fn=limit_memory, **kwargs,
    )  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode not in (0, 3), (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "internal error" not in lines[0] and len(lines[0]) < 1000
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(UNMETERED))
def test_work_no_meter_sees_is_stopped_by_the_worker_in_one_line(tmp_path, name):
    from slmk_templates.sandbox import RENDER_SECONDS, RENDER_WALL_SECONDS

    model = _model_with_chat_template(tmp_path / "model", UNMETERED[name])
    proc = _run_cli("template", "show", str(model), cwd=tmp_path)
    line = _one_error_line(proc)
    assert str(model) in line and "render limit" in line, line
    if name.startswith(("format-", "literal-format")):
        assert "needed more memory than a rendering may take" in line, line
    if name.startswith(("nested-equal", "punycode")):  # only the process limits see this work
        assert f"more than {RENDER_SECONDS:g} s of CPU time" in line or f"more than {RENDER_WALL_SECONDS:g} s" in line


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested-printed", "generic-memory-grower"])
def test_a_template_growing_memory_stays_within_the_memory_budget(tmp_path, name):
    """The worker's peak RSS, measured in a child process (printing the nested list makes 2 GB unbounded)."""
    import resource

    from slmk_templates.sandbox import RENDER_MEMORY_BYTES

    code = (
        "import json, resource, sys\n"
        "from slmk_templates import render_worker\n"
        "from slmk.api.templates import ChatTemplateError, render_chat_template\n"
        "try:\n"
        "    render_chat_template(sys.stdin.read(), [{'role': 'user', 'content': 'hi'}])\n"
        "    outcome = 'rendered'\n"
        "except ChatTemplateError as exc:\n"
        "    outcome = exc.message\n"
        "render_worker.shutdown()\n"
        "peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
        "print(json.dumps({'outcome': outcome, 'peak_kb': peak}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=UNMETERED[name], capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3)),
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert "render limit" in result["outcome"], result
    assert result["peak_kb"] * 1024 < RENDER_MEMORY_BYTES + 256 * 1024**2, result


@pytest.mark.slow
def test_the_worker_limits_hold_from_python_too_and_the_next_rendering_works():
    from slmk.errors import RenderLimitError

    with pytest.raises(RenderLimitError, match="render limit"):
        render_chat_template(UNMETERED["nested-equal"], [{"role": "user", "content": "hi"}])
    # a rendering whose conversation carries the quadratic input: the caller's data, same bound
    with pytest.raises(RenderLimitError, match="render limit"):
        render_chat_template("{{ messages[0].content.encode('punycode') }}", [{"role": "user", "content": _DISTINCT}])
    assert render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": "hi"}]) == "hi"


def _worker_pid() -> int:
    from slmk_templates import render_worker

    render_chat_template("{{ 1 }}", [])
    return render_worker._worker()._proc.pid


def test_a_killed_worker_is_replaced_on_the_next_rendering():
    import os
    import signal

    first = _worker_pid()
    os.kill(first, signal.SIGKILL)
    while Path(f"/proc/{first}/stat").read_text().split()[2] != "Z":  # dead (the parent reaps it later)
        pass
    assert render_chat_template("{{ messages[0].content }}!", [{"role": "user", "content": "hi"}]) == "hi!"
    assert _worker_pid() != first


@pytest.mark.slow
def test_a_worker_killed_during_a_rendering_is_one_line_and_the_next_rendering_works():
    import os
    import signal
    import threading

    from slmk.errors import RenderLimitError

    pid = _worker_pid()
    started = threading.Event()

    def kill_when_busy():
        started.wait()
        # the worker is busy once its CPU time grows; kill it then (no sleep-and-hope)
        with open(f"/proc/{pid}/stat") as stat:
            before = sum(int(field) for field in stat.read().split()[13:15])
        while True:
            with open(f"/proc/{pid}/stat") as stat:
                if sum(int(field) for field in stat.read().split()[13:15]) > before + 5:
                    break
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    started.set()
    with pytest.raises(RenderLimitError, match=r"render process was killed by SIGKILL|ran for more than") as caught:
        render_chat_template(UNMETERED["nested-equal"] + "{{ 'other' }}", [{"role": "user", "content": "hi"}])
    killer.join()
    assert "\n" not in caught.value.one_line()
    assert render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": "ok"}]) == "ok"


def test_renderings_from_many_threads_each_get_their_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    def render(index: int) -> str:
        template = "{% for m in messages %}[" + str(index % 7) + "]{{ m.content }}{% endfor %}"
        return render_chat_template(template, [{"role": "user", "content": f"thread {index}"}])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(render, range(200)))
    assert results == [f"[{index % 7}]thread {index}" for index in range(200)]


def test_a_template_error_keeps_what_the_template_raised_as_its_cause():
    with pytest.raises(ChatTemplateError) as caught:
        render_chat_template("{{ raise_exception('no system role here') }}", [])
    assert str(caught.value.__cause__) == "no system role here"


@pytest.mark.slow
def test_ctrl_c_during_a_rendering_stops_slmk_at_once_and_ends_the_worker(tmp_path):
    import signal
    import time

    from slmk_templates.sandbox import RENDER_SECONDS

    model = _model_with_chat_template(tmp_path / "model", UNMETERED["nested-equal"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmk", "template", "show", str(model)], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline:  # wait until the worker renders
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                fields = Path(f"/proc/{child}/stat").read_text().split()
            except OSError:
                continue
            if (
                b"slmk_templates.render_worker" in cmdline and int(fields[13]) + int(fields[14]) > 20
            ):  # busy: > 0.2 s CPU
                worker = int(child)
        time.sleep(0.05)
    assert worker is not None, "the render worker never started rendering"
    interrupted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - interrupted_at < RENDER_SECONDS, "the interrupt waited for the render deadline"
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]


# ------------------------------------------------------------------ a family does not hide the model's own template
def _tiny_copy_with_template(tmp_path: Path, source: Path, chat_template: str) -> Path:
    import shutil

    model = tmp_path / "M"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.safetensors"))
    (model / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    data = json.loads((model / "tokenizer_config.json").read_text())
    data.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(data))
    return model


_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox refuses"),
        ("{% if messages[0].content.__class__.__init__.__globals__ %}{% endif %}", "sandbox refuses"),
        ("{% for x in %}", "does not parse"),
    ],
)
def test_a_model_template_a_family_overrides_is_still_checked(tmp_path, tiny_model_dir, prefix, needle):
    """The qwen2 family gives the pieces, but the runtimes render the model's own template."""
    model = _tiny_copy_with_template(tmp_path, tiny_model_dir, prefix + _CHATML)
    clean = _tiny_copy_with_template(tmp_path / "clean", tiny_model_dir, _CHATML)
    shown = _run_cli("template", "show", str(clean), cwd=tmp_path)
    assert shown.returncode == 0 and "family:qwen2" in shown.stdout, shown.stderr  # the family does win
    line = _one_error_line(_run_cli("template", "show", str(model), cwd=tmp_path))
    assert str(model) in line and needle in line, line


@pytest.mark.slow
def test_every_command_that_renders_a_template_stops_an_unmetered_one_in_one_line(tmp_path, tiny_build):
    """inspect reports it on its line; install, run and serve refuse in one line within seconds."""
    import shutil

    hostile = UNMETERED["nested-equal"]
    build = tmp_path / "B"
    shutil.copytree(tiny_build("int4"), build)
    (build / "chat_template.jinja").write_text(hostile, encoding="utf-8")
    data = json.loads((build / "tokenizer_config.json").read_text())
    data.pop("chat_template", None)
    (build / "tokenizer_config.json").write_text(json.dumps(data))

    model = _model_with_chat_template(tmp_path / "M", hostile)
    inspected = _run_cli("inspect", str(model), cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert len([line for line in inspected.stdout.splitlines() if "render limit" in line]) == 1

    template_file = tmp_path / "hostile.jinja"
    template_file.write_text(hostile, encoding="utf-8")
    cache = tmp_path / "foundry"
    install = _run_cli("install", str(tiny_build("int4")), "--name", "hostile", "--template", str(template_file),
                       "--cache-dir", str(cache), cwd=tmp_path)  # fmt: skip
    assert "render limit" in _one_error_line(install)
    assert not cache.exists() or not any("hostile" in path.name for path in cache.rglob("*"))

    for args in (("run", str(build), "--prompt", "hi"), ("serve", str(build), "--port", "0")):
        line = _one_error_line(_run_cli(*args, cwd=tmp_path, timeout=120))
        assert str(build) in line and "render limit" in line, (args, line)


# ------------------------------------------------------------------ the engine is a plugin, reached through its hook
def test_slmk_api_templates_calls_the_engine_the_registry_picks():
    import slmk_templates

    from slmk.api.templates import render_chat_template as through_the_api
    from slmk.plugins import get_registry

    assert get_registry().get("slmk_template_engines") is slmk_templates.ENGINE
    assert slmk_templates.ENGINE.render_chat_template is render_chat_template
    assert through_the_api("{{ messages[0].content }}!", [{"role": "user", "content": "hi"}]) == "hi!"


def test_the_highest_priority_engine_is_the_one_everyone_gets():
    from dataclasses import replace

    import slmk_templates

    from slmk.api import hookimpl
    from slmk.api.templates import render_chat_template as through_the_api
    from slmk.api.testing import isolated_default_registry

    class Shouting:
        @hookimpl
        def slmk_template_engines(self):
            yield replace(slmk_templates.ENGINE, name="shouting", priority=1, render_chat_template=lambda *a, **k: "HI")

    with isolated_default_registry() as registry:
        registry.register(Shouting())
        assert through_the_api("{{ messages[0].content }}", [{"role": "user", "content": "hi"}]) == "HI"


def test_without_a_template_engine_each_use_is_one_line(monkeypatch, run_slmk, tiny_model_dir):
    from slmk.api.templates import render_chat_template as through_the_api
    from slmk.api.testing import isolated_default_registry

    monkeypatch.setenv("SLMK_DISABLE_PLUGINS", "templates")
    with isolated_default_registry(), pytest.raises(SlmkError, match="no template engine is installed") as caught:
        through_the_api("{{ 1 }}", [])
    assert "\n" not in caught.value.one_line() and "SLMK_DISABLE_PLUGINS" in caught.value.hint
    done = run_slmk("inspect", str(tiny_model_dir))  # the environment above reaches the child too
    assert done.returncode == 0, done.stderr
    assert "no template engine is installed" in done.stdout and "Traceback" not in done.stderr
