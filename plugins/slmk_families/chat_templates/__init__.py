"""The families' published Jinja chat templates, as they appear in the models'
``tokenizer_config.json`` (``chat_template``). Data files, read on demand."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def published(name: str) -> str:
    """The chat template ``<name>.jinja`` shipped beside this module."""
    return (Path(__file__).parent / f"{name}.jinja").read_text(encoding="utf-8")
