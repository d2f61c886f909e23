"""The build format: an ONNX Runtime GenAI folder and its genai_config.json.

Every converter writes this format and every runtime and installer reads it, so its
helpers live in the kernel (exported by ``slmk.api``): reading the config, the
generation defaults (``search``), and writing them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fsutil import write_json_atomic

GENAI_CONFIG = "genai_config.json"

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
    """The build's context length in tokens, or None."""
    value = read_genai_config(folder).get("model", {}).get("context_length")
    return int(value) if value else None


def search_defaults(generation_config: Mapping[str, Any], context: int | None) -> dict[str, Any]:
    """The ``search`` values a model's generation_config.json sets, max_length capped at the context.

    Only keys the file really carries are returned: an absent key means the model
    author chose nothing, and the runtime's own default should stand.
    """
    out: dict[str, Any] = {}
    for key in SEARCH_KEYS:
        value = generation_config.get(key)
        if value is None or isinstance(value, (list, dict)):
            continue
        out[key] = value
    if "max_length" in out:
        out["max_length"] = int(out["max_length"])
        if context:
            out["max_length"] = min(out["max_length"], int(context))
    return out


def missing_search_defaults(folder: Path, generation_config: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults from ``generation_config`` that the build's ``search`` does not carry yet."""
    config = read_genai_config(folder)
    search = config.get("search") or {}
    wanted = search_defaults(generation_config, config.get("model", {}).get("context_length"))
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
    context = config.get("model", {}).get("context_length")
    if context and config["search"].get("max_length", 0) > context:
        config["search"]["max_length"] = context
    write_json_atomic(config_path, config)


def build_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being a loadable build (empty when nothing does).

    Checks the files, not their content: genai_config.json parses, the ONNX file it
    names is there, and there is a tokenizer.
    """
    folder = Path(folder)
    if not (folder / GENAI_CONFIG).is_file():
        return [f"no {GENAI_CONFIG} (not an ONNX Runtime GenAI folder)"]
    try:
        config = json.loads((folder / GENAI_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return [f"{GENAI_CONFIG} is not valid JSON"]
    if not isinstance(config, dict):
        return [f"{GENAI_CONFIG} holds {type(config).__name__}, not a JSON object"]
    if not isinstance(config.get("model"), dict):
        return [f"{GENAI_CONFIG} has no model section (a build's config describes its model)"]
    problems = []
    filename = config.get("model", {}).get("decoder", {}).get("filename")
    if filename and not (folder / filename).is_file():
        problems.append(f"{filename}, named in {GENAI_CONFIG}, is missing")
    if not any(folder.glob("*.onnx")):
        problems.append("no .onnx model file")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        problems.append("no tokenizer.json")
    return problems
