"""Reading an ONNX Runtime GenAI folder's genai_config.json, and the generation
defaults a Hugging Face generation_config.json asks for (other plugins reuse these)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
