"""The build format: an ONNX Runtime GenAI folder and its genai_config.json.

Every converter writes this format and every runtime and installer reads it, so its
helpers live in the kernel (exported by ``slmk.api``): reading the config, the
generation defaults (``search``), and writing them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError
from .fsutil import write_json_atomic

GENAI_CONFIG = "genai_config.json"

# What a build may carry, checked before it is installed or loaded (``build_problems``): values
# beyond these make the runtime allocate without bound or fail deep inside its loader.
#: Tokens of context: no model today comes near 16 M; a larger value only sizes buffers.
MAX_CONTEXT_LENGTH = 1 << 24
#: Vocabulary entries (the largest real vocabularies are about 260 k).
MAX_VOCAB_SIZE = 1 << 24
#: top_k: more candidates than any vocabulary holds means "all of them".
MAX_TOP_K = MAX_VOCAB_SIZE
#: ONNX Runtime threads per session (intra_op_num_threads, inter_op_num_threads): ONNX Runtime
#: starts that many threads at load, so 100 000 grows memory until the machine gives out. A
#: fixed cap, not this machine's CPU count, so a build tuned on a larger machine still loads here.
MAX_SESSION_THREADS = 1024
#: Largest genai_config.json / tokenizer.json slmk parses (real ones: a few kB / a few MB).
MAX_CONFIG_BYTES = 16 << 20
MAX_TOKENIZER_BYTES = 256 << 20

#: ``search`` keys slmk and the runtimes read, with their type and the range the runtime accepts.
SEARCH_LIMITS: dict[str, tuple[type, float, float]] = {
    "max_length": (int, 1, MAX_CONTEXT_LENGTH),
    "min_length": (int, 0, MAX_CONTEXT_LENGTH),
    "top_k": (int, 0, MAX_TOP_K),
    "num_beams": (int, 1, 1024),
    "num_return_sequences": (int, 1, 1024),
    "no_repeat_ngram_size": (int, 0, 1024),
    "top_p": (float, 0.0, 1.0),
    "temperature": (float, 0.0, 1e6),
    "repetition_penalty": (float, 0.0, 1e6),
    "length_penalty": (float, -1e6, 1e6),
    "diversity_penalty": (float, -1e6, 1e6),
    "do_sample": (bool, 0, 1),
    "early_stopping": (bool, 0, 1),
    "past_present_share_buffer": (bool, 0, 1),
}

#: generation_config.json keys that have the same name and meaning in genai_config.json ``search``.
SEARCH_KEYS: tuple[str, ...] = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_length")


def read_genai_config(folder: Path) -> dict[str, Any]:
    """genai_config.json of a build as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / GENAI_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_search(folder: Path) -> dict[str, Any]:
    """The ``search`` block: the generation defaults every runtime of the build reads."""
    return dict(read_genai_config(folder).get("search") or {})


def context_length(folder: Path) -> int | None:
    """The build's context length in tokens, or None (absent, or not a valid length)."""
    model = read_genai_config(folder).get("model")
    value = model.get("context_length") if isinstance(model, dict) else None
    return value if _integer_problem("context_length", value, 1, MAX_CONTEXT_LENGTH) is None else None


def _integer_problem(key: str, value: Any, low: float, high: float) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{key} = {_shown(value)} is not an integer"
    if not low <= value <= high:
        return f"{key} = {_shown(value)} is out of range [{int(low)}, {int(high)}]"
    return None


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def search_value_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``search`` option ``key`` (None when it can, or the key is not one slmk knows)."""
    limit = SEARCH_LIMITS.get(key)
    if limit is None:
        return None
    kind, low, high = limit
    if kind is bool:
        return None if isinstance(value, bool) else f"{key} = {_shown(value)} is not true or false"
    if kind is int:
        return _integer_problem(key, value, low, high)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{key} = {_shown(value)} is not a finite number"
    if not low <= value <= high:
        return f"{key} = {_shown(value)} is out of range [{low:g}, {high:g}]"
    return None


def search_defaults(generation_config: Mapping[str, Any], context: int | None) -> dict[str, Any]:
    """The ``search`` values a model's generation_config.json sets, max_length capped at the context.

    Only keys the file really carries are returned: an absent key means the model
    author chose nothing, and the runtime's own default should stand.
    """
    out: dict[str, Any] = {}
    for key in SEARCH_KEYS:
        value = generation_config.get(key)
        if value is None:
            continue
        if key in ("max_length", "top_k") and isinstance(value, float) and value.is_integer():
            value = int(value)  # 20.0 in a JSON file means 20
        problem = search_value_problem(key, value)
        if problem:  # never carried into a build: the runtime would fail on it, or allocate without bound
            raise UsageError(
                f"generation_config.json: {problem}",
                hint="fix or remove that value in the model's generation_config.json",
            )
        out[key] = value
    if "max_length" in out and isinstance(context, int) and context > 0:
        out["max_length"] = min(out["max_length"], context)
    return out


def missing_search_defaults(folder: Path, generation_config: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults from ``generation_config`` that the build's ``search`` does not carry yet."""
    config = read_genai_config(folder)
    search = config.get("search") if isinstance(config.get("search"), dict) else {}
    wanted = search_defaults(generation_config, context_length(folder))
    return {key: value for key, value in wanted.items() if search.get(key) != value}


#: Search options runtimes take per request; ``max_new_tokens`` and ``truncate`` are slmk's own.
SEARCH_OPTIONS: tuple[str, ...] = (
    "max_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "min_length",
    "random_seed",
    "truncate",
)


def write_search(build_dir: Path, search: Mapping[str, Any]) -> None:
    """Merge generation defaults into genai_config.json ``search``, where every runtime reads them;
    ``max_length`` is capped at the model's context."""
    if not search:
        return
    config_path = Path(build_dir) / GENAI_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.setdefault("search", {}).update(search)
    context = context_length(build_dir)
    if context and config["search"].get("max_length", 0) > context:
        config["search"]["max_length"] = context
    write_json_atomic(config_path, config)


def build_problems(folder: Path, *, tokenizer: bool = True) -> list[str]:
    """What keeps ``folder`` from being a loadable build (empty when nothing does).

    The one reader of genai_config.json that checks what the runtime will need, before
    a build is installed or loaded: the file parses to an object; ``model`` and
    ``model.decoder`` are objects; every ``filename`` is a relative path to a file inside
    the build; ``context_length``, ``vocab_size`` and the token ids are integers in range
    (each token id inside the vocabulary); ``search`` holds values of the right type and
    range (``SEARCH_LIMITS``, ``max_length`` within the context); the session's thread
    counts are at most ``MAX_SESSION_THREADS``. With ``tokenizer`` also that
    tokenizer.json parses to an object (``slmk list`` skips that read: an install records
    every file's size, so a changed tokenizer shows as damaged anyway).
    """
    folder = Path(folder)
    path = folder / GENAI_CONFIG
    if not path.is_file():
        return [f"no {GENAI_CONFIG} (not an ONNX Runtime GenAI folder)"]
    if path.stat().st_size > MAX_CONFIG_BYTES:
        return [f"{GENAI_CONFIG} is larger than {MAX_CONFIG_BYTES >> 20} MiB (a build's config is a few kB)"]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return [f"{GENAI_CONFIG} is not valid JSON"]
    if not isinstance(config, dict):
        return [f"{GENAI_CONFIG} holds {type(config).__name__}, not a JSON object"]
    model = config.get("model")
    if not isinstance(model, dict):
        return [f"{GENAI_CONFIG} has no model section (a build's config describes its model)"]
    problems = [f"{GENAI_CONFIG}: {p}" for p in _model_problems(folder, model)]
    problems += [f"{GENAI_CONFIG}: {p}" for p in _search_problems(config, model)]
    if not any(folder.glob("*.onnx")):
        problems.append("no .onnx model file")
    if tokenizer:
        problems += _tokenizer_problems(folder)
    return problems


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _file_problem(folder: Path, key: str, filename: Any) -> str | None:
    if not isinstance(filename, str) or not filename:
        return f"{key} is {_type_name(filename)}, not a file name"
    if os.path.isabs(filename) or filename.startswith(("/", "\\")) or (len(filename) > 1 and filename[1] == ":"):
        return f"{key} {filename!r} is an absolute path (a build names its files relative to itself)"
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, filename))
    if not target.startswith(root.rstrip(os.sep) + os.sep):
        return f"{key} {filename!r} leaves the build folder"
    if not os.path.isfile(target):
        return f"{filename}, named in {key}, is missing"
    return None


def _model_problems(folder: Path, model: dict[str, Any]) -> list[str]:
    problems = []
    decoder = model.get("decoder")
    if not isinstance(decoder, dict):
        problems.append(f"model.decoder is {_type_name(decoder)}, not an object")
    # the decoder and any other part (embedding, vision, speech) name their ONNX file
    for part, section in model.items():
        if not isinstance(section, dict) or (part != "decoder" and "filename" not in section):
            continue
        problem = _file_problem(folder, f"model.{part}.filename", section.get("filename"))
        if problem:
            problems.append(problem)
        options = section.get("session_options", {})
        if not isinstance(options, dict):
            problems.append(f"model.{part}.session_options is {_type_name(options)}, not an object")
            continue
        for key in ("intra_op_num_threads", "inter_op_num_threads"):
            if key in options:
                problem = _integer_problem(f"model.{part}.session_options.{key}", options[key], 0, MAX_SESSION_THREADS)
                if problem:
                    problems.append(problem)
    for key, high in (("context_length", MAX_CONTEXT_LENGTH), ("vocab_size", MAX_VOCAB_SIZE)):
        if key in model:
            problem = _integer_problem(f"model.{key}", model[key], 1, high)
            if problem:
                problems.append(problem)
    vocab = model.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and 0 < vocab <= MAX_VOCAB_SIZE else None
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if key not in model:
            continue
        ids = model[key] if isinstance(model[key], list) else [model[key]]
        for token in ids[:1024]:
            problem = _integer_problem(f"model.{key}", token, 0, (vocab or MAX_VOCAB_SIZE) - 1)
            if problem:
                problems.append(problem + (f" (the vocabulary has {vocab} tokens)" if vocab else ""))
                break
    return problems


def _search_problems(config: dict[str, Any], model: dict[str, Any]) -> list[str]:
    search = config.get("search", {})
    if not isinstance(search, dict):
        return [f"search is {_type_name(search)}, not an object"]
    problems = [p for p in (search_value_problem(f"{k}", v) for k, v in search.items()) if p]
    problems = [f"search.{p}" for p in problems]
    context = model.get("context_length")
    max_length = search.get("max_length")
    if (
        isinstance(context, int)
        and isinstance(max_length, int)
        and search_value_problem("max_length", max_length) is None
        and max_length > context
    ):
        problems.append(f"search.max_length = {max_length} is larger than model.context_length = {context}")
    return problems


def _tokenizer_problems(folder: Path) -> list[str]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return [] if (folder / "tokenizer.model").is_file() else ["no tokenizer.json"]
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        return [f"tokenizer.json is larger than {MAX_TOKENIZER_BYTES >> 20} MiB"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return ["tokenizer.json is not valid JSON"]
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return ["tokenizer.json is not a tokenizer (a JSON object with a model section)"]
    return []
