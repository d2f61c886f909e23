"""`slmk tune BUILD`: measure a build's settings on this machine and write the fastest.

The search itself is slmk_ortgenai.tune; this is its command line and the quality gate
rebuilt candidates must pass: the build's own answers on an eval file (by default the
source model's ../data/eval.jsonl) must stay at least as accurate as ``--min-accuracy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from slmk.api import UsageError
from slmk.api.cli import emit_json, json_option, pass_state
from slmk.api.operations import build_info

#: Answer tokens per eval question when the gate checks a rebuilt candidate.
GATE_ANSWER_TOKENS = 48


def _eval_items(path: Path) -> list[tuple[list[dict], str]]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            messages, expected = data["messages"], data.get("expected")
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"{path}:{number}: not an eval record", hint='{"messages": [...], "expected": "..."}'
            ) from None
        if isinstance(expected, str):
            items.append((messages, expected))
    if not items:
        raise UsageError(f"{path} has no item with an expected answer", hint='give each line an "expected" substring')
    return items


def accuracy_gate(eval_file: Path, min_accuracy: float, execution_provider):
    """A quality gate for tune: the candidate answers the eval items at least this well (greedy)."""
    items = _eval_items(eval_file)

    def gate(folder: Path) -> str | None:
        from .runtime import OrtGenAISession

        with OrtGenAISession(folder, execution_provider) as session:
            right = sum(
                expected.lower()
                in "".join(session.generate(messages, do_sample=False, max_new_tokens=GATE_ANSWER_TOKENS)).lower()
                for messages, expected in items
            )
        accuracy = right / len(items)
        return None if accuracy >= min_accuracy else f"accuracy {accuracy:.2f} < {min_accuracy:.2f}"

    return gate


@click.command("tune")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--threads", help="Intra-op thread counts to try, comma-separated [default: 1 .. logical cores].")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Also try builder options (block size, accuracy level, int8 output "
    "layer, float embedding of a tied model): rebuilds from the source model, each kept only past the quality gate.",
)
@click.option(
    "--source",
    type=click.Path(file_okay=False),
    help="With --rebuild: the source model [default: the one slmk_build.json records].",
)
@click.option(
    "--eval",
    "eval_file",
    type=click.Path(dir_okay=False),
    help="With --rebuild: JSONL eval items [default: the source model's ../data/eval.jsonl].",
)
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="With --rebuild: the accuracy a rebuilt candidate must keep on the eval items.",
)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds.")
@click.option("--prompt-tokens", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--ep", "execution_provider", help="Execution provider [default: the one the build was made for].")
@json_option
@pass_state
def tune_command(
    state,
    build_dir,
    threads,
    rebuild,
    source,
    eval_file,
    min_accuracy,
    rounds,
    prompt_tokens,
    new_tokens,
    execution_provider,
    as_json,
) -> None:
    """Measure BUILD_DIR on this machine (threads; with --rebuild, builder options) and keep the fastest.

    The table lists every candidate with its prefill and decode speed and the choice; the
    chosen session options are written into the build's genai_config.json.
    """
    from slmk.api.operations import get_registry, resolve_ep

    from .tune import TuneOptions, tune

    build = Path(build_dir)
    try:
        counts = [int(part) for part in threads.split(",")] if threads else None
    except ValueError:
        raise UsageError(f"--threads {threads!r} is not a list of numbers", hint="e.g. --threads 1,2") from None
    ep_name = execution_provider or build_info(build).get("execution_provider") or "cpu"
    gate = None
    if rebuild:
        origin = Path(source or build_info(build).get("source") or "")
        eval_path = Path(eval_file) if eval_file else origin.parent / "data" / "eval.jsonl"
        if not eval_path.is_file():
            raise UsageError(
                f"--rebuild needs eval items for its quality gate; none at {eval_path}", hint="pass --eval FILE.jsonl"
            )
        gate = accuracy_gate(eval_path, min_accuracy, resolve_ep(get_registry(), ep_name))
    options = TuneOptions(
        threads=counts,
        rebuild_options=rebuild,
        source=Path(source) if source else None,
        quality_gate=gate,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        rounds=rounds,
        execution_provider=ep_name,
    )
    result = tune(build, options, state.progress(as_json))
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo(result.table())
