"""`slmk demo`: convert the embedded tiny chat model to int4, load it, ask it a question.

The model and its data ship as package data (``slmk_demo.examples``: the repository's
examples/tiny-chat folder, mapped into the package by pyproject.toml), so the demo
works from a wheel as from a clone. A built-in feature plugin on ``slmk.api``.
"""

from __future__ import annotations

from slmk.api import Command, hookimpl


def _demo_command():
    from .cli import demo

    return demo


@hookimpl
def slmk_commands():
    yield Command(
        "demo", "Convert the embedded tiny chat model to int4 ONNX, load it, ask it a question.", _demo_command
    )
