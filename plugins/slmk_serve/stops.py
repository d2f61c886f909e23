"""``stop`` strings over a stream of text pieces.

A stop string may span pieces ("<|e" + "nd|>"), so the scanner holds back the
longest tail of the text that could still grow into a stop string and releases it
once it cannot. Nothing after a stop string (nor the stop string itself) is sent.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Feed pieces in order; get back the text that is safe to send."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text to send now; sets ``stopped`` when a stop string completed."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        hits = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of the stream (it never became a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
