"""The ``olive-workflow`` converter: run the user's own Olive workflow file.

``slmk convert --olive-config FILE -o OUT`` hands the file here. The workflow runs
as written, except that its input model is the folder slmk resolved and its cache
and output go into slmk's step folder. The result must be an ONNX Runtime GenAI
folder (genai_config.json); anything else is reported for what it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slmk.api import StepFailed, StepRequest, UsageError
from slmk.api.files import dir_size, link_or_copy_tree

from .providers import ort_provider
from .workflow import WorkflowResult, run_workflow

OPTION = "olive_config"
OPTIONS: dict[str, str] = {OPTION: "the Olive workflow file (.json or .yaml) to run: slmk convert --olive-config FILE"}


def read_workflow(path: Path) -> dict[str, Any]:
    """A workflow file as a dict; UsageError with the reason when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Olive workflow file {path} not found", hint="pass the path of your workflow file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Olive workflow file {path}: {exc}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(f"Olive workflow file {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("input_model"), dict):
        raise UsageError(
            f"{path} is not an Olive workflow (no input_model section)",
            hint="an Olive workflow has input_model, systems, passes and output_dir",
        )
    return data


def prepare(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the workflow file exists and add its content hash: an edited file must rebuild."""
    options = dict(options)
    value = options.get(OPTION)
    if value:
        path = Path(str(value)).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"Olive config {path} not found", hint="pass the path of your workflow .json file")
        options[OPTION] = str(path)
        options["olive_config_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return options


def input_model(options: Mapping[str, Any]) -> str | None:
    """The model folder the workflow file names (input_model.model_path), relative paths against the file."""
    value = options.get(OPTION)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    model_path = read_workflow(path)["input_model"].get("model_path")
    if not model_path:
        raise UsageError(
            f"{path} has no input_model.model_path", hint="set input_model.model_path to your model folder"
        )
    candidate = Path(model_path)
    if not candidate.is_absolute() and (path.parent / candidate).exists():
        candidate = path.parent / candidate
    return str(candidate)


def convert(request: StepRequest) -> None:
    value = request.options.get(OPTION)
    if not value:
        raise UsageError(
            "the olive-workflow converter runs an Olive workflow file, and none was given",
            hint="slmk convert --olive-config FILE -o OUT",
        )
    path = Path(str(value)).expanduser()
    config = read_workflow(path)
    input_model = config["input_model"]
    if str(input_model.get("type", "")).lower() == "hfmodel":
        # slmk resolved this folder (relative paths against the workflow file) and fingerprinted it.
        input_model["model_path"] = str(Path(request.source).resolve())
    _note_execution_provider(config, request)
    result = run_workflow(config, request.work_dir, request.progress, what=f"workflow {path.name}")
    build = _genai_folder(result)
    if build is None:
        raise StepFailed(
            f"workflow {path.name} produced {_describe(result)}, not an ONNX Runtime GenAI model "
            "(no genai_config.json)",
            hint=_next_step(result),
        )
    link_or_copy_tree(build, Path(request.output))
    request.progress.log(f"workflow {path.name}: ONNX Runtime GenAI model, {dir_size(request.output) / 1e6:.1f} MB")


def _genai_folder(result: WorkflowResult) -> Path | None:
    for folder in (result.folder, *(p.parent for p in result.folder.rglob("genai_config.json"))):
        if (folder / "genai_config.json").is_file():
            return folder
    return None


def _describe(result: WorkflowResult) -> str:
    last_name, last_kind = result.passes[-1]
    origin = f"after pass {last_name!r} ({last_kind})"
    config_file = result.folder / "config.json"
    if result.model_type == "hfmodel" and config_file.is_file():
        quant = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quant:
            bits = quant.get("bits") or quant.get("w_bit") or "?"
            group = quant.get("group_size") or quant.get("q_group_size") or "?"
            return (
                f"a Hugging Face folder of {bits}-bit weights ({quant.get('quant_method', '?')} quantization, "
                f"group size {group}) {origin}"
            )
        return f"a Hugging Face folder {origin}"
    if result.model_type == "onnxmodel":
        return f"a plain ONNX model ({result.model_path.name}) {origin}"
    return f"a {result.model_type or 'model'} {origin}"


def _next_step(result: WorkflowResult) -> str:
    if result.model_type == "hfmodel":
        return (
            "the workflow stops at Hugging Face weights; let slmk quantize and build in one go with "
            "`slmk convert MODEL -p int4 --via olive` (Olive quantizes, the ONNX Runtime GenAI builder converts), "
            "or `slmk olive-config MODEL` for the matching Olive workflow"
        )
    return "end the workflow with a pass that writes an ONNX Runtime GenAI model (genai_config.json)"


def _note_execution_provider(config: Mapping[str, Any], request: StepRequest) -> None:
    """Say so when the workflow targets another provider than the one slmk was asked for."""
    wanted = ort_provider(request.execution_provider)
    named = {
        str(provider)
        for system in (config.get("systems") or {}).values()
        if isinstance(system, Mapping)
        for accelerator in (system.get("accelerators") or [])
        if isinstance(accelerator, Mapping)
        for provider in (accelerator.get("execution_providers") or [])
    }
    if named and wanted not in named:
        request.progress.log(
            f"note: the workflow targets {', '.join(sorted(named))}, not {wanted}; "
            "the build is recorded for the workflow's own provider settings"
        )
