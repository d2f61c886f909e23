"""The `slmk demo` command."""

from __future__ import annotations

import click

from slmk.api.cli import PRECISION_CHOICES, State, emit_json, pass_state


@click.command()
@click.option(
    "--model", "model_dir", type=click.Path(file_okay=False), help="Model folder [default: examples/tiny-chat/model]."
)
@click.option("-p", "--precision", type=PRECISION_CHOICES, default="int4", show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Build folder [default: in slmk's cache].")
@click.option("--question", help="What to ask [default: the first question of the model's eval set].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def demo(state: State, model_dir, precision, output, question, as_json) -> None:
    """Convert the embedded tiny chat model to int4 ONNX, load it, ask it a question.

    Shows every stage: the conversion plan and steps, the files and sizes, the load
    time, the question, the streamed answer, and the speed.
    """
    from .demo import demo as run_demo

    result = run_demo(
        model_dir=model_dir,
        precision=precision,
        output=output,
        question=question,
        progress=state.progress(as_json),
        echo=None if as_json else click.echo,
    )
    if as_json:
        emit_json(result)
