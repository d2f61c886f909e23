"""Model commands: `slmk run`, `slmk install`, `slmk list`, `slmk remove`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..plugins import get_registry
from .build import verification_line
from .options import (
    State,
    cache_dir_option,
    emit_json,
    generation_options,
    human_size,
    installer_cache,
    installer_option,
    pass_state,
    runtime_options,
    search_from,
)


@click.command()
@click.argument("target")
@click.option("--prompt", help="Answer this one prompt and exit (otherwise: interactive chat).")
@click.option("--system", help="System message.")
@runtime_options
@click.option(
    "--adapter", help="A build's adapter (NAME in adapters/, or an .onnx_adapter file): separate-adapter builds."
)
@cache_dir_option
@generation_options
@click.option(
    "--json-schema",
    "json_schema",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Constrain every answer to this JSON Schema file (ortgenai runtime).",
)
@click.option("--regex", help="Constrain every answer to this regular expression (ortgenai runtime).")
@click.option("--json", "as_json", is_flag=True, help="With --prompt: print the answer and stats as JSON.")
@pass_state
def run(
    state: State,
    target,
    prompt,
    system,
    runtime,
    execution_provider,
    adapter,
    cache_dir,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    repetition_penalty,
    greedy,
    json_schema,
    regex,
    as_json,
) -> None:
    """Chat with a build folder or an installed model (TARGET: folder or NAME[:VERSION]).

    The model's own chat template is applied; tokens stream as they are generated.
    In the interactive chat, /reset clears the conversation and /exit (or Ctrl-D) quits.
    --json-schema and --regex constrain the answer while it is generated.
    """
    from .. import app

    settings = state.settings({"runtime": runtime, "install.cache_dir": cache_dir})
    search = search_from(state, settings, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
    guidance = _guidance(json_schema, regex)
    cache = installer_cache(settings)
    folder, installed = app.resolve_target(target, installer=settings["installer"], cache_dir=cache)
    session = app.open_session(
        folder,
        runtime=settings["runtime"],
        execution_provider=execution_provider,
        installed=installed,
        cache_dir=cache,
        options={"adapter": adapter} if adapter else None,
    )
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    try:
        if guidance:
            if guidance[0] not in (getattr(session, "guidance_kinds", None) or ()):
                option = "--json-schema" if json_schema else "--regex"
                raise UsageError(
                    f"the {settings['runtime']} runtime cannot constrain its answers ({option})",
                    hint="use --runtime ortgenai",
                )
            search = {**search, "guidance": guidance}
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


def _guidance(json_schema: Path | None, regex: str | None) -> tuple[str, str] | None:
    """The runtime constraint --json-schema FILE or --regex asks for (None: free text)."""
    from ..constraints import constraint_schema
    from ..modelinfo import _read_json as read_json_object

    if json_schema and regex:
        raise UsageError("--json-schema and --regex cannot be used together", hint="pass one of them")
    if regex:
        return "regex", regex
    if not json_schema:
        return None
    return "json_schema", json.dumps(constraint_schema(read_json_object(json_schema)))


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
        "verification": _verification(model),
    }


def _verification(model) -> dict[str, Any] | None:
    """The install's check against its source model, as its build recorded it."""
    from ..app import build_info

    return build_info(model.path).get("verification")


@click.command()
@click.argument("build_dir", type=click.Path())
@click.option("--name", help="Name to install under [default: slmk.toml name].")
@click.option(
    "--template",
    "template_file",
    type=click.Path(dir_okay=False),
    help="Prompt template: a JSON file with system/user/assistant/prompt, or a Jinja chat template.",
)
@installer_option
@cache_dir_option
@click.option("--force", is_flag=True, help="Replace the newest installed version instead of adding a new one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def install(state: State, build_dir, name, template_file, installer, cache_dir, force, as_json) -> None:
    """Install a build with an installer plugin (--installer; `slmk plugins` lists them).

    The prompt template is checked against the model's own chat template before the
    model is renamed into place; a mismatch stops the install.
    """
    from .. import app

    settings = state.settings({"name": name, "installer": installer, "install.cache_dir": cache_dir})
    if not settings["name"]:
        raise UsageError("no name given", hint="pass --name NAME or set `name` in slmk.toml")
    model = app.install(
        build_dir,
        settings["name"],
        installer=settings["installer"],
        cache_dir=installer_cache(settings),
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


@click.command("list")
@installer_option
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, installer, cache_dir, as_json) -> None:
    """List installed models: name, version, precision, EP, size, path, runtimes."""
    settings = state.settings({"installer": installer, "install.cache_dir": cache_dir})
    inst = get_registry().get("slmk_installers", settings["installer"])
    cache = installer_cache(settings)
    models = inst.list(cache)
    if as_json:
        emit_json([_installed_dict(m) for m in models])
        return
    click.echo(f"# {inst.locate(cache)}")
    if not models:
        click.echo("no models installed")
    for m in models:
        state = m.extra.get("state", "ok")
        click.echo(
            f"{m.ref:<28} {m.precision or '?':<5} {m.execution_provider or '?':<6} {human_size(m.size_bytes):>9}  "
            f"runtimes: {','.join(m.runtimes) or 'none'}  {m.path}" + (f"  [{state}]" if state != "ok" else "")
        )
        click.echo(f"{'':<28} source check: {verification_line(_verification(m))}")


@click.command()
@click.argument("ref")
@installer_option
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def remove(state: State, ref, installer, cache_dir, as_json) -> None:
    """Remove an installed model: NAME (newest version) or NAME:VERSION."""
    from ..app import parse_ref

    settings = state.settings({"installer": installer, "install.cache_dir": cache_dir})
    inst = get_registry().get("slmk_installers", settings["installer"])
    name, version = parse_ref(ref)
    removed = inst.remove(name, version, installer_cache(settings))
    if as_json:
        emit_json(_installed_dict(removed))
    else:
        click.echo(f"removed {removed.ref}")
