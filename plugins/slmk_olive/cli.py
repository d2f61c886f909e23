"""``slmk olive-config``: the Olive workflow file for what ``slmk convert --via olive`` does.

For users who want to continue in Olive. The file holds the quantization pass slmk
runs (``olive run --config FILE`` runs it offline); the ONNX step stays with the
ONNX Runtime GenAI builder, because olive-ai 0.13's ModelBuilder pass fails with
onnxruntime-genai >= 0.16. Olive itself is not imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

PRECISIONS = ("int4", "int8")


@click.command(name="olive-config")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-p", "--precision", type=click.Choice(PRECISIONS), default="int4", show_default=True, help="Weight precision."
)
@click.option("--ep", "execution_provider", default="cpu", show_default=True, help="Execution provider.")
@click.option(
    "--algorithm",
    type=click.Choice(["rtn", "gptq"]),
    default="rtn",
    show_default=True,
    help="Olive quantization pass: Rtn, or Gptq with --calibration.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False),
    help="Your own data for GPTQ (.jsonl chat records or .txt).",
)
@click.option(
    "--block-size",
    type=click.Choice(["16", "32", "64", "128", "256"]),
    default="32",
    show_default=True,
    help="Weights per quantization group.",
)
@click.option("--olive-output", help="Olive's output_dir in the file [default: MODEL-olive-ALGORITHM-PRECISION].")
@click.option("--trust-remote-code", is_flag=True, help="Let Olive run code from the model folder.")
@click.option(
    "-o",
    "--output",
    "output_file",
    type=click.Path(dir_okay=False),
    help="Write the workflow here (default: print it).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def olive_config(
    model_dir,
    precision,
    execution_provider,
    algorithm,
    calibration,
    block_size,
    olive_output,
    trust_remote_code,
    output_file,
    force,
) -> None:
    """Write the Olive workflow file equivalent to `slmk convert MODEL_DIR --via olive`.

    \b
    slmk olive-config ./my-model -p int4 -o olive_int4.json
    CI=1 olive run --config olive_int4.json
    slmk convert ./my-model-olive-rtn-int4/model -p int4 -o build/int4
    """
    from slmk.api import ModelInfo, UsageError
    from slmk.api.files import cache_root, write_text_atomic
    from slmk.api.operations import get_registry, resolve_ep

    from .providers import builder_ep
    from .quantize import OliveQuantization, check_block_size, check_calibration, quantization_workflow
    from .versions import GENAI_DISTRIBUTIONS, installed, model_builder_pass_broken

    info = ModelInfo.load(model_dir)
    if info.format != "hf":
        raise UsageError(f"{info.path} is already an ONNX build", hint="olive-config takes a Hugging Face model folder")
    ep = resolve_ep(get_registry(), execution_provider)
    check_block_size(info, int(block_size))
    if calibration:
        check_calibration(Path(calibration))
    olive_output = olive_output or f"{info.path.resolve().name}-olive-{algorithm}-{precision}"
    quantization = OliveQuantization(
        algorithm, precision, int(block_size), Path(calibration) if calibration else None, trust_remote_code
    )
    config = quantization_workflow(
        info.path, quantization, ep, output_dir=olive_output, cache_dir=cache_root() / "olive-cache"
    )
    text = json.dumps(config, indent=2) + "\n"
    if output_file:
        path = Path(output_file)
        if path.exists() and not force:
            raise UsageError(f"{path} already exists", hint="choose another -o file or pass --force")
        write_text_atomic(path, text)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(text, nl=False)
    config_name = output_file or "FILE.json"
    quantized = Path(olive_output) / "model"
    notes = [
        f"run it:     CI=1 OLIVE_DISABLE_TELEMETRY=1 olive run --config {config_name}",
        f"then build: slmk convert {quantized} -p {precision} --ep {ep.name} -o BUILD",
        f"        or: python -m onnxruntime_genai.models.builder -i {quantized} -o BUILD -p {precision} "
        f"-e {builder_ep(ep)}",
    ]
    if model_builder_pass_broken(installed("olive-ai"), installed(*GENAI_DISTRIBUTIONS)):
        notes.append("(no ModelBuilder pass in the file: olive-ai 0.13's fails with onnxruntime-genai >= 0.16)")
    for note in notes:
        click.echo(note, err=True)
