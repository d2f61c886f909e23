"""The IBM Granite 3.x model family: how slmk recognises these models and prompts them.

Generated with ``slmk plugin new granite --kind family``, then filled in with
Granite's published values. Granite 3.x instruct models (``model_type`` "granite",
``GraniteForCausalLM``) mark turns with ``<|start_of_role|>ROLE<|end_of_role|>`` and
end them with ``<|end_of_text|>``. Granite 3.0 ships the template below; 3.1 to 3.3
keep the same turns and add a dated default system message plus tool and document
blocks, which slmk's round-trip check handles (the default system message is a known
gap of the four-piece format, noted by ``slmk template show``).

``match`` scores a model folder: 0 means "not mine", the highest score wins. slmk's
built-in families score 100 to 140 when a chat template renders their turn markers,
so a family that knows the exact ``model_type`` returns more (``SCORE``).
``prompt_template`` gives the four pieces Foundry Local's legacy
``inference_model.json`` carries; ``slmk install`` proves them against the model's
own chat template before it installs anything.
"""

from __future__ import annotations

from collections.abc import Iterator

from slmk.api import ModelFamily, ModelInfo, PromptTemplate, hookimpl
from slmk.api.templates import model_identity, sample_rendering

# slmk has a built-in "granite" family since; a plugin's record may not take a built-in's name
# (it would be refused), so this one is "granite-plugin" and wins by scoring higher
FAMILY_NAME = "granite-plugin"

#: ``model_type`` values in config.json that belong to this family.
MODEL_TYPES: tuple[str, ...] = ("granite",)
#: ``architectures`` in config.json that belong to this family.
ARCHITECTURES: tuple[str, ...] = ("GraniteForCausalLM",)

#: The published chat template of ibm-granite/granite-3.0-2b-instruct and -8b-instruct
#: (tokenizer_config.json), verbatim: the JSON string split at its line breaks.
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|start_of_role|>available_tools<|end_of_role|>\n' }}\n"
    "    {%- for tool in tools %}\n"
    "    {{- tool | tojson(indent=4) }}\n"
    "    {%- if not loop.last %}\n"
    "        {{- '\n\n' }}\n"
    "    {%- endif %}\n"
    "    {%- endfor %}\n"
    "    {{- '<|end_of_text|>\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'system' %}\n"
    "    {{- '<|start_of_role|>system<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}\n"
    "    {%- elif message['role'] == 'user' %}\n"
    "    {{- '<|start_of_role|>user<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "    {{- '<|start_of_role|>assistant<|end_of_role|>'  + message['content'] + '<|end_of_text|>\n' }}\n"
    "    {%- elif message['role'] == 'assistant_tool_call' %}\n"
    "    {{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['content'] + '<|end_of_text|>\n' }}\n"
    "    {%- elif message['role'] == 'tool_response' %}\n"
    "    {{- '<|start_of_role|>tool_response<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}\n"
    "    {%- endif %}\n"
    "    {%- if loop.last and add_generation_prompt %}\n"
    "    {{- '<|start_of_role|>assistant<|end_of_role|>' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}"
)
#: Special tokens of the family's tokenizer that the chat template may use (it uses none;
#: <|end_of_text|> is Granite's end-of-sequence token).
SPECIAL_TOKENS: dict[str, str] = {"eos_token": "<|end_of_text|>"}
#: Text every rendering of CHAT_TEMPLATE holds. A model whose own chat template does not
#: render all of it was fine-tuned onto another format: that format's family should claim it.
MARKERS: tuple[str, ...] = ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>")

PROMPT_TEMPLATE = PromptTemplate(
    system="<|start_of_role|>system<|end_of_role|>{Content}<|end_of_text|>\n",
    user="<|start_of_role|>user<|end_of_role|>{Content}<|end_of_text|>\n",
    assistant="<|start_of_role|>assistant<|end_of_role|>{Content}<|end_of_text|>\n",
    prompt="<|start_of_role|>user<|end_of_role|>{Content}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    source=f"family:{FAMILY_NAME}",
)

#: Tokens that end the model's turn: runtimes stop generating at them.
STOP_TOKENS: tuple[str, ...] = ("<|end_of_text|>",)
#: Granite's generation_config.json sets no sampling defaults: the runtime's apply.
GENERATION_DEFAULTS: dict[str, float | int | bool] = {}

#: More than any built-in family scores, so that this family wins for its own model_type.
SCORE = 150


def match(info: ModelInfo) -> int:
    """SCORE for a model of this family, 0 for any other."""
    model_type, architectures = model_identity(info)  # also reads a build's slmk_build.json
    if model_type not in MODEL_TYPES and not set(architectures) & set(ARCHITECTURES):
        return 0
    rendered = sample_rendering(info)  # None: the model has no usable chat template
    if rendered is not None and not all(marker in rendered for marker in MARKERS):
        return 0
    return SCORE


def prompt_template(info: ModelInfo) -> PromptTemplate:
    """The family's pieces: Granite 3.0 to 3.3 share them."""
    return PROMPT_TEMPLATE


@hookimpl
def slmk_model_families() -> Iterator[ModelFamily]:
    yield ModelFamily(
        name=FAMILY_NAME,
        description="IBM Granite 3.x instruct models (slmk-granite)",
        match=match,
        prompt_template=prompt_template,
        stop_tokens=STOP_TOKENS,
        generation_defaults=GENERATION_DEFAULTS,
        chat_template=CHAT_TEMPLATE,
    )
