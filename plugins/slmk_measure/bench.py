"""`slmk bench`: first-token latency, prompt and decode speed, memory and CPU over a
sweep of prompt lengths up to the model's context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psutil

from slmk.api import Progress, UsageError

from .driver import Driver
from .resources import ResourceSampler, rss_bytes
from .stats import summary

DEFAULT_LENGTHS = 5
DEFAULT_REPEATS = 3
DEFAULT_NEW_TOKENS = 32
SHORTEST_PROMPT = 16


def geometric_lengths(shortest: int, longest: int, count: int) -> list[int]:
    """``count`` prompt lengths spaced evenly on a log scale from shortest to longest."""
    if longest <= shortest or count < 2:
        return [max(shortest, longest)]
    ratio = (longest / shortest) ** (1 / (count - 1))
    lengths = sorted({int(round(shortest * ratio**i)) for i in range(count)})
    lengths[-1] = longest
    return lengths


def plan_lengths(driver: Driver, lengths: Sequence[int] | None, count: int, new_tokens: int) -> list[int]:
    context = driver.context_length
    if not context:
        raise UsageError(
            "the model does not say its context length (genai_config.json model.context_length)",
            hint="pass --lengths explicitly",
        )
    longest = context - new_tokens - 1
    if longest < SHORTEST_PROMPT:
        raise UsageError(
            f"--new-tokens {new_tokens} leaves no room for a prompt in a context of {context}",
            hint="lower --new-tokens",
        )
    if lengths:
        too_long = [n for n in lengths if n > longest]
        if too_long:
            raise UsageError(
                f"prompt length {too_long[0]} + {new_tokens} new tokens exceeds the context of {context}",
                hint=f"use lengths up to {longest}, or fewer --new-tokens",
            )
        return sorted(set(lengths))
    return geometric_lengths(SHORTEST_PROMPT, longest, count)


def run_bench(
    driver: Driver,
    *,
    lengths: Sequence[int] | None = None,
    count: int = DEFAULT_LENGTHS,
    repeats: int = DEFAULT_REPEATS,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    baseline_rss: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time generations at each prompt length ``repeats`` times; medians and p90s per length."""
    if repeats < 1 or new_tokens < 2:
        raise UsageError("--repeats must be at least 1 and --new-tokens at least 2")
    progress = progress or Progress(quiet=True)
    planned = plan_lengths(driver, lengths, count, new_tokens)
    prompts = []
    for target in planned:
        content, actual = driver.content_of_length(target)
        prompts.append((target, content, actual))
    driver.timed(prompts[0][1], 2, prompts[0][2])  # warm-up: first-call allocations are not the model's speed
    runs: dict[int, list[dict[str, Any]]] = {target: [] for target in planned}
    work = [(p, r) for p in prompts for r in range(repeats)]
    with ResourceSampler() as sampler:
        for (target, content, actual), _ in progress.bar(work, label="bench"):
            with sampler.window() as window:
                stats = driver.timed(content, new_tokens, actual)
            runs[target].append({"stats": stats, "window": window})
    rows = []
    for target, _content, _actual in prompts:
        measured = runs[target]
        stats = [m["stats"] for m in measured]
        rows.append(
            {
                "target_prompt_tokens": target,
                "prompt_tokens": stats[0].prompt_tokens,
                "generated_tokens": summary([s.generated_tokens for s in stats], 1),
                "time_to_first_token_s": summary([s.time_to_first_token_s for s in stats], 5),
                "prompt_tokens_per_s": summary([s.prompt_tokens_per_s for s in stats], 1),
                "decode_tokens_per_s": summary([s.decode_tokens_per_s for s in stats], 2),
                "total_s": summary([s.total_s for s in stats], 5),
                "cpu_percent": summary([m["window"].cpu_percent for m in measured], 1),
                "peak_rss_bytes": max(m["window"].peak_rss_bytes for m in measured),
            }
        )
    return {
        "context_length": driver.context_length,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "fixed_answer_length": driver.forces_length,
        "token_counting": "encode" if driver.can_encode else "runtime usage report",
        "cpu_count": psutil.cpu_count(),
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": sampler.peak_rss_bytes,
        "model_rss_bytes": sampler.peak_rss_bytes - baseline_rss if baseline_rss else None,
        "rss_after_bytes": rss_bytes(),
        "lengths": rows,
    }


def parse_lengths(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--lengths {text!r} is not a list of integers", hint="e.g. --lengths 16,64,256") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--lengths {text!r} must list positive token counts", hint="e.g. --lengths 16,64,256")
    return values
