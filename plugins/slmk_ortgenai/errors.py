"""Tool exceptions as the one line slmk shows."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: tools raise
    multi-line messages (ONNX Runtime quotes whole source paths and shapes)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
