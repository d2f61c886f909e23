"""Olive weight quantization of a Hugging Face folder (RTN, GPTQ), for the ORT GenAI builder.

The workflow written here is the one ``slmk olive-config`` prints, so a user who
continues in Olive runs exactly what slmk ran. Olive 0.13's Rtn and Gptq passes run
offline on CPU. Its AutoAWQQuantizer pass refuses to run without a CUDA GPU (and needs
``autoawq``), and its HQQ pass takes ONNX models only (the ortquant plugin's
``ortquant-hqq`` runs the same onnxruntime HQQ quantizer), so neither is offered here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, ModelInfo, StepFailed, StepRequest, UsageError
from slmk.api.files import dir_size, link_or_copy_tree
from slmk.api.models import pickled_weights

from .olive_data import CALIBRATION_DATASET, CalibrationError, read_records
from .providers import olive_device, ort_provider

#: slmk algorithm -> Olive 0.13 pass type (HF weights in, HF weights out).
ALGORITHM_PASSES: dict[str, str] = {"rtn": "Rtn", "gptq": "Gptq"}
PRECISION_BITS: dict[str, int] = {"int4": 4, "int8": 8}
BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_BLOCK_SIZE = 32  # the ORT GenAI builder's default, so both paths group weights alike
CALIBRATION_DATA = "calibration"
USER_SCRIPT = Path(__file__).resolve().with_name("olive_user_script.py")
#: Calibration sequences: enough for GPTQ's Hessians, small enough for CPU memory.
CALIBRATION_MAX_SAMPLES = 128
CALIBRATION_MAX_SEQ_LEN = 512

OPTIONS: dict[str, str] = {
    "block_size": "weights per quantization group: 16, 32 (default), 64, 128 or 256",
    "is_symmetric": "ignored: Olive's symmetric weights have no zero points, which the ORT GenAI builder "
    "needs; Olive weights are always asymmetric",
    "allow_pickle": "let Olive read pytorch_model.bin weights (pickles can run code): "
    "--allow-pickle / [olive] allow_pickle",
}


def check_pickles(source: Path, options: Mapping[str, Any]) -> None:
    """Olive loads the model with transformers, which unpickles ``pytorch_model*.bin`` when the
    folder has no safetensors: refused unless the user allowed it, before Olive starts."""
    pickles = pickled_weights(source)
    value = options.get("allow_pickle")
    allowed = str(value).strip().lower() in ("1", "true", "yes", "on")
    if value not in (None, False, "") and not allowed and str(value).strip().lower() not in ("0", "false", "no", "off"):
        raise UsageError(f"allow_pickle={value!r} is not a boolean", hint="use allow_pickle=true or allow_pickle=false")
    if pickles and not allowed:
        raise UsageError(
            f"{source.name} holds its weights only as pickles ({', '.join(pickles[:3])}), which Olive would load, "
            "and loading a pickle can run code",
            hint="convert them to safetensors, or pass --allow-pickle (slmk.toml: [olive] allow_pickle = true) "
            "for a model you trust",
        )


def block_size_of(options: Mapping[str, Any]) -> int:
    value = options.get("block_size")
    if value in (None, ""):
        return DEFAULT_BLOCK_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = -1
    if size not in BLOCK_SIZES:
        raise UsageError(
            f"block_size={value!r} is not allowed for Olive quantization",
            hint=f"block_size is one of {', '.join(map(str, BLOCK_SIZES))}",
        )
    return size


def check_block_size(info: ModelInfo, block_size: int) -> None:
    """Olive groups the input features of every linear layer: they must divide evenly."""
    config = info.config
    widths = {key: config.get(key) for key in ("hidden_size", "intermediate_size") if isinstance(config.get(key), int)}
    uneven = {key: width for key, width in widths.items() if width % block_size}
    if uneven:
        fitting = [size for size in BLOCK_SIZES if all(width % size == 0 for width in widths.values())]
        described = ", ".join(f"{key} {width}" for key, width in uneven.items())
        raise UsageError(
            f"block_size {block_size} does not divide the model's {described}",
            hint=f"use --block-size {max(fitting)}" if fitting else "this model's widths fit no block size",
        )


@dataclass(frozen=True)
class OliveQuantization:
    """What one Olive quantization pass makes: weights of ``precision`` by ``algorithm`` (rtn, gptq ...) in
    blocks of ``block_size``; GPTQ reads ``calibration`` (the user's file, never a downloaded data set)."""

    algorithm: str
    precision: str
    block_size: int
    calibration: Path | None = None
    trust_remote_code: bool = False


def quantization_workflow(
    model_dir: Path,
    quantization: OliveQuantization,
    execution_provider: ExecutionProvider,
    *,
    output_dir: str | Path = "olive-output",
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The Olive workflow (a dict for ``olive run --config``) that quantizes ``model_dir``."""
    algorithm, precision, block_size = quantization.algorithm, quantization.precision, quantization.block_size
    calibration, trust_remote_code = quantization.calibration, quantization.trust_remote_code
    if algorithm not in ALGORITHM_PASSES:
        raise UsageError(
            f"Olive quantization has no algorithm {algorithm!r} here", hint=f"use one of {', '.join(ALGORITHM_PASSES)}"
        )
    if precision not in PRECISION_BITS:
        raise UsageError(
            f"Olive quantizes weights to {', '.join(PRECISION_BITS)}, not {precision}", hint="choose -p int4 or -p int8"
        )
    model_dir = Path(model_dir).resolve()
    quant_pass: dict[str, Any] = {
        "type": ALGORITHM_PASSES[algorithm],
        "bits": PRECISION_BITS[precision],
        "group_size": block_size,
        "sym": False,
    }
    data_configs = []
    if algorithm == "gptq":
        if calibration is None:
            raise UsageError(
                "GPTQ needs calibration data, and slmk never downloads a data set for it",
                hint="pass --calibration FILE: your .jsonl chat records or a .txt file",
            )
        quant_pass["data_config"] = CALIBRATION_DATA
        data_configs.append(calibration_data_config(model_dir, calibration, trust_remote_code))
    return {
        "workflow_id": f"slmk-{algorithm}-{precision}",
        "input_model": {
            "type": "HfModel",
            "model_path": str(model_dir),
            "load_kwargs": {"trust_remote_code": bool(trust_remote_code)},
        },
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [
                    {
                        "device": olive_device(execution_provider),
                        "execution_providers": [ort_provider(execution_provider)],
                    }
                ],
            }
        },
        **({"data_configs": data_configs} if data_configs else {}),
        "passes": {algorithm: quant_pass},
        "host": "local_system",
        "target": "local_system",
        **({"cache_dir": str(cache_dir)} if cache_dir is not None else {}),
        "output_dir": str(output_dir),
        "no_artifacts": True,
    }


def calibration_data_config(model_dir: Path, calibration: Path, trust_remote_code: bool) -> dict[str, Any]:
    """An Olive data config that reads the user's file through ``olive_data.py``."""
    return {
        "name": CALIBRATION_DATA,
        "user_script": str(USER_SCRIPT),
        "load_dataset_config": {
            "type": CALIBRATION_DATASET,
            "params": {
                "data_files": str(Path(calibration).resolve()),
                "model_name": str(model_dir),
                "max_seq_len": CALIBRATION_MAX_SEQ_LEN,
                "max_samples": CALIBRATION_MAX_SAMPLES,
                "trust_remote_code": bool(trust_remote_code),
            },
        },
        "pre_process_data_config": {"type": "skip_pre_process"},
        "post_process_data_config": {"type": "skip_post_process"},
        "dataloader_config": {"type": "default_dataloader", "params": {"batch_size": 1}},
    }


def check_calibration(path: Path) -> int:
    """The number of records in the user's calibration file; UsageError when unusable."""
    try:
        records = read_records(path)
    except CalibrationError as exc:
        raise UsageError(
            f"calibration data {exc}", hint='use JSONL records {"messages": [...]} or {"text": ...}, or a .txt file'
        ) from None
    if not records:
        raise UsageError(f"calibration file {path} holds no text", hint="add chat records or text to it")
    return len(records)


def quantize(request: StepRequest, algorithm: str) -> None:
    """Quantize the HF weights in ``request.source`` with Olive; HF weights out."""
    from .workflow import run_workflow

    check_pickles(Path(request.source), request.options)
    block_size = block_size_of(request.options)
    info = ModelInfo.load(request.source)
    check_block_size(info, block_size)
    progress = request.progress
    if request.options.get("is_symmetric") not in (None, False, "false", "0"):
        progress.log("Olive weights are asymmetric (the ORT GenAI builder needs their zero points)")
    if request.calibration is not None and algorithm == "gptq":
        count = check_calibration(request.calibration)
        progress.log(f"calibration: {count} records from {request.calibration}")
    quantization = OliveQuantization(
        algorithm, request.precision, block_size, request.calibration, request.trust_remote_code
    )
    config = quantization_workflow(request.source, quantization, request.execution_provider)
    result = run_workflow(config, request.work_dir, progress, what=f"{algorithm} {request.precision} quantization")
    folder = result.folder
    quantized = (
        json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
        if (folder / "config.json").is_file()
        else None
    )
    if result.model_type != "hfmodel" or not quantized:
        raise StepFailed(
            f"Olive's {ALGORITHM_PASSES[algorithm]} pass wrote no quantized Hugging Face folder "
            f"(got a {result.model_type or 'unknown'} model at {folder.name})",
            hint="a plugin bug: report it with the Olive log (--debug)",
        )
    link_or_copy_tree(folder, Path(request.output))
    progress.log(
        f"Olive {algorithm} {request.precision}: {dir_size(request.output) / 1e6:.1f} MB of "
        f"{quantized.get('quant_method')} weights, group size {quantized.get('group_size')}"
    )
