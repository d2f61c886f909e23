"""The ONNX Runtime GenAI model builder, called in-process.

The builder (``onnxruntime_genai.models.builder``) prints hundreds of lines and
configures the root logger on import; both are sent to a log file in the step's
work folder, and its last lines are quoted when the build fails.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from slmk.api import ModelInfo, SlmkError, StepFailed, StepRequest, UsageError
from slmk.api.files import dir_size, installed_version, write_json_atomic
from slmk.api.models import missing_search_defaults, pickled_weights, write_search

from . import adapters, prepack_order, tokenization, weight_quant
from .errors import first_line
from .providers import builder_ep
from .session_options import SESSION_OPTIONS, default_session_options, parse_session_options, write_session_options

#: Distributions that ship ``onnxruntime_genai`` (one per hardware flavour).
GENAI_DISTRIBUTIONS = (
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai-directml",
    "onnxruntime-genai-winml",
    "onnxruntime-genai-core",
)

#: ``architectures[0]`` values the 0.18 builder dispatches on; used only when its
#: source cannot be read (the installed builder is the authority).
BUILDER_ARCHITECTURES_0_18 = (
    "ChatGLMForConditionalGeneration",
    "ChatGLMModel",
    "Ernie4_5ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
    "Gemma4ForConditionalGeneration",
    "Gemma4UnifiedForConditionalGeneration",
    "GptOssForCausalLM",
    "GraniteForCausalLM",
    "GraniteMoeHybridForCausalLM",
    "HunYuanDenseV1ForCausalLM",
    "InternLM2ForCausalLM",
    "Lfm2ForCausalLM",
    "Lfm2MoeForCausalLM",
    "Lfm2VlForConditionalGeneration",
    "Lfm2AudioForConditionalGeneration",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Mistral3ForConditionalGeneration",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "PhiMoEForCausalLM",
    "Phi3SmallForCausalLM",
    "Phi3VForCausalLM",
    "Phi4MMForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3ForCausalLM",
    "Qwen3VLForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
    "SmolLM3ForCausalLM",
    "VideoChatFlashQwenForCausalLM",
    "WhisperForConditionalGeneration",
)

#: Options this converter takes (slmk name -> help). ``algorithm`` is the builder's
#: ``algo_config``; the others keep the builder's current names (the old ``int4_*``
#: spellings are not passed on).
OPTIONS: dict[str, str] = {
    "block_size": "int4/int8 weight block size: 16, 32 (default at int4), 64, 128 (default at int8) or 256",
    "accuracy_level": "int4/int8 MatMul compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8 (default 4 on cpu)",
    "is_symmetric": "symmetric int4/int8 weights (default true); false stores uint4/uint8 with zero points",
    "algorithm": "int4/int8 method: default, rtn or k_quant (gptq, awq, hqq come from a quantizer step)",
    "matmul_mixed_precision": "MatMul groups kept at another type, e.g. last_matmul:int8,mixed_layers:int8",
    "shared_embeddings": "share the embedding and lm_head weights (only for models that tie them)",
    "op_types_to_quantize": (
        "op types to quantize, '/'-separated: MatMul/Gather (default at int4/int8 on cpu: the embedding table too)"
        " or MatMul (the embedding table kept in float)"
    ),
    "nodes_to_exclude": "comma-separated node names kept in float, e.g. /lm_head/MatMul",
    "enable_cuda_graph": "capture a CUDA graph at inference (cuda only)",
    "prune_lm_head": "logits of the last prompt position only: faster prompts, less memory (default true at int4/int8)",
    "allow_pickle": "read pytorch_model.bin weights (pickles can run code): --allow-pickle / [ortgenai] allow_pickle",
    # Set by slmk_ortgenai.adapters.convert_adapter for --adapter-mode separate:
    "adapter_path": "a PEFT LoRA adapter folder: build the base with LoRA inputs and write adapters/NAME.onnx_adapter",
    "adapter_name": "the NAME of that adapter file (default: the adapter folder's name)",
    "adapter_digest": "sha256 of the adapter's files, so the build cache sees a changed adapter",
    # Not builder options: written into genai_config.json session_options after the build.
    **SESSION_OPTIONS,
}
#: Precisions built with ``prune_lm_head`` unless the options say otherwise: the builds that
#: are deployed get logits of the last prompt position only (1.3x faster prompts on a 0.5B
#: model, no 297 MiB logits tensor); full-precision builds keep every position's logits,
#: because they serve as the reference that perplexity is scored on (in one pass each).
PRUNED_BY_DEFAULT = ("int4", "int8")
#: Options handled by slmk around the builder call rather than passed to it as they are.
_ADAPTER_OPTIONS = ("adapter_path", "adapter_name", "adapter_digest")

BUILDER_ALGORITHMS = ("default", "rtn", "k_quant")
#: Options slmk reads itself; the builder never sees them.
SLMK_ONLY_OPTIONS = ("allow_pickle",)
#: Options that shape only quantized builds: an fp32 build's cache key leaves them out.
QUANTIZATION_OPTIONS = (
    "algorithm",
    "block_size",
    "accuracy_level",
    "is_symmetric",
    "matmul_mixed_precision",
    "op_types_to_quantize",
    "nodes_to_exclude",
)
#: Algorithms that belong to an HF-stage quantizer: its weights arrive already quantized.
QUANTIZER_ALGORITHMS = ("gptq", "awq", "hqq", "quarot", "spinquant")
_BOOLEAN_OPTIONS = ("is_symmetric", "shared_embeddings", "enable_cuda_graph", "prune_lm_head")
_CHOICES: dict[str, tuple[str, ...]] = {
    "block_size": ("16", "32", "64", "128", "256"),
    "accuracy_level": ("0", "1", "2", "3", "4"),
}

#: The pip requirement for a module the builder imports.
_PIP_NAMES = {
    "onnxruntime_genai": "onnxruntime-genai==0.18.0",
    "onnx_ir": "onnx-ir",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime==1.31.0",
    "torch": "torch",
    "transformers": "transformers",
}
_TAIL_LINES = 5


# ------------------------------------------------------------------ model support
def _builder_source() -> Path | None:
    # find_spec on a top-level package locates it without importing it.
    try:
        spec = importlib.util.find_spec("onnxruntime_genai")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "models" / "builder.py"
        if candidate.is_file():
            return candidate
    return None


@cache
def supported_architectures() -> tuple[str, ...]:
    """The ``architectures[0]`` values the installed builder dispatches on, read from its source."""
    source = _builder_source()
    if source is not None:
        try:
            found = re.findall(r'architectures\[0\]\s*==\s*"([A-Za-z0-9_]+)"', source.read_text(encoding="utf-8"))
        except OSError:
            found = []
        if found:
            return tuple(dict.fromkeys(found))
    return BUILDER_ARCHITECTURES_0_18


#: The architectures whose builds slmk checks against transformers: the rows of the architecture
#: matrix (tests/test_architectures.py: fp32 greedy tokens equal to transformers' on a tiny model
#: of the family's real config field set). tests/test_architectures.py keeps this list and the
#: matrix's rows the same.
VERIFIED_ARCHITECTURES = (
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "OlmoForCausalLM",
    "Phi3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
_MULTIMODAL = (
    "a multimodal model (the builder makes its text part for a vision/audio pipeline); slmk converts text decoders"
)
_REMOTE_CODE = "its modelling code lives in the model's repository (trust_remote_code), not in transformers"
_UNVERIFIED = "slmk has not verified its builds against transformers yet (docs/architectures.md)"
#: Architectures the installed builder dispatches on that slmk refuses before building, and why.
#: tests/test_architectures.py fails when the builder lists one that is neither here nor verified.
REFUSED_ARCHITECTURES: dict[str, str] = {
    "ChatGLMForConditionalGeneration": _REMOTE_CODE,
    "ChatGLMModel": _REMOTE_CODE,
    "Ernie4_5ForCausalLM": _UNVERIFIED,
    "GemmaForCausalLM": _UNVERIFIED,
    "Gemma3ForConditionalGeneration": _MULTIMODAL,
    "Gemma4ForConditionalGeneration": _MULTIMODAL,
    "Gemma4UnifiedForConditionalGeneration": _MULTIMODAL,
    "GptOssForCausalLM": _UNVERIFIED + "; a mixture of experts the builder quantizes symmetrically only",
    "GraniteMoeHybridForCausalLM": _UNVERIFIED + "; Mamba layers",
    "HunYuanDenseV1ForCausalLM": _UNVERIFIED,
    "InternLM2ForCausalLM": _REMOTE_CODE,
    "Lfm2ForCausalLM": _UNVERIFIED + "; convolution layers",
    "Lfm2MoeForCausalLM": _UNVERIFIED + "; convolution layers and experts",
    "Lfm2VlForConditionalGeneration": _MULTIMODAL,
    "Lfm2AudioForConditionalGeneration": _MULTIMODAL,
    "Mistral3ForConditionalGeneration": _MULTIMODAL,
    "NemotronForCausalLM": _UNVERIFIED,
    "PhiForCausalLM": _UNVERIFIED,
    "PhiMoEForCausalLM": "the builder makes it for CUDA at int4 only, whatever precision and provider are asked",
    "Phi3SmallForCausalLM": _REMOTE_CODE,
    "Phi3VForCausalLM": _MULTIMODAL,
    "Phi4MMForCausalLM": _MULTIMODAL,
    "Qwen2_5_VLForConditionalGeneration": _MULTIMODAL,
    "Qwen3VLForConditionalGeneration": _MULTIMODAL,
    "Qwen3_5ForConditionalGeneration": _MULTIMODAL,
    "Qwen3_5MoeForConditionalGeneration": _MULTIMODAL,
    "VideoChatFlashQwenForCausalLM": _MULTIMODAL,
    "WhisperForConditionalGeneration": "a speech encoder-decoder; slmk converts text decoders",
}


def supports(info: ModelInfo) -> str | None:
    """Why the builder cannot convert this model, or None. Reads JSON only (no torch)."""
    if not info.architectures:
        return "config.json names no architectures, and the model builder dispatches on architectures[0]"
    architecture = info.architecture
    if architecture not in supported_architectures():
        return (
            f"the onnxruntime-genai model builder does not support {architecture} (slmk converts {_family_summary()})"
        )
    if architecture not in VERIFIED_ARCHITECTURES:
        reason = REFUSED_ARCHITECTURES.get(architecture, _UNVERIFIED)
        return f"slmk does not convert {architecture}: {reason}"
    if architecture == "OlmoForCausalLM" and info.config.get("clip_qkv") is not None:
        # transformers clamps Q, K and V to +-clip_qkv; the builder's OLMo graph does not
        return f"slmk does not convert {architecture} with clip_qkv: the builder's graph does not clip Q, K and V"
    return None


def _family_summary() -> str:
    names = sorted({re.sub(r"(ForCausalLM|ForConditionalGeneration|Model)$", "", a) for a in VERIFIED_ARCHITECTURES})
    return ", ".join(names)


# ------------------------------------------------------------------ versions
def tool_versions() -> dict[str, str]:
    """Versions that change what the builder writes: part of the step cache key."""
    found = {
        "slmk builder fixes": FIXES_REVISION,
        "onnxruntime-genai": installed_version(*GENAI_DISTRIBUTIONS),
        "onnx-ir": installed_version("onnx-ir"),
        "transformers": installed_version("transformers"),
        "torch": installed_version("torch"),
    }
    return {name: version or "absent" for name, version in found.items()}


# ------------------------------------------------------------------ options
def builder_options(options: Mapping[str, Any], *, trust_remote_code: bool) -> tuple[list[str], list[str]]:
    """slmk options -> the builder's ``KEY=VALUE`` list, plus notes on what was ignored.

    Raises UsageError for unknown names and bad values, before any heavy import.
    """
    pairs: list[str] = []
    notes: list[str] = []
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the model builder",
            hint=f"the ortgenai-builder converter takes {', '.join(OPTIONS)}",
        )
    parse_session_options(options)  # validated here, written by _complete_output
    for key, value in options.items():
        if value is None or key in SLMK_ONLY_OPTIONS or key in _ADAPTER_OPTIONS or key in SESSION_OPTIONS:
            continue
        if key == "algorithm":
            algorithm = str(value).lower()
            if algorithm in QUANTIZER_ALGORITHMS:
                notes.append(
                    f"algorithm {algorithm} was applied by the quantizer step; the builder keeps those weights"
                )
                continue
            if algorithm not in BUILDER_ALGORITHMS:
                raise UsageError(
                    f"unknown algorithm {value!r} for the model builder",
                    hint=f"use one of {', '.join(BUILDER_ALGORITHMS)}, or {', '.join(QUANTIZER_ALGORITHMS)} "
                    "through a quantizer plugin",
                )
            if algorithm != "default":
                pairs.append(f"algo_config={algorithm}")
            continue
        if key in _BOOLEAN_OPTIONS:
            text = _boolean(key, value)
        else:
            text = str(value).strip()
            if key in _CHOICES and text not in _CHOICES[key]:
                raise UsageError(f"{key}={value!r} is not allowed", hint=f"{key} is one of {', '.join(_CHOICES[key])}")
        pairs.append(f"{key}={text}")
    # Never ask the hub for a token, and run no repository code unless the user said so.
    pairs += ["hf_token=false", f"hf_remote={'true' if trust_remote_code else 'false'}"]
    return pairs, notes


#: int8's block size unless told otherwise (the builder's default is 32 at every precision). At 128
#: the 0.5B-shaped int8 build's load peak is 629 against 762 MiB at 32 (llama.cpp's Q8_0: 594), its
#: file 487 against 531 MiB (Q8_0: 504), it is no slower, and on real text its perplexity equals
#: block 32's and Q8_0's (docs/benchmarks.md, "int8: block 128 by default").
INT8_BLOCK_SIZE = 128
#: The op types an int4/int8 build quantizes unless told otherwise: a model's own embedding table
#: too, as llama.cpp's Q4_0/Q4_K_M/Q8_0 do. At int4 the quantizer writes a 4-bit GatherBlockQuantized;
#: at int8 slmk's weight-by-weight pass writes an 8-bit one (the 0.18 builder keeps it in float).
#: On real text the int4 file shrinks by 38 % for 0.2 % of perplexity, the int8 file by 29 % for none
#: (docs/benchmarks.md, "Quality per byte"). ``-O op_types_to_quantize=MatMul`` keeps the table in float.
QUANTIZED_OP_TYPES = "MatMul/Gather"
#: The precisions whose builds quantize the embedding table by default.
EMBEDDING_QUANTIZED_PRECISIONS = ("int4", "int8")


def embedding_quantization_pairs(
    precision: str, builder_ep_name: str, options: Mapping[str, Any], *, shared_int4_table: bool = False
) -> list[str]:
    """The builder pairs that make an int4/int8 cpu build quantize its embedding table, or refuse what cannot.

    Only the builder's default method quantizes a Gather (ONNX Runtime's rtn and k_quant
    passes quantize MatMuls only): an explicit ``op_types_to_quantize`` with Gather and
    another algorithm would leave the table in float without a word, so it is refused;
    except for an int4 embedding that reads the output layer's table (``shared_int4_table``,
    a tied model), which that table's method quantizes.
    """
    if precision not in EMBEDDING_QUANTIZED_PRECISIONS or (shared_int4_table and precision == "int4"):
        return []
    algorithm = str(options.get("algorithm") or "default").lower()
    asked = options.get("op_types_to_quantize")
    if asked is not None:
        if "Gather" in str(asked).split("/") and algorithm in BUILDER_ALGORITHMS and algorithm != "default":
            raise UsageError(
                f"op_types_to_quantize={asked} at {precision} needs the default algorithm, not {algorithm}",
                hint=f"the builder's rtn/k_quant keep an {precision} embedding in float: drop the algorithm or Gather",
            )
        return []
    if builder_ep_name != "cpu" or algorithm != "default":
        return []
    return [f"op_types_to_quantize={QUANTIZED_OP_TYPES}"]


def _boolean(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return "true"
    if text in ("0", "false", "no", "off"):
        return "false"
    raise UsageError(f"{key}={value!r} is not a boolean", hint=f"use {key}=true or {key}=false")


# ------------------------------------------------------------------ quiet builder
@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send everything the builder writes (print, tqdm, logging, C++ stderr) to ``log_path``.

    File descriptors 1 and 2 point at the log, so native libraries' output lands
    there too. ``sys.stdout``/``sys.stderr`` are swapped as well, because test runners
    and click replace them with objects that have no descriptor; they are swapped for
    the interpreter's own ``sys.__stdout__``/``sys.__stderr__``, never for the log file,
    since libraries keep the stream they find (transformers creates its logging
    handler on first use) and the log file is closed afterwards.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    originals = {1: sys.__stdout__, 2: sys.__stderr__}
    for stream in (sys.stdout, sys.stderr, *originals.values()):
        with contextlib.suppress(Exception):
            stream.flush()
    log = open(log_path, "a", encoding="utf-8", errors="replace", buffering=1)
    saved_fds: dict[int, int] = {}
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):  # no such descriptor in a detached process
                saved = os.dup(fd)
                os.dup2(log.fileno(), fd)
                saved_fds[fd] = saved
        # The onnxruntime quantizer calls logging.basicConfig(INFO) when imported; a handler
        # already on the root logger makes that a no-op, so slmk's own logging stays untouched.
        root.handlers = [logging.StreamHandler(log)]
        root.setLevel(logging.INFO)
        targets = {fd: originals[fd] if fd in saved_fds and originals[fd] is not None else log for fd in (1, 2)}
        with contextlib.redirect_stdout(targets[1]), contextlib.redirect_stderr(targets[2]):
            yield
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        for stream in (*originals.values(), log):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        log.close()


def _tail(log_path: Path, lines: int = _TAIL_LINES) -> list[str]:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            # tqdm redraws with carriage returns: keep only the last state of each line.
            kept = deque((line.rstrip("\n").split("\r")[-1].strip() for line in handle), maxlen=200)
    except OSError:
        return []
    return [line if len(line) <= 200 else line[:197] + "..." for line in kept if line][-lines:]


def _import_builder():
    try:
        from onnxruntime_genai.models.builder import create_model, parse_extra_options
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "onnxruntime_genai").split(".")[0]
        requirement = _PIP_NAMES.get(module, module)
        raise StepFailed(
            f"the onnxruntime-genai model builder cannot be imported: {first_line(exc)}",
            hint=f"pip install '{requirement}' (or pip install 'slmk[ortgenai,convert]')",
        ) from exc
    return parse_extra_options, create_model


# ------------------------------------------------------------------ builder fixes
#: Raised whenever a fix below changes what a build holds, so cached steps of before are not reused.
FIXES_REVISION = "10"
#: The builder versions the fixes below were written for and proved on (tests/test_architectures.py).
FIXED_BUILDER_VERSIONS = ("0.18.",)


def flatten_rope_parameters(config: Any) -> Any:
    """Give the 0.18 builder the flat ``rope_parameters`` it reads, on the loaded config object.

    transformers 5 loads Gemma 3's RoPE settings per layer type
    (``{"full_attention": {...}, "sliding_attention": {...}}``) whatever ``config.json``
    says (``rope_scaling`` + ``rope_local_base_freq`` of transformers 4.x included), so no
    rewrite of ``config.json`` can reach the builder: it reads ``rope_parameters["rope_type"]``
    (KeyError) and ``rope_local_base_freq``. The global layers' parameters become the flat
    dict and the local layers' theta ``rope_local_base_freq``, as transformers 4.x had them.
    """
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or "rope_type" in rope:
        return config
    per_type = {key: value for key, value in rope.items() if isinstance(value, dict)}
    if "full_attention" not in per_type:
        return config
    config.rope_parameters = dict(per_type["full_attention"])
    sliding = per_type.get("sliding_attention") or {}
    if "rope_theta" in sliding and getattr(config, "rope_local_base_freq", None) is None:
        config.rope_local_base_freq = sliding["rope_theta"]
    return config


def _smollm3_nope_layers(smollm3_class: type) -> Any:
    """SmolLM3's ``make_attention`` with its NoPE layers (``no_rope_layers[i] == 0``) built without RoPE.

    The 0.18 builder turns off only RoPE *inside* GroupQueryAttention for those layers,
    so the base class then builds a separate RotaryEmbedding op that reads
    ``position_ids``, an input the fused-RoPE model does not have (KeyError
    'position_ids'). Turning RoPE off for the layer builds what transformers computes.
    """

    def make_attention(self: Any, layer_id: int, attention: Any, root_input: Any, **kwargs: Any) -> Any:
        saved = (self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"], self.window_size)
        uses_rope = bool(self.no_rope_layers[layer_id])
        self.attention_attrs["rope"] = saved[0] and uses_rope
        self.attention_attrs["use_rope_in_attn"] = saved[1] and uses_rope
        if self.layer_types[layer_id] == "full_attention":
            self.window_size = -1
        try:
            return super(smollm3_class, self).make_attention(layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"], self.window_size = saved

    return make_attention


#: transformers' OlmoLayerNorm: F.layer_norm without weights, epsilon fixed at 1e-5.
OLMO_LAYER_NORM_EPSILON = 1e-5


def _olmo_layer_norm(olmo_init: Any) -> Any:
    """OLMo's ``__init__`` with transformers' layer norm: mean-subtracting, epsilon 1e-5.

    The 0.18 builder's OLMo gives the weightless norms weights of one and zero bias, but
    keeps its base class's RMSNorm (SimplifiedLayerNorm) and, with no ``rms_norm_eps`` in an
    OLMo config, epsilon 1e-6: the build answers with other tokens than transformers.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        olmo_init(self, *args, **kwargs)
        self.layernorm_attrs["simple"] = False
        self.layernorm_attrs["epsilon"] = OLMO_LAYER_NORM_EPSILON

    return __init__


@contextlib.contextmanager
def _builder_fixes(*, stream_weights: bool = True, load_as_stored: bool = True) -> Iterator[list[str]]:
    """Fixes for what the 0.18 builder gets wrong, applied for the duration of one build.

    Each is in-process and undone afterwards; none touches the user's files. Yields the
    names of the fixes applied (logged). A builder outside FIXED_BUILDER_VERSIONS is left alone.
    ``stream_weights=False`` keeps the builder's whole-model quantization pass and
    ``load_as_stored=False`` its fp32 load of the checkpoint (the tests compare the two).
    """
    applied: list[str] = []
    version = tool_versions()["onnxruntime-genai"]
    if not version.startswith(FIXED_BUILDER_VERSIONS):
        yield applied
        return
    import onnxruntime_genai.models.builder as module

    real_auto_config = module.AutoConfig

    class AutoConfig:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            return flatten_rope_parameters(real_auto_config.from_pretrained(*args, **kwargs))

    smollm3_class = getattr(module, "SmolLM3Model", None)
    smollm3 = smollm3_class.__dict__.get("make_attention") if smollm3_class else None
    module.AutoConfig = AutoConfig
    applied.append("per-layer-type rope_parameters")
    loader = sys.modules[module.Model.__module__]  # builders/base.py: where load_weights looks the class up
    real_auto_model = loader.AutoModelForCausalLM
    if load_as_stored:
        loader.AutoModelForCausalLM = _AsStored(real_auto_model, applied)
    if smollm3 is not None:
        smollm3_class.make_attention = _smollm3_nope_layers(smollm3_class)
        applied.append("SmolLM3 NoPE layers")
    olmo_class = getattr(module, "OLMoModel", None)
    olmo_init = olmo_class.__dict__.get("__init__") if olmo_class else None
    if olmo_init is not None:
        olmo_class.__init__ = _olmo_layer_norm(olmo_init)
        applied.append("OLMo layer norm")
    base = module.Model
    saved = {name: base.__dict__[name] for name in _BASE_PATCHES}
    base.make_tied_embeddings_init, base.make_tied_quantized_embedding_input_names = weight_quant.share_int8_embedding(
        saved["make_tied_embeddings_init"], saved["make_tied_quantized_embedding_input_names"], applied
    )
    if stream_weights:
        real_to_nbits = saved["to_nbits"]

        def to_nbits(self: Any) -> Any:
            model = weight_quant.stream_to_nbits(self, real_to_nbits)
            counts = getattr(self, weight_quant.STREAMED_ATTR, None)
            if counts:
                released = getattr(self, weight_quant.RELEASED_ATTR, 0)
                applied.append(
                    f"weight-by-weight quantization ({sum(counts.values())} weights"
                    + (", the checkpoint's pages handed back after each)" if released else ")")
                )
            else:  # what it cannot do goes through the builder's own pass, as before
                applied.append(f"none for quantization ({getattr(self, weight_quant.WHOLE_MODEL_ATTR, 'not needed')})")
            return model

        base.to_nbits = to_nbits
    try:
        yield applied
    finally:
        module.AutoConfig = real_auto_config
        loader.AutoModelForCausalLM = real_auto_model
        if smollm3 is not None:
            smollm3_class.make_attention = smollm3
        if olmo_init is not None:
            olmo_class.__init__ = olmo_init
        for name, method in saved.items():
            setattr(base, name, method)


class _AsStored:
    """``AutoModelForCausalLM`` for the builder, loading the checkpoint in the dtype it is stored in.

    The 0.18 builder loads without a dtype, so transformers makes every weight fp32: a bf16
    Phi-4-mini (7.7 GB) became 15 GB of process memory before the first node was built. The
    builder reads each weight through ``make_initializer``, which casts it to the graph's dtype
    when it is written (lazily, weight by weight; slmk's quantization pass casts slice by slice),
    and a bf16/fp16 -> fp32 cast is exact: the graph gets the same values. An fp32 checkpoint
    loads as before. Weights the builder computes with (sums, scales) are not cast first, so
    only architectures whose builds were compared byte for byte (tests/test_weight_quant.py)
    load this way; the others, LoRA adapters and remote code load in fp32 as before.
    """

    def __init__(self, real: Any, applied: list[str]) -> None:
        self.real, self.applied = real, applied

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        if "dtype" not in kwargs and "torch_dtype" not in kwargs and not kwargs.get("trust_remote_code"):
            config = kwargs.get("config")
            if config is None:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(
                    *args[:1], **{k: kwargs[k] for k in ("cache_dir", "token") if k in kwargs}
                )
            stored = str(getattr(config, "dtype", None)).removeprefix("torch.")
            if stored in ("bfloat16", "float16") and getattr(config, "model_type", None) in LOAD_AS_STORED:
                kwargs["dtype"] = "auto"
                self.applied.append(f"checkpoint loaded as stored ({stored}), cast weight by weight")
        return self.real.from_pretrained(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


#: Architectures whose builds from a half-precision checkpoint loaded as stored were compared,
#: byte for byte, with the builder's fp32 load (tests/test_weight_quant.py).
LOAD_AS_STORED = ("qwen2", "phi3")


#: Methods of the builder's base class that the fixes replace for one build.
_BASE_PATCHES = ("to_nbits", "make_tied_embeddings_init", "make_tied_quantized_embedding_input_names")


# ------------------------------------------------------------------ convert
def convert(request: StepRequest) -> None:
    """Build ``request.source`` into ``request.output`` with the model builder."""
    ep = request.execution_provider
    builder_ep_name = builder_ep(ep)  # refuses a provider the builder has no name for, before any work
    pairs, notes = builder_options(request.options, trust_remote_code=request.trust_remote_code)
    if request.precision in PRUNED_BY_DEFAULT and request.options.get("prune_lm_head") is None:
        pairs.append("prune_lm_head=true")
    if request.precision == "int8" and request.options.get("block_size") is None:
        pairs.append(f"block_size={INT8_BLOCK_SIZE}")
    info = ModelInfo.load(request.source)
    shared = request.options.get("shared_embeddings")  # the builder shares a tied table unless told not to
    shares_table = info.config.get("tie_word_embeddings") is True and (
        shared is None or _boolean("shared_embeddings", shared) == "true"
    )
    pairs += embedding_quantization_pairs(
        request.precision, builder_ep_name, request.options, shared_int4_table=shares_table
    )
    check_weights(info, allow_pickle=_boolean("allow_pickle", request.options.get("allow_pickle") or False) == "true")
    reason = supports(info)
    if reason:
        raise UsageError(reason, hint="`slmk inspect MODEL` shows which converters fit this model")
    # Without tokenizer files the builder writes a placeholder and the build fails only when run.
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
    if not any((info.path / name).is_file() for name in tokenizer_files):
        raise UsageError(
            f"{info.path} has no tokenizer (none of {', '.join(tokenizer_files)})",
            hint="copy the tokenizer files of the base model into the folder",
        )
    adapter = None
    if request.options.get("adapter_path"):
        # The base with a LoRA branch beside every adapted MatMul (the builder's adapter_path),
        # whose weights become model inputs afterwards; the branch stays in float so that an
        # adapter file can feed it, whatever precision the base weights get.
        adapter = adapters.resolve(request.options["adapter_path"], base=request.source)
        pairs.append(f"adapter_path={adapter.path.resolve()}")
        if request.precision in ("int4", "int8"):
            excluded = [n for p in pairs if p.startswith("nodes_to_exclude=") for n in p.split("=", 1)[1].split(",")]
            pairs = [p for p in pairs if not p.startswith("nodes_to_exclude=")]
            pairs.append("nodes_to_exclude=" + ",".join([*filter(None, excluded), *adapters.lora_node_names(adapter)]))
    work = Path(request.work_dir)
    cache_dir, staging, log_path = work / "builder-cache", work / "builder-output", work / "builder.log"
    shutil.rmtree(staging, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    shown = [p for p in pairs if not p.startswith(("hf_token=", "hf_remote=", "nodes_to_exclude=/model"))]
    request.progress.log(
        f"model builder (onnxruntime-genai {tool_versions()['onnxruntime-genai']}): "
        f"{info.architecture} -> {request.precision} for {builder_ep_name}"
        + (f" with {' '.join(shown)}" if shown else "")
    )
    for note in notes:
        request.progress.log(note)
    start = time.perf_counter()
    try:
        with _output_to(log_path):
            # Imported inside: importing it configures the root logger and prints.
            parse_extra_options, create_model = _import_builder()
            # parse_extra_options loads the config the builder then works from: fixes cover both
            with _builder_fixes(load_as_stored=adapter is None) as fixes:
                extra = parse_extra_options(
                    None, str(request.source), str(staging), request.precision, builder_ep_name, str(cache_dir), pairs
                )
                create_model(
                    None, str(request.source), str(staging), request.precision, builder_ep_name, str(cache_dir), **extra
                )
    except (KeyboardInterrupt, SystemExit, SlmkError):
        raise
    except Exception as exc:
        tail = _tail(log_path)
        raise StepFailed(
            f"the model builder failed on {info.path.name} ({info.architecture}, {request.precision}, "
            f"{builder_ep_name}): {first_line(exc)}",
            hint=("last builder output: " + " | ".join(tail)) if tail else "rerun with --debug for the traceback",
        ) from exc
    finally:
        gc.collect()  # the builder holds the whole model in memory until collected
    request.progress.log(f"builder wrote {dir_size(staging) / 1e6:.1f} MB in {time.perf_counter() - start:.1f}s")
    if fixes:
        request.progress.log(f"with slmk's fixes to the builder: {', '.join(fixes)}")
    _complete_output(staging, info, request)
    if adapter is not None:
        _separate_adapter(staging, adapter, request)  # rewrites model.onnx and its data file
    if weight_quant.gather_rows_from_file(staging):
        request.progress.log("the embedding reads the shared table's rows from the data file (one copy in memory)")
    moved = prepack_order.output_layer_first(staging)
    if moved:
        request.progress.log(f"{moved} is packed first at load (a lower peak: see prepack_order)")
    for item in staging.iterdir():
        shutil.move(str(item), str(Path(request.output) / item.name))


def _complete_output(build: Path, source: ModelInfo, request: StepRequest) -> None:
    """What runtimes need that the builder may leave out: generation defaults, chat template."""
    if not (build / "genai_config.json").is_file():
        raise StepFailed(
            "the model builder finished but wrote no genai_config.json",
            hint=f"onnxruntime-genai {tool_versions()['onnxruntime-genai']} may not support this model; "
            "slmk is tested with 0.18.0",
        )
    # onnxruntime-genai 0.18 runs the CPU provider on one intra-op thread unless the config
    # names a count: write one (the user's, else this machine's logical cores).
    session = {**default_session_options(), **parse_session_options(request.options)}
    write_session_options(build, session)
    request.progress.log("genai_config.json session_options: " + ", ".join(f"{k}={v}" for k, v in session.items()))
    missing = missing_search_defaults(build, source.generation_config)
    if missing:
        write_search(build, missing)
        request.progress.log(
            "genai_config.json search from generation_config.json: "
            + ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
        )
    if source.chat_template and not ModelInfo.load(build).chat_template:
        tokenizer_config = build / "tokenizer_config.json"
        if tokenizer_config.is_file():
            data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
            data["chat_template"] = source.chat_template
            write_json_atomic(tokenizer_config, data)
        else:
            (build / "chat_template.jinja").write_text(source.chat_template, encoding="utf-8")
        request.progress.log("copied the chat template from the source model (the builder dropped it)")
    if tokenization.rewrite_for_genai(build):
        request.progress.log(
            "tokenizer.json: dropped the decoder's leading Strip, so that onnxruntime-genai (and Foundry Local) "
            "tokenizes chat prompts as transformers does (no '\u2581' after every special token)"
        )


# ------------------------------------------------------------------ what the folder holds
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weights(info: ModelInfo, *, allow_pickle: bool) -> None:
    """Refuse a folder whose weights the builder would read from pickles, unless allowed.

    transformers prefers safetensors where both exist; with only ``pytorch_model*.bin``
    the builder unpickles them, and a pickle can run code. Folders with neither are
    refused too, naming what is there.
    """
    folder = info.path
    if any(folder.glob("*.safetensors")):
        return
    pickles = pickled_weights(folder)
    if pickles and not allow_pickle:
        raise UsageError(
            f"{folder.name} holds its weights only as pickles ({', '.join(pickles[:3])}), and loading a pickle can "
            "run code",
            hint="convert them to safetensors, or pass --allow-pickle (slmk.toml: [ortgenai] allow_pickle = true) "
            "for a model you trust",
        )
    if not pickles:
        raise UsageError(
            f"{folder.name} has no weights (no *.safetensors, no pytorch_model*.bin)",
            hint="pass the folder `save_pretrained` wrote; checkpoints/ or optimizer states are not weights",
        )


def _separate_adapter(build: Path, adapter: adapters.Adapter, request: StepRequest) -> None:
    """LoRA weights -> model inputs with empty defaults; the adapter -> adapters/NAME.onnx_adapter."""
    names = [name for module in adapter.modules for name in module.onnx_names()]
    inputs, dtype = adapters.make_lora_inputs(build / "model.onnx", names)
    name = request.options.get("adapter_name") or adapter.name
    (build / adapters.ADAPTERS_DIR).mkdir(exist_ok=True)
    write_json_atomic(
        build / adapters.ADAPTERS_DIR / adapters.LORA_INPUTS,
        {"inputs": inputs, "dtype": dtype, "target_modules": list(adapter.target_names), "built_with": name},
    )
    target = adapters.export_onnx_adapter(adapter, build, name)
    request.progress.log(
        f"LoRA inputs for {len(adapter.modules)} layers; adapter {name} -> "
        f"{target.relative_to(build)} ({target.stat().st_size / 1e3:.0f} kB)"
    )
