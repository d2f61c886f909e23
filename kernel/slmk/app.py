"""The kernel's operations, shared by the CLI, tests and other front ends.

Each function takes plain values, does one job through the plugins, and returns a
result object the CLI renders (as text or --json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SlmkError, UsageError
from .modelinfo import ModelInfo
from .pipeline import BuildResult, run_plan
from .planner import Plan, make_plan
from .plugins import Registry, get_registry
from .progress import Progress
from .records import FORMAT_HF, ChatSession, ExecutionProvider, LoadRequest


def resolve_ep(registry: Registry, name: str) -> ExecutionProvider:
    return registry.get("slmk_execution_providers", name, "execution provider")


def require_usable(ep: ExecutionProvider, action: str) -> None:
    """Stop with a clear message when the hardware for ``action`` is missing here."""
    usability = ep.probe()
    if not usability.usable:
        raise SlmkError(
            f"cannot {action} on {ep.name}: {usability.reason}",
            hint=usability.fix or f"`slmk doctor` shows what {ep.name} needs",
        )


def convert(
    model: str | Path,
    output: str | Path,
    *,
    precision: str = "int4",
    execution_provider: str = "cpu",
    via: str | None = None,
    quantization: dict[str, Any] | None = None,
    calibration: str | Path | None = None,
    search: dict[str, Any] | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    plan_only: bool = False,
    extra_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    cache_dir: str | Path | None = None,
) -> BuildResult | Plan:
    """Plan and build ``model`` at ``precision`` for ``execution_provider`` into ``output``."""
    registry = registry or get_registry()
    info = ModelInfo.load(model)
    if info.format != FORMAT_HF:
        raise UsageError(f"{info.path} is already an ONNX build", hint="convert takes a Hugging Face model folder")
    ep = resolve_ep(registry, execution_provider)
    quantization = dict(quantization or {})
    algorithm = quantization.pop("algorithm", "default") or "default"
    quantization.pop("calibration", None)
    calibration_path = Path(calibration).expanduser() if calibration else None
    if calibration_path and not calibration_path.is_file():
        raise UsageError(f"calibration file {calibration_path} not found", hint="pass a .jsonl or .txt file")
    options = {**quantization, **(extra_options or {})}
    # the builder itself runs rtn / k_quant, so the converter needs the algorithm too
    converter_options = {**options, "algorithm": algorithm} if algorithm != "default" else options
    plan = make_plan(
        registry,
        info,
        precision,
        ep,
        via=via,
        algorithm=algorithm,
        calibration=calibration_path is not None,
        converter_options=converter_options,
        quantizer_options={"algorithm": algorithm, **options},
    )
    if plan_only:
        return plan
    return run_plan(
        registry,
        info,
        plan,
        ep,
        Path(output),
        force=force,
        progress=progress,
        calibration=calibration_path,
        trust_remote_code=trust_remote_code,
        search=search,
        cache_dir=Path(cache_dir) if cache_dir else None,
    )


def build_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "slmk_build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def open_session(
    path: str | Path,
    *,
    runtime: str = "ortgenai",
    execution_provider: str | None = None,
    registry: Registry | None = None,
    installed=None,
    cache_dir: Path | None = None,
) -> ChatSession:
    """Load a built model folder with a runtime plugin."""
    registry = registry or get_registry()
    folder = Path(path).expanduser()
    if not (folder / "genai_config.json").is_file():
        if (folder / "config.json").is_file():
            raise UsageError(
                f"{folder} is a Hugging Face folder, not a build", hint=f"build it first: slmk convert {folder} -o OUT"
            )
        raise UsageError(
            f"{folder} is not an slmk build (no genai_config.json)",
            hint="pass the output folder of `slmk convert` or an installed model name",
        )
    ep_name = execution_provider or build_info(folder).get("execution_provider") or "cpu"
    ep = resolve_ep(registry, ep_name)
    require_usable(ep, "run the model")
    rt = registry.get("slmk_runtimes", runtime, "runtime")
    if rt.can_load:
        reason = rt.can_load(folder)
        if reason:
            raise UsageError(f"runtime {runtime} cannot load {folder}: {reason}")
    return rt.load(LoadRequest(path=folder, execution_provider=ep, installed=installed, cache_dir=cache_dir))


# ------------------------------------------------------------------ installs
def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name:version``."""
    name, _, version = ref.partition(":")
    return name, (version or None)


def find_installed(
    ref: str, *, installer: str = "foundry", cache_dir: Path | None = None, registry: Registry | None = None
):
    """The installed model ``NAME[:VERSION]`` (the newest version when none is given)."""
    registry = registry or get_registry()
    inst = registry.get("slmk_installers", installer, "installer")
    name, version = parse_ref(ref)
    models = [m for m in inst.list(cache_dir) if m.name == name and (version is None or m.version == version)]
    if not models:
        names = sorted({f"{m.name}:{m.version}" for m in inst.list(cache_dir)})
        raise UsageError(
            f"no installed model {ref!r} in {inst.locate(cache_dir)}",
            hint=f"installed: {', '.join(names) or 'none'}; install one with `slmk install BUILD_DIR --name NAME`",
        )
    return max(models, key=lambda m: int(m.version) if m.version.isdigit() else 0)


def resolve_target(
    target: str, *, installer: str = "foundry", cache_dir: Path | None = None, registry: Registry | None = None
):
    """A build folder, or an installed model name: returns (folder, InstalledModel | None)."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        return folder, None
    if "/" in target or "\\" in target or target.startswith("."):
        raise UsageError(f"{target} does not exist", hint="pass a build folder or an installed model name")
    installed = find_installed(target, installer=installer, cache_dir=cache_dir, registry=registry)
    return installed.path, installed


def install(
    build_dir: str | Path,
    name: str,
    *,
    installer: str = "foundry",
    cache_dir: str | Path | None = None,
    force: bool = False,
    template_file: str | Path | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
):
    """Install a build with the right prompt template; returns the InstalledModel."""
    from .records import InstallRequest
    from .templates import resolve_template

    registry = registry or get_registry()
    info = ModelInfo.load(build_dir)
    if info.format == FORMAT_HF:
        raise UsageError(
            f"{info.path} is a Hugging Face folder, not a build",
            hint=f"build it first: slmk convert {info.path} -o OUT, or use `slmk deploy`",
        )
    resolved = resolve_template(registry, info, Path(template_file) if template_file else None)
    ep = resolve_ep(registry, info.build_info.get("execution_provider") or "cpu")
    inst = registry.get("slmk_installers", installer, "installer")
    chat_template = None
    # the resolver reads any file that is not JSON as a Jinja chat template; so does install
    if template_file and Path(template_file).suffix != ".json":
        chat_template = Path(template_file).read_text(encoding="utf-8")
    return inst.install(
        InstallRequest(
            build_dir=info.path,
            name=name,
            execution_provider=ep,
            template=resolved.template,
            progress=progress or Progress(quiet=True),
            cache_dir=Path(cache_dir) if cache_dir else None,
            force=force,
            chat_template=chat_template,
        )
    )


# ------------------------------------------------------------------ inspect
def inspect_model(model: str | Path, registry: Registry | None = None) -> dict[str, Any]:
    """Everything `slmk inspect` shows, as data."""
    from .planner import check_precision
    from .records import PRECISIONS

    registry = registry or get_registry()
    info = ModelInfo.load(model)
    family = None
    template_error = None
    try:
        from .templates import resolve_template

        family = resolve_template(registry, info).family
    except SlmkError as exc:
        template_error = exc.one_line()
    blockers = []
    for name, conv in registry.converters.items():
        reason = conv.supports(info) if conv.supports else None
        if reason:
            blockers.append(f"{name}: {reason}")
    matrix = []
    for ep_name, ep in sorted(registry.execution_providers.items()):
        usable = ep.probe()
        for precision in PRECISIONS:
            try:
                check_precision(ep, precision)
                buildable = bool(info.format == FORMAT_HF and make_plan(registry, info, precision, ep))
                note = ""
            except SlmkError as exc:
                buildable, note = False, exc.message
            runnable = buildable and usable.usable and precision in ep.run_precisions
            if buildable and not usable.usable:
                note = f"builds; runs only where {ep.name} is usable ({usable.reason})"
            matrix.append(
                {
                    "execution_provider": ep_name,
                    "precision": precision,
                    "buildable": buildable,
                    "runnable": runnable,
                    "note": note,
                }
            )
    return {
        "path": str(info.path),
        "format": info.format,
        "architecture": info.architecture,
        "model_type": info.model_type,
        "family": family,
        "parameters": info.num_parameters,
        "dtype": info.dtype,
        "vocab_size": info.vocab_size,
        "context_length": info.context_length,
        "chat_template": info.chat_template,
        "template_error": template_error,
        "generation_config": info.generation_config,
        "converter_blockers": blockers,
        "matrix": matrix,
    }


def olive_config_input_model(config_file: str | Path) -> str:
    """The model folder an Olive workflow file names (input_model.model_path)."""
    path = Path(config_file).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"Olive config {path} not found", hint="pass the path of your workflow .json file") from None
    except ValueError as exc:
        raise UsageError(f"Olive config {path} is not valid JSON: {exc}") from None
    model_path = (data.get("input_model") or {}).get("model_path") if isinstance(data, dict) else None
    if not model_path:
        raise UsageError(
            f"{path} has no input_model.model_path", hint="set input_model.model_path to your model folder"
        )
    candidate = Path(model_path)
    if not candidate.is_absolute():
        candidate = (path.parent / candidate) if (path.parent / candidate).exists() else candidate
    return str(candidate)


# ------------------------------------------------------------------ demo
def default_demo_model() -> Path:
    # The repository ships the model under examples/; the kernel lives in kernel/slmk.
    return Path(__file__).resolve().parents[2] / "examples" / "tiny-chat" / "model"


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

    from .fsutil import cache_root

    say = echo or (lambda *a, **k: None)
    model = Path(model_dir) if model_dir else default_demo_model()
    if not (model / "config.json").is_file():
        raise UsageError(
            f"demo model not found at {model}", hint="run from a clone of the slmk repository, or pass --model DIR"
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


def show_template(target: str, template_file: Path | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """The PromptTemplate for a model/build folder or a family name, with its source."""
    from .templates import resolve_template

    registry = registry or get_registry()
    if not Path(target).exists() and target in registry.model_families:
        family = registry.model_families[target]
        if not family.chat_template:
            raise UsageError(f"family {target!r} publishes no chat template", hint="pass a model folder instead")
        info = ModelInfo(
            path=Path(target),
            format=FORMAT_HF,
            config={},
            model_type="",
            architectures=(),
            chat_template=family.chat_template,
        )
        tpl = family.prompt_template(info)
        return {
            "source": f"family:{target}",
            "family": target,
            "prompt_template": tpl.to_foundry(),
            "stop_tokens": list(family.stop_tokens),
            "generation_defaults": dict(family.generation_defaults),
            "notes": [],
        }
    if not Path(target).exists():
        known = ", ".join(sorted(registry.model_families))
        raise UsageError(f"{target} is neither a folder nor a known family", hint=f"families: {known}")
    info = ModelInfo.load(target)
    resolved = resolve_template(registry, info, template_file)
    family = registry.model_families.get(resolved.family) if resolved.family else None
    return {
        "source": resolved.source,
        "family": resolved.family,
        "prompt_template": resolved.template.to_foundry(),
        "stop_tokens": list(family.stop_tokens) if family else [],
        "generation_defaults": dict(family.generation_defaults) if family else {},
        "notes": list(getattr(resolved, "notes", []) or []),
    }
