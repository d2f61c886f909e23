"""Weight-only quantization of an fp32 ONNX Runtime GenAI build with onnxruntime's tools.

Every constant-weight MatMul becomes a ``MatMulNBits`` node (``com.microsoft``):
4 bits (RTN or HQQ) or 8 bits (RTN). 8 bits use the same operator rather than
``quantize_dynamic``'s QInt8 ``MatMulInteger``: it is what the model builder itself
writes for int8, ORT GenAI runs it on CPU with float activations (int8 compute at
accuracy level 4), and the graph's inputs, outputs and KV cache stay as they were,
so genai_config.json needs no change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from slmk.api import StepFailed, StepRequest, UsageError
from slmk.api.files import dir_size, link_or_copy_tree

GENAI_CONFIG = "genai_config.json"
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULTS: dict[str, Any] = {"block_size": 32, "is_symmetric": True, "accuracy_level": 4}

OPTIONS: dict[str, str] = {
    "block_size": "weights per quantization block: 16, 32 (default), 64, 128 or 256",
    "is_symmetric": "symmetric weights (default true); false stores zero points (RTN only)",
    "accuracy_level": "MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 (default 4)",
}


def tool_versions() -> dict[str, str]:
    found = {}
    for name in ("onnxruntime", "onnx"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def quantization_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """block_size, is_symmetric and accuracy_level from the request, checked."""
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        if options.get(key) not in (None, ""):
            settings[key] = options[key]
    try:
        settings["block_size"] = int(settings["block_size"])
        settings["accuracy_level"] = int(settings["accuracy_level"])
    except (TypeError, ValueError):
        raise UsageError(
            f"block_size and accuracy_level are numbers, not {options.get('block_size')!r}/"
            f"{options.get('accuracy_level')!r}"
        ) from None
    if settings["block_size"] not in BLOCK_SIZES:
        raise UsageError(
            f"block_size={settings['block_size']} is not allowed",
            hint=f"block_size is one of {', '.join(map(str, BLOCK_SIZES))}",
        )
    if settings["accuracy_level"] not in ACCURACY_LEVELS:
        raise UsageError(f"accuracy_level={settings['accuracy_level']} is not allowed", hint="use 0, 1, 2, 3 or 4")
    symmetric = settings["is_symmetric"]
    if isinstance(symmetric, str):
        if symmetric.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise UsageError(f"is_symmetric={symmetric!r} is not a boolean", hint="use true or false")
        symmetric = symmetric.strip().lower() in ("1", "true", "yes", "on")
    settings["is_symmetric"] = bool(symmetric)
    return settings


def onnx_files(genai_config: Mapping[str, Any]) -> list[str]:
    """The ONNX files genai_config.json names (decoder, and embedding/vision/speech parts)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            name = node.get("filename")
            if isinstance(name, str) and name.endswith(".onnx") and name not in found:
                found.append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(genai_config.get("model", {}))
    return found


def _tensors(graph) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(subgraph)


def _external_data_files(model_path: Path) -> set[str]:
    """Files the model's tensors point to (``model.onnx.data`` for builder output)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {
        entry.value
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


@contextlib.contextmanager
def _quiet_root_logger(log_path: Path) -> Iterator[None]:
    """matmul_nbits_quantizer calls ``logging.basicConfig(INFO)`` on import and logs every
    node: with a handler on the root logger the call is a no-op and the lines go to a file."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.FileHandler(log_path, encoding="utf-8")
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        handler.close()


def quantize(request: StepRequest, bits: int, algorithm: str) -> None:
    """Quantize each ONNX file of the build in ``request.source`` into ``request.output``."""
    source, output = Path(request.source), Path(request.output)
    try:
        genai_config = json.loads((source / GENAI_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{source} is not an ONNX Runtime GenAI build: {exc}",
            hint="the ortquant quantizers take the fp32 output of a converter",
        ) from None
    settings = quantization_settings(request.options)
    models = onnx_files(genai_config)
    if not models:
        raise StepFailed(f"{source / GENAI_CONFIG} names no .onnx file", hint="rebuild the model at fp32")
    if algorithm == "hqq" and not settings["is_symmetric"]:
        request.progress.log("HQQ always stores zero points: is_symmetric does not apply")
    work = Path(request.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    replaced: set[str] = set()
    private = work / "source"
    private.mkdir(exist_ok=True)
    for name in models:
        files = {name, *_external_data_files(source / name)}
        replaced |= files
        # onnx refuses external data with several hard links (its "hardlink attack"
        # check), and slmk's step cache shares files with the outputs by hard links:
        # the quantizer reads a private copy.
        for file in files:
            (private / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / file, private / file)
    # Tokenizer, chat template, genai_config.json and anything else the build carries.
    for item in source.iterdir():
        if item.name not in replaced and not item.name.startswith("."):
            if item.is_dir():
                link_or_copy_tree(item, output / item.name)
            else:
                shutil.copy2(item, output / item.name)
    for name in models:
        start = time.perf_counter()
        _quantize_file(private / name, output / name, bits, algorithm, settings, work / "ortquant.log")
        request.progress.log(
            f"{name}: {bits}-bit {algorithm} MatMulNBits, block {settings['block_size']}"
            f"{', symmetric' if settings['is_symmetric'] and algorithm == 'rtn' else ''}, "
            f"accuracy level {settings['accuracy_level']} in {time.perf_counter() - start:.1f}s"
        )
    before, after = dir_size(source), dir_size(output)
    request.progress.log(f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")


def _quantize_file(
    source: Path, target: Path, bits: int, algorithm: str, settings: Mapping[str, Any], log_path: Path
) -> None:
    with _quiet_root_logger(log_path):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        if algorithm == "hqq":
            config = HQQWeightOnlyQuantConfig(block_size=settings["block_size"], bits=bits)
        else:
            config = DefaultWeightOnlyQuantConfig(
                block_size=settings["block_size"],
                is_symmetric=settings["is_symmetric"],
                accuracy_level=settings["accuracy_level"] or None,
                bits=bits,
            )
        try:
            quantizer = MatMulNBitsQuantizer(str(source), algo_config=config)
            quantizer.process()
            target.parent.mkdir(parents=True, exist_ok=True)
            # One external data file named after the model, as the builder writes it.
            quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise StepFailed(
                f"onnxruntime could not quantize {source.name} to {bits} bits ({algorithm}): "
                f"{type(exc).__name__}: {exc}",
                hint="rerun with --debug for the traceback",
            ) from exc
    if not (target.with_name(target.name + ".data")).is_file():
        raise StepFailed(f"onnxruntime wrote {target.name} without its external data file")
