"""Measure what you deploy: `slmk bench`, `validate`, `compare` and `deploy`.

A built-in feature plugin: it talks to models only through the kernel's public API
(``slmk.api``: the runtime hook's sessions, convert, install) and contributes its
commands as ``Command`` records, loaded when used. Sessions are driven through the
``ChatSession`` protocol; a runtime whose sessions are ``ScoringSession`` s (encode,
score, context_length) also gets exact token counts and perplexity.

Imports stay light: psutil, json, statistics; matplotlib only inside the plot functions.
"""

from __future__ import annotations

from slmk.api import Command, hookimpl


def _command(name: str):
    def load():
        from . import cli

        return getattr(cli, name)

    return load


def _sweep_command():
    from .sweep_cli import sweep

    return sweep


@hookimpl
def slmk_commands():
    yield Command(
        "bench", "Speed and memory of a build or installed model: first token, tokens/s, CPU, RSS.", _command("bench")
    )
    yield Command(
        "validate",
        "The validation checklist on a build or installed model; exit 1 if a check fails.",
        _command("validate"),
    )
    yield Command(
        "compare", "Build a model at several precisions and compare size, speed and quality.", _command("compare")
    )
    yield Command(
        "deploy",
        "doctor, template, convert, quality gate, validate, install, first answer: one command.",
        _command("deploy"),
    )
    yield Command(
        "sweep", "Models x precisions x execution providers: convert, validate and measure every cell.", _sweep_command
    )
