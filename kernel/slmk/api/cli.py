"""Shared click options and output helpers for commands plugins contribute (``slmk_commands``).

Importing this module loads click; import it from the module a ``Command.load`` returns.
"""

from __future__ import annotations

from ..cli.options import (
    PRECISION_CHOICES,
    State,
    cache_dir_option,
    emit_json,
    generation_options,
    human_size,
    installer_cache,
    json_option,
    pass_state,
    quiet_option,
    runtime_options,
    search_from,
)

__all__ = [
    "PRECISION_CHOICES",
    "State",
    "cache_dir_option",
    "emit_json",
    "generation_options",
    "human_size",
    "installer_cache",
    "json_option",
    "pass_state",
    "quiet_option",
    "runtime_options",
    "search_from",
]
