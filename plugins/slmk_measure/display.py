"""One progress display for commands that run other commands' work inside their steps."""

from __future__ import annotations

from typing import TextIO

from slmk.api import Progress


class _Indented:
    """A text stream that indents every line written to ``stream`` (bars redraw in place)."""

    def __init__(self, stream: TextIO, prefix: str = "    "):
        self._stream = stream
        self._prefix = prefix
        self._line_start = True

    def write(self, text: str) -> int:
        out = []
        for char in text:
            if self._line_start and char not in "\r\n":
                out.append(self._prefix)
                self._line_start = False
            out.append(char)
            if char == "\r":
                out.append(self._prefix)
            elif char == "\n":
                self._line_start = True
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


def nested(progress: Progress) -> Progress:
    """A Progress whose steps and bars print indented under ``progress``'s current step."""
    return Progress(quiet=progress.quiet, stream=_Indented(progress.stream))  # type: ignore[arg-type]
