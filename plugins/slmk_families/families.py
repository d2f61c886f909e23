"""The family records: how each family is recognised and prompted.

Recognition (``match``) scores, highest wins:

* the chat template renders the family's turn markers: 100, +20 when ``model_type`` or
  ``architectures`` agree, + a family-specific bonus (Qwen3's ``<think>``, SmolLM's name).
  A template that renders *other* markers scores 0 even when ``model_type`` agrees: a
  fine-tune of Qwen2 with a Phi-3 template must be prompted as Phi-3.
* no usable chat template: 50 for the family that owns the ``model_type`` (a guess the
  notes of ``resolve_template`` flag), 0 for families that share an architecture.

Markers are looked up in a rendering of a sample conversation, not in the template
source: templates often build them at render time (Phi-4-mini writes ``'<|' + role + '|>'``).

The PromptTemplate: derived from the model's own chat template when it has one and the
derivation round-trips (fine-tunes with tweaked templates stay right); otherwise the
family's published pieces below, each proved against the family's published chat
template by the tests. As everywhere in slmk, a template's leading BOS is written at
the start of the system piece (see slmk_templates' ``prompt_template.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slmk.api import ModelFamily, ModelInfo, PromptTemplate, ToolCallFormat
from slmk.api.templates import (
    TemplateError,
    derive_prompt_template,
    model_identity,
    sample_rendering,
    special_tokens_for,
)

from .chat_templates import published

MARKER_SCORE = 100
TYPE_AGREES = 20
TYPE_ONLY_SCORE = 50


def _pieces(system: str, user: str, assistant: str, prompt: str, family: str) -> PromptTemplate:
    return PromptTemplate(system=system, user=user, assistant=assistant, prompt=prompt, source=f"family:{family}")


def _chatml(family: str) -> PromptTemplate:
    return _pieces(
        "<|im_start|>system\n{Content}<|im_end|>\n",
        "<|im_start|>user\n{Content}<|im_end|>\n",
        "<|im_start|>assistant\n{Content}<|im_end|>\n",
        "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n",
        family,
    )


PHI3 = _pieces(
    "<|system|>\n{Content}<|end|>\n",
    "<|user|>\n{Content}<|end|>\n",
    "<|assistant|>\n{Content}<|end|>\n",
    "<|user|>\n{Content}<|end|>\n<|assistant|>\n",
    "phi3",
)
PHI4_MINI = _pieces(
    "<|system|>{Content}<|end|>",
    "<|user|>{Content}<|end|>",
    "<|assistant|>{Content}<|end|>",
    "<|user|>{Content}<|end|><|assistant|>",
    "phi3",
)
# Llama 3.1-3.3: the system block carries the knowledge-cutoff preamble (fixed date of
# the published template; Llama 3.2's writes today's date instead).
LLAMA3 = _pieces(
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{Content}<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n{Content}<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\n{Content}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3",
)
# Mistral has no system turn (v0.3 folds it into the last user message, v0.1 refuses
# it): the system text goes as a user turn of its own.
MISTRAL_V03 = _pieces(
    "<s>[INST] {Content}[/INST]", "[INST] {Content}[/INST]", " {Content}</s>", "[INST] {Content}[/INST]", "mistral"
)
MISTRAL_V01 = _pieces(
    "<s>[INST] {Content} [/INST]", "[INST] {Content} [/INST]", "{Content}</s>", "[INST] {Content} [/INST]", "mistral"
)
# Gemma has no system turn either (Gemma 2 refuses it, Gemma 3 folds it into the first
# user turn).
GEMMA = _pieces(
    "<bos><start_of_turn>user\n{Content}<end_of_turn>\n",
    "<start_of_turn>user\n{Content}<end_of_turn>\n",
    "<start_of_turn>model\n{Content}<end_of_turn>\n",
    "<start_of_turn>user\n{Content}<end_of_turn>\n<start_of_turn>model\n",
    "gemma",
)
# The distills' system prompt is plain text right after the BOS; the generation prompt
# opens the reasoning block.
DEEPSEEK_R1 = _pieces(
    "<｜begin▁of▁sentence｜>{Content}",
    "<｜User｜>{Content}",
    "<｜Assistant｜>{Content}<｜end▁of▁sentence｜>",
    "<｜User｜>{Content}<｜Assistant｜><think>\n",
    "deepseek-r1",
)
# Granite 3.x: role markers, every turn closed by <|end_of_text|> and a newline; the
# template writes a dated default system message when the conversation has none.
GRANITE = _pieces(
    "<|start_of_role|>system<|end_of_role|>{Content}<|end_of_text|>\n",
    "<|start_of_role|>user<|end_of_role|>{Content}<|end_of_text|>\n",
    "<|start_of_role|>assistant<|end_of_role|>{Content}<|end_of_text|>\n",
    "<|start_of_role|>user<|end_of_role|>{Content}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    "granite",
)
ZEPHYR = _pieces(
    "<|system|>\n{Content}</s>\n",
    "<|user|>\n{Content}</s>\n",
    "<|assistant|>\n{Content}</s>\n",
    "<|user|>\n{Content}</s>\n<|assistant|>\n",
    "zephyr",
)


# Tool-call formats, as each family's published chat template describes them to the model
# (and renders an assistant turn that carries tool_calls).
HERMES_TOOL_CALLS = ToolCallFormat(start="<tool_call>\n", end="\n</tool_call>")  # Qwen2.5, Qwen3, SmolLM3
LLAMA3_TOOL_CALLS = ToolCallFormat(start="", arguments_key="parameters")  # the bare JSON object
MISTRAL_TOOL_CALLS = ToolCallFormat(start="[TOOL_CALLS] ", json_list=True, start_is_token=True, call_id_length=9)
GRANITE_TOOL_CALLS = ToolCallFormat(start="<|tool_call|>", json_list=True, start_is_token=True)
PHI4_MINI_TOOL_CALLS = ToolCallFormat(
    start="<|tool_call|>", end="<|/tool_call|>", json_list=True, start_is_token=True, tools_in_system=True
)


@dataclass(frozen=True)
class FamilySpec:
    """The data of one family; ``record()`` turns it into the kernel's ModelFamily."""

    name: str
    description: str
    markers: tuple[str, ...]  # all rendered by the family's chat templates
    pieces: PromptTemplate
    chat_template_file: str
    stop_tokens: tuple[str, ...]
    generation_defaults: Mapping[str, Any]
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # the published tokenizer's
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    claims_by_type: bool = True  # owns model_type when the model has no chat template
    excluded_markers: tuple[str, ...] = ()  # rendered by a look-alike family, never by this one
    bonus: Callable[[ModelInfo], int] = field(default=lambda info: 0)
    bonus_required: bool = False  # markers shared with a more general family: claim only with the bonus
    variant: Callable[[ModelInfo], PromptTemplate | None] = field(default=lambda info: None)
    tool_calls: ToolCallFormat | None = None  # how the family's published templates ask for tool calls

    def type_agrees(self, info: ModelInfo) -> bool:
        model_type, architectures = model_identity(info)
        return model_type in self.model_types or any(arch in self.architectures for arch in architectures)

    def match(self, info: ModelInfo) -> int:
        rendered = sample_rendering(info)
        if rendered is None:
            return TYPE_ONLY_SCORE if self.claims_by_type and self.type_agrees(info) else 0
        if not all(marker in rendered for marker in self.markers):
            return 0
        if any(marker in rendered for marker in self.excluded_markers):
            return 0
        bonus = self.bonus(info)
        if self.bonus_required and not bonus:
            return 0
        return MARKER_SCORE + (TYPE_AGREES if self.type_agrees(info) else 0) + bonus

    def prompt_template(self, info: ModelInfo) -> PromptTemplate:
        if info.chat_template:
            try:
                # the model's own tokens win; the family's fill in for a folder without a tokenizer config
                tokens = {**self.special_tokens, **special_tokens_for(info)}
                return derive_prompt_template(info.chat_template, tokens, source=f"family:{self.name}+chat_template")
            except TemplateError:
                pass  # the family's pieces; the installer's round-trip check says where they differ
        return self.variant(info) or self.pieces

    def record(self) -> ModelFamily:
        return ModelFamily(
            name=self.name,
            description=self.description,
            match=self.match,
            prompt_template=self.prompt_template,
            stop_tokens=self.stop_tokens,
            generation_defaults=dict(self.generation_defaults),
            chat_template=published(self.chat_template_file),
            tool_calls=self.tool_calls,
        )


def _in_template(*needles: str, points: int) -> Callable[[ModelInfo], int]:
    def bonus(info: ModelInfo) -> int:
        text = (info.chat_template or "") + str(info.config.get("_name_or_path", ""))
        return points if any(needle in text for needle in needles) else 0

    return bonus


def _large_vocab(pieces: PromptTemplate, threshold: int) -> Callable[[ModelInfo], PromptTemplate | None]:
    def variant(info: ModelInfo) -> PromptTemplate | None:
        return pieces if (info.vocab_size or 0) >= threshold else None

    return variant


def _mistral_variant(info: ModelInfo) -> PromptTemplate | None:
    # v0.1/v0.2 have the 32000-token vocabulary and put spaces around [/INST]; v0.3 has 32768
    return MISTRAL_V01 if info.vocab_size == 32000 else None


SPECS: tuple[FamilySpec, ...] = (
    FamilySpec(
        name="qwen2",
        tool_calls=HERMES_TOOL_CALLS,
        description="Qwen2 / Qwen2.5 and any plain ChatML model (<|im_start|>role ... <|im_end|>)",
        markers=("<|im_start|>", "<|im_end|>"),
        pieces=_chatml("qwen2"),
        chat_template_file="qwen2.5",
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        # Qwen2.5-*-Instruct generation_config.json
        generation_defaults={
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "repetition_penalty": 1.05,
        },
        model_types=("qwen2", "qwen2_moe"),
        architectures=("Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
        bonus=lambda info: 1,  # the generic ChatML family wins ties with the other ChatML families
    ),
    FamilySpec(
        name="qwen3",
        tool_calls=HERMES_TOOL_CALLS,
        description="Qwen3 (ChatML with <think> reasoning; history answers lose their reasoning)",
        markers=("<|im_start|>", "<|im_end|>"),
        pieces=_chatml("qwen3"),
        chat_template_file="qwen3",
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        # Qwen3 model card, "Best Practices", thinking mode: Temperature=0.6, TopP=0.95, TopK=20, MinP=0
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20},
        model_types=("qwen3", "qwen3_moe"),
        architectures=("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
        bonus=_in_template("<think>", "enable_thinking", points=10),
    ),
    FamilySpec(
        name="smollm",
        description="SmolLM / SmolLM2 (Llama architecture, ChatML template)",
        markers=("<|im_start|>", "<|im_end|>"),
        pieces=_chatml("smollm"),
        chat_template_file="smollm2",
        special_tokens={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        # SmolLM2-*-Instruct model card example: temperature=0.2, top_p=0.9, do_sample=True
        generation_defaults={"do_sample": True, "temperature": 0.2, "top_p": 0.9},
        model_types=("llama",),
        architectures=("LlamaForCausalLM",),
        claims_by_type=False,  # a llama without a template is Llama 3's
        bonus=_in_template("SmolLM", points=10),
        bonus_required=True,  # any other ChatML Llama fine-tune is plain ChatML (qwen2)
    ),
    FamilySpec(
        name="smollm3",
        tool_calls=HERMES_TOOL_CALLS,
        description="SmolLM3 (ChatML; a metadata system block with the date and /think or /no_think reasoning)",
        markers=("<|im_start|>", "<|im_end|>"),
        pieces=_chatml("smollm3"),
        chat_template_file="smollm3",
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
        stop_tokens=("<|im_end|>",),
        # SmolLM3-3B model card: "We recommend setting temperature=0.6 and top_p=0.95"
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.95},
        model_types=("smollm3",),
        architectures=("SmolLM3ForCausalLM",),
        bonus=_in_template("SmolLM", points=10),
        bonus_required=True,  # ChatML with another name is plain ChatML (qwen2)
    ),
    FamilySpec(
        name="granite",
        tool_calls=GRANITE_TOOL_CALLS,
        description="IBM Granite 3.x (<|start_of_role|>role<|end_of_role|> ... <|end_of_text|>)",
        markers=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
        pieces=GRANITE,
        chat_template_file="granite-3.1",
        special_tokens={"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>"},
        stop_tokens=("<|end_of_text|>",),
        # Granite 3.1 instruct generation_config.json sets no sampling and the model card's
        # example calls generate() without sampling arguments: greedy
        generation_defaults={"do_sample": False},
        model_types=("granite",),
        architectures=("GraniteForCausalLM",),
    ),
    FamilySpec(
        name="phi3",
        tool_calls=PHI4_MINI_TOOL_CALLS,
        description="Phi-3 / Phi-3.5 / Phi-4-mini (<|user|> ... <|end|> <|assistant|>)",
        markers=("<|user|>", "<|assistant|>", "<|end|>"),
        pieces=PHI3,
        chat_template_file="phi-3.5-mini",
        special_tokens={"bos_token": "<s>", "eos_token": "<|endoftext|>"},
        stop_tokens=("<|end|>", "<|endoftext|>"),
        # Phi-3.5-mini-instruct and Phi-4-mini-instruct model cards: generation_args
        # {"temperature": 0.0, "do_sample": False} (greedy)
        generation_defaults={"do_sample": False, "temperature": 0.0},
        model_types=("phi3", "phimoe"),
        architectures=("Phi3ForCausalLM", "PhiMoEForCausalLM"),
        variant=_large_vocab(PHI4_MINI, 100_000),  # Phi-4-mini: 200064 tokens, no newlines after markers
    ),
    FamilySpec(
        name="llama3",
        tool_calls=LLAMA3_TOOL_CALLS,
        description="Llama 3 / 3.1 / 3.2 / 3.3 (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>)",
        markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        pieces=LLAMA3,
        chat_template_file="llama-3.1",
        special_tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
        # Llama-3.1-8B-Instruct / Llama-3.2-*-Instruct generation_config.json
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.9},
        model_types=("llama",),
        architectures=("LlamaForCausalLM",),
    ),
    FamilySpec(
        name="mistral",
        tool_calls=MISTRAL_TOOL_CALLS,
        description="Mistral Instruct v0.1-v0.3 ([INST] ... [/INST]; no system turn of its own)",
        markers=("[INST]", "[/INST]"),
        pieces=MISTRAL_V03,
        chat_template_file="mistral-v0.3",
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        stop_tokens=("</s>",),
        # Mistral's model cards publish no sampling values; Mistral AI's API defaults
        # (docs.mistral.ai, chat completion: temperature 0.7, top_p 1)
        generation_defaults={"do_sample": True, "temperature": 0.7, "top_p": 1.0},
        model_types=("mistral",),
        architectures=("MistralForCausalLM",),
        variant=_mistral_variant,
    ),
    FamilySpec(
        name="gemma",
        description="Gemma 2 / Gemma 3 (<start_of_turn>user|model ... <end_of_turn>; no system turn)",
        markers=("<start_of_turn>", "<end_of_turn>"),
        pieces=GEMMA,
        chat_template_file="gemma-3",
        special_tokens={"bos_token": "<bos>", "eos_token": "<eos>"},
        stop_tokens=("<end_of_turn>", "<eos>"),
        # Gemma 3 generation_config.json (top_k 64, top_p 0.95) and the Gemma team's
        # recommended temperature 1.0
        generation_defaults={"do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95},
        model_types=("gemma", "gemma2", "gemma3", "gemma3_text"),
        architectures=("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
    ),
    FamilySpec(
        name="deepseek-r1",
        description="DeepSeek-R1 distills on Qwen2.5 and Llama 3 (<｜User｜> <｜Assistant｜>, <think>)",
        markers=("<｜User｜>", "<｜Assistant｜>"),
        pieces=DEEPSEEK_R1,
        chat_template_file="deepseek-r1-distill",
        special_tokens={"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
        stop_tokens=("<｜end▁of▁sentence｜>",),
        # DeepSeek-R1 model card, usage recommendations: temperature 0.5-0.7 (0.6
        # recommended), top_p 0.95; the distills' generation_config.json holds the same
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.95},
        model_types=("qwen2", "llama"),
        architectures=("Qwen2ForCausalLM", "LlamaForCausalLM"),
        claims_by_type=False,  # its base architectures belong to Qwen2 and Llama 3
    ),
    FamilySpec(
        name="zephyr",
        description="Zephyr / TinyLlama-Chat (<|user|>\\n ... </s> <|assistant|>)",
        markers=("<|user|>", "<|assistant|>"),
        excluded_markers=("<|end|>",),  # Phi-3 renders the same role markers, closed by <|end|>
        pieces=ZEPHYR,
        chat_template_file="zephyr",
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        stop_tokens=("</s>",),
        # TinyLlama-1.1B-Chat-v1.0 and zephyr-7b-beta model cards: do_sample=True,
        # temperature=0.7, top_k=50, top_p=0.95
        generation_defaults={"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.95},
        model_types=("llama", "mistral"),
        architectures=("LlamaForCausalLM", "MistralForCausalLM"),
        claims_by_type=False,
    ),
)

FAMILIES: tuple[ModelFamily, ...] = tuple(spec.record() for spec in SPECS)
