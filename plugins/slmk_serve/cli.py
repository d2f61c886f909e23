"""``slmk serve``: the command. Heavy imports (FastAPI, uvicorn, runtimes) happen when it runs."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_PORT = 8000


def how_to_call(url: str, model: str, api_key: str | None) -> str:
    """Copy-paste examples for a running endpoint: curl and the openai client."""
    auth = ' -H "Authorization: Bearer $SLMK_API_KEY"' if api_key else ""
    key = 'os.environ["SLMK_API_KEY"]' if api_key else '"unused"'
    return (
        f"  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        "\n"
        "  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{url}/v1", api_key={key})\n'
        "  reply = client.chat.completions.create(\n"
        f'      model="{model}", messages=[{{"role": "user", "content": "Hello"}}]\n'
        "  )\n"
        "  print(reply.choices[0].message.content)"
    )


@click.command(name="serve")
@click.argument("targets", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (others: warned).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port (0: any free one)."
)
@click.option(
    "--api-key",
    envvar="SLMK_API_KEY",
    help="Require `Authorization: Bearer KEY` on every route but /health (also: $SLMK_API_KEY).",
)
@click.option("--runtime", help="Runtime plugin that loads the models [default: slmk.toml runtime, ortgenai].")
@click.option("--ep", "execution_provider", help="Execution provider (default: the one each model was built for).")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sessions per model: answers generated at the same time (each holds its own copy of the model).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Requests waiting per model; one more gets 503.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a request may wait for its model; then 503.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a stream waits for a client that stopped reading; then it is cancelled.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Largest max_tokens a request may ask for (and the default).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Largest request body; larger gets 413.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Open connections at most; more get 503.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Foundry Local cache for installed names (default: slmk.toml install.cache_dir, $SLMK_FOUNDRY_CACHE).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="Log level (info: one line per request with its model, tokens, time to first token and total).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Let browser pages from this origin call the API (repeatable; `*`: any). Off by default.",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    targets,
    host,
    port,
    api_key,
    runtime,
    execution_provider,
    parallel,
    max_queue,
    queue_timeout,
    stall_timeout,
    max_tokens_limit,
    max_body_bytes,
    max_connections,
    cache_dir,
    log_level,
    cors_origins,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (TARGET: build folder, installed NAME, or NAME=TARGET).

    \b
    Routes: /v1/models, /v1/chat/completions (streamed or not), /v1/completions, /health, /metrics.
    Listens on 127.0.0.1 only unless --host says otherwise. Ctrl-C stops it.

    \b
    slmk serve build/tiny-int4
    slmk serve tiny=build/tiny-int4 chat=tiny-chat --api-key "$KEY" --port 8080
    """
    from .server import is_loopback, serve
    from .workers import Limits

    settings = _settings(ctx, runtime, cache_dir)
    if not is_loopback(host):
        click.echo(
            f"warning: listening on {host}: other machines can reach this endpoint"
            + ("" if api_key else " and nothing stops them (no --api-key)"),
            err=True,
        )
    limits = Limits(
        max_queue=max_queue,
        parallel=parallel,
        max_tokens_limit=max_tokens_limit,
        max_body_bytes=max_body_bytes,
        queue_timeout_s=queue_timeout,
        stall_timeout_s=stall_timeout,
        max_connections=max_connections,
    )
    server = serve(
        targets,
        host=host,
        port=port,
        api_key=api_key,
        runtime=settings["runtime"],
        execution_provider=execution_provider,
        limits=limits,
        installer=settings["installer"],
        cache_dir=settings["cache_dir"],
        log_level=log_level,
        cors_origins=cors_origins,
    )
    click.echo(f"serving {', '.join(server.models)} at {server.base_url} ({settings['runtime']}); Ctrl-C stops")
    click.echo(how_to_call(server.url, server.models[0], api_key))
    server.wait()


def _settings(ctx: click.Context, runtime: str | None, cache_dir: str | None) -> dict:
    """runtime, installer and Foundry cache: the command line, else slmk.toml (when the kernel offers it)."""
    state = ctx.obj
    values = {"runtime": runtime, "install.cache_dir": cache_dir}
    settings_of = getattr(state, "settings", None)
    if callable(settings_of):
        settings = settings_of(values)
        cache = settings["install.cache_dir"]
        return {
            "runtime": settings["runtime"],
            "installer": settings["installer"],
            "cache_dir": Path(cache).expanduser() if cache else None,
        }
    return {
        "runtime": runtime or "ortgenai",
        "installer": "foundry",
        "cache_dir": Path(cache_dir).expanduser() if cache_dir else None,
    }
