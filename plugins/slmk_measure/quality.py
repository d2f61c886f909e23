"""Quality and speed of one build: perplexity, domain accuracy, greedy agreement with a
reference precision, decode speed. Shared by compare and deploy's quality gate."""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import Progress
from slmk.api.files import dir_size

from .driver import Driver, user
from .evalset import EvalItem
from .stats import finite

#: Tokens generated per answer when comparing greedy outputs.
AGREEMENT_TOKENS = 64
#: Held-out sentences used as extra agreement prompts (out-of-domain prompts give
#: longer answers, where quantization differences show).
AGREEMENT_HELDOUT_PROMPTS = 20
SPEED_PROMPT_TOKENS = 64
SPEED_NEW_TOKENS = 32
SPEED_REPEATS = 3
SPEED_BUDGET_S = 1.0
SPEED_MAX_RUNS = 50


@dataclass
class Measurement:
    """What was measured for one build; None where not measured (or not measurable)."""

    precision: str
    path: str = ""
    size_bytes: int = 0
    ppl: float | None = None
    ppl_tokens: int = 0
    accuracy: float | None = None
    correct: int = 0
    items: int = 0
    agreement: float | None = None
    exact_agreement: float | None = None
    decode_tps: float | None = None
    time_to_first_token_s: float | None = None
    notes: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # greedy answers to the agreement prompts
    wrong: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "ppl": _round(self.ppl),
            "ppl_tokens": self.ppl_tokens,
            "accuracy": _round(self.accuracy),
            "correct": self.correct,
            "items": self.items,
            "agreement": _round(self.agreement),
            "exact_agreement": _round(self.exact_agreement),
            "decode_tps": _round(self.decode_tps, 2),
            "time_to_first_token_s": _round(self.time_to_first_token_s, 5),
            "notes": list(self.notes),
        }

    def metric(self, name: str) -> float | None:
        return getattr(self, name)


def _round(value: float | None, digits: int = 4) -> float | None:
    value = finite(value)
    return round(value, digits) if value is not None else None


def sentences(text: str, limit: int) -> list[str]:
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 10]
    return found[:limit]


def agreement_prompts(items: Sequence[EvalItem], heldout: str | None) -> list[list[dict[str, str]]]:
    """The eval conversations, then held-out sentences as user prompts."""
    prompts = [list(item.messages) for item in items]
    if heldout:
        prompts += [user(s) for s in sentences(heldout, AGREEMENT_HELDOUT_PROMPTS)]
    return prompts


def perplexity(driver: Driver, text: str) -> tuple[float | None, int, str | None]:
    """(perplexity, tokens scored, note) of ``text``; the runtime must be able to score."""
    if not driver.can_encode:
        return None, 0, "this runtime cannot score text (no score()): perplexity not measured; use --runtime ortgenai"
    nll, count = driver.session.score(text)
    if not count:
        return None, 0, "the held-out text has fewer than 2 tokens"
    return math.exp(nll / count), count, None


def accuracy(
    driver: Driver, items: Iterable[EvalItem], max_new_tokens: int = 64, progress: Progress | None = None
) -> tuple[int, int, list[dict[str, Any]], list[str]]:
    """(correct, answered items, wrong answers, all answers) over the items that name an answer."""
    items = list(items)
    progress = progress or Progress(quiet=True)
    correct, wrong, answers = 0, [], []
    for item in progress.bar(items, label="eval"):
        answer, _ = driver.ask(item.messages, max_new_tokens=item.max_new_tokens or max_new_tokens)
        answers.append(answer)
        if not item.has_answer:
            continue
        if item.answer_ok(answer):
            correct += 1
        else:
            wrong.append({"line": item.line, "question": item.question, "wanted": item.wanted(), "answer": answer})
    return correct, sum(1 for i in items if i.has_answer), wrong, answers


def greedy_answers(
    driver: Driver, prompts: Sequence[list[dict[str, str]]], progress: Progress | None = None
) -> list[str]:
    progress = progress or Progress(quiet=True)
    return [driver.ask(p, max_new_tokens=AGREEMENT_TOKENS)[0] for p in progress.bar(prompts, label="greedy answers")]


def agreement(driver: Driver, answers: Sequence[str], reference: Sequence[str]) -> tuple[float, float]:
    """(token agreement, exact-answer agreement) of ``answers`` with ``reference``.

    Token agreement is the share of each answer's tokens that match the reference
    before the first difference (after it, the two continue from different text),
    averaged over prompts. Without an ``encode`` the unit is the character.
    """
    shares, exact = [], 0
    for mine, theirs in zip(answers, reference):
        exact += mine == theirs
        a = driver.tokens(mine) if driver.can_encode else list(mine)
        b = driver.tokens(theirs) if driver.can_encode else list(theirs)
        longest = max(len(a), len(b))
        if not longest:
            shares.append(1.0)
            continue
        same = 0
        for x, y in zip(a, b):
            if x != y:
                break
            same += 1
        shares.append(same / longest)
    count = max(1, len(shares))
    return sum(shares) / count, exact / count


def decode_speed(
    driver: Driver, repeats: int = SPEED_REPEATS, new_tokens: int = SPEED_NEW_TOKENS
) -> tuple[float, float]:
    """Median decode tokens/s and first-token latency for a fixed prompt and answer length."""
    context = driver.context_length or 512
    new_tokens = max(2, min(new_tokens, context // 4))
    content, prompt_tokens = driver.content_of_length(min(SPEED_PROMPT_TOKENS, context // 2))
    driver.timed(content, 2, prompt_tokens)  # warm-up
    # At least ``repeats`` runs, more while they are quick: a small model's runs take
    # milliseconds, and a median of many shrugs off a burst of load elsewhere.
    runs, start = [], time.perf_counter()
    while len(runs) < repeats or (time.perf_counter() - start < SPEED_BUDGET_S and len(runs) < SPEED_MAX_RUNS):
        runs.append(driver.timed(content, new_tokens, prompt_tokens))
    return (
        statistics.median(s.decode_tokens_per_s for s in runs),
        statistics.median(s.time_to_first_token_s for s in runs),
    )


@dataclass(frozen=True)
class Workload:
    """What to measure (``need``: ppl, accuracy, agreement, answers, decode_tps) and on what: eval
    ``items``, ``heldout`` text, the agreement ``prompts``, answers of up to ``max_new_tokens``."""

    need: Set[str]
    items: Sequence[EvalItem] = ()
    heldout: str | None = None
    prompts: Sequence[Any] | None = None
    max_new_tokens: int = 64


def measure(
    driver: Driver,
    precision: str,
    folder: Path,
    workload: Workload,
    *,
    reference: Measurement | None = None,
    progress: Progress | None = None,
) -> Measurement:
    """Measure the metrics the workload needs for a loaded build.

    Agreement is measured against ``reference``; without one, this build is the reference.
    ``answers`` (greedy answers to the agreement prompts) is what a reference
    precision needs so that others can be compared with it.
    """
    need, items, heldout, prompts = workload.need, workload.items, workload.heldout, workload.prompts
    max_new_tokens = workload.max_new_tokens
    result = Measurement(precision=precision, path=str(folder), size_bytes=dir_size(folder))
    if "ppl" in need:
        if heldout:
            result.ppl, result.ppl_tokens, note = perplexity(driver, heldout)
            if note:
                result.notes.append(note)
        else:
            result.notes.append("no held-out text: perplexity not measured (pass --heldout FILE)")
    if "accuracy" in need:
        answer_items = [i for i in items if i.has_answer]
        if answer_items:
            result.correct, result.items, result.wrong, _ = accuracy(driver, answer_items, max_new_tokens, progress)
            result.accuracy = result.correct / result.items
        else:
            result.notes.append("no eval items with answers: accuracy not measured (pass --eval FILE)")
    if need & {"agreement", "answers"} and prompts:
        result.answers = greedy_answers(driver, prompts, progress)
        if "agreement" in need:
            # without a reference, this build is the reference: it agrees with itself
            if reference is None or reference.precision == precision:
                result.agreement, result.exact_agreement = 1.0, 1.0
            else:
                result.agreement, result.exact_agreement = agreement(driver, result.answers, reference.answers)
    if "decode_tps" in need:
        result.decode_tps, result.time_to_first_token_s = decode_speed(driver)
    return result
