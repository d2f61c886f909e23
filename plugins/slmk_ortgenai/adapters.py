"""PEFT LoRA adapters: recognise an adapter folder, find its base, check, merge, export.

A fine-tune often arrives as a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) instead of a whole model. This module:

* ``is_adapter(path)`` / ``resolve(path, base=None)``: recognise the folder and find the
  base model (the adapter's ``base_model_name_or_path`` when that is a local folder,
  relative to the adapter folder or absolute; else the ``--base`` the user passed). It
  never downloads: a model hub id without ``--base`` is an error that says what to pass.
  Every check reads JSON and safetensors headers only (no torch), so a bad adapter fails
  in milliseconds with one line, before anything is written.
* ``merge(adapter, out)``: W += scaling * B @ A in fp32 for every adapted weight, into a
  complete Hugging Face folder that keeps the base's tokenizer, chat template and
  generation config; the model builder then builds it like any model.
* ``export_onnx_adapter(adapter, build, path)``: the adapter as an ONNX Runtime
  ``.onnx_adapter`` file for a build made with LoRA inputs (``adapter_mode=separate``),
  which ``og.Adapters`` loads and a generator activates per request.

Module level stays light: torch, onnx and onnxruntime are imported inside functions.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmk.api import ConvertRequest, ModelInfo, Progress, UsageError
from slmk.api.files import atomic_dir, atomic_file, cache_root, file_lock, hash_json, write_json_atomic
from slmk.api.operations import convert_request

if TYPE_CHECKING:
    from slmk.api.operations import Registry

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: How ``convert_adapter`` builds: merge into the base, or the base plus a separate adapter file.
MODES = ("merge", "separate")
#: Where a separate-mode build keeps its adapter files, and the suffix onnxruntime uses.
ADAPTERS_DIR = "adapters"
ONNX_ADAPTER_SUFFIX = ".onnx_adapter"
#: The Linear layers of a decoder block that both the merge and the model builder's LoRA
#: graph (onnxruntime-genai 0.18 ``make_matmul_lora``) handle. Embeddings and the LM head
#: are not among them: the builder has no LoRA path for those.
SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The builder names the attention block ``attn`` where transformers says ``self_attn``.
_ONNX_BLOCK_NAMES = {"self_attn": "attn", "mlp": "mlp"}
_LORA_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear layer: ``W (out x in) += scaling * B (out x r) @ A (r x in)``."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    a_tensor: str  # name in adapter_model.safetensors
    b_tensor: str
    rank: int
    in_features: int
    out_features: int
    scaling: float

    @property
    def base_weight(self) -> str:
        return f"{self.module}.weight"

    def onnx_names(self) -> tuple[str, str]:
        """The initializer names the model builder gives this layer's A and B (input-major)."""
        parts = self.module.split(".")
        parts = [_ONNX_BLOCK_NAMES.get(p, p) for p in parts]
        stem = ".".join(parts)
        return f"{stem}.lora_A.MatMul.weight", f"{stem}.lora_B.MatMul.weight"


@dataclass(frozen=True)
class Adapter:
    """A checked LoRA adapter folder and the base it belongs to."""

    path: Path
    base: Path
    config: dict[str, Any]
    modules: tuple[LoraModule, ...]
    base_source: str  # "adapter_config.json" or "--base"
    target_names: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """A name for the adapter file: the folder's, or its parent's when the folder is just 'adapter'."""
        folder = self.path.resolve()
        name = folder.parent.name if folder.name.lower() in ("adapter", "adapters", "lora") else folder.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "adapter"

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules)

    def digest(self) -> str:
        """sha256 of the adapter's config and weights: part of the build cache key."""
        sha = hashlib.sha256()
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            sha.update((self.path / file).read_bytes())
        return sha.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What `slmk inspect ADAPTER_DIR` shows."""
        return {
            "adapter": str(self.path),
            "type": "lora",
            "base": str(self.base),
            "base_from": self.base_source,
            "rank": self.rank,
            "lora_alpha": self.config.get("lora_alpha"),
            "target_modules": list(self.target_names),
            "adapted_layers": len(self.modules),
            "parameters": sum(m.rank * (m.in_features + m.out_features) for m in self.modules),
        }


# ------------------------------------------------------------------ recognise and resolve
def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder: adapter_config.json and no config.json of its own."""
    folder = Path(path).expanduser()
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="the file must be valid JSON") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object", hint="a PEFT adapter_config.json holds one object")
    return data


#: Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a safetensors header (no weights read).

    The header must describe the file: every entry a tensor with a known dtype, a shape of
    whole numbers and a byte range of exactly that size, all within the file (a truncated
    file is refused here, not when the weights are read).
    """
    hint = "the file must be a whole safetensors file: save it again"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000 or 8 + length > size:
                raise ValueError("implausible header length")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error, RecursionError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint=hint) from exc
    if not isinstance(header, dict):
        raise UsageError(f"{path} has no safetensors header (not a JSON object)", hint=hint)
    data_bytes = size - 8 - length
    shapes: dict[str, list[int]] = {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(tensor, data_bytes)
        if problem:
            raise UsageError(f"{path}: tensor {name!r} {problem}", hint=hint)
        shapes[name] = list(tensor["shape"])
    return shapes


def _tensor_problem(tensor: Any, data_bytes: int) -> str | None:
    if not isinstance(tensor, dict):
        return "is not described by an object"
    shape, offsets, dtype = tensor.get("shape"), tensor.get("data_offsets"), tensor.get("dtype")
    if dtype not in _DTYPE_BYTES:
        return f"has an unknown dtype {dtype!r}"
    whole = [isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (shape or [])]
    if not isinstance(shape, list) or not all(whole):
        return f"has a shape {shape!r} that is not a list of sizes"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets):
        return "has no byte range (data_offsets)"
    elements = 1
    for n in shape:
        elements *= n
    start, end = offsets
    if not 0 <= start <= end or end - start != elements * _DTYPE_BYTES[dtype]:
        return f"has {end - start} bytes for a {dtype} tensor of shape {shape}"
    if end > data_bytes:
        return f"lies beyond the end of the file ({end} > {data_bytes} bytes of data): the file is truncated"
    return None


def base_weight_shapes(base: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in sorted(base.glob("*.safetensors")):
        shapes.update(safetensors_shapes(file))
    return shapes


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def find_base(path: Path, config: dict[str, Any], base: str | Path | None) -> tuple[Path, str]:
    """The base model folder and where it came from. Never downloads."""
    named = str(config.get("base_model_name_or_path") or "").strip()
    if base is not None:
        folder, source = Path(base).expanduser(), "--base"
        if not folder.is_dir():
            raise UsageError(f"base model {folder} does not exist", hint="--base takes the base model's local folder")
    elif not named:
        raise UsageError(
            f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty)",
            hint="pass the base model's local folder with --base DIR",
        )
    else:
        candidate = Path(named).expanduser()
        folder = candidate if candidate.is_absolute() else path / candidate
        source = ADAPTER_CONFIG
        if not folder.is_dir():
            if _looks_like_path(named) or (path / named.split("/")[0]).exists():
                raise UsageError(
                    f"the adapter's base model {folder} does not exist",
                    hint="fix base_model_name_or_path in adapter_config.json, or pass --base DIR",
                )
            raise UsageError(
                f"the adapter's base model {named!r} is a model hub id, and slmk never downloads",
                hint=f"download or copy {named} yourself and pass its folder with --base DIR",
            )
    if not (folder / "config.json").is_file():
        if (folder / ADAPTER_CONFIG).is_file():
            raise UsageError(
                f"the base {folder} is itself an adapter", hint="merge that adapter first, then pass the merged folder"
            )
        raise UsageError(
            f"the base model {folder} has no config.json", hint="pass a Hugging Face model folder as the base"
        )
    return folder.resolve(), source


#: Largest lora_alpha slmk merges: real adapters use 8 to a few hundred; beyond this the
#: scaling (alpha / rank) swamps the base weights, and 1e308 overflows them to inf.
MAX_LORA_ALPHA = 65536.0


def _alpha(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_LORA_ALPHA:
        raise UsageError(
            f"{where} = {value!r} is not a number in (0, {MAX_LORA_ALPHA:g}]",
            hint="lora_alpha is the LoRA scale numerator (alpha / rank): fix adapter_config.json",
        )
    return float(value)


def _check_config_types(folder: Path, config: dict[str, Any]) -> None:
    """The adapter_config.json values the merge reads, of their type and range (one line each)."""
    where = folder / ADAPTER_CONFIG
    if config.get("lora_alpha") is not None:
        _alpha(config["lora_alpha"], f"{where}: lora_alpha")
    for key in ("alpha_pattern", "rank_pattern"):
        pattern = config.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, dict) or not all(isinstance(k, str) for k in pattern):
            raise UsageError(
                f"{where}: {key} is {type(pattern).__name__}, not a table of module names",
                hint=f'write {key} = {{"module.name": value}} or leave it out',
            )
        if key == "alpha_pattern":
            for module, value in pattern.items():
                _alpha(value, f"{where}: alpha_pattern[{module!r}]")
    targets = config.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise UsageError(
            f"{where}: target_modules = {targets!r} is not a module name or a list of them",
            hint='e.g. "target_modules": ["q_proj", "v_proj"]',
        )


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(config.get("lora_alpha") or rank)
    for key, value in (config.get("alpha_pattern") or {}).items():
        if module == key or module.endswith("." + key):
            alpha = float(value)
    return alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank


def check_weights_finite(adapter: Adapter) -> None:
    """Every LoRA weight of ``adapter`` finite (read with torch: adapters are small): checked
    before anything is built, so NaN weights never become a build that answers garbage."""
    from safetensors import safe_open

    with safe_open(str(adapter.path / ADAPTER_WEIGHTS), framework="pt") as handle:
        for module in adapter.modules:
            for name in (module.a_tensor, module.b_tensor):
                check_finite(handle.get_tensor(name), name)


def check_finite(tensor: Any, what: str) -> None:
    """Refuse a weight holding NaN or infinity before anything is built from it."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise UsageError(
            f"{what} holds NaN or infinite values", hint="the adapter's training diverged or the file is damaged"
        )


def resolve(path: str | Path, base: str | Path | None = None) -> Adapter:
    """Check the adapter folder ``path`` and find its base; one clear UsageError otherwise."""
    folder = Path(path).expanduser()
    if not (folder / ADAPTER_CONFIG).is_file():
        raise UsageError(f"{folder} has no {ADAPTER_CONFIG}", hint="pass a PEFT adapter folder")
    config = _read_json(folder / ADAPTER_CONFIG)
    peft_type = str(config.get("peft_type") or "").upper()
    if peft_type != "LORA":
        raise UsageError(
            f"the adapter in {folder} is {peft_type or 'of no declared type'}, not LoRA",
            hint="slmk merges and builds LoRA adapters (peft_type LORA) only",
        )
    _check_config_types(folder, config)
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers")):
        if config.get(flag):
            raise UsageError(f"the adapter in {folder} uses {what}", hint="slmk supports plain LoRA on Linear layers")
    if config.get("modules_to_save"):
        raise UsageError(
            f"the adapter in {folder} also saves whole modules ({config['modules_to_save']!r})",
            hint="slmk supports LoRA weights only; train without modules_to_save",
        )
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unsupported = sorted(t for t in targets if t.split(".")[-1] not in SUPPORTED_TARGETS)
    if unsupported or not targets:
        raise UsageError(
            f"the adapter in {folder} targets {', '.join(unsupported) or 'no named modules'}, "
            "which slmk cannot merge or build",
            hint=f"LoRA on {', '.join(SUPPORTED_TARGETS)} is supported",
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        hint = "save it with safetensors (peft's default)"
        if (folder / "adapter_model.bin").is_file():
            hint = (
                "adapter_model.bin is a pickle, which slmk does not load: re-save the adapter with safe_serialization"
            )
        raise UsageError(f"{folder} has no {ADAPTER_WEIGHTS}", hint=hint)
    base_dir, source = find_base(folder, config, base)
    modules = _match_modules(folder, config, safetensors_shapes(weights), base_dir)
    return Adapter(folder, base_dir, config, modules, source, tuple(sorted(set(targets))))


def _match_modules(
    folder: Path, config: dict[str, Any], shapes: dict[str, list[int]], base: Path
) -> tuple[LoraModule, ...]:
    """Pair every lora_A with its lora_B and check both against the base weight they adapt."""
    parts: dict[str, dict[str, tuple[str, list[int]]]] = {}
    for name, shape in shapes.items():
        match = _LORA_TENSOR.match(name)
        if not match:
            raise UsageError(
                f"{folder / ADAPTER_WEIGHTS} holds {name}, which is not a LoRA weight",
                hint="slmk supports LoRA weights only (lora_A / lora_B)",
            )
        parts.setdefault(match["module"], {})[match["part"]] = (name, shape)
    if not parts:
        raise UsageError(f"{folder / ADAPTER_WEIGHTS} holds no LoRA weights", hint="save the adapter again with peft")
    base_shapes = base_weight_shapes(base)
    if not base_shapes:
        raise UsageError(f"the base model {base} has no safetensors weights", hint="save the base with safetensors")
    base_config = _read_json(base / "config.json")
    architecture = (base_config.get("architectures") or ["?"])[0]
    modules = []
    for module, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise UsageError(f"{module} has lora_{''.join(pair)} without its pair", hint="the adapter file is damaged")
        (a_name, a_shape), (b_name, b_shape) = pair["A"], pair["B"]
        if module.split(".")[-1] not in SUPPORTED_TARGETS:
            raise UsageError(
                f"the adapter adapts {module}, which slmk cannot merge or build",
                hint=f"LoRA on {', '.join(SUPPORTED_TARGETS)} is supported",
            )
        weight = base_shapes.get(f"{module}.weight")
        if weight is None:
            raise UsageError(
                f"the adapter adapts {module}, which the base {base.name} ({architecture}) does not have",
                hint="this adapter was trained on another architecture: pass its own base with --base DIR",
            )
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise UsageError(f"{module}: lora_A {a_shape} and lora_B {b_shape} do not pair", hint="the file is damaged")
        if [b_shape[0], a_shape[1]] != list(weight):
            raise UsageError(
                f"the adapter's {module} is {b_shape[0]}x{a_shape[1]} and the base's is {weight[0]}x{weight[1]}",
                hint="this adapter was trained on a base of another size: pass its own base with --base DIR",
            )
        rank = a_shape[0]
        modules.append(LoraModule(module, a_name, b_name, rank, a_shape[1], b_shape[0], _scaling(config, module, rank)))
    return tuple(modules)


# ------------------------------------------------------------------ merge
def merge(adapter: Adapter, out: Path) -> None:
    """Write base + adapter as one Hugging Face folder into the (empty) folder ``out``.

    Every file of the base is copied except its weights, which are rewritten with
    W += scaling * B @ A computed in fp32 and stored in the base's dtype; so the merged
    folder keeps the base's tokenizer, chat template and generation config.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out)
    lora: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(adapter.path / ADAPTER_WEIGHTS), framework="pt") as handle:
        for module in adapter.modules:
            lora[module.base_weight] = {
                "A": handle.get_tensor(module.a_tensor).float(),
                "B": handle.get_tensor(module.b_tensor).float(),
                "scaling": torch.tensor(module.scaling),
            }
            check_finite(lora[module.base_weight]["A"], module.a_tensor)
            check_finite(lora[module.base_weight]["B"], module.b_tensor)
    for item in sorted(adapter.base.iterdir()):
        if item.is_dir():
            continue
        if item.suffix != ".safetensors":
            shutil.copy2(item, out / item.name)
            continue
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(item), framework="pt") as handle:
            metadata = handle.metadata()
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor = handle.get_tensor(name)
                delta = lora.pop(name, None)
                if delta is not None:
                    merged = tensor.float() + delta["scaling"] * (delta["B"] @ delta["A"])
                    tensor = merged.to(tensor.dtype)
                    check_finite(tensor, f"{name} merged with the adapter")
                tensors[name] = tensor.contiguous()
        save_file(tensors, str(out / item.name), metadata=metadata)
    if lora:  # resolve() checked every module against the base's headers
        raise UsageError(f"the base has no weight for {', '.join(sorted(lora))}", hint="the base folder changed")


# ------------------------------------------------------------------ separate adapter files
def onnx_adapter_tensors(adapter: Adapter, dtype: str = "float32") -> dict[str, Any]:
    """The adapter as the builder lays it out: A as (in x r), B as (r x out) with the scaling
    folded in, computed in fp32 and stored as ``dtype`` (the build's LoRA input type)."""
    import numpy as np
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    # torch reads bf16 adapters too, which numpy cannot
    with safe_open(str(adapter.path / ADAPTER_WEIGHTS), framework="pt") as handle:
        for module in adapter.modules:
            a_name, b_name = module.onnx_names()
            a = handle.get_tensor(module.a_tensor).float()
            b = handle.get_tensor(module.b_tensor).float() * module.scaling
            check_finite(a, module.a_tensor)
            check_finite(b, f"{module.b_tensor} times its scaling")
            tensors[a_name] = np.ascontiguousarray(a.T.numpy().astype(dtype))
            tensors[b_name] = np.ascontiguousarray(b.T.numpy().astype(dtype))
    return tensors


def write_onnx_adapter(tensors: dict[str, Any], path: Path) -> None:
    """Write an ONNX Runtime adapter file (what ``og.Adapters.load`` reads), atomically."""
    import onnxruntime as ort

    adapter_format = ort.AdapterFormat()
    adapter_format.set_adapter_version(1)
    adapter_format.set_model_version(1)
    adapter_format.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in tensors.items()})
    with atomic_file(path) as tmp:
        adapter_format.export_adapter(str(tmp))


LORA_INPUTS = "lora_inputs.json"


def _manifest(build: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(build) / ADAPTERS_DIR / LORA_INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def lora_inputs(build: Path) -> dict[str, list[Any]]:
    """The LoRA inputs of a separate-mode build (name -> shape, the rank dim symbolic)."""
    return dict(_manifest(build).get("inputs") or {})


def export_onnx_adapter(adapter: Adapter, build: Path, name: str | None = None) -> Path:
    """Write ``adapter`` as ``BUILD/adapters/NAME.onnx_adapter`` for a separate-mode build of its base.

    The build's LoRA inputs are fixed when the base is built: another adapter fits when
    it adapts exactly the same layers (any rank).
    """
    build = Path(build)
    inputs = lora_inputs(build)
    if not inputs:
        raise UsageError(
            f"{build} has no LoRA inputs", hint="build the base with `slmk convert ADAPTER --adapter-mode separate`"
        )
    tensors = onnx_adapter_tensors(adapter, _manifest(build).get("dtype") or "float32")
    if set(tensors) != set(inputs):
        missing = sorted(set(inputs) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(inputs))[:3]
        raise UsageError(
            f"the adapter {adapter.path} adapts other layers than the build {build} takes"
            + (f" (it lacks {', '.join(missing)})" if missing else "")
            + (f" (it adds {', '.join(extra)})" if extra else ""),
            hint="an adapter file fits a separate-mode build made for the same target modules",
        )
    for tensor_name, array in tensors.items():
        expected = inputs[tensor_name]
        fixed = [(i, d) for i, d in enumerate(expected) if isinstance(d, int)]
        if any(array.shape[i] != d for i, d in fixed):
            raise UsageError(
                f"the adapter's {tensor_name} is {list(array.shape)} and the build takes {expected}",
                hint="this adapter was trained on another base",
            )
    target = build / ADAPTERS_DIR / f"{name or adapter.name}{ONNX_ADAPTER_SUFFIX}"
    write_onnx_adapter(tensors, target)
    return target


def make_lora_inputs(model_path: Path, names: list[str]) -> tuple[dict[str, list[Any]], str]:
    """Turn the builder's LoRA initializers in ``model_path`` into optional graph inputs.

    Each LoRA weight becomes a graph input whose rank dimension is symbolic
    (``lora_rank``) with an empty default (rank 0): without an active adapter the LoRA
    branch adds zeros and the model is exactly the base; an adapter file overrides the
    defaults per request. Returns the inputs (name -> shape) and their element type
    (the build's float type: float32, or float16 / bfloat16 on GPU builds).
    """
    import onnx
    from onnx import helper, numpy_helper

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=True)
    wanted = set(names)
    found = {init.name: init for init in model.graph.initializer if init.name in wanted}
    if set(found) != wanted:
        missing = sorted(wanted - set(found))[:3]
        raise UsageError(
            f"the model builder did not write the LoRA weights {', '.join(missing)}",
            hint="onnxruntime-genai 0.18 builds LoRA graphs for Llama-style models; slmk is tested with it",
        )
    inputs: dict[str, list[Any]] = {}
    element_types = set()
    for name in names:
        init = found[name]
        rows, cols = list(init.dims)
        # an empty slice of the real weight: its type, rank 0
        value = numpy_helper.to_array(init)
        if ".lora_A." in name:  # (in x r)
            shape, empty = [rows, "lora_rank"], value[:, :0]
        else:  # (r x out)
            shape, empty = ["lora_rank", cols], value[:0, :]
        model.graph.initializer.remove(init)
        model.graph.initializer.append(numpy_helper.from_array(empty.copy(), name))
        model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, shape))
        inputs[name] = shape
        element_types.add(init.data_type)
    data_file = model_path.with_name(model_path.name + ".data")
    data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(
        model,
        str(model_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file.name,
        size_threshold=1024,
    )
    if len(element_types) != 1:
        raise UsageError("the model builder wrote LoRA weights of mixed types", hint="report this slmk bug")
    return inputs, helper.tensor_dtype_to_np_dtype(element_types.pop()).name


def lora_node_names(adapter: Adapter) -> list[str]:
    """The builder's names for the LoRA MatMul nodes, kept in float when the base is quantized."""
    nodes = []
    for module in adapter.modules:
        parts = [_ONNX_BLOCK_NAMES.get(p, p) for p in module.module.split(".")]
        # model.layers.0.attn.q_proj -> /model/layers.0/attn/q_proj
        layer = ".".join(parts[1:3])
        prefix = "/" + "/".join([parts[0], layer, *parts[3:]])
        nodes += [f"{prefix}/lora_A/MatMul", f"{prefix}/lora_B/MatMul"]
    return nodes


# ------------------------------------------------------------------ operations (what the CLI calls)
def describe(path: str | Path, base: str | Path | None = None) -> dict[str, Any]:
    """`slmk inspect ADAPTER_DIR [--base DIR]`: the adapter, its base, and how it can be built."""
    adapter = resolve(path, base)
    info = ModelInfo.load(adapter.base)
    return {
        **adapter.describe(),
        "base_architecture": info.architecture,
        "base_model_type": info.model_type,
        "base_parameters": info.num_parameters,
        "adapter_modes": list(MODES),
    }


def _base_fingerprint(base: Path) -> str:
    return hash_json(
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(base).iterdir() if p.is_file())
    )


def merged_model(adapter: Adapter, *, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The merged Hugging Face folder of ``adapter`` + its base, made once and cached."""
    progress = progress or Progress(quiet=True)
    root = Path(cache_dir) if cache_dir else cache_root()
    key = hash_json({"adapter": adapter.digest(), "base": _base_fingerprint(adapter.base)})[:24]
    folder = root / "merged" / f"{key}-{adapter.name}"
    with file_lock(root / "locks" / f"merge-{key}.lock", what="adapter merge"):
        if (folder / "config.json").is_file():
            progress.log(f"cached merge: {folder}")
            return folder
        with atomic_dir(folder, force=True) as tmp:
            merge(adapter, tmp)
        progress.log(f"merged {len(adapter.modules)} LoRA layers into {adapter.base.name} (fp32) -> {folder}")
    return folder


def convert_adapter(request: ConvertRequest, registry: Registry | None = None):
    """`slmk convert ADAPTER_DIR [--base DIR] [--adapter-mode merge|separate]`: ``request.model`` is
    the adapter folder, ``request.source_mode`` the mode (None: merge).

    ``merge`` (default): the adapter merged into the fp32 base, built like any model.
    ``separate``: the base built once with LoRA inputs, plus ``adapters/NAME.onnx_adapter``
    (NAME: ``-O adapter_name=NAME``, else the adapter folder's name);
    ``slmk run BUILD --adapter NAME`` (or the session's ``adapter=``) switches adapters
    per request on one loaded model. Everything is checked before anything is written.
    """
    mode = request.source_mode or "merge"
    if mode not in MODES:
        raise UsageError(f"unknown adapter mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    adapter = resolve(request.model, request.base)
    output = Path(request.output)
    if not request.plan_only:
        check_weights_finite(adapter)
    if output.exists() and not request.force:
        raise UsageError(
            f"output {output} already exists", hint="choose another -o folder or pass --force to replace it"
        )
    progress = request.progress or Progress(quiet=True)
    options = dict(request.options)
    adapter_name = options.get("adapter_name") or adapter.name
    if mode == "merge":
        if request.plan_only:
            source = adapter.base  # the plan is the base's; merging waits for a real build
        else:
            source = merged_model(adapter, cache_dir=request.cache_dir, progress=progress)
    else:
        source = adapter.base
        options.update(
            adapter_path=str(adapter.path.resolve()),
            adapter_name=adapter_name,
            adapter_digest=adapter.digest(),
        )
    result = convert_request(
        replace(
            request, model=Path(source), output=output, base=None, source_mode=None, options=options, progress=progress
        ),
        registry,
    )
    if request.plan_only:
        return result
    info_file = output / "slmk_build.json"
    build = json.loads(info_file.read_text(encoding="utf-8"))
    build["adapter"] = {
        "path": str(adapter.path.resolve()),
        "name": adapter_name,
        "mode": mode,
        "base": str(adapter.base),
        "sha256": adapter.digest(),
        "rank": adapter.rank,
        "target_modules": list(adapter.target_names),
    }
    write_json_atomic(info_file, build)
    return result
