"""`slmk demo`: the embedded tiny chat model, end to end, in one command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmk.api import ModelInfo, Progress, UsageError
from slmk.api.files import cache_root, package_data_dir
from slmk.api.operations import convert, open_session, verification_summary


def default_demo_model() -> Path:
    """The embedded tiny chat model: package data ``slmk_demo.examples`` (examples/tiny-chat in a clone)."""
    shipped = package_data_dir("slmk_demo.examples")  # the repository's examples/, tiny-chat only
    return (shipped or Path(__file__).resolve().parents[2] / "examples") / "tiny-chat" / "model"


def demo(
    *,
    model_dir=None,
    precision: str = "int4",
    output=None,
    question: str | None = None,
    progress: Progress | None = None,
    echo=None,
) -> dict[str, Any]:
    """The first-run tour: convert the tiny model, load it, ask it one of its domain questions."""
    import time

    say = echo or (lambda *a, **k: None)
    model = Path(model_dir) if model_dir else default_demo_model()
    if not (model / "config.json").is_file():
        raise UsageError(
            f"demo model not found at {model}", hint="reinstall slmk (the wheel ships it), or pass --model DIR"
        )
    expected = None
    if question is None:
        eval_file = model.parent / "data" / "eval.jsonl"
        if eval_file.is_file():
            first = json.loads(eval_file.read_text(encoding="utf-8").splitlines()[0])
            question, expected = first["messages"][-1]["content"], first.get("expected")
        else:
            question = "Hello! Who are you?"
    out = Path(output) if output else cache_root() / "demo" / f"{model.parent.name}-{precision}"
    info = ModelInfo.load(model)
    say(f"model: {model} ({info.architecture}, {info.num_parameters or 0:,} parameters, {info.dtype})")
    result = convert(model, out, precision=precision, force=True, progress=progress)
    say(f"plan: {result.plan.why}")
    for step in result.steps:
        say(f"  {step.kind} with {step.tool}: {step.status} in {step.seconds:.1f}s")
    source_size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    say(f"build: {result.output}")
    for name, size in result.files.items():
        say(f"  {name:<28} {size / 1e6:8.2f} MB")
    ratio = source_size / result.size_bytes if result.size_bytes else 0
    say(
        f"  total {result.size_bytes / 1e6:.2f} MB (safetensors weights {source_size / 1e6:.2f} MB, ratio {ratio:.2f}x)"
    )
    say(f"source check: {verification_summary(result.verification)}")
    start = time.perf_counter()
    session = open_session(result.output)
    load_s = time.perf_counter() - start
    say(f"loaded with ortgenai in {load_s:.2f}s")
    say(f"question: {question}")
    pieces = []
    try:
        for piece in session.generate([{"role": "user", "content": question}], do_sample=False):
            pieces.append(piece)
        stats = session.last_stats
    finally:
        session.close()
    answer = "".join(pieces).strip()
    say(f"answer:   {answer}")
    correct = expected.lower() in answer.lower() if expected else None
    if expected:
        say(f"expected: ...{expected}... -> {'correct' if correct else 'WRONG'}")
    if stats:
        say(
            f"speed: first token {stats.time_to_first_token_s * 1000:.0f} ms, {stats.generated_tokens} tokens, "
            f"{stats.decode_tokens_per_s:.0f} tokens/s decode"
        )
    say("next: slmk run " + str(result.output) + "   |   slmk install " + str(result.output) + " --name tiny-chat")
    return {
        "build": result.as_dict(),
        "load_seconds": round(load_s, 3),
        "question": question,
        "answer": answer,
        "expected": expected,
        "correct": correct,
        "stats": stats.__dict__ if stats else None,
    }
