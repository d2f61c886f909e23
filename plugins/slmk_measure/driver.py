"""Driving a ChatSession for measurements: prompts of a given token length, timed
generations with a fixed number of new tokens, greedy answers.

Only the ``ChatSession`` protocol is required. A session that is also a
``ScoringSession`` (encode, decode, render_prompt, score, context_length: ortgenai's
is) gets exact token counts and perplexity; others (foundry, an HTTP endpoint) count
tokens through their usage report, so counting there costs a one-token generation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slmk.api import ChatSession, GenerationStats, ScoringSession, SlmkError, UsageError

#: Neutral English prose, cycled to make prompts of any length.
FILLER = (
    "The morning was cool and the market opened early. Traders set out baskets of bread, "
    "fruit and dried fish, and children ran between the stalls. Later the wind turned, "
    "clouds came in from the sea, and a light rain fell on the roofs of the old town. "
    "By evening the streets were quiet again and the lamps were lit one by one. "
)
FILLER_WORDS = FILLER.split()

#: Answer length of the short generations the checks make.
SHORT_ANSWER_TOKENS = 16


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def filler(words: int) -> str:
    return " ".join(FILLER_WORDS[i % len(FILLER_WORDS)] for i in range(max(0, words)))


def context_length_of(session: ChatSession, folder: Path | None = None) -> int:
    """The model's context in tokens: the session's when it says, else genai_config.json."""
    value = session.context_length if isinstance(session, ScoringSession) else getattr(session, "context_length", 0)
    if value:
        return int(value)
    if folder is not None:
        try:
            config = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
            return int(config.get("model", {}).get("context_length") or 0)
        except (OSError, ValueError, TypeError):
            return 0
    return 0


class Driver:
    """A loaded model plus the helpers bench, validate and compare share."""

    def __init__(self, session: ChatSession, folder: Path | None = None, search: Mapping[str, Any] | None = None):
        self.session = session
        self.folder = folder
        # Measurements compare like with like: greedy unless the caller says otherwise.
        self.search = {"do_sample": False, **dict(search or {})}
        self.context_length = context_length_of(session, folder)
        self.forces_length = True  # min_length accepted by the runtime (foundry fixes it in the config)

    # ------------------------------------------------------------ generating
    def ask(self, messages: Sequence[Mapping[str, str]], **search: Any) -> tuple[str, GenerationStats | None]:
        options = {**self.search, **search}
        text = "".join(self.session.generate(list(messages), **options))
        return text, self.session.last_stats

    def timed(self, content: str, new_tokens: int, prompt_tokens: int | None = None) -> GenerationStats:
        """Generate exactly ``new_tokens`` where the runtime allows (min_length holds off the end token)."""
        search: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": False}
        if self.forces_length:
            total = (prompt_tokens if prompt_tokens is not None else self.prompt_tokens(content)) + new_tokens
            try:
                _, stats = self.ask(user(content), **search, min_length=total)
                return stats
            except UsageError as exc:
                if "min_length" not in str(exc):
                    raise
                self.forces_length = False
        _, stats = self.ask(user(content), **search)
        return stats

    # ------------------------------------------------------------ tokens
    @property
    def can_encode(self) -> bool:
        """Whether the session is a ``ScoringSession``: exact token counts, perplexity."""
        return isinstance(self.session, ScoringSession)

    def tokens(self, text: str) -> list[int] | None:
        return [int(t) for t in self.session.encode(text)] if self.can_encode else None

    def prompt_tokens(self, content: str) -> int:
        """Tokens of the whole prompt (template included) for one user message."""
        if self.can_encode:
            return len(self.tokens(self.session.render_prompt(user(content))))
        _, stats = self.ask(user(content), max_new_tokens=1)
        if stats is None:
            raise SlmkError("the runtime reported no token counts", hint="use --runtime ortgenai")
        return stats.prompt_tokens

    def content_of_length(self, total_tokens: int) -> tuple[str, int]:
        """Filler text whose prompt is as close to ``total_tokens`` as possible without going over.

        Returns the text and its real prompt length in tokens.
        """
        low, high = 1, max(2, total_tokens)  # every word is at least one token
        best = (filler(1), self.prompt_tokens(filler(1)))
        while low <= high:
            middle = (low + high) // 2
            text = filler(middle)
            try:
                count = self.prompt_tokens(text)
            except SlmkError:  # counted by generating: refused as longer than the context
                count = total_tokens + 1
            if count <= total_tokens:
                best = (text, count)
                low = middle + 1
            else:
                high = middle - 1
        return best
