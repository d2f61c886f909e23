"""Model folders and the build format: genai_config.json, its search options, chat messages, weights."""

from __future__ import annotations

from ..builds import BUILD_INFO
from ..genai_format import (
    GENAI_CONFIG,
    MAX_CONTEXT_LENGTH,
    MAX_SESSION_THREADS,
    SEARCH_OPTIONS,
    build_problems,
    context_length,
    missing_search_defaults,
    read_genai_config,
    read_search,
    search_defaults,
    write_search,
)
from ..messages import check_messages
from ..modelinfo import pickled_weights

__all__ = [
    "BUILD_INFO",
    "GENAI_CONFIG",
    "MAX_CONTEXT_LENGTH",
    "MAX_SESSION_THREADS",
    "SEARCH_OPTIONS",
    "build_problems",
    "check_messages",
    "context_length",
    "missing_search_defaults",
    "pickled_weights",
    "read_genai_config",
    "read_search",
    "search_defaults",
    "write_search",
]
