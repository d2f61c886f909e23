"""ONNX Runtime GenAI: the model builder as a converter, and the in-process runtime.

Module level stays light: onnxruntime_genai, torch and transformers are imported
inside the functions that convert or load.
"""

from __future__ import annotations

from slmk.api import PRECISIONS, Command, Converter, ModelSource, Runtime, Setting, hookimpl

from . import builder, providers, runtime


@hookimpl
def slmk_converters():
    yield Converter(
        name="ortgenai-builder",
        description="onnxruntime-genai model builder, in-process: HF folder -> ONNX (int4, int8, fp16, bf16, fp32)",
        precisions=PRECISIONS,
        execution_providers=tuple(providers.BUILDER_EP),
        convert=builder.convert,
        supports=builder.supports,
        tool_versions=builder.tool_versions,
        # Olive's RTN/GPTQ output (HF folders with quantized weights) converts with the 0.18 builder.
        accepts_quantized_input=True,
        options=builder.OPTIONS,
        algorithms=("rtn", "k_quant"),
        quantization_options=builder.QUANTIZATION_OPTIONS,
        priority=10,
    )


def _materialize(path, base, progress):
    from .adapters import merged_model, resolve

    return merged_model(resolve(path, base), progress=progress)


def _describe(path, base):
    from .adapters import describe

    return describe(path, base)


def _convert_adapter(request):
    from .adapters import convert_adapter

    return convert_adapter(request)


def _is_adapter(path):
    from .adapters import is_adapter

    return is_adapter(path)


@hookimpl
def slmk_model_sources():
    yield ModelSource(
        name="peft-lora",
        description="a PEFT LoRA adapter folder: merged into its base (merge), or the base built once with "
        "adapters/NAME.onnx_adapter files switched per request (separate)",
        detect=_is_adapter,
        describe=_describe,
        materialize=_materialize,
        convert=_convert_adapter,
        modes=("merge", "separate"),
    )


def _tune_command():
    from .tune_cli import tune_command

    return tune_command


@hookimpl
def slmk_commands():
    yield Command(
        "tune", "Measure a build's settings (threads; builder options) here and keep the fastest.", _tune_command
    )


@hookimpl
def slmk_settings():
    yield Setting(
        "ortgenai.allow_pickle",
        bool,
        False,
        "read weights from pytorch_model.bin pickles (they can run code); only for models you trust",
        flag="--allow-pickle",
        commands=("convert",),
    )


@hookimpl
def slmk_runtimes():
    yield Runtime(
        name="ortgenai",
        description="onnxruntime-genai in-process: streams tokens, applies the model's chat template",
        load=runtime.load,
        can_load=runtime.can_load,
        batches=True,
        priority=10,
    )
