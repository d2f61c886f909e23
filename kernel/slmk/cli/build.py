"""Build commands: `slmk init`, `slmk config`, `slmk inspect`, `slmk convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..plugins import Registry, get_registry
from ..records import ConvertRequest
from .options import PRECISION_CHOICES, PluginOptionsCommand, State, emit_json, human_size, pass_state


def validate_install_name(name: str) -> str:
    """An install name: letters, digits, '.', '_' and '-', starting with a letter or digit (no paths)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
        raise UsageError(
            f"invalid name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit",
        )
    return name


def write_config(path: Path, values: dict[str, Any], header: str = "") -> None:
    """Write an slmk.toml of the given dotted keys atomically: each checked first, None left out."""
    import tomli_w

    from ..config import all_settings, check_values
    from ..fsutil import write_text_atomic

    nested: dict[str, Any] = {}
    checked = check_values({k: v for k, v in values.items() if v is not None}, all_settings(), "slmk init")
    for key, value in checked.items():
        *tables, leaf = key.split(".")
        target = nested
        for table in tables:
            target = target.setdefault(table, {})
        target[leaf] = value
    write_text_atomic(path, "".join(f"# {line}\n" for line in header.splitlines()) + tomli_w.dumps(nested))


@click.group()
def config() -> None:
    """Show the settings slmk.toml can hold and their resolved values."""


@config.command("keys")
def config_keys() -> None:
    """List every key with its type, default, allowed values and environment variable."""
    from ..config import all_settings

    for s in all_settings(get_registry().settings.values()).values():
        allowed = f" one of {', '.join(map(str, s.choices))}" if s.choices else ""
        click.echo(f"{s.key} ({s.type.__name__}, default {s.default!r}){allowed}\n    {s.help}; env {s.env}")


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def config_show(state: State, as_json: bool) -> None:
    """Print every setting's value and where it came from."""
    settings = state.settings()
    rows = {key: {"value": value, "source": settings.source(key)} for key, value in settings.as_dict().items()}
    if as_json:
        emit_json({"file": str(settings.path) if settings.path else None, "settings": rows})
        return
    click.echo(f"# file: {settings.path or 'none'}")
    for key, row in rows.items():
        click.echo(f"{key} = {row['value']!r}    ({row['source']})")


@click.command()
@click.argument("model_dir", type=click.Path())
@click.option(
    "-o",
    "--output",
    "config_path",
    default="slmk.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the config.",
)
@click.option("-p", "--precision", type=PRECISION_CHOICES, default="int4", show_default=True)
@click.option("--ep", "execution_provider", default="cpu", show_default=True, help="Execution provider.")
@click.option("--name", help="Install name (default: the folder name).")
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
@pass_state
def init(
    state: State,
    model_dir: str,
    config_path: str,
    precision: str,
    execution_provider: str,
    name: str | None,
    force: bool,
) -> None:
    """Write an slmk.toml for MODEL_DIR (one line per choice, e.g. execution_provider)."""
    import re

    from ..modelinfo import ModelInfo

    info = ModelInfo.load(model_dir)
    path = Path(config_path)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(
            f"cannot write {path}: {'it is a folder' if path.is_dir() else 'its folder does not exist'}",
            hint="pass -o PATH/slmk.toml in an existing folder",
        )
    get_registry().get("slmk_execution_providers", execution_provider)
    if name is not None:
        name = validate_install_name(name)
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", info.path.resolve().name).strip("-.").lower()[:64] or "model"
    gen = info.generation_config
    values = {
        "model": str(info.path.resolve()),
        "precision": precision,
        "execution_provider": execution_provider,
        "output": f"build/{name}-{precision}-{execution_provider}",
        "name": name,
        "generation.do_sample": gen.get("do_sample"),
        "generation.temperature": gen.get("temperature"),
        "generation.top_p": gen.get("top_p"),
        "generation.top_k": gen.get("top_k"),
        "generation.repetition_penalty": gen.get("repetition_penalty"),
    }
    header = (
        f"slmk configuration for {info.path.name} ({info.architecture or info.model_type}).\n"
        "Swap hardware by changing execution_provider (cpu, cuda, ...); `slmk config keys` lists every key."
    )
    write_config(path, values, header)
    click.echo(f"wrote {path}")


def inspect_model(
    model: str | Path, registry: Registry | None = None, *, base: str | Path | None = None
) -> dict[str, Any]:
    """Everything `slmk inspect` shows, as data (for an adapter: the adapter and its base)."""
    from ..app import make_plan
    from ..builds import check_precision
    from ..errors import SlmkError, call_plugin
    from ..modelinfo import ModelInfo
    from ..records import FORMAT_HF, PRECISIONS

    registry = registry or get_registry()
    source = registry.model_source(model)
    if source is not None:  # the adapter, then what its base can become
        described = dict(source.describe(Path(model), Path(base) if base else None))
        return {
            **inspect_model(described.get("base") or base, registry),
            "source": source.name,
            "adapter": described,
            "path": str(Path(model)),
        }
    info = ModelInfo.load(model)
    family = None
    template_error = None
    try:
        from ..api.templates import resolve_template

        family = resolve_template(registry, info).family
    except SlmkError as exc:
        template_error = exc.one_line()
    blockers = []
    for name, conv in registry.converters.items():
        reason = None
        if conv.supports:
            owner = registry.owner("slmk_converters", name)
            reason = call_plugin(owner, f"converter {name!r} checking the model", conv.supports, info)
        if reason:
            blockers.append(f"{name}: {reason}")
    matrix = []
    for ep_name, ep in sorted(registry.execution_providers.items()):
        owner = registry.owner("slmk_execution_providers", ep_name)
        usable = call_plugin(owner, f"probing execution provider {ep_name!r}", ep.probe)
        for precision in PRECISIONS:
            try:
                check_precision(ep, precision)
                request = ConvertRequest(info.path, precision=precision)
                buildable = bool(info.format == FORMAT_HF and make_plan(registry, info, ep, request))
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
        **({"verification": info.build_info.get("verification")} if info.format != FORMAT_HF else {}),
    }


@click.command()
@click.argument("model_dir", type=click.Path())
@click.option("--base", type=click.Path(file_okay=False), help="For an adapter folder: its base model folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(model_dir: str, base: str | None, as_json: bool) -> None:
    """Describe a model or adapter: architecture, family, size, chat template, and what can be built here."""
    report = inspect_model(model_dir, base=base)
    if as_json:
        emit_json(report)
        return
    params = report["parameters"]
    adapter = report.get("adapter")
    if adapter:
        click.echo(
            f"adapter:        {adapter['adapter']} ({report['source']}, rank {adapter.get('rank')}, "
            f"{adapter.get('adapted_layers')} layers: {', '.join(adapter.get('target_modules', []))})"
        )
        click.echo(f"base:           {adapter['base']} (from {adapter.get('base_from')})")
    click.echo(f"model:          {report['path']} ({report['format']})")
    click.echo(f"architecture:   {report['architecture'] or '?'} (model_type {report['model_type'] or '?'})")
    click.echo(f"family:         {report['family'] or 'none (generic template from the chat template)'}")
    click.echo(f"parameters:     {params:,}" if params else "parameters:     ?")
    click.echo(f"dtype:          {report['dtype'] or '?'}")
    click.echo(f"vocab / context: {report['vocab_size']} / {report['context_length']}")
    click.echo(f"chat template:  {'found' if report['chat_template'] else 'MISSING'}")
    if report["format"] != "hf":
        click.echo(f"source check:   {verification_line(report.get('verification'))}")
    if report.get("template_error"):
        click.echo(f"                ! {report['template_error']}")
    if report["converter_blockers"]:
        click.echo("converters:     " + "; ".join(report["converter_blockers"]))
    click.echo("precision x execution provider (build / run here):")
    for row in report["matrix"]:
        click.echo(
            f"  {row['execution_provider']:<7} {row['precision']:<5} build: {'yes' if row['buildable'] else 'no ':<4}"
            f" run: {'yes' if row['runnable'] else 'no '}  {row['note']}"
        )


def _quantization_cli(algorithm, block_size, accuracy_level, symmetric) -> dict[str, Any]:
    return {
        "quantization.algorithm": algorithm,
        "quantization.block_size": block_size,
        "quantization.accuracy_level": accuracy_level,
        "quantization.is_symmetric": symmetric,
    }


def quantization_options(f):
    """--algorithm, --block-size, --accuracy-level, --symmetric/--asymmetric, --calibration."""
    f = click.option(
        "--algorithm",
        help="Weight quantization algorithm, as the installed plugins declare them: e.g. rtn/k_quant (builder), "
        "gptq (Olive, CPU), hqq (ONNX); `slmk plugins` lists them.",
    )(f)
    f = click.option(
        "--block-size", type=int, help="int4/int8 block size (16, 32, 64, 128, 256) [default: 32 at int4, 128 at int8]."
    )(f)
    f = click.option("--accuracy-level", type=int, help="int4 MatMul accuracy level 0-4 (4: int8 compute).")(f)
    f = click.option("--symmetric/--asymmetric", default=None, help="Symmetric int4 quantization.")(f)
    f = click.option(
        "--calibration",
        type=click.Path(dir_okay=False),
        help="Your own data (.jsonl chat records or .txt) for calibrated quantization.",
    )(f)
    return f


@click.command(cls=PluginOptionsCommand)
@click.argument("model_dir", required=False, type=click.Path())
@click.option("-p", "--precision", type=PRECISION_CHOICES, help="Target precision [default: int4].")
@click.option("--ep", "execution_provider", help="Execution provider [default: cpu].")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--via", help="Use this converter/quantizer or plugin (e.g. olive, ortquant).")
@click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the planned converter or quantizer (their records declare them: `slmk plugins --json`).",
)
@click.option("--base", type=click.Path(file_okay=False), help="For an adapter folder: its base model folder.")
@click.option(
    "--adapter-mode",
    type=click.Choice(["merge", "separate"]),
    help="For an adapter folder: merge it into the base [default], or build the base once plus a separate "
    "adapter file (`slmk run --adapter`).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan and stop.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow code from the model folder to run.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Keep the build without checking it against the source model run by transformers (recorded in "
    "slmk_build.json). By default fp32/fp16/bf16 builds must give transformers' greedy tokens.",
)
@quantization_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def convert(
    state: State,
    model_dir,
    precision,
    execution_provider,
    output,
    via,
    options,
    base,
    adapter_mode,
    plan_only,
    force,
    trust_remote_code,
    no_verify,
    algorithm,
    block_size,
    accuracy_level,
    symmetric,
    calibration,
    as_json,
    plugin_flags,
) -> None:
    """Convert a Hugging Face model folder to a quantized ONNX Runtime GenAI build.

    \b
    slmk convert ./my-model -p int4 -o build/int4
    slmk convert ./my-model -p int4 --via olive --calibration train.jsonl -o build/gptq
    slmk convert ./my-model -p int4 -O block_size=64 -O accuracy_level=4
    slmk convert ./my-lora-adapter --base ./base-model -p int4 [--adapter-mode separate]
    slmk convert --olive-config finetuned_conversion_config.json -o build/olive

    Every build is checked against the source model run by transformers on a few chat
    prompts (docs/build.md): an fp32/fp16/bf16 build that does not give transformers'
    greedy tokens is refused; int8/int4 builds record token agreement and logit cosine.

    int4/int8 builds on cpu quantize a model's own (untied) embedding table too;
    -O op_types_to_quantize=MatMul keeps it in float (docs/build.md).
    """
    from .. import app

    settings = state.settings(
        {
            "model": model_dir,
            "precision": precision,
            "execution_provider": execution_provider,
            "output": output,
            "converter": via,
            "trust_remote_code": trust_remote_code,
            "quantization.calibration": calibration,
            **_quantization_cli(algorithm, block_size, accuracy_level, symmetric),
            **plugin_flags,
        }
    )
    plugin_settings = {key: settings[key] for key in get_registry().settings if settings[key] is not None}
    request = ConvertRequest(
        model=_path(settings["model"]),
        output=_path(settings["output"]),
        precision=settings["precision"],
        execution_provider=settings["execution_provider"],
        via=settings["converter"],
        options=parse_key_values(options),
        quantization=settings.quantization(),
        calibration=_path(settings["quantization.calibration"]),
        search=settings.generation(),
        plugin_settings=plugin_settings,
        base=_path(base),
        source_mode=adapter_mode,
        force=force,
        trust_remote_code=settings["trust_remote_code"],
        plan_only=plan_only,
        verify=not no_verify,
        cache_dir=_path(settings["cache_dir"]),
        progress=state.progress(as_json),
    )
    result = app.convert_request(request)
    if plan_only:
        if as_json:
            emit_json(result.as_dict())
        else:
            click.echo(f"plan ({result.shape}): {result.why}")
            for number, step in enumerate(result.steps, 1):
                click.echo(f"  {number}. {step.describe()}")
        return
    if as_json:
        emit_json(result.as_dict())
        return
    render_build(result)


def _path(value) -> Path | None:
    return Path(value) if value is not None else None


def parse_key_values(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("block_size=64", ...)`` -> ``{"block_size": "64"}``; a pair without ``=`` is a usage error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-O {pair!r} is not KEY=VALUE", hint="e.g. -O block_size=64")
        out[key.strip()] = value.strip()
    return out


def verification_line(verification) -> str:
    """The one line a build's check against its source reads as (slmk_build.json ``verification``)."""
    from ..builds import verification_summary

    return verification_summary(verification)


def render_build(result) -> None:
    """Print a finished build: its steps, folder, size and large files."""
    for step in result.steps:
        click.echo(f"  {step.kind:<8} {step.tool:<18} {step.precision:<5} {step.status:<6} {step.seconds:7.1f}s")
    click.echo(
        f"built {result.output} ({human_size(result.size_bytes)} in {len(result.files)} files, {result.seconds:.1f}s)"
    )
    click.echo(f"  source check: {verification_line(result.verification)}")
    for name, size in result.files.items():
        if size > 1_000_000 or name.endswith(".onnx"):
            click.echo(f"    {name:<32} {human_size(size)}")
