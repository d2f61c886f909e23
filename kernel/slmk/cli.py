"""The `slmk` command line: a thin click layer over slmk.app.

Each command parses its options, resolves settings (command line > environment >
slmk.toml > defaults), calls one kernel function and renders the result as text or,
with --json, as JSON on stdout. Errors become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import SlmkError, UsageError

# Every tool slmk drives reads these at import time; slmk keeps telemetry off unless
# the user set them explicitly.
TELEMETRY_OFF = {
    "ORT_DISABLE_TELEMETRY": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

PRECISION_CHOICES = click.Choice(["int4", "int8", "fp16", "bf16", "fp32"])


class State:
    def __init__(self, debug: bool, quiet: bool, config: str | None):
        self.debug = debug
        self.quiet = quiet
        self.config = config

    def settings(self, cli: dict[str, Any] | None = None):
        from .config import load_settings

        return load_settings(cli or {}, self.config)

    def progress(self, quiet: bool = False):
        from .progress import Progress

        return Progress(quiet=self.quiet or quiet)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _registry():
    from .plugins import get_registry

    return get_registry()


class SlmkGroup(click.Group):
    """Adds the commands plugins contribute through the ``slmk_cli_commands`` hook.

    Plugin commands are looked up only when a name is not a built-in command, so
    `slmk --help` lists them but built-in commands never wait for plugin loading.
    """

    def _plugin_commands(self) -> dict[str, click.Command]:
        try:
            return dict(_registry().cli_commands)
        except SlmkError:
            return {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands()))

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or self._plugin_commands().get(name)


@click.group(cls=SlmkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slmk")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--config", "config", type=click.Path(dir_okay=False), help="slmk.toml to use (default: ./slmk.toml, $SLMK_CONFIG)."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, config: str | None) -> None:
    """slmk: take a fine-tuned small language model to a tested ONNX deployment in Foundry Local.

    \b
    Start here:   slmk demo              (the embedded tiny model, end to end)
    Your model:   slmk init MODEL_DIR && slmk deploy
    Step by step: slmk inspect, convert, install, run, bench, validate
    """
    ctx.obj = State(debug, quiet, config)
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- plugins
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List plugins: versions, hooks, what each contributes, and load errors."""
    registry = _registry()
    registry.collect_all()
    infos = [info.as_dict() for info in registry.plugin_infos()]
    if as_json:
        emit_json(infos)
        return
    for info in infos:
        status = "ok" if info["loaded"] and not info["errors"] else ("error" if info["errors"] else "off")
        version = f" {info['distribution']} {info['version']}" if info["distribution"] else ""
        click.echo(f"{info['name']} [{status}]{version}  ({info['module']})")
        for hook, names in sorted(info["records"].items()):
            click.echo(f"    {hook.removeprefix('slmk_')}: {', '.join(names)}")
        for error in info["errors"]:
            click.echo(f"    ! {error}")


# --------------------------------------------------------------------------- doctor
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """Check Python, memory, disk, packages and execution providers; each problem with its fix.

    Exits 1 when a check fails (warnings do not fail).
    """
    from .records import ProbeResult

    registry = _registry()
    results: list[dict[str, Any]] = []
    for name, probe in sorted(registry.probes.items()):
        try:
            findings = list(probe.check())
        except Exception as exc:  # a probe must not take doctor down
            findings = [
                ProbeResult(
                    name,
                    "fail",
                    f"probe raised {type(exc).__name__}: {exc}",
                    fix=f"report this to the author of plugin {registry.owner('slmk_probes', name)}",
                )
            ]
        results += [
            {"probe": name, "name": f.name, "status": f.status, "detail": f.detail, "fix": f.fix} for f in findings
        ]
    for name, ep in sorted(registry.execution_providers.items()):
        try:
            usability = ep.probe()
            results.append(
                {
                    "probe": "execution-providers",
                    "name": f"ep:{name}",
                    "status": "ok" if usability.usable else "warn",
                    "detail": ("usable: " if usability.usable else "not usable: ") + usability.reason,
                    "fix": usability.fix,
                }
            )
        except Exception as exc:
            results.append(
                {
                    "probe": "execution-providers",
                    "name": f"ep:{name}",
                    "status": "fail",
                    "detail": f"probe raised {exc}",
                    "fix": "",
                }
            )
    registry.collect_all()
    for info in registry.plugin_infos():
        for error in info.errors:
            if info.loaded or not error.startswith(("disabled", "not in")):
                results.append(
                    {
                        "probe": "plugins",
                        "name": f"plugin:{info.name}",
                        "status": "warn",
                        "detail": error,
                        "fix": "fix or uninstall the plugin, or SLMK_DISABLE_PLUGINS=" + info.name,
                    }
                )
    failed = any(r["status"] == "fail" for r in results)
    if as_json:
        emit_json({"ok": not failed, "checks": results})
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for r in results:
            click.echo(f"[{marks[r['status']]}] {r['name']}: {r['detail']}")
            if r["fix"] and r["status"] != "ok":
                click.echo(f"       fix: {r['fix']}")
        click.echo("doctor: " + ("problems found" if failed else "all required checks passed"))
    if failed:
        sys.exit(1)


# --------------------------------------------------------------------------- config
@cli.group()
def config() -> None:
    """Show the settings slmk.toml can hold and their resolved values."""


@config.command("keys")
def config_keys() -> None:
    """List every key with its type, default, allowed values and environment variable."""
    from .config import SETTINGS

    for s in SETTINGS:
        allowed = f" one of {', '.join(map(str, s.choices))}" if s.choices else ""
        click.echo(f"{s.key} ({s.type.__name__}, default {s.default!r}){allowed}\n    {s.help}; env {s.env}")


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
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


# --------------------------------------------------------------------------- init
@cli.command()
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
@click.pass_obj
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

    from .config import write_config
    from .modelinfo import ModelInfo

    info = ModelInfo.load(model_dir)
    path = Path(config_path)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    _resolve_ep_name(execution_provider)
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
    write_config(path, values, {"header": header})
    click.echo(f"wrote {path}")


def _resolve_ep_name(name: str):
    from .app import resolve_ep

    return resolve_ep(_registry(), name)


# --------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(model_dir: str, as_json: bool) -> None:
    """Describe a model: architecture, family, size, chat template, and what can be built here."""
    from .app import inspect_model

    report = inspect_model(model_dir)
    if as_json:
        emit_json(report)
        return
    params = report["parameters"]
    click.echo(f"model:          {report['path']} ({report['format']})")
    click.echo(f"architecture:   {report['architecture'] or '?'} (model_type {report['model_type'] or '?'})")
    click.echo(f"family:         {report['family'] or 'none (generic template from the chat template)'}")
    click.echo(f"parameters:     {params:,}" if params else "parameters:     ?")
    click.echo(f"dtype:          {report['dtype'] or '?'}")
    click.echo(f"vocab / context: {report['vocab_size']} / {report['context_length']}")
    click.echo(f"chat template:  {'found' if report['chat_template'] else 'MISSING'}")
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


# --------------------------------------------------------------------------- convert
def _quantization_cli(algorithm, block_size, accuracy_level, symmetric) -> dict[str, Any]:
    return {
        "quantization.algorithm": algorithm,
        "quantization.block_size": block_size,
        "quantization.accuracy_level": accuracy_level,
        "quantization.is_symmetric": symmetric,
    }


def quantization_options(f):
    f = click.option(
        "--algorithm",
        type=click.Choice(["default", "rtn", "k_quant", "gptq", "awq", "hqq"]),
        help="Weight quantization algorithm: rtn/k_quant (builder), gptq (Olive, CPU), awq (Olive, GPU only), hqq (ONNX).",
    )(f)
    f = click.option("--block-size", type=int, help="int4 block size (16, 32, 64, 128, 256).")(f)
    f = click.option("--accuracy-level", type=int, help="int4 MatMul accuracy level 0-4 (4: int8 compute).")(f)
    f = click.option("--symmetric/--asymmetric", default=None, help="Symmetric int4 quantization.")(f)
    f = click.option(
        "--calibration",
        type=click.Path(dir_okay=False),
        help="Your own data (.jsonl chat records or .txt) for calibrated quantization.",
    )(f)
    return f


@cli.command()
@click.argument("model_dir", required=False, type=click.Path())
@click.option("-p", "--precision", type=PRECISION_CHOICES, help="Target precision [default: int4].")
@click.option("--ep", "execution_provider", help="Execution provider [default: cpu].")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--via", help="Use this converter/quantizer or plugin (e.g. olive, ortquant).")
@click.option("--olive-config", type=click.Path(dir_okay=False), help="Run your Olive workflow JSON file instead.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan and stop.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow code from the model folder to run.")
@quantization_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def convert(
    state: State,
    model_dir,
    precision,
    execution_provider,
    output,
    via,
    olive_config,
    plan_only,
    force,
    trust_remote_code,
    algorithm,
    block_size,
    accuracy_level,
    symmetric,
    calibration,
    as_json,
) -> None:
    """Convert a Hugging Face model folder to a quantized ONNX Runtime GenAI build.

    \b
    slmk convert ./my-model -p int4 -o build/int4
    slmk convert ./my-model -p int4 --via olive --calibration train.jsonl -o build/gptq
    slmk convert --olive-config finetuned_conversion_config.json -o build/olive
    """
    from . import app

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
        }
    )
    extra: dict[str, Any] = {}
    via = settings["converter"]
    model = settings["model"]
    if olive_config:
        import hashlib

        config_file = Path(olive_config).resolve()
        if not config_file.is_file():
            raise UsageError(f"Olive config {config_file} not found", hint="pass the path of your workflow .json file")
        # the content hash is part of the step-cache key: an edited workflow file rebuilds
        via, extra = (
            "olive-workflow",
            {
                "olive_config": str(config_file),
                "olive_config_sha256": hashlib.sha256(config_file.read_bytes()).hexdigest(),
            },
        )
        model = model or app.olive_config_input_model(olive_config)
    if not model:
        raise UsageError(
            "no model folder given", hint="pass MODEL_DIR or set `model` in slmk.toml (slmk init MODEL_DIR)"
        )
    out = (
        settings["output"]
        or f"build/{Path(model).resolve().name}-{settings['precision']}-{settings['execution_provider']}"
    )
    quiet = as_json or state.quiet
    result = app.convert(
        model,
        out,
        precision=settings["precision"],
        execution_provider=settings["execution_provider"],
        via=via,
        quantization=settings.quantization(),
        calibration=settings["quantization.calibration"],
        search=settings.generation(),
        force=force,
        trust_remote_code=settings["trust_remote_code"],
        plan_only=plan_only,
        extra_options=extra,
        progress=state.progress(quiet),
        cache_dir=settings["cache_dir"],
    )
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


def render_build(result) -> None:
    for step in result.steps:
        click.echo(f"  {step.kind:<8} {step.tool:<18} {step.precision:<5} {step.status:<6} {step.seconds:7.1f}s")
    click.echo(
        f"built {result.output} ({human_size(result.size_bytes)} in {len(result.files)} files, {result.seconds:.1f}s)"
    )
    for name, size in result.files.items():
        if size > 1_000_000 or name.endswith(".onnx"):
            click.echo(f"    {name:<32} {human_size(size)}")


# --------------------------------------------------------------------------- run
def generation_options(f):
    f = click.option("--max-new-tokens", type=int, help="Answer tokens at most.")(f)
    f = click.option("--temperature", type=float, help="Sampling temperature (0: greedy).")(f)
    f = click.option("--top-p", type=float)(f)
    f = click.option("--top-k", type=int)(f)
    f = click.option("--repetition-penalty", type=float)(f)
    f = click.option("--greedy/--sample", "greedy", default=None, help="Greedy decoding or sampling.")(f)
    return f


def _search_from(settings, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy) -> dict[str, Any]:
    search = settings.generation()
    overrides = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": max_new_tokens,
    }
    search.update({k: v for k, v in overrides.items() if v is not None})
    if greedy is not None:
        search["do_sample"] = not greedy
    return search


def cache_dir_option(f):
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="Foundry Local cache (default: slmk.toml install.cache_dir, $SLMK_FOUNDRY_CACHE, "
        "`foundry cache location`, the platform default).",
    )(f)


@cli.command()
@click.argument("target")
@click.option("--prompt", help="Answer this one prompt and exit (otherwise: interactive chat).")
@click.option("--system", help="System message.")
@click.option("--runtime", help="ortgenai (ONNX Runtime GenAI) or foundry (Foundry Local SDK) [default: ortgenai].")
@click.option("--ep", "execution_provider", help="Execution provider (default: the one the model was built for).")
@cache_dir_option
@generation_options
@click.option("--json", "as_json", is_flag=True, help="With --prompt: print the answer and stats as JSON.")
@click.pass_obj
def run(
    state: State,
    target,
    prompt,
    system,
    runtime,
    execution_provider,
    cache_dir,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    repetition_penalty,
    greedy,
    as_json,
) -> None:
    """Chat with a build folder or an installed model (TARGET: folder or NAME[:VERSION]).

    The model's own chat template is applied; tokens stream as they are generated.
    In the interactive chat, /reset clears the conversation and /exit (or Ctrl-D) quits.
    """
    from . import app

    settings = state.settings({"runtime": runtime, "install.cache_dir": cache_dir})
    search = _search_from(settings, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
    foundry_cache = Path(settings["install.cache_dir"]) if settings["install.cache_dir"] else None
    folder, installed = app.resolve_target(target, installer=settings["installer"], cache_dir=foundry_cache)
    session = app.open_session(
        folder,
        runtime=settings["runtime"],
        execution_provider=execution_provider,
        installed=installed,
        cache_dir=foundry_cache,
    )
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    try:
        if prompt is not None:
            messages = [*history, {"role": "user", "content": prompt}]
            if as_json:
                answer = "".join(session.generate(messages, **search))
                stats = session.last_stats
                emit_json(
                    {
                        "prompt": prompt,
                        "answer": answer,
                        "stats": stats.__dict__ if stats else None,
                        "decode_tokens_per_s": stats.decode_tokens_per_s if stats else None,
                    }
                )
            else:
                _stream(session, messages, search)
            return
        click.echo(f"chatting with {target} ({settings['runtime']}); /reset clears, /exit quits", err=True)
        base = list(history)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                click.echo(err=True)
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                history = list(base)
                continue
            history.append({"role": "user", "content": line})
            click.echo("model> ", nl=False)
            history.append({"role": "assistant", "content": _stream(session, history, search)})
    finally:
        session.close()


def _stream(session, messages, search) -> str:
    pieces = []
    for piece in session.generate(messages, **search):
        pieces.append(piece)
        click.echo(piece, nl=False)
    click.echo()
    stats = session.last_stats
    if stats:
        click.echo(
            f"[{stats.prompt_tokens} prompt tokens, {stats.generated_tokens} generated, "
            f"first token {stats.time_to_first_token_s * 1000:.0f} ms, "
            f"{stats.decode_tokens_per_s:.1f} tokens/s]",
            err=True,
        )
    return "".join(pieces)


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option(
    "--model", "model_dir", type=click.Path(file_okay=False), help="Model folder [default: examples/tiny-chat/model]."
)
@click.option("-p", "--precision", type=PRECISION_CHOICES, default="int4", show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Build folder [default: in slmk's cache].")
@click.option("--question", help="What to ask [default: the first question of the model's eval set].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def demo(state: State, model_dir, precision, output, question, as_json) -> None:
    """Convert the embedded tiny chat model to int4 ONNX, load it, ask it a question.

    Shows every stage: the conversion plan and steps, the files and sizes, the load
    time, the question, the streamed answer, and the speed.
    """
    from . import app

    result = app.demo(
        model_dir=model_dir,
        precision=precision,
        output=output,
        question=question,
        progress=state.progress(as_json),
        echo=None if as_json else click.echo,
    )
    if as_json:
        emit_json(result)


# --------------------------------------------------------------------------- install
def _foundry_cache(settings) -> Path | None:
    value = settings["install.cache_dir"]
    return Path(value).expanduser() if value else None


def _installed_dict(model) -> dict[str, Any]:
    return {
        "name": model.name,
        "version": model.version,
        "ref": model.ref,
        "installer": model.installer,
        "precision": model.precision,
        "execution_provider": model.execution_provider,
        "size_bytes": model.size_bytes,
        "path": str(model.path),
        "runtimes": list(model.runtimes),
        **{k: v for k, v in model.extra.items() if isinstance(v, (str, int, float, bool))},
    }


@cli.command()
@click.argument("build_dir", type=click.Path())
@click.option("--name", help="Name to install under [default: slmk.toml name].")
@click.option(
    "--template",
    "template_file",
    type=click.Path(dir_okay=False),
    help="Prompt template: a JSON file with system/user/assistant/prompt, or a Jinja chat template.",
)
@click.option("--installer", help="Installer plugin [default: foundry].")
@cache_dir_option
@click.option("--force", is_flag=True, help="Replace the newest installed version instead of adding a new one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def install(state: State, build_dir, name, template_file, installer, cache_dir, force, as_json) -> None:
    """Install a build into Foundry Local (legacy cache layout and the v2 SDK catalog).

    The prompt template is checked against the model's own chat template before the
    model is renamed into place; a mismatch stops the install.
    """
    from . import app

    settings = state.settings({"name": name, "installer": installer, "install.cache_dir": cache_dir})
    if not settings["name"]:
        raise UsageError("no name given", hint="pass --name NAME or set `name` in slmk.toml")
    model = app.install(
        build_dir,
        settings["name"],
        installer=settings["installer"],
        cache_dir=_foundry_cache(settings),
        force=force,
        template_file=template_file,
        progress=state.progress(as_json),
    )
    if as_json:
        emit_json(_installed_dict(model))
        return
    click.echo(f"installed {model.ref} ({model.precision}, {model.execution_provider}, {human_size(model.size_bytes)})")
    click.echo(f"  at {model.path}")
    for key, value in model.extra.items():
        if isinstance(value, str):
            click.echo(f"  {key}: {value}")


@cli.command("list")
@click.option("--installer", help="Installer plugin [default: foundry].")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(state: State, installer, cache_dir, as_json) -> None:
    """List installed models: name, version, precision, EP, size, path, runtimes."""
    settings = state.settings({"installer": installer, "install.cache_dir": cache_dir})
    inst = _registry().get("slmk_installers", settings["installer"], "installer")
    cache = _foundry_cache(settings)
    models = inst.list(cache)
    if as_json:
        emit_json([_installed_dict(m) for m in models])
        return
    click.echo(f"# {inst.locate(cache)}")
    if not models:
        click.echo("no models installed")
    for m in models:
        click.echo(
            f"{m.ref:<28} {m.precision or '?':<5} {m.execution_provider or '?':<6} {human_size(m.size_bytes):>9}  "
            f"runtimes: {','.join(m.runtimes)}  {m.path}"
        )


@cli.command()
@click.argument("ref")
@click.option("--installer", help="Installer plugin [default: foundry].")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def remove(state: State, ref, installer, cache_dir, as_json) -> None:
    """Remove an installed model: NAME (newest version) or NAME:VERSION."""
    from .app import parse_ref

    settings = state.settings({"installer": installer, "install.cache_dir": cache_dir})
    inst = _registry().get("slmk_installers", settings["installer"], "installer")
    name, version = parse_ref(ref)
    removed = inst.remove(name, version, _foundry_cache(settings))
    if as_json:
        emit_json(_installed_dict(removed))
    else:
        click.echo(f"removed {removed.ref}")


# --------------------------------------------------------------------------- template
@cli.group()
def template() -> None:
    """Prompt templates: what slmk will write for a model, and where it came from."""


@template.command("show")
@click.argument("target")
@click.option("--template", "template_file", type=click.Path(dir_okay=False), help="Use this template file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def template_show(target, template_file, as_json) -> None:
    """Print the PromptTemplate for TARGET: a model or build folder, or a family name."""
    from . import app

    data = app.show_template(target, Path(template_file) if template_file else None)
    if as_json:
        emit_json(data)
        return
    click.echo(f"# source: {data['source']}" + (f" (family {data['family']})" if data.get("family") else ""))
    for key in ("system", "user", "assistant", "prompt"):
        click.echo(f"{key:<9} {json.dumps(data['prompt_template'][key])}")
    if data.get("stop_tokens"):
        click.echo(f"stop      {', '.join(data['stop_tokens'])}")
    for note in data.get("notes", []):
        click.echo(f"note: {note}")


# Command groups that live in their own modules (measurement, plugin authoring).
from .cli_measure import register as _register_measure
from .cli_plugin import register as _register_plugin

_register_measure(cli)
_register_plugin(cli)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for every error."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="slmk", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted: nothing half-written was left under a final name", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line, like every other error; the command's --help has the details
        command = exc.ctx.command_path if exc.ctx else "slmk"
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except SlmkError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)", err=True)
        sys.exit(3)
