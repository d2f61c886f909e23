"""Olive (olive-ai) inside slmk.

- Quantizers on Hugging Face weights: ``olive-rtn`` and ``olive-gptq`` (calibrated on
  the user's own data). Their output is converted by a converter that accepts
  quantized input (the ONNX Runtime GenAI builder): ``slmk convert MODEL --via olive``.
- Converter ``olive-workflow``: runs the user's Olive workflow file
  (``slmk convert --olive-config FILE``).
- ``slmk olive-config``: the Olive workflow file for what slmk does.
- A doctor probe for Olive's version and telemetry traps.

Nothing here imports olive, torch or transformers at module level.
"""

from __future__ import annotations

from slmk.api import (
    FORMAT_HF,
    FORMAT_ORTGENAI,
    PRECISIONS,
    Command,
    Converter,
    Probe,
    Quantizer,
    Setting,
    StepRequest,
    hookimpl,
)

from .versions import olive_tool_versions, workflow_tool_versions

#: Execution providers a user's workflow may target; the workflow file decides.
WORKFLOW_EXECUTION_PROVIDERS = ("cpu", "cuda", "dml", "webgpu")


def _quantize_rtn(request: StepRequest) -> None:
    from .quantize import quantize

    quantize(request, "rtn")


def _quantize_gptq(request: StepRequest) -> None:
    from .quantize import quantize

    quantize(request, "gptq")


def _run_workflow(request: StepRequest) -> None:
    from .convert import convert

    convert(request)


def _check():
    from .probe import check

    return check()


@hookimpl
def slmk_quantizers():
    from .quantize import OPTIONS

    yield Quantizer(
        name="olive-rtn",
        description="Olive round-to-nearest weight quantization (int4/int8) of the Hugging Face weights",
        stage=FORMAT_HF,
        precisions=("int4", "int8"),
        quantize=_quantize_rtn,
        algorithms=("rtn",),
        tool_versions=olive_tool_versions,
        options=OPTIONS,
        priority=10,
    )
    yield Quantizer(
        name="olive-gptq",
        description="Olive GPTQ weight quantization (int4/int8), calibrated on your own data (--calibration)",
        stage=FORMAT_HF,
        precisions=("int4", "int8"),
        quantize=_quantize_gptq,
        algorithms=("gptq",),
        uses_calibration=True,
        tool_versions=olive_tool_versions,
        options=OPTIONS,
        priority=5,
    )


def _prepare(options):
    from .convert import prepare

    return prepare(options)


def _input_model(options):
    from .convert import input_model

    return input_model(options)


@hookimpl
def slmk_settings():
    yield Setting(
        "olive.allow_pickle",
        bool,
        False,
        "read weights from pytorch_model.bin pickles (they can run code); only for models you trust",
        flag="--allow-pickle",
        commands=("convert",),
    )
    yield Setting(
        "olive.config",
        str,
        None,
        "your Olive workflow file: `slmk convert` runs it instead of planning the steps",
        flag="--olive-config",
        commands=("convert",),
    )


@hookimpl
def slmk_converters():
    from .convert import OPTIONS

    yield Converter(
        name="olive-workflow",
        description="Runs your Olive workflow file (slmk convert --olive-config FILE)",
        precisions=PRECISIONS,
        execution_providers=WORKFLOW_EXECUTION_PROVIDERS,
        convert=_run_workflow,
        input_format=FORMAT_HF,
        output_format=FORMAT_ORTGENAI,
        tool_versions=workflow_tool_versions,
        options=OPTIONS,
        priority=-10,
        explicit_only=True,
        selected_by="olive.config",
        prepare=_prepare,
        default_model=_input_model,
    )


@hookimpl
def slmk_probes():
    yield Probe(
        name="olive", description="Olive: version traps with onnxruntime-genai, requests, telemetry", check=_check
    )


def _olive_config_command():
    from .cli import olive_config

    return olive_config


@hookimpl
def slmk_commands():
    yield Command(
        name="olive-config",
        summary="Write the Olive workflow file for what `slmk convert --via olive` does.",
        load=_olive_config_command,
    )
